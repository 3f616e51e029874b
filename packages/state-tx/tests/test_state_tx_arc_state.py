"""arc-state's own files (tests/fixtures/arc_state, written by arc-state 0.11.1 itself: make_fixture.py)
load into state-tx by name, and state-tx then predicts what arc-state predicts on the same cells."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from state_tx.cli import main

FIX = Path(__file__).resolve().parent / "fixtures" / "arc_state"
RUN = FIX / "run"
CKPT = RUN / "checkpoints" / "final.ckpt"
# state-tx sizes of the fixture's network (make_fixture.SIZES; state_sm: basal encoder a single Linear)
ARC_SIZES = ["model=state_sm", "model.kwargs.hidden_dim=16", "model.kwargs.n_layers=1", "model.kwargs.n_heads=2",
             "model.kwargs.head_dim=8", "model.kwargs.intermediate_size=32", "model.kwargs.n_encoder_layers=2",
             "model.kwargs.n_decoder_layers=2", "model.kwargs.cell_set_len=8", "model.kwargs.dropout=0.0",
             "model.kwargs.batch_encoder=true"]


def arc_sd() -> dict[str, torch.Tensor]:
    return torch.load(CKPT, weights_only=True)["state_dict"]


def arc_forward():
    from safetensors.torch import load_file

    return load_file(str(FIX / "arc_forward.safetensors")), json.loads((FIX / "arc_forward.json").read_text())


def predict_named(run, basal, set_perts, batch_names):
    """state-tx's prediction for sets given by perturbation and batch NAMES, through the run's own maps."""
    S = basal.shape[1]
    pert = torch.stack([run.pert_table[run.perts.index(p)].expand(S, -1) for p in set_perts])
    batch = torch.tensor([[run.batches.index(b) for b in row] for row in batch_names])
    with torch.no_grad():
        return run.model(basal, pert, batch)


def test_fixture_is_arc_states_layout_with_the_control_last():
    from state_tx import arc_state as arc

    maps = arc.read_run_maps(RUN)
    assert maps["pert"].names[-1] == "non-targeting" and maps["pert"].onehot  # cell-load: sorted names
    assert maps["batch"].names == ["g1", "g2", "g3"] and maps["cell_type"].names == ["HepG2", "K562"]
    obj = torch.load(CKPT, weights_only=True)  # arc-state 0.11.1's .ckpt needs no unpickling beyond tensors
    assert arc.is_lightning(obj) and obj["hyper_parameters"]["transformer_backbone_key"] == "llama"


def test_infer_loads_an_arc_state_run_and_matches_its_own_model(capsys):
    """The loaded model equals arc-state's StateTransitionPerturbationModel on the same cells (its outputs)."""
    from state_tx.predict import load_run

    run = load_run(RUN, device="cpu")
    out = capsys.readouterr().out
    assert "Successfully loaded 21 weight layers" in out
    assert "Skipped 1 layers on purpose" in out and "transformer_backbone.embed_tokens.weight" in out
    assert "optimizer_states" in out  # the Lightning extras are named, not silently dropped
    io, meta = arc_forward()
    pred = predict_named(run, io["basal"], meta["set_perts"], meta["batch_names"])
    torch.testing.assert_close(pred, io["pred"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("how", ["model-dir", "checkpoint-only"])
def test_infer_cli_on_arc_state_run_equals_state_tx_infer_of_arc_state(how, tmp_path, capsys):
    """`state-tx infer` on arc-state's run = `state tx infer` (arc-state's CLI) cell by cell (one control per
    cell type: the basal draws are the same in both)."""
    import anndata as ad

    out = tmp_path / "pred.h5ad"
    where = ["--model-dir", str(RUN)] if how == "model-dir" else ["--checkpoint", str(CKPT)]
    assert main(["infer", "--adata", str(FIX / "arc_infer_input.h5ad"), "--output", str(out), *where,
                 "--device", "cpu"]) == 0
    ours, theirs = ad.read_h5ad(out), ad.read_h5ad(FIX / "arc_infer_pred.h5ad")
    assert list(ours.obs_names) == list(theirs.obs_names)
    np.testing.assert_allclose(ours.X, np.asarray(theirs.X), atol=1e-5)
    assert "Skipped 1 layers on purpose" in capsys.readouterr().out


def _legacy_run(tmp_path: Path) -> Path:
    run = tmp_path / "arc_pkl"
    shutil.copytree(RUN, run)
    for base in ("cell_type_onehot_map", "batch_onehot_map"):
        (run / f"{base}.torch").unlink()
        shutil.copy(FIX / "run_pkl" / f"{base}.pkl", run / f"{base}.pkl")
    return run


def test_older_pkl_layout_reads_safely_and_predicts_the_same(tmp_path):
    from state_tx.predict import load_run

    run = load_run(_legacy_run(tmp_path), device="cpu")
    assert run.batches == ["g1", "g2", "g3"]
    io, meta = arc_forward()
    torch.testing.assert_close(predict_named(run, io["basal"], meta["set_perts"], meta["batch_names"]), io["pred"],
                               atol=1e-5, rtol=1e-5)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_map_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    run = _legacy_run(tmp_path)
    marker = tmp_path / "ran"
    with open(run / "batch_onehot_map.pkl", "wb") as fh:
        pickle.dump({"g1": _Payload(marker)}, fh)
    code = main(["infer", "--adata", str(FIX / "arc_infer_input.h5ad"), "--output", str(tmp_path / "p.h5ad"),
                 "--model-dir", str(run), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("error:") and "refusing to unpickle" in err and "--trust-checkpoint" in err
    assert not marker.exists() and not (tmp_path / "p.h5ad").exists()


def test_arc_checkpoint_with_a_state_tx_run_dir_is_an_error(trained_run, tmp_path, capsys):
    code = main(["infer", "--adata", str(FIX / "arc_infer_input.h5ad"), "--output", str(tmp_path / "p.h5ad"),
                 "--model-dir", str(trained_run), "--checkpoint", str(CKPT)])
    err = capsys.readouterr().err
    assert code != 0 and "arc-state run" in err and "--model-dir" in err


# ------------------------------------------------------------------ fine-tuning (init_from)
@pytest.fixture(scope="module")
def new_screen(tmp_path_factory) -> Path:
    """The user's own data: CDK1 is replaced by ABL1 (a name the source never saw, sorting between AARS and
    BRCA1), and some cells come from a new batch 'a0' (sorting before g1): every column index moves."""
    import anndata as ad

    d = tmp_path_factory.mktemp("new")
    a = ad.read_h5ad(FIX / "data" / "screen.h5ad")
    gene = a.obs["gene"].astype(str).replace({"CDK1": "ABL1"})
    batch = a.obs["gem_group"].astype(str).to_numpy().copy()
    batch[::7] = "a0"
    a.obs["gene"], a.obs["gem_group"] = gene.astype("category"), batch
    a.obs["gem_group"] = a.obs["gem_group"].astype("category")
    a.write_h5ad(d / "screen.h5ad")
    (d / "train.toml").write_text(f'[datasets]\nscreen = "{d / "screen.h5ad"}"\n[training]\nscreen = "train"\n')
    return d / "train.toml"


def finetune_args(toml: Path, out: Path, ckpt: Path, extra=()) -> list[str]:
    return ["train", f"data.kwargs.toml_config_path={toml}", "data.kwargs.pert_col=gene",
            "data.kwargs.cell_type_key=cell_type", "data.kwargs.batch_col=gem_group",
            "data.kwargs.control_pert=non-targeting", "training.max_steps=1", "training.batch_size=2",
            "training.val_freq=1", "training.ckpt_every_n_steps=1", "training.lr=1e-12", "training.weight_decay=0",
            "training.progress=false", "training.device=cpu", *ARC_SIZES, f"model.kwargs.init_from={ckpt}",
            f"output_dir={out}", "name=ft", *extra]


def test_init_from_arc_state_matches_columns_by_name(new_screen, tmp_path, capsys):
    """The user's command: columns by name, fresh ones reported; after a CLI run (lr 0) the pretrained parts
    equal the file, and the fine-tuned run predicts what arc-state predicts for every shared name."""
    from state_tx.predict import load_run

    assert main(finetune_args(new_screen, tmp_path, CKPT)) == 0
    out = capsys.readouterr().out
    assert "pert_encoder.0.weight: 4 of 5 perturbation columns matched BY NAME" in out
    assert "FRESH column" in out and "ABL1" in out and "batch_encoder.weight: 3 of 4 batch columns" in out
    rep = json.loads((tmp_path / "ft" / "init_from.json").read_text())
    cols = {c["key"]: c for c in rep["columns"] if c["key"]}
    assert cols["pert_encoder.0.weight"]["fresh"] == ["ABL1"] and cols["pert_encoder.0.weight"]["dropped"] == ["CDK1"]
    assert cols["batch_encoder.weight"]["fresh"] == ["a0"] and cols["batch_encoder.weight"]["matched"] == 3
    assert rep["load"]["not_in_checkpoint"] == [] and rep["load"]["shape_mismatch"] == []

    src = arc_sd()
    src_perts = ["AARS", "BRCA1", "CDK1", "MYC", "non-targeting"]
    ours = torch.load(tmp_path / "ft" / "checkpoints" / "final.ckpt", weights_only=True)["model"]
    perts = json.loads((tmp_path / "ft" / "pert_onehot_map.json").read_text())
    assert perts["non-targeting"] == 0  # state-tx's order: the control first
    for name, j in perts.items():
        if name in src_perts:
            torch.testing.assert_close(ours["pert_encoder.0.weight"][:, j], src["pert_encoder.0.weight"][:, src_perts.index(name)])
    batches = json.loads((tmp_path / "ft" / "batch_onehot_map.json").read_text())
    for name, j in batches.items():
        if name != "a0":
            torch.testing.assert_close(ours["batch_encoder.weight"][j], src["batch_encoder.weight"][["g1", "g2", "g3"].index(name)])
    for k, v in ours.items():
        if k not in ("pert_encoder.0.weight", "batch_encoder.weight"):
            torch.testing.assert_close(v, src[k], msg=k)

    run = load_run(tmp_path / "ft", device="cpu")
    io, meta = arc_forward()
    keep = [i for i, p in enumerate(meta["set_perts"]) if p != "CDK1"]
    pred = predict_named(run, io["basal"][keep], [meta["set_perts"][i] for i in keep],
                         [meta["batch_names"][i] for i in keep])
    torch.testing.assert_close(pred, io["pred"][keep], atol=1e-5, rtol=1e-5)


def test_positional_loading_is_what_went_wrong(tmp_path, capsys):
    """Same names, another order: by position (the old behaviour, now an explicit opt-in) every name reads another
    perturbation's column and the predictions differ from arc-state's; by name they are equal."""
    import anndata as ad

    a = ad.read_h5ad(FIX / "data" / "screen.h5ad")
    a.write_h5ad(tmp_path / "screen.h5ad")
    toml = tmp_path / "t.toml"
    toml.write_text(f'[datasets]\nscreen = "{tmp_path / "screen.h5ad"}"\n[training]\nscreen = "train"\n')
    from state_tx.predict import load_run

    io, meta = arc_forward()
    preds = {}
    for how in ("name", "position"):
        assert main(finetune_args(toml, tmp_path / how, CKPT, [f"model.kwargs.init_from_columns={how}"])) == 0
        run = load_run(tmp_path / how / "ft", device="cpu")
        preds[how] = predict_named(run, io["basal"], meta["set_perts"], meta["batch_names"])
    assert "checkpoint's column order" in capsys.readouterr().out
    torch.testing.assert_close(preds["name"], io["pred"], atol=1e-5, rtol=1e-5)
    assert (preds["position"] - io["pred"]).abs().max() > 1e-2


def test_init_from_without_the_source_maps_is_an_error_unless_position(new_screen, tmp_path, capsys):
    bare = tmp_path / "bare" / "final.ckpt"
    bare.parent.mkdir()
    shutil.copy(CKPT, bare)
    assert main(finetune_args(new_screen, tmp_path / "o1", bare)) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no pert one-hot map beside the checkpoint" in err
    assert "init_from_columns=position" in err and not (tmp_path / "o1").exists()
    assert main(finetune_args(new_screen, tmp_path / "o2", bare, ["model.kwargs.init_from_columns=position"])) == 0
    assert main(finetune_args(new_screen, tmp_path / "o3", bare, ["model.kwargs.init_from_columns=order"])) != 0
    assert "choose name" in capsys.readouterr().err


def test_unsupported_arc_state_models_are_refused_by_name():
    from ftcore.errors import UserError

    from state_tx.arc_state import arc_model_config

    hp = dict(torch.load(CKPT, weights_only=True)["hyper_parameters"])
    arc_model_config(hp, "x")
    for change, phrase in (({"transformer_backbone_key": "GPT2"}, "GPT2"), ({"confidence_token": True}, "confidence"),
                           ({"transformer_backbone_kwargs": {**hp["transformer_backbone_kwargs"],
                                                            "bidirectional_attention": False}}, "causal")):
        with pytest.raises(UserError, match=phrase):
            arc_model_config({**hp, **change}, "x")
