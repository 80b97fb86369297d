"""``benchmarks/device_check.sh``: its dry run (CPU, tiny sizes) runs every piece of the GPU check; without
``--dry-run`` and without CUDA it refuses in one line. Real processes, real files."""

from __future__ import annotations

import subprocess

import pytest
import torch
from conftest import REPO, subprocess_env

SCRIPT = REPO / "benchmarks" / "device_check.sh"
STEPS = ("cuda-tests", "equivalence", "train-amp", "bench-predict", "bench-train")


def test_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    lines = {
        line.split()[0]: line for line in proc.stdout.splitlines() if line.split()[:1] and line.split()[0] in STEPS
    }
    assert set(lines) == set(STEPS) and all(" PASS " in line for line in lines.values())
    assert "equivalence: SAME" in lines["equivalence"] and "mixed precision" in lines["train-amp"]
    assert "speed-up" in lines["bench-predict"] and "ratio ours/baseline" in lines["bench-train"]
    assert "device check: PASS (5/5 steps)" in proc.stdout and "dry run" in proc.stdout
    assert all((out / f"{step}.log").stat().st_size > 0 for step in STEPS)
    assert "ceiling (GFLOP/s" in (out / "bench-predict.log").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses_in_one_line(tmp_path):
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "CUDA is not available" in proc.stderr
    bad = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown option '--fast'" in bad.stderr
