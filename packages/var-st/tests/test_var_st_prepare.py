"""Validation once, at the edge: `var-st train` / predict / evaluate check everything in cli.prepare_train /
prepare_inference, read each checkpoint once, and only the CLI names flags (the model layer does not)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import ftcore.checkpoint
from ftcore.errors import UserError
from var_st.cli import main
from var_st.config import RunSettings, VARConfig, VQVAEConfig
from var_st.model import TwoStageVARST

REPO = Path(__file__).resolve().parents[3]
CORPUS = REPO / "tests" / "bad_inputs" / "var-st"
SRC = Path(__file__).resolve().parents[1] / "src" / "var_st"
MODEL_LAYER = ("model.py", "vqvae.py", "transformer.py", "config.py")
FLAG = re.compile(r"--[a-z]")
VQ = VQVAEConfig(vocab_size=16, embed_dim=8, hidden_dim=16, coarse_scales=(1, 2), reservoir_size=64)
VAR = VARConfig(vocab_size=16, embed_dim=16, num_heads=2, num_layers=1, feedforward_dim=32, histology_dim=12,
                condition_embed_dim=16, max_sequence_length=64)
G = 6


def _raised_texts(path: Path) -> list[tuple[int, str]]:
    """The string pieces of every `raise` statement of a module (f-string parts included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for sub in ast.walk(node.exc):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    found.append((node.lineno, sub.value))
    return found


@pytest.mark.parametrize("name", MODEL_LAYER)
def test_model_layer_raises_name_no_command_line_flag(name):
    texts = _raised_texts(SRC / name)
    assert texts or name == "vqvae.py"  # the scan sees the messages (vqvae.py has few)
    flagged = [(line, text) for line, text in texts if FLAG.search(text)]
    assert not flagged, f"{name} raises errors naming CLI flags: {flagged}"


def test_the_scan_would_see_a_flag(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text('def f(n):\n    raise ValueError(f"use the same --num_genes {n} as stage 1")\n')
    assert any(FLAG.search(t) for _, t in _raised_texts(bad))


def _stage1_file(tmp_path) -> Path:
    torch.manual_seed(0)
    model = TwoStageVARST(G, VQ, VAR, current_stage=1)
    model.gene_names = [f"g{i}" for i in range(G)]
    path = tmp_path / "stage1.ckpt"
    model.save_stage_checkpoint(path, stage=1)
    return path


def test_model_layer_errors_are_plain_and_flag_free(tmp_path):
    stage1 = _stage1_file(tmp_path)
    errors = []
    for call in (lambda: TwoStageVARST.load_complete_model(stage1),
                 lambda: TwoStageVARST(G + 1, VQ, VAR).set_training_stage(2, stage1_ckpt_path=stage1)):
        with pytest.raises(UserError) as info:
            call()
        errors.append(str(info.value))
    plain = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(2)}, plain)
    for call in (lambda: TwoStageVARST.from_stage1(plain), lambda: TwoStageVARST(G, VQ, VAR).load_stage1(plain)):
        with pytest.raises(UserError) as info:
            call()
        errors.append(str(info.value))
    assert "stage-1 (VQ-VAE only)" in errors[0] and "genes" in errors[1]
    assert all("not a var-st stage-1 checkpoint" in e for e in errors[2:])
    assert not [e for e in errors if FLAG.search(e)], errors


def test_the_cli_keeps_the_flag_wording(tmp_path, capsys):
    stage1 = _stage1_file(tmp_path)
    code = main(["predict", "--checkpoint", str(stage1), "--dataset", str(CORPUS / "good.h5ad"),
                 "--output", str(tmp_path / "p.h5ad"), "--gpus", "0"])
    err = capsys.readouterr().err
    assert code == 2 and f"train stage 2 with --stage1_ckpt {stage1}" in err
    assert main(["info", str(stage1)]) == 2
    assert "--stage1_ckpt" in capsys.readouterr().err
    assert not (tmp_path / "p.h5ad").exists()


@pytest.fixture
def count_reads(monkeypatch):
    """-> {path name: times ftcore.checkpoint.read_checkpoint read it} (every reader imports it from there)."""
    reads: dict[str, int] = {}
    real = ftcore.checkpoint.read_checkpoint

    def counting(path, *args, **kwargs):
        reads[Path(path).name] = reads.get(Path(path).name, 0) + 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ftcore.checkpoint, "read_checkpoint", counting)
    return reads


def test_stage2_reads_the_stage1_file_once(tmp_path, capsys, count_reads):
    out = tmp_path / "logs"
    argv = ["train", "--dataset", str(CORPUS / "good.h5ad"), "--config", str(CORPUS / "tiny.yaml"), "--epochs", "1",
            "--log_dir", str(out), "--gpus", "0", "--training_stage", "2", "--stage1_ckpt",
            str(CORPUS / "tiny_stage1.ckpt")]
    assert main(argv) == 0, capsys.readouterr().err
    assert count_reads == {"tiny_stage1.ckpt": 1, "best_var.ckpt": 1}  # and the best stage-2 weights, restored once
    assert (out / "good" / "TWO_STAGE_VAR_ST" / "complete_model.ckpt").is_file()
    capsys.readouterr()
    count_reads.clear()  # a refused stage 2 (another --num_genes) also read the file once, and wrote nothing
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(argv + ["--num_genes", "10"]) == 2
    assert "--num_genes 10, but --stage1_ckpt" in capsys.readouterr().err
    assert count_reads == {"tiny_stage1.ckpt": 1}
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_predict_reads_the_complete_model_once(tmp_path, capsys, count_reads):
    assert main(["predict", "--checkpoint", str(CORPUS / "tiny_complete.ckpt"), "--dataset", str(CORPUS / "good.h5ad"),
                 "--output", str(tmp_path / "p.h5ad"), "--gpus", "0"]) == 0, capsys.readouterr().err
    assert count_reads == {"tiny_complete.ckpt": 1}


def test_run_settings_are_a_dataclass_recorded_as_before(tmp_path, capsys):
    from var_st.cli import build_parser, prepare_train

    args = build_parser().parse_args(["train", "--dataset", str(CORPUS / "good.h5ad"), "--config", str(CORPUS / "tiny.yaml"),
                                      "--num_genes", "12", "--epochs", "1", "--log_dir", str(tmp_path), "--gpus", "0",
                                      "--lr", "3e-3"])
    job = prepare_train(args)
    assert isinstance(job.run, RunSettings) and (job.run.epochs, job.run.lr, job.run.device) == (1, 3e-3, "cpu")
    assert not (tmp_path / "good").exists()  # prepared: nothing written
    assert list(job.stage_run.config["run"]) == [  # run_config.yaml's `run`, keys in the order of before
        "epochs", "batch_size", "lr", "max_steps", "patience", "seed", "device", "progress", "compile"]
    assert RunSettings.of({"epochs": 2, "batch_size": 4, "lr": 1e-3}) == RunSettings(2, 4, 1e-3)


def test_run_settings_pass_further_trainer_fields_as_the_mapping_api_did(tmp_path):
    """Before the dataclass, any TrainConfig field in the run mapping reached the Trainer (the probe harness and the
    README's round-2 commands give weight_decay and precision); a misspelt one is an error, never dropped."""
    from ftcore.errors import UserError
    from var_st.train import _train_config

    run = RunSettings.of({"epochs": 2, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.1, "precision": "fp32"})
    assert run.trainer == {"weight_decay": 0.1, "precision": "fp32"}
    cfg = _train_config(tmp_path, run, 64)
    assert (cfg.weight_decay, cfg.precision, cfg.lr, cfg.warmup_steps) == (0.1, "fp32", 1e-3, 16)
    assert _train_config(tmp_path, RunSettings(2, 4, 1e-3), 64).weight_decay == 0.01  # TrainConfig's default
    assert "trainer" not in RunSettings(2, 4, 1e-3).record() and run.record()["trainer"] == run.trainer
    with pytest.raises(UserError, match="weight_decay"):
        RunSettings.of({"epochs": 2, "batch_size": 4, "lr": 1e-3, "weight_dcay": 0.1})
