"""Cross-validated training end to end on CPU (tiny shapes): run folder, events, metrics, bundle, seeds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from GloResNetLib.bundle import load_bundle
from GloResNetLib.cli import main
from GloResNetLib.inference import predict
from GloResNetLib.io import read_volume
from GloResNetLib.models import build_model
from GloResNetLib.training import TrainConfig, train_cv
from GloResNetLib.training.metrics import SUMMARY_METRICS
from training_fixtures import TINY_WIDTHS, make_volume, save_nifti, tiny_cli_args, tiny_config, write_cohort

EPOCH_KEYS = {
    "event",
    "fold",
    "epoch",
    "epochs",
    "train_loss",
    "val_loss",
    "val_auc",
    "val_accuracy",
    "lr",
    "fraction",
    "eta_s",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    return {"root": root, "manifest": write_cohort(root / "cohort", n_subjects=12), "cache": root / "cache"}


@pytest.fixture(scope="module")
def run(data):
    events: list[dict] = []
    cfg = tiny_config(data["manifest"], data["root"] / "run", data["cache"], tensorboard=True)
    run_dir = train_cv(cfg, progress=events.append)
    return {"dir": run_dir, "events": events, "cfg": cfg}


def read_oof(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_folder_holds_everything(run):
    d = run["dir"]
    for name in (
        "config.json",
        "dataset.json",
        "folds.json",
        "train.log",
        "metrics.json",
        "oof.csv",
        "roc.png",
        "learning_curves.png",
        "bundle/metadata.json",
    ):
        assert (d / name).is_file(), name
    for png in ("roc.png", "learning_curves.png"):
        data = (d / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    for k in range(3):
        fold = d / f"fold_{k}"
        assert {p.name for p in fold.iterdir()} == {"result.json", "predictions.csv", "model.safetensors"}
        assert list((d / "tensorboard" / f"fold_{k}").glob("events.out.tfevents.*"))
    config = json.loads((d / "config.json").read_text())
    assert config["size"] == 16 and config["arch_params"] == {"widths": TINY_WIDTHS} and "fold" not in config
    folds = json.loads((d / "folds.json").read_text())
    samples = folds["samples"]
    for f in folds["folds"]:
        assert not {samples[i]["subject"] for i in f["test"]} & {samples[i]["subject"] for i in f["train"] + f["val"]}
    log = (d / "train.log").read_text()
    assert "fold 2 finished" in log and "Cross-validation" in log and not list(d.rglob("*.tmp*"))
    oof = read_oof(d / "oof.csv")
    assert [int(r["index"]) for r in oof] == list(range(16))


def test_progress_events_follow_the_contract(run):
    events = [e for e in run["events"] if e["event"] != "stage"]
    assert events[0] == {"event": "start", "run_dir": str(run["dir"]), "folds": 3, "epochs": 2, "n_train": 16}
    assert events[-1]["event"] == "done" and events[-1]["bundle"] == str(run["dir"] / "bundle")
    assert set(events[-1]["metrics"]) == set(SUMMARY_METRICS)
    assert all(set(v) == {"mean", "sd", "best"} for v in events[-1]["metrics"].values())
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(epochs) == 6 and all(set(e) == EPOCH_KEYS for e in epochs)
    steps = [e for e in events if e["event"] == "step"]
    assert steps and set(steps[0]) == {"event", "fold", "epoch", "step", "steps", "loss", "fraction"}
    fractions = [e["fraction"] for e in events if "fraction" in e]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    ends = [e for e in events if e["event"] == "fold_end"]
    assert [e["fold"] for e in ends] == [0, 1, 2] and set(ends[0]["metrics"]) == set(SUMMARY_METRICS)
    json.dumps(run["events"])  # every event is JSON-serialisable


def test_metrics_json_equals_sklearn_on_the_oof_csv(run):
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        recall_score,
        roc_auc_score,
    )

    doc = json.loads((run["dir"] / "metrics.json").read_text())
    oof = read_oof(run["dir"] / "oof.csv")
    per_fold = []
    for k in range(3):
        rows = [r for r in oof if int(r["fold"]) == k]
        y = np.array([int(r["label"]) for r in rows])
        p = np.array([float(r["probability"]) for r in rows])
        pred = (p >= 0.5).astype(int)
        assert [int(r["predicted"]) for r in rows] == pred.tolist()
        expect = {
            "accuracy": accuracy_score(y, pred),
            "balanced_accuracy": balanced_accuracy_score(y, pred),
            "sensitivity": recall_score(y, pred, pos_label=1, zero_division=0),
            "specificity": recall_score(y, pred, pos_label=0, zero_division=0),
            "auc": roc_auc_score(y, p),
            "f1": f1_score(y, pred, zero_division=0),
        }
        got = doc["per_fold"][k]
        for name, value in expect.items():
            assert got[name] == pytest.approx(value, abs=1e-12), (k, name)
        assert got["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1]).tolist()
        per_fold.append(expect)
    for name in SUMMARY_METRICS:
        values = [m[name] for m in per_fold]
        s = doc["summary"][name]
        assert s["mean"] == pytest.approx(np.mean(values)) and s["sd"] == pytest.approx(np.std(values, ddof=1))
        assert s["best"] == pytest.approx(max(values))
    y = np.array([int(r["label"]) for r in oof])
    p = np.array([float(r["probability"]) for r in oof])
    assert doc["pooled"]["auc"] == pytest.approx(roc_auc_score(y, p))
    assert doc["optimistic"] is False and "honest" in doc["note"]


def test_bundle_loads_predicts_and_reproduces_the_oof_predictions(run, data):
    bundle = load_bundle(run["dir"] / "bundle")
    meta = bundle.metadata
    assert len(bundle.models) == 3 and bundle.threshold == 0.5 and meta["preprocess"]["size"] == [16, 16, 16]
    assert meta["cv_metrics"]["protocol"] == "honest" and set(meta["cv_metrics"]["summary"]) == set(SUMMARY_METRICS)
    td = bundle.training_data
    assert td["n"] == 16 and td["classes"] == {"no BI": 8, "BI": 8} and td["synthetic"] is False
    assert td["source"] == str(data["manifest"].resolve()) and td["trained"] is True
    assert "3-fold cross-validation ensemble" in bundle.provenance
    oof = read_oof(run["dir"] / "oof.csv")
    row = oof[5]
    array, affine = read_volume(row["path"])
    result = predict(bundle, array, affine, tta=True, cam=True)
    assert 0.0 <= result.probability <= 1.0 and result.cam is not None and len(result.model_probabilities) == 3
    # the fold model that never saw this volume reproduces its out-of-fold probability
    k = int(row["fold"])
    assert result.model_probabilities[k] == pytest.approx(float(row["probability"]), abs=1e-5)


def test_same_seed_gives_identical_results(run, data):
    again = train_cv(tiny_config(data["manifest"], data["root"] / "run_again", data["cache"]))
    a = json.loads((run["dir"] / "metrics.json").read_text())
    b = json.loads((again / "metrics.json").read_text())
    assert a["per_fold"] == b["per_fold"] and a["pooled"] == b["pooled"]
    assert [r["probability"] for r in read_oof(run["dir"] / "oof.csv")] == [
        r["probability"] for r in read_oof(again / "oof.csv")
    ]
    assert (run["dir"] / "folds.json").read_text() == (again / "folds.json").read_text()


def test_folds_as_separate_jobs_then_merge(run, data, capsys):
    out = data["root"] / "jobs"
    events: list[dict] = []
    train_cv(tiny_config(data["manifest"], out, data["cache"], fold=1), progress=events.append)
    assert events[-1]["event"] == "done" and events[-1]["bundle"] is None
    assert (out / "fold_1" / "result.json").is_file() and not (out / "metrics.json").exists()
    assert main(["evaluate", str(out)]) == 2  # folds 0 and 2 missing: clear error
    # a job with other options cannot join the run
    with pytest.raises(Exception, match="differ"):
        train_cv(tiny_config(data["manifest"], out, data["cache"], fold=2, lr=0.1))
    # a second job on the same folder without --fold is refused (use --resume)
    assert main(tiny_cli_args(data["manifest"], out, data["cache"])) == 2
    train_cv(tiny_config(data["manifest"], out, data["cache"], fold=0))
    train_cv(tiny_config(data["manifest"], out, data["cache"], fold=2))  # the last job merges
    assert (out / "metrics.json").is_file() and (out / "bundle" / "metadata.json").is_file()
    assert [r["probability"] for r in read_oof(out / "oof.csv")] == [
        r["probability"] for r in read_oof(run["dir"] / "oof.csv")
    ]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--merge"]) == 0
    table = capsys.readouterr().out
    assert "mean ± sd" in table and "balanced_accuracy" in table
    # --resume keeps the run's options: a different one is refused, the same one accepted
    assert main(["train", "--resume", str(out), "--lr", "0.5"]) == 2
    # resuming a finished run only merges again
    assert main(["train", "--resume", str(out), "--progress-json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert lines[-1]["event"] == "done" and lines[-1]["bundle"].endswith("bundle")


def test_paper_protocol_pretrained_and_synthetic_flags(tmp_path, data, capsys):
    manifest = write_cohort(tmp_path / "synth", n_subjects=8, synthetic_marker=True)
    torch.manual_seed(5)
    donor = build_model("resnet10", widths=TINY_WIDTHS)
    ck = {"state_dict": {f"module.{k}": v for k, v in donor.state_dict().items() if not k.startswith("fc.")}}
    torch.save(ck, tmp_path / "resnet_10_tiny.pth")
    events: list[dict] = []
    cfg = tiny_config(
        manifest,
        tmp_path / "paper",
        data["cache"],
        folds=2,
        epochs=1,
        protocol="paper",
        pretrained=str(tmp_path / "resnet_10_tiny.pth"),
    )
    run_dir = train_cv(cfg, progress=events.append)
    doc = json.loads((run_dir / "metrics.json").read_text())
    assert doc["optimistic"] is True and "OPTIMISTIC" in doc["note"] and doc["selection"] == "accuracy"
    assert "OPTIMISTIC" in events[-1]["warning"]
    folds = json.loads((run_dir / "folds.json").read_text())
    assert all(f["val"] == f["test"] for f in folds["folds"])
    result = json.loads((run_dir / "fold_0" / "result.json").read_text())
    assert result["pretrained"].startswith(f"{len(ck['state_dict'])} tensors loaded")
    bundle = load_bundle(run_dir / "bundle")
    assert bundle.is_synthetic and bundle.training_data["description"].startswith("SYNTHETIC")
    assert bundle.metadata["cv_metrics"]["optimistic"] is True and "OPTIMISTIC" in bundle.provenance
    assert "MedicalNet initialisation from resnet_10_tiny.pth" in bundle.provenance
    capsys.readouterr()
    assert main(["evaluate", str(run_dir)]) == 0
    assert "OPTIMISTIC" in capsys.readouterr().out


def test_tiny_model_learns_the_blob(tmp_path, data):
    manifest = write_cohort(tmp_path / "c24", n_subjects=24, seed=1, two_sessions_every=4)
    cfg = tiny_config(
        manifest,
        tmp_path / "learn",
        data["cache"],
        epochs=8,
        lr=3e-3,
        batch_size=4,
        mixup_alpha=0.0,
        warmup_epochs=1,
        affine_degrees=5.0,
        affine_scale=0.05,
    )
    doc = json.loads((train_cv(cfg) / "metrics.json").read_text())
    # chance is AUC 0.5 (sd about 0.1 at 30 volumes); exact figures move with floating-point details
    assert doc["pooled"]["auc"] >= 0.75 and doc["pooled"]["accuracy"] >= 0.65


def test_options_are_validated():
    with pytest.raises(Exception, match="--batch-size"):
        TrainConfig(manifest="m.csv", out="o", batch_size=1).validate()
    with pytest.raises(Exception, match="exactly one"):
        TrainConfig(manifest="m.csv", dhcp="d", out="o").validate()
    assert TrainConfig().selection == "loss" and TrainConfig(protocol="paper").selection == "accuracy"
    assert make_volume(np.random.default_rng(0), 1).shape == (20, 20, 20)


def test_early_stopping_gradient_accumulation_and_warmup(tmp_path, data):
    cfg = tiny_config(
        data["manifest"],
        tmp_path / "es",
        data["cache"],
        folds=2,
        epochs=6,
        patience=1,
        select_metric="auc",
        grad_accum=2,
        warmup_epochs=1,
    )
    run_dir = train_cv(cfg)
    for k in range(2):
        res = json.loads((run_dir / f"fold_{k}" / "result.json").read_text())
        lrs = [h["lr"] for h in res["history"]]
        assert lrs[0] == pytest.approx(1e-3)  # warm-up: half the rate in the first of 1 + 1 epochs
        if res["stopped_early"]:
            assert res["epochs_run"] - res["best_epoch"] == 1 and res["epochs_run"] <= 6  # best_epoch from 1
        else:
            assert res["epochs_run"] == 6


def test_a_changed_dataset_is_refused_on_resume(tmp_path, data):
    manifest = write_cohort(tmp_path / "c", n_subjects=8, two_sessions_every=10)
    cfg = tiny_config(manifest, tmp_path / "run", data["cache"], folds=2, epochs=1, fold=0)
    train_cv(cfg)
    first = sorted((tmp_path / "c" / "images").iterdir())[0]
    save_nifti(first, make_volume(np.random.default_rng(99), 0))  # same name, other content
    with pytest.raises(Exception, match="file content changed") as err:
        train_cv(cfg.replace(fold=1))
    assert first.name in str(err.value)
    assert not (tmp_path / "run" / "fold_1").exists()
