"""Does state-tx compute the same function as arc-state for the same weights?

    python benchmarks/state_tx_peer/check_forward_equivalence.py ARC_RUN_DIR --arc-venv /work/arcstate-venv

ARC_RUN_DIR is an `state tx train` output (e.g. from run_peer.py). The arc-state venv loads the
Lightning checkpoint and runs its model on fixed random inputs; this process loads the same
checkpoint into state_tx.model through the checkpoint table (ARC_STATE_SKIP) and compares.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ARC_SIDE = r"""
import sys, torch
from state.tx.models.state_transition import StateTransitionPerturbationModel
ckpt, io = sys.argv[1], sys.argv[2]
model = StateTransitionPerturbationModel.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False).eval()
x = torch.load(io)
with torch.no_grad():
    out = model({"pert_emb": x["pert"].reshape(-1, x["pert"].shape[-1]),
                 "ctrl_cell_emb": x["basal"].reshape(-1, x["basal"].shape[-1])}, padded=True)
x["arc_out"] = out.reshape(x["basal"].shape[0], x["basal"].shape[1], -1)
torch.save(x, io)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("arc_run_dir")
    ap.add_argument("--arc-venv", default="/work/arcstate-venv")
    ap.add_argument("--checkpoint", default="final.ckpt")
    args = ap.parse_args()
    from ftcore.checkpoint import read_checkpoint
    from ftcore.loading import load_partial
    from state_tx.model import ARC_STATE_SKIP, StateTransitionModel, StateTxConfig, arc_state_to_ours

    ckpt = Path(args.arc_run_dir) / "checkpoints" / args.checkpoint
    obj = read_checkpoint(ckpt, trust_pickle=True)  # a Lightning checkpoint of our own making
    hp = obj["hyper_parameters"]
    bk = hp["transformer_backbone_kwargs"]
    cfg = StateTxConfig(input_dim=hp["input_dim"], output_dim=hp["output_dim"], pert_dim=hp["pert_dim"],
                        hidden_dim=hp["hidden_dim"], cell_set_len=hp["cell_set_len"],
                        n_encoder_layers=hp["n_encoder_layers"], n_decoder_layers=hp["n_decoder_layers"],
                        use_basal_projection=hp.get("use_basal_projection", True), n_layers=bk["num_hidden_layers"],
                        n_heads=bk["num_attention_heads"], head_dim=bk["head_dim"],
                        intermediate_size=bk["intermediate_size"], rms_norm_eps=bk.get("layer_norm_eps", 1e-6),
                        predict_residual=hp["predict_residual"], output_space=hp["output_space"], dropout=0.0)
    ours = StateTransitionModel(cfg).eval()
    report = load_partial(ours, arc_state_to_ours(obj["state_dict"]), skip=ARC_STATE_SKIP, verbose=True)
    torch.manual_seed(0)
    b, s = 3, cfg.cell_set_len
    x = {"basal": torch.rand(b, s, cfg.input_dim) * 3,
         "pert": torch.nn.functional.one_hot(torch.randint(0, cfg.pert_dim, (b,)), cfg.pert_dim).float()[:, None].expand(b, s, -1).contiguous()}
    with tempfile.TemporaryDirectory() as tmp:
        io = Path(tmp) / "io.pt"
        torch.save(x, io)
        subprocess.run([str(Path(args.arc_venv) / "bin" / "python"), "-c", ARC_SIDE, str(ckpt), str(io)], check=True)
        arc_out = torch.load(io)["arc_out"]
    with torch.no_grad():
        our_out = ours(x["basal"], x["pert"])
    diff = (our_out - arc_out).abs().max().item()
    result = {"checkpoint": str(ckpt), "loaded": len(report.loaded), "not_in_checkpoint": report.not_in_checkpoint,
              "skipped": sorted(report.skipped), "max_abs_diff": diff, "output_abs_mean": arc_out.abs().mean().item()}
    print(json.dumps(result, indent=1))
    out = Path(__file__).with_name("forward_equivalence.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    sys.exit(0 if diff < 1e-4 and not report.not_in_checkpoint else 1)


if __name__ == "__main__":
    main()
