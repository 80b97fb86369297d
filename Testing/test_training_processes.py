"""Real training processes: SIGKILL + resume, Ctrl-C (SIGINT) clean stop, a stop mid-epoch, 2-process DDP."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from GloResNetLib.cli import main
from GloResNetLib.training import train_cv
from GloResNetLib.training.stopping import TrainingStopped
from training_fixtures import subprocess_env, tiny_cli_args, tiny_config, write_cohort

EPOCHS = 6
EXTRA = ["--epochs", str(EPOCHS), "--batch-size", "4"]  # 2 steps per epoch: a stop can fall mid-epoch
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def oof_probabilities(run_dir) -> np.ndarray:
    with open(run_dir / "oof.csv", newline="") as f:
        return np.array([float(r["probability"]) for r in csv.DictReader(f)])


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted in-process run that the interrupted ones must reproduce."""
    root = tmp_path_factory.mktemp("proc")
    manifest = write_cohort(root / "cohort", n_subjects=12)
    cache = root / "cache"
    run_dir = train_cv(tiny_config(manifest, root / "baseline", cache, epochs=EPOCHS, batch_size=4))
    return {"root": root, "manifest": manifest, "cache": cache, "oof": oof_probabilities(run_dir)}


def start(args: list[str], stderr_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "GloResNetLib", *args],
        stdout=subprocess.PIPE,
        stderr=open(stderr_path, "w"),
        text=True,
        env=subprocess_env(),
    )


def read_until(proc: subprocess.Popen, predicate, timeout: float = 240.0) -> list[dict]:
    """Read JSON events from the process until ``predicate(event)``; fail on timeout or early exit."""
    events: list[dict] = []
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith("{"):
                events.append(json.loads(line))
                if predicate(events[-1]):
                    return events
    finally:
        timer.cancel()
    raise AssertionError(f"process ended before the expected event; last events {events[-3:]}")


def test_sigkill_mid_run_then_resume_completes_and_keeps_finished_folds(baseline, tmp_path):
    out = tmp_path / "run"
    args = tiny_cli_args(baseline["manifest"], out, baseline["cache"], *EXTRA, "--progress-json")
    proc = start(args, tmp_path / "stderr1.txt")
    read_until(proc, lambda e: e["event"] == "epoch" and e["fold"] == 1)  # fold 1 has a checkpoint on disk
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    fold0 = out / "fold_0" / "result.json"
    kept = (fold0.read_bytes(), fold0.stat().st_mtime_ns)
    last = torch.load(out / "fold_1" / "last.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] >= 1 and not (out / "fold_1" / "result.json").exists()
    assert not (out / "metrics.json").exists()

    proc = start(["train", "--resume", str(out), "--progress-json"], tmp_path / "stderr2.txt")
    events = read_until(proc, lambda e: e["event"] in ("done", "error"))
    assert proc.wait(timeout=60) == 0, (tmp_path / "stderr2.txt").read_text()[-2000:]
    assert events[-1]["event"] == "done" and (out / "bundle" / "metadata.json").is_file()
    epochs = [e for e in events if e["event"] == "epoch"]
    assert epochs[0]["fold"] == 1 and epochs[0]["epoch"] >= last["epoch"]  # continued, not restarted
    assert not [e for e in events if e.get("fold") == 0]
    assert (fold0.read_bytes(), fold0.stat().st_mtime_ns) == kept
    assert "resumed from last.pt" in (out / "train.log").read_text()
    np.testing.assert_allclose(oof_probabilities(out), baseline["oof"], atol=1e-5)


def test_sigint_stops_cleanly_with_a_checkpoint_then_resumes(baseline, tmp_path):
    out = tmp_path / "run"
    args = tiny_cli_args(baseline["manifest"], out, baseline["cache"], *EXTRA, "--progress-json")
    proc = start(args, tmp_path / "stderr.txt")
    read_until(proc, lambda e: e["event"] == "epoch")
    proc.send_signal(signal.SIGINT)
    events = read_until(proc, lambda e: e["event"] in ("stopped", "done", "error"), timeout=120)
    assert proc.wait(timeout=60) == 130
    stopped = events[-1]
    assert stopped["event"] == "stopped" and stopped["run_dir"] == str(out)
    fold = stopped["fold"]
    assert (out / f"fold_{fold}" / "last.pt").is_file()
    err = (tmp_path / "stderr.txt").read_text()
    assert "--resume" in err and "Traceback" not in err
    assert main(["train", "--resume", str(out), "--num-threads", "1"]) == 0
    np.testing.assert_allclose(oof_probabilities(out), baseline["oof"], atol=1e-5)


def test_stop_mid_epoch_and_resume_is_exact(baseline, tmp_path):
    out = tmp_path / "run"
    stop = threading.Event()

    def on_event(e: dict) -> None:
        if e["event"] == "step" and e["fold"] == 0 and e["epoch"] == 1 and e["step"] == 0:
            stop.set()

    events: list[dict] = []
    cfg = tiny_config(baseline["manifest"], out, baseline["cache"], epochs=EPOCHS, batch_size=4)
    with pytest.raises(TrainingStopped):
        train_cv(cfg, progress=lambda e: (events.append(e), on_event(e)), stop=stop)
    assert events[-1] == {"event": "stopped", "run_dir": str(out), "fold": 0, "epoch": 1}
    ck = torch.load(out / "fold_0" / "last.pt", map_location="cpu", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (1, 1)  # saved after the first of two steps of epoch 1
    resumed = train_cv(
        tiny_config(baseline["manifest"], out, baseline["cache"], epochs=EPOCHS, batch_size=4, resume=str(out))
    )
    np.testing.assert_array_equal(oof_probabilities(resumed), baseline["oof"])


def test_two_process_ddp_matches_single_process(baseline, tmp_path):
    """Same global batches, mixup pairs and flips; BatchNorm synchronised over ranks; the loss scaled so that
    DDP's gradient average is the single-process gradient. Only summation order differs, which Adam's first
    (sign-like) steps amplify for near-zero gradient elements: hence a tolerance, and few steps."""
    single = train_cv(tiny_config(baseline["manifest"], tmp_path / "single", baseline["cache"]))
    out = tmp_path / "ddp"
    args = tiny_cli_args(baseline["manifest"], out, baseline["cache"], "--progress-json")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "GloResNetLib",
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(threads=1), timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    events = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [e["event"] for e in events].count("start") == 1  # only rank 0 reports
    assert events[-1]["event"] == "done"
    assert "2 process(es)" in (out / "train.log").read_text()
    np.testing.assert_allclose(oof_probabilities(out), oof_probabilities(single), atol=0.01)
    a = json.loads((single / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert b["summary"]["auc"]["mean"] == pytest.approx(a["summary"]["auc"]["mean"], abs=0.1)
