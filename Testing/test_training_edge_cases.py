"""Training edge cases of issue 16 (items 10-13), each with real `gloresnet` processes on tiny cohorts:
a last batch of one, a refused start, an inner validation split that lost a class, a diverged model, the
thread count of a resumed run, SYNTHETIC in the output, and best_epoch counted from 1."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from GloResNetLib.cli import main
from GloResNetLib.errors import DatasetError
from GloResNetLib.training import train_cv
from GloResNetLib.training.folds import make_folds
from test_training_processes import oof_probabilities, read_until, start
from training_fixtures import read_manifest_rows, subprocess_env, tiny_cli_args, tiny_config, write_cohort


def cli(args: list[str], env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "GloResNetLib", *args],
        capture_output=True,
        text=True,
        env=env or subprocess_env(),
        timeout=timeout,
    )


def train_args(manifest: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return tiny_cli_args(manifest, out, cache, "--epochs", "1", *extra)


@pytest.fixture(scope="module")
def c13(tmp_path_factory):
    """13 volumes of 12 subjects (one infant with two sessions), alternating labels."""
    root = tmp_path_factory.mktemp("c13")
    return {"manifest": write_cohort(root / "cohort", n_subjects=12, two_sessions_every=100), "cache": root / "cache"}


def test_a_last_batch_of_one_is_folded_into_the_others_and_logged(c13, tmp_path):
    out = tmp_path / "run"
    proc = cli(train_args(c13["manifest"], out, c13["cache"], "--folds", "2", "--batch-size", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "train.log").read_text()
    notes = re.findall(
        r"fold (\d): (\d+) training volumes in batches of 2 would leave a batch of 1, .*? it is "
        r"folded into the other batches: (\d+) step\(s\) per epoch",
        log,
    )
    assert notes, log
    for fold, n, steps in notes:
        assert int(steps) == int(n) // 2 and int(n) % 2 == 1
        assert f"fold {fold}: {n} train / " in log


def test_inner_validation_split_keeps_both_classes_and_no_warning_reaches_the_bar(c13, tmp_path):
    # this cohort, 3 folds, seed 0: the former split held out only BI subjects in fold 0's validation set
    rows = read_manifest_rows(c13["manifest"])
    labels = [int(r["label"]) for r in rows]
    subjects = [r["subject"] for r in rows]
    for sp in make_folds(labels, subjects, 3, 0):
        assert {labels[i] for i in sp.train} == {0, 1} and {labels[i] for i in sp.val} == {0, 1}
    out = tmp_path / "run"
    proc = cli(train_args(c13["manifest"], out, c13["cache"], "--folds", "3", "--batch-size", "4"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]
    for k in range(3):
        res = json.loads((out / f"fold_{k}" / "result.json").read_text())
        assert min(res["class_weights"]) > 0
        assert all(math.isfinite(h["val_loss"]) and h["val_auc"] is not None for h in res["history"])


def test_too_few_subjects_for_a_two_class_validation_split_is_refused():
    labels, subjects = [0, 0, 1, 1, 1, 1], [f"s{i}" for i in range(6)]  # 2 folds: 1 no-BI subject to train on
    with pytest.raises(DatasetError, match=r"fold \d: its training part has 1 no-BI and 2 BI subject\(s\), too few"):
        make_folds(labels, subjects, 2, 0)


def test_a_diverged_model_is_never_selected(c13, tmp_path):
    from GloResNetLib.training.recipe import is_improvement

    assert not is_improvement(float("nan"), None) and not is_improvement(float("nan"), -1.0)
    assert not is_improvement(float("inf"), -1.0) and is_improvement(-0.5, -1.0) and is_improvement(-2.0, None)
    out = tmp_path / "run"
    proc = cli(
        train_args(
            c13["manifest"],
            out,
            c13["cache"],
            "--folds",
            "2",
            "--batch-size",
            "4",
            "--lr",
            "1e30",
            "--mixup-alpha",
            "0",
            "--epochs",
            "2",
        )
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("gloresnet:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and "was not finite in any of 2 epoch(s)" in lines[0]
    assert not (out / "fold_0" / "result.json").exists()
    assert "ERROR error: fold 0: the validation score" in (out / "train.log").read_text()


def test_a_refused_start_blocks_nothing_and_train_log_says_why(tmp_path, capsys):
    manifest = write_cohort(tmp_path / "cohort", n_subjects=8, two_sessions_every=100)  # 4 subjects per class
    out, cache = tmp_path / "run", tmp_path / "cache"
    refused = cli(train_args(manifest, out, cache, "--folds", "5"))
    assert refused.returncode == 2 and "at least 5 per class" in refused.stderr, refused.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["train.log"]
    assert "ERROR error: only 4 subject(s) with label 0 (no BI); 5-fold" in (out / "train.log").read_text()
    corrected = cli(train_args(manifest, out, cache, "--folds", "2"))
    assert corrected.returncode == 0, corrected.stderr[-2000:]
    assert (out / "bundle" / "metadata.json").is_file()
    # a start refused before any log: nothing is left at all
    bad_arch = main(train_args(manifest, tmp_path / "run2", cache, "--folds", "2", "--arch", "no_such_net"))
    assert bad_arch == 2 and "no_such_net" in capsys.readouterr().err
    assert not (tmp_path / "run2" / "config.json").exists()
    assert main(train_args(manifest, tmp_path / "run2", cache, "--folds", "2")) == 0


def test_resume_keeps_threads_synthetic_is_said_and_best_epoch_counts_from_1(tmp_path):
    manifest = write_cohort(tmp_path / "cohort", n_subjects=8, two_sessions_every=100, synthetic_marker=True)
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = tiny_cli_args(manifest, out, cache, "--folds", "2", "--epochs", "3", "--batch-size", "4", "--progress-json")
    first = start(args, tmp_path / "first.err")
    read_until(first, lambda e: e["event"] == "epoch")
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=120)
    assert first.returncode == 130
    env = dict(subprocess_env(), OMP_NUM_THREADS="2")  # torch would take 2 threads on its own
    resumed = cli(["train", "--resume", str(out)], env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the same numbers as an uninterrupted run with --num-threads 1 (2 threads sum in another order)
    baseline = train_cv(tiny_config(manifest, tmp_path / "baseline", cache, folds=2, epochs=3, batch_size=4))
    np.testing.assert_array_equal(oof_probabilities(out), oof_probabilities(baseline))
    assert json.loads((out / "config.json").read_text())["_num_threads"] == 1
    header = r"training run .*\(1 process\(es\), device cpu, (\d+) CPU thread\(s\)"
    headers = re.findall(header, (out / "train.log").read_text())
    assert headers == ["1", "1"]
    assert "WARNING: trained on SYNTHETIC data" in resumed.stderr
    assert "SYNTHETIC data: trained and tested on generated images" in resumed.stderr
    evaluated = cli(["evaluate", str(out)])
    assert evaluated.returncode == 0 and "SYNTHETIC data" in evaluated.stdout
    log = (out / "train.log").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    for k in range(2):
        res = json.loads((out / f"fold_{k}" / "result.json").read_text())
        logged = int(re.search(rf"fold {k} finished: best epoch (\d+);", log).group(1))
        starred = [int(m) for m in re.findall(rf"fold {k} epoch (\d+)/3: .* \*", log)]
        assert res["best_epoch"] == logged == starred[-1] == metrics["per_fold"][k]["best_epoch"]
        assert 1 <= res["best_epoch"] <= 3
