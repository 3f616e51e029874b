"""torchrun with 2 gloo processes on the CPU: stage 1 (with dead-code restarts) leaves identical
parameters on both ranks, and rank 0 alone writes the run's files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = '''
import os, sys, torch
import var_st.train as T
from var_st.cli import main
fit = T.Trainer.fit
def checked_fit(self):
    result = fit(self)
    flat = torch.cat([p.detach().flatten() for p in self.model.parameters()])
    torch.save(flat, os.path.join(os.environ["VAR_ST_DDP_OUT"], f"params_rank{os.environ['RANK']}.pt"))
    return result
T.Trainer.fit = checked_fit
sys.exit(main(sys.argv[1:]))
'''


def test_two_process_gloo_run_keeps_replicas_identical(tiny_h5ad, tiny_config, tiny, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VAR_ST_NO_PROGRESS": "1", "VAR_ST_DDP_OUT": str(tmp_path)}
    torchrun = Path(sys.executable).with_name("torchrun")
    args = tiny.train_args(tiny_h5ad, tiny_config, tmp_path / "logs", stage=1, epochs=3)
    args[args.index("--batch_size") + 1] = "8"
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script), *args],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = (torch_load(tmp_path / f"params_rank{r}.pt") for r in (0, 1))
    assert a.shape == b.shape and bool((a == b).all())
    assert "dead_codes_restarted" in out.stdout and out.stdout.count("stage 1 done") == 1  # rank 0 reports
    assert (tmp_path / "logs" / "tiny" / "TWO_STAGE_VAR_ST" / "stage1_vqvae" / "best_vqvae.ckpt").exists()


def torch_load(path):
    import torch

    return torch.load(path, weights_only=True)
