"""CLI end to end on tiny sizes: train (LoRA from a GET checkpoint) -> evaluate, and the opt-in."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from get_yeast.cli import main
from get_yeast.config import packaged_config

TINY_MODEL = str(packaged_config("yeast_model_tiny.yaml"))  # what the train_args fixture passes


class NotInert:
    """Any class outside the core's allow-list: unpickling it would import and run code."""


def test_train_refuses_code_pickle_without_opt_in(tiny_csv, get_checkpoint, tmp_path, capsys, train_args):
    """A checkpoint whose pickle holds an arbitrary class is refused without --trust-checkpoint (one line, nothing
    written). GET's own Namespace/numpy objects no longer need the opt-in (issue 19), so the file carries a class."""
    other = tmp_path / "with_object.pth"
    torch.save({"model": torch.load(get_checkpoint, weights_only=False)["model"], "extra": NotInert()}, other)
    out = tmp_path / "run"
    assert main(train_args(tiny_csv, out, "--checkpoint", str(other))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--trust-checkpoint" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_train_then_evaluate(tiny_csv, get_checkpoint, tmp_path, capsys, train_args):
    out = tmp_path / "run"
    assert main(train_args(tiny_csv, out, "--checkpoint", str(get_checkpoint), "--trust-checkpoint")) == 0
    printed = capsys.readouterr().out
    assert "Successfully loaded" in printed and "+ strand row" in printed
    for name in ("best_model.pth", "last.pth", "history.json", "training_curve.png", "metrics.json", "predictions.csv",
                 "pred_vs_true.png", "residuals.png", "condition_importance.json", "merged_model.safetensors", "splits.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"pearson", "spearman", "r2", "mse"} <= set(metrics) and metrics["steps"] > 0
    report = json.loads((out / "load_report.json").read_text())
    assert "encoder.blocks.0.attn.qkv.weight" in report["loaded"]
    # the base stayed frozen: the encoder weight in the trained checkpoint is the GET checkpoint's
    best = torch.load(out / "best_model.pth", weights_only=True)["model"]
    get = torch.load(get_checkpoint, weights_only=False)["model"]
    torch.testing.assert_close(best["base_model.model.encoder.blocks.0.attn.qkv.base_layer.weight"],
                               get["encoder.blocks.0.attn.qkv.weight"])

    ev = tmp_path / "eval"
    assert main(["evaluate", "--data", str(tiny_csv), "--model", str(out / "best_model.pth"), "--output", str(ev),
                 "--device", "cpu"]) == 0
    for name in ("metrics.json", "predictions.csv", "pred_vs_true.png", "residuals.png", "condition_importance.json",
                 "condition_importance.png"):
        assert (ev / name).exists(), name
    m2 = json.loads((ev / "metrics.json").read_text())
    assert {"pearson", "spearman", "r2", "mse"} <= set(m2)
    imp = json.loads((ev / "condition_importance.json").read_text())
    assert {"medium", "temperature", "drug", "drug_log10_molar", "preculture_od600", "carbon_source"} <= set(imp)
    assert m2["evaluated_on"] == "test split" and m2["n_samples"] == metrics["n_samples"]
    assert m2["mse"] == pytest.approx(metrics["mse"], rel=1e-5)
    # the merged export predicts the same
    ev2 = tmp_path / "eval_merged"
    assert main(["evaluate", "--data", str(tiny_csv), "--model", str(out / "merged_model.safetensors"),
                 "--output", str(ev2), "--split", "test"]) == 0
    assert json.loads((ev2 / "metrics.json").read_text())["mse"] == pytest.approx(m2["mse"], rel=1e-4)
    # without --data: the data the run was trained on (run_config.json beside the model)
    ev3 = tmp_path / "eval_default_data"
    assert main(["evaluate", "--model", str(out / "best_model.pth"), "--output", str(ev3), "--set", "task.interpret=false"]) == 0
    assert json.loads((ev3 / "metrics.json").read_text())["mse"] == pytest.approx(m2["mse"], rel=1e-5)
    assert not (ev3 / "condition_importance.json").exists()


def test_copied_training_config_without_model_config(tmp_path, tiny_csv, capsys):
    """A user copies only yeast_training.yaml: its model_config (relative to the file) is missing -> the error
    says which key named it and how to fix it."""
    cfg = tmp_path / "yeast_training.yaml"
    shutil.copy(packaged_config("yeast_training.yaml"), cfg)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--data", str(tiny_csv), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert f"model_config: yeast_model.yaml in {cfg}" in err and "--model-config released|tiny" in err
    assert not out.exists()


def test_train_with_mlp_head(tmp_path, tiny_csv, train_args):
    """The configured two-layer head (region_model.head_hidden_dim) trains and evaluates from the CLI."""
    out = tmp_path / "run"
    assert main(train_args(tiny_csv, out, "--max-steps", "2", "--set", "task.interpret=false", "--from-scratch",
                           "--set", "model.region_model.head_hidden_dim=16")) == 0
    best = torch.load(out / "best_model.pth", weights_only=True)["model"]
    assert any(k.startswith("base_model.model.head_exp.head.2.lora_A") for k in best)
    assert main(["evaluate", "--data", str(tiny_csv), "--model", str(out / "merged_model.safetensors"),
                 "--output", str(tmp_path / "eval"), "--set", "task.interpret=false"]) == 0


def test_train_on_excel(tmp_path, tiny_frame, train_args):
    xlsx = tmp_path / "yeast.xlsx"
    tiny_frame.to_excel(xlsx, index=False)
    out = tmp_path / "run"
    args = train_args(xlsx, out, "--max-steps", "2", "--set", "task.interpret=false", "--from-scratch")
    args[args.index(TINY_MODEL)] = "tiny"  # the packaged size by name
    assert main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2


def test_embedded_default_data(tmp_path, monkeypatch):
    """`train` without --data: the embedded generator and the tiny GET checkpoint (trusted: made here)."""
    from get_yeast import demo

    real = demo.pretrain_tiny_get
    monkeypatch.setattr(demo, "pretrain_tiny_get", lambda path, seed=0, progress=True: real(path, seed, progress=False))
    out = tmp_path / "run"
    assert main(["train", "--output", str(out), "--max-steps", "3", "--no-progress", "--set", "task.interpret=false"]) == 0
    assert (out / "embedded" / "checkpoint-799.pth").exists() and (out / "embedded" / "yeast_demo.csv").exists()
    assert len(json.loads((out / "load_report.json").read_text())["loaded"]) > 0


@pytest.mark.parametrize("command, flags", [
    ("train", ("--config", "--data", "--output", "--device", "--trust-checkpoint")),
    ("evaluate", ("--config", "--data", "--model", "--output", "--device")),
])
def test_help_lists_the_seed_flags(capsys, command, flags):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0
    assert all(flag in text for flag in flags), [f for f in flags if f not in text]


def test_no_arguments_runs_the_demo(tmp_path, monkeypatch, get_layout, tiny_model_cfg, capsys):
    """`get-yeast` alone: embedded data -> with-conditions and condition-blind runs -> evaluate -> comparison.json.
    The generated assets are made small here (the real demo's sizes are measured in the README)."""
    from get_yeast import demo
    from get_yeast.synthetic import write_get_checkpoint

    real_data = demo.write_demo_data
    monkeypatch.setattr(demo, "write_demo_data",
                        lambda path, seed=0: real_data(path, seed, n_conditions=10, n_windows=2, n_regions=6))
    monkeypatch.setattr(demo, "pretrain_tiny_get",
                        lambda path, seed=0, progress=True: write_get_checkpoint(path, get_layout(tiny_model_cfg)))
    monkeypatch.setattr("get_yeast.cli.DEFAULT_OUTPUT", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    real_load = demo.load_training_config  # one epoch, CPU: the wiring, not the learning
    monkeypatch.setattr(demo, "load_training_config",
                        lambda path, over: real_load(path, [*over, "training.epochs=1", "training.device=cpu",
                                                            "task.permutation_repeats=1"]))
    assert main([]) == 0
    out = tmp_path / "runs"
    comparison = json.loads((out / "comparison.json").read_text())["held_out_conditions"]
    keys = {"pearson", "spearman", "r2", "mse", "condition_response_pearson"}
    assert set(comparison["with_conditions"]) == set(comparison["condition_blind"]) == keys
    assert comparison["with_conditions"] != comparison["condition_blind"]
    # it ends with the headline metrics beside the condition-blind baseline, the numbers of comparison.json
    lines = capsys.readouterr().out.splitlines()
    table = lines[[i for i, ln in enumerate(lines) if ln.startswith("held-out conditions")][-1] + 1:]
    assert len(table) == len(keys) + 1 and table[-1].startswith("outputs in ")
    for line in table[:-1]:
        name, with_c, blind = line.split()
        assert [with_c, blind] == [f"{comparison[w][name]:.3f}" for w in ("with_conditions", "condition_blind")], line
    for run in ("yeast_lora_finetune", "condition_blind", "yeast_lora_eval"):
        assert (out / run / "metrics.json").exists(), run
    assert (out / "yeast_lora_eval" / "condition_importance.json").exists()
    assert not (out / "condition_blind" / "condition_importance.json").exists()  # nothing to permute
    assert json.loads((out / "yeast_lora_finetune" / "load_report.json").read_text())["loaded"]


def test_console_script_reports_bad_input(tmp_path):
    """The installed `get-yeast` script: one error line, exit 2."""
    exe = shutil.which("get-yeast") or str(Path(sys.executable).parent / "get-yeast")
    res = subprocess.run([exe, "train", "--data", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2 and res.stderr.startswith("error:") and "does not exist" in res.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_on_gpu_bf16(tiny_csv, get_checkpoint, tmp_path, train_args):
    out = tmp_path / "run"
    args = train_args(tiny_csv, out, "--checkpoint", str(get_checkpoint), "--trust-checkpoint", "--device", "cuda",
                      "--set", "training.precision=bf16")
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] > 0 and metrics["mse"] == metrics["mse"]  # finite, not NaN


def test_lora_without_checkpoint_is_refused(tiny_csv, tmp_path, capsys, train_args):
    """No checkpoint under LoRA would train adapters over a random frozen backbone: one error line, exit 2."""
    out = tmp_path / "run"
    assert main(train_args(tiny_csv, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert "--checkpoint" in err and "--from-scratch" in err
    assert not out.exists() or not any(out.rglob("*"))


@pytest.mark.parametrize("how", [("--from-scratch",), ("--set", "pretrained.from_scratch=true")])
def test_from_scratch_said_explicitly_trains(tiny_csv, tmp_path, capsys, train_args, how):
    out = tmp_path / "run"
    assert main(train_args(tiny_csv, out, "--max-steps", "1", "--set", "task.interpret=false", *how)) == 0
    assert "from scratch: no pretrained weights" in capsys.readouterr().out
    assert not (out / "load_report.json").exists()


def test_full_finetuning_without_checkpoint_is_not_refused(tiny_csv, tmp_path, train_args):
    """Nothing is frozen without LoRA: training every weight from its initialisation is what it says."""
    out = tmp_path / "run"
    assert main(train_args(tiny_csv, out, "--max-steps", "1", "--set", "task.interpret=false",
                           "--set", "lora.enabled=false")) == 0


def test_checkpoint_and_from_scratch_together_is_an_error(tiny_csv, get_checkpoint, tmp_path, capsys, train_args):
    assert main(train_args(tiny_csv, tmp_path / "run", "--checkpoint", str(get_checkpoint), "--from-scratch")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "drop one" in err


def test_copy_config_then_edit_then_train(tiny_csv, tmp_path, capsys):
    """The README's workflow (issue 17): copy the packaged YAMLs out, edit them, train with the copy."""
    configs = tmp_path / "configs"
    assert main(["copy-config", str(configs)]) == 0
    for name in ("yeast_training.yaml", "yeast_model.yaml", "yeast_model_tiny.yaml"):
        assert (configs / name).read_text() == packaged_config(name).read_text(), name
    assert "next: edit" in capsys.readouterr().out
    training = configs / "yeast_training.yaml"
    text = training.read_text()
    edited = (text.replace("model_config: yeast_model.yaml", "model_config: yeast_model_tiny.yaml")
              .replace("  epochs: 30\n", "  epochs: 1\n").replace("  batch_size: 16 ", "  batch_size: 4 "))
    assert edited.count("yeast_model_tiny.yaml") == 1 and "epochs: 1\n" in edited
    training.write_text(edited)
    # A second copy does not overwrite the user's edit: one line, exit 2, the file as edited.
    assert main(["copy-config", str(configs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and training.read_text() == edited
    out = tmp_path / "run"
    assert main(["train", "--config", str(training), "--data", str(tiny_csv), "--output", str(out), "--from-scratch",
                 "--device", "cpu", "--no-progress", "--set", "task.permutation_repeats=1"]) == 0
    run = json.loads((out / "run_config.json").read_text())
    assert run["training"]["training"]["epochs"] == 1 and run["training"]["training"]["batch_size"] == 4
    assert run["model"]["region_model"]["embed_dim"] == 32  # the tiny model the edited file names
    assert main(["copy-config", str(configs), "--overwrite"]) == 0
    assert training.read_text() == text


def test_feature_count_error_names_the_key_that_sets_it(tiny_csv, tmp_path, capsys):
    """The packaged training config names the released model (283 features); a 24-feature table is refused with the
    key and the ways to set it, not just 'use matching motif columns'."""
    out = tmp_path / "run"
    assert main(["train", "--config", str(packaged_config("yeast_training.yaml")), "--data", str(tiny_csv),
                 "--output", str(out), "--from-scratch", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expects num_features=283" in err[0]
    for phrase in ("region_model.num_features: 24", "--model-config", "get-yeast copy-config",
                   "--set model.region_model.num_features=24"):
        assert phrase in err[0], phrase
    assert not out.exists()
