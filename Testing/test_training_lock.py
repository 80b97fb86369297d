"""One job per run folder (issue 16, item 1), with real processes and real signals.

A run is killed (SIGKILL) after its first checkpoint; a ``train --resume`` takes the dead job's stale lock
over and is frozen (SIGSTOP) while it holds the folder; a second ``train --resume``, and the Slicer module's
Resume (``slicer_side.training_jobs.resume_training``), must refuse with exit 2 naming the first; the first then
finishes alone. The same for ``pretrain-age``.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
from test_training_processes import read_until, start
from training_fixtures import TINY_WIDTHS, cli, one_error_line, tiny_cli_args, write_cohort

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock")
    return {"root": root, "manifest": write_cohort(root / "cohort", n_subjects=12), "cache": root / "cache"}


def test_two_resumes_on_one_run_folder_one_refuses_naming_the_holder(cohort, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_cli_args(
        cohort["manifest"],
        run_dir,
        cohort["cache"],
        "--epochs",
        "3",
        "--folds",
        "2",
        "--batch-size",
        "4",
        "--progress-json",
    )
    first = start(args, tmp_path / "first.err")
    read_until(first, lambda e: e["event"] == "epoch")
    first.kill()  # SIGKILL after the first last.pt: its lock file stays, naming a dead PID
    first.wait()
    assert json.loads((run_dir / ".job.lock").read_text())["pid"] == first.pid

    holder = start(["train", "--resume", str(run_dir), "--progress-json"], tmp_path / "holder.err")
    try:
        read_until(holder, lambda e: e["event"] == "start")
        os.kill(holder.pid, signal.SIGSTOP)  # frozen while it holds the folder
        lock = json.loads((run_dir / ".job.lock").read_text())
        assert lock["pid"] == holder.pid and lock["job"] == "gloresnet train --resume"

        second = cli(["train", "--resume", str(run_dir)])
        line = one_error_line(second)
        assert f"in use by gloresnet train --resume (PID {holder.pid} on host" in line and str(run_dir) in line
        assert (run_dir / "fold_0" / "last.pt").is_file()  # the refused job touched nothing
        assert not (run_dir / "fold_0" / "result.json").exists()

        slicer = pytest.importorskip("GloResNetLib.slicer_side.training_jobs")
        job = slicer.resume_training(run_dir, device="cpu", env={"OMP_NUM_THREADS": "1"}, num_threads=1)
        job.wait(timeout=240)
        assert job.outcome == "failed" and job.process.returncode == 2
        message = job.failure_message()
        assert f"in use by gloresnet train --resume (PID {holder.pid} on host" in message, message
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    for _ in holder.stdout:
        pass
    assert holder.wait(timeout=240) == 0, (tmp_path / "holder.err").read_text()
    log = (run_dir / "train.log").read_text()
    assert f"took over the stale lock of gloresnet train (PID {first.pid} on host" in log
    assert "no longer running" in log
    assert not (run_dir / ".job.lock").exists() and (run_dir / "bundle" / "metadata.json").is_file()
    results = [json.loads((run_dir / f"fold_{k}" / "result.json").read_text()) for k in range(2)]
    assert [r["epochs_run"] for r in results] == [3, 3]


def test_a_fold_job_and_a_whole_run_job_exclude_each_other(cohort, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_cli_args(
        cohort["manifest"],
        run_dir,
        cohort["cache"],
        "--epochs",
        "2",
        "--folds",
        "2",
        "--batch-size",
        "4",
        "--progress-json",
        "--fold",
        "0",
    )
    fold0 = start(args, tmp_path / "fold0.err")
    try:
        read_until(fold0, lambda e: e["event"] == "start")
        os.kill(fold0.pid, signal.SIGSTOP)
        assert (run_dir / ".job_fold_0.lock").is_file()
        same_fold = cli([a for a in args if a != "--progress-json"])
        assert f"in use by gloresnet train --fold 0 (PID {fold0.pid}" in one_error_line(same_fold)
        whole = cli(["train", "--resume", str(run_dir)])
        assert f"(PID {fold0.pid} on host" in one_error_line(whole) and "holds fold 0 of" in whole.stderr
        assert not (run_dir / ".job.lock").exists()  # the refused whole-run job let its own lock go
    finally:
        os.kill(fold0.pid, signal.SIGCONT)
        fold0.kill()
        fold0.wait()


def test_pretrain_age_refuses_a_second_job_on_its_folder(cohort, tmp_path):
    out = tmp_path / "age"
    args = [
        "pretrain-age",
        "--manifest",
        str(cohort["manifest"]),
        "--out",
        str(out),
        "--cache-dir",
        str(cohort["cache"]),
        "--size",
        "16",
        "--folds",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--widths",
        ",".join(map(str, TINY_WIDTHS)),
        "--no-tensorboard",
        "--num-threads",
        "1",
    ]
    holder = start([*args, "--progress-json"], tmp_path / "holder.err")
    try:
        read_until(holder, lambda e: e["event"] == "start")
        os.kill(holder.pid, signal.SIGSTOP)
        line = one_error_line(cli(args))
        assert f"in use by gloresnet pretrain-age (PID {holder.pid} on host" in line
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait()
