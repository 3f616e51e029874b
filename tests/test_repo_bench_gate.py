"""The benchmark regression gate fails on a real 2x slowdown and passes on noise and slower machines."""

from __future__ import annotations

import importlib.util
import json
import random

import pytest

from repo_helpers import ROOT

spec = importlib.util.spec_from_file_location("check_regression", ROOT / "benchmarks" / "check_regression.py")
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)

BASE = {"test_reference_memory": 9e-3, "test_reference_compute": 4e-3, "test_reference_python": 2e-3,
        "test_read_state_dict_mindspore": 11e-3, "test_keymap_apply": 7e-3, "test_trainer_step": 5e-3,
        "test_read_mindspore_views": 1.2e-3}
KIND = {"test_read_state_dict_mindspore": "memory", "test_trainer_step": "compute"}


def run_of(medians: dict[str, float], rng: random.Random | None = None, noise: float = 0.0) -> dict[str, dict]:
    """Stats of a synthetic run; each statistic independently scaled by a factor in [1/(1+noise), 1+noise]."""
    def jitter() -> float:
        return rng.uniform(1 / (1 + noise), 1 + noise) if rng else 1.0

    return {k: {"median": m * jitter(), "min": 0.9 * m * jitter(), "calibrate_with": KIND.get(k, "python")}
            for k, m in medians.items()}


def write(path, stats: dict[str, dict]) -> str:
    path.write_text(json.dumps({"benchmarks": [
        {"name": k, "stats": {"median": v["median"], "min": v["min"]}, "extra_info": {"calibrate_with": v["calibrate_with"]}}
        for k, v in stats.items()]}))
    return str(path)


def test_committed_baseline_is_a_benchmark_run_with_the_reference():
    baseline = check.load(ROOT / "benchmarks" / "baseline" / "cpu-2core.json")
    kinds = {v["calibrate_with"] for k, v in baseline.items() if not k.startswith(check.REFERENCE)}
    assert all(check.REFERENCE + kind in baseline for kind in kinds) and len(baseline) >= 8


def test_identical_run_passes():
    rows, regressed = check.compare(run_of(BASE), run_of(BASE))
    assert regressed == [] and all(abs(r["median_ratio"] - 1) < 1e-9 for r in rows)


@pytest.mark.parametrize("seed", range(50))
def test_two_times_slower_benchmark_fails_despite_10pct_noise(seed):
    rng = random.Random(seed)
    slow = dict(BASE, test_keymap_apply=2 * BASE["test_keymap_apply"])
    _, regressed = check.compare(run_of(BASE), run_of(slow, rng, noise=0.10))
    assert regressed == ["test_keymap_apply"]


@pytest.mark.parametrize("seed", range(50))
def test_25pct_noise_passes(seed):
    rng = random.Random(seed)
    _, regressed = check.compare(run_of(BASE), run_of(BASE, rng, noise=0.25))
    assert regressed == []


def test_three_times_slower_machine_is_calibrated_away():
    _, regressed = check.compare(run_of(BASE), run_of({k: 3 * v for k, v in BASE.items()}))
    assert regressed == []


def test_each_benchmark_is_calibrated_by_its_own_resource():
    # neighbours eat memory bandwidth: memory-bound work 3x slower, the rest unchanged -> no regression
    busy = {k: 3 * v if k in ("test_reference_memory", "test_read_state_dict_mindspore") else v for k, v in BASE.items()}
    _, regressed = check.compare(run_of(BASE), run_of(busy))
    assert regressed == []
    # ... but a compute-bound benchmark 3x slower on the same run is a regression
    busy["test_trainer_step"] *= 3
    _, regressed = check.compare(run_of(BASE), run_of(busy))
    assert regressed == ["test_trainer_step"]


def test_cli_exit_codes(tmp_path, capsys):
    base = write(tmp_path / "base.json", run_of(BASE))
    ok = write(tmp_path / "ok.json", run_of(BASE))
    bad = write(tmp_path / "bad.json", run_of(dict(BASE, test_trainer_step=2.5 * BASE["test_trainer_step"])))
    assert check.main([base, ok]) == 0
    assert check.main([base, bad]) == 1
    assert "test_trainer_step" in capsys.readouterr().err
    target = tmp_path / "new" / "baseline.json"
    assert check.main(["--update", str(target), bad]) == 0 and check.load(target) == check.load(bad)


def test_missing_reference_is_an_error():
    x = {"x": {"median": 1, "min": 1, "calibrate_with": "memory"}}
    with pytest.raises(SystemExit):
        check.compare(x, x)
