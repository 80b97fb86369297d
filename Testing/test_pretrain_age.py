"""Brain-age pretraining (``gloresnet pretrain-age``) end to end on CPU, tiny shapes, real CLI subprocesses.

Covers: the run folder, per-fold MAE and the mean-age baseline recomputed from the saved predictions, the
weights file (backbone tensors with the architecture's names + metadata), one-line errors for missing or bad
ages, ``train --pretrained`` with those weights (provenance), refusal for another architecture, stop and
continue, and that the regression learns on an easy cohort.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from GloResNetLib.cli import main
from GloResNetLib.errors import BundleError, InputError
from GloResNetLib.models import build_model, load_pretrained_weights, pretrained_metadata
from GloResNetLib.training.age import AgeTrainingStopped, pretrain_age
from safetensors import safe_open
from safetensors.torch import load_file
from training_fixtures import (
    TINY_WIDTHS,
    read_manifest_rows,
    save_nifti,
    subprocess_env,
    tiny_cli_args,
    tiny_config,
    write_cohort,
    write_manifest,
)

TINY = ["--size", "16", "--folds", "3", "--epochs", "2", "--batch-size", "8", "--seed", "0"]
TINY += ["--widths", "8,16,32,64", "--no-tensorboard", "--num-threads", "1"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m GloResNetLib ARGS`` in a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "GloResNetLib", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(1),
        timeout=timeout,
    )


def events_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("age")
    manifest = write_cohort(root / "cohort", n_subjects=12, synthetic_marker=True)
    return {"root": root, "manifest": manifest, "cache": root / "cache"}


@pytest.fixture(scope="module")
def age_run(data):
    out = data["root"] / "age"
    proc = cli(
        "pretrain-age",
        "--manifest",
        str(data["manifest"]),
        "--out",
        str(out),
        "--cache-dir",
        str(data["cache"]),
        *TINY,
        "--progress-json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "proc": proc, "events": events_of(proc.stdout)}


def test_cli_writes_weights_metrics_and_progress(age_run):
    out, events = age_run["out"], age_run["events"]
    for name in (
        "age_config.json",
        "dataset.json",
        "folds.json",
        "metrics.json",
        "oof.csv",
        "train.log",
        "age_backbone.safetensors",
        "age_backbone.json",
        "final/result.json",
        "final/model.safetensors",
    ):
        assert (out / name).is_file(), name
    for k in range(3):
        assert {p.name for p in (out / f"fold_{k}").iterdir()} == {
            "result.json",
            "predictions.csv",
            "model.safetensors",
        }
    kinds = [e["event"] for e in events]
    assert kinds[0] == "stage" and "start" in kinds and kinds[-1] == "done"
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(epochs) == 4 * 2 and all(e["task"] == "age" for e in epochs)  # 3 folds + the final model
    assert [e["final"] for e in epochs] == [False] * 6 + [True] * 2
    assert all(e["val_mae_weeks"] > 0 for e in epochs[:6]) and epochs[-1]["fraction"] == 1.0
    assert sum(e["event"] == "fold_end" for e in events) == 4
    metrics = json.loads((out / "metrics.json").read_text())
    done = events[-1]
    assert done["weights"] == str(out / "age_backbone.safetensors")
    assert done["metrics"]["mae_weeks"]["mean"] == pytest.approx(metrics["mae_weeks"]["mean"])
    assert "fold 0 epoch 1/2" in age_run["proc"].stderr and "baseline (mean age)" in age_run["proc"].stderr
    config = json.loads((out / "age_config.json").read_text())
    assert config["_task"] == "age" and config["mixup_alpha"] == 0.0 and config["_loss"] == "smooth_l1"

    # backbone tensors under the architecture's own names, head dropped, values of the final model
    weights = load_file(str(out / "age_backbone.safetensors"))
    model_keys = set(build_model("resnet10", 1, widths=TINY_WIDTHS).state_dict())
    assert set(weights) == model_keys - {"fc.weight", "fc.bias"}
    final = load_file(str(out / "final" / "model.safetensors"))
    assert final["fc.weight"].shape == (1, 64)
    assert all(torch.equal(weights[k], final[k]) for k in weights)
    meta = pretrained_metadata(str(out / "age_backbone.safetensors"))
    assert meta == json.loads((out / "age_backbone.json").read_text())
    with safe_open(str(out / "age_backbone.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == "gloresnet-pretrained"
    assert meta["arch"] == "resnet10" and meta["arch_params"] == {"widths": TINY_WIDTHS}
    assert meta["input_size"] == [16, 16, 16] and meta["preprocess"]["normalization"] == "zscore"
    assert meta["synthetic"] is True and meta["data"]["synthetic"] is True and meta["data"]["n"] == 16
    assert meta["data"]["source"].endswith("manifest.csv") and meta["loss"] == "smooth_l1"
    assert meta["cv"]["mae_weeks"]["mean"] == pytest.approx(metrics["mae_weeks"]["mean"])
    assert meta["mae_weeks"] == pytest.approx(metrics["last_epoch_mae_weeks"]["mean"])  # final = last epoch
    assert meta["cv"]["baseline_mae_weeks"]["mean"] == pytest.approx(metrics["baseline_mae_weeks"]["mean"])


def test_mae_and_baseline_recomputed_from_saved_predictions(age_run, data):
    out = age_run["out"]
    metrics = json.loads((out / "metrics.json").read_text())
    folds = json.loads((out / "folds.json").read_text())
    ages = {r["path"]: float(r["age_weeks"]) for r in read_manifest_rows(data["manifest"])}
    sample_ages = np.array([ages[str(Path(s["path"]).relative_to(data["manifest"].parent))] for s in folds["samples"]])
    maes, baselines, oof = [], [], []
    for k in range(3):
        rows = read_csv(out / f"fold_{k}" / "predictions.csv")
        oof += rows
        f = folds["folds"][k]
        assert sorted(int(r["index"]) for r in rows) == f["test"]
        true = np.array([float(r["age_weeks"]) for r in rows])
        assert np.allclose(true, sample_ages[f["test"]])
        mae = np.abs(true - np.array([float(r["predicted_weeks"]) for r in rows])).mean()
        base = np.abs(true - sample_ages[f["train"] + f["val"]].mean()).mean()
        result = json.loads((out / f"fold_{k}" / "result.json").read_text())
        assert metrics["per_fold"][k]["mae_weeks"] == pytest.approx(mae, abs=1e-9)
        assert result["test"]["mae_weeks"] == pytest.approx(mae, abs=1e-9)
        assert metrics["per_fold"][k]["baseline_mae_weeks"] == pytest.approx(base, abs=1e-9)
        assert not set(f["test"]) & set(f["train"] + f["val"])
        maes.append(mae)
        baselines.append(base)
    assert metrics["mae_weeks"]["mean"] == pytest.approx(np.mean(maes))
    assert metrics["mae_weeks"]["sd"] == pytest.approx(np.std(maes, ddof=1))
    assert metrics["baseline_mae_weeks"]["mean"] == pytest.approx(np.mean(baselines))
    pooled = read_csv(out / "oof.csv")
    assert len(pooled) == 16 and {r["index"] for r in pooled} == {r["index"] for r in oof}
    assert metrics["pooled"]["mae_weeks"] == pytest.approx(
        np.mean([abs(float(r["age_weeks"]) - float(r["predicted_weeks"])) for r in pooled])
    )
    # subjects never straddle folds
    subj = [s["subject"] for s in folds["samples"]]
    for f in folds["folds"]:
        assert not {subj[i] for i in f["test"]} & {subj[i] for i in f["train"] + f["val"]}


def _bad_manifest(data, tmp_path: Path, change: str) -> Path:
    rows = [dict(r) for r in read_manifest_rows(data["manifest"])]
    for r in rows:
        r["path"] = str(data["manifest"].parent / r["path"])
    columns = ("path", "label", "subject", "session", "age_weeks")
    if change == "no column":
        columns = columns[:4]
    else:
        rows[3]["age_weeks"] = change  # CSV line 5
    return write_manifest(tmp_path / "bad.csv", rows, columns)


@pytest.mark.parametrize("change", ["no column", "abc", "NaN", "", "-3"])
def test_missing_or_bad_ages_give_one_line_error(data, tmp_path, capsys, change):
    bad = _bad_manifest(data, tmp_path, change)
    code = main(
        ["pretrain-age", "--manifest", str(bad), "--out", str(tmp_path / "o"), "--cache-dir", str(data["cache"]), *TINY]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    errors = [line for line in err if line.startswith("gloresnet: error:")]
    assert len(errors) == 1 and errors[0] == err[-1], err
    assert "'age_weeks'" in errors[0]
    if change != "no column":
        assert "row 5 " in errors[0]
    assert not (tmp_path / "o" / "fold_0").exists()


def test_bad_age_exit_code_from_a_real_process(data, tmp_path):
    bad = _bad_manifest(data, tmp_path, "seven")
    proc = cli("pretrain-age", "--manifest", str(bad), "--out", str(tmp_path / "o"), *TINY)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("gloresnet: error: ")
    assert "row 5" in proc.stderr and "'seven'" in proc.stderr and "Traceback" not in proc.stderr


def test_paper_protocol_is_refused(data, tmp_path, capsys):
    code = main(
        [
            "pretrain-age",
            "--manifest",
            str(data["manifest"]),
            "--out",
            str(tmp_path / "o"),
            *TINY,
            "--protocol",
            "paper",
        ]
    )
    assert code == 2 and "honest" in capsys.readouterr().err


def test_train_with_age_weights_records_the_pretraining(age_run, data):
    weights = age_run["out"] / "age_backbone.safetensors"
    run_dir = data["root"] / "cls"
    proc = cli(*tiny_cli_args(data["manifest"], run_dir, data["cache"], "--pretrained", str(weights)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["pretrained"] == str(weights)
    result = json.loads((run_dir / "fold_0" / "result.json").read_text())
    assert result["pretrained"].startswith("72 tensors loaded, 2 missing, 0 unexpected")
    meta = json.loads((run_dir / "bundle" / "metadata.json").read_text())
    assert "brain-age pretrained backbone from age_backbone.safetensors" in meta["provenance"]
    assert "SYNTHETIC" in meta["provenance"]
    age_metrics = json.loads((age_run["out"] / "metrics.json").read_text())
    assert meta["pretrained"]["format"] == "gloresnet-pretrained" and meta["pretrained"]["arch"] == "resnet10"
    assert meta["pretrained"]["file"] == "age_backbone.safetensors"
    assert meta["pretrained"]["cv"]["mae_weeks"]["mean"] == pytest.approx(age_metrics["mae_weeks"]["mean"])


def test_loading_keeps_backbone_and_drops_head(age_run):
    path = str(age_run["out"] / "age_backbone.safetensors")
    torch.manual_seed(3)
    model = build_model("resnet10", 2, widths=TINY_WIDTHS)
    head = model.fc.weight.detach().clone()
    report = load_pretrained_weights(model, path, arch="resnet10")
    weights = load_file(path)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert torch.equal(model.fc.weight, head) and report.missing == ["fc.bias", "fc.weight"]


def test_other_architecture_is_refused_in_one_line(age_run, data, capsys):
    path = str(age_run["out"] / "age_backbone.safetensors")
    for arch in ("resnet18", "resnet10_dilated"):  # the dilated net even has the same tensor shapes
        with pytest.raises(BundleError) as exc:
            load_pretrained_weights(build_model(arch, 2, widths=TINY_WIDTHS), path, arch=arch)
        msg = str(exc.value)
        assert "\n" not in msg and path in msg and "'resnet10'" in msg and f"'{arch}'" in msg
    with pytest.raises(BundleError, match="wrong architecture"):
        load_pretrained_weights(build_model("resnet10", 2, widths=[16, 16, 32, 64]), path)
    args = tiny_cli_args(data["manifest"], data["root"] / "cls18", data["cache"], "--arch", "resnet18")
    assert main([*args, "--pretrained", path, "--epochs", "1", "--progress-json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gloresnet: error: ") and "'resnet10'" in err[-1] and "'resnet18'" in err[-1]
    assert not (data["root"] / "cls18" / "bundle").exists()


def test_stop_then_same_command_continues_identically(age_run, data, tmp_path):
    """A stop after the first epoch saves a checkpoint; calling again finishes with the uninterrupted figures."""
    stop = threading.Event()
    seen: list[dict] = []

    def progress(event: dict) -> None:
        seen.append(event)
        if event["event"] == "epoch" and event["fold"] == 1:
            stop.set()

    cfg = tiny_config(data["manifest"], tmp_path / "age", data["cache"], mixup_alpha=0.0)
    with pytest.raises(AgeTrainingStopped, match="run the same command again"):
        pretrain_age(cfg, progress=progress, stop=stop)
    assert seen[-1]["event"] == "stopped" and seen[-1]["fold"] == 1
    assert (tmp_path / "age" / "fold_1" / "last.pt").is_file() and (
        tmp_path / "age" / "fold_0" / "result.json"
    ).is_file()
    out = pretrain_age(cfg)
    mine = json.loads((out / "metrics.json").read_text())
    ref = json.loads((age_run["out"] / "metrics.json").read_text())
    assert mine["mae_weeks"]["values"] == pytest.approx(ref["mae_weeks"]["values"], abs=1e-5)
    with pytest.raises(InputError, match="other options"):
        pretrain_age(cfg.replace(epochs=3))


def make_age_volume(rng: np.random.Generator, age: float, shape=(20, 20, 20)) -> np.ndarray:
    """A noisy ellipsoid head whose size grows with age (28 -> 44 weeks: 0.22 -> 0.44 of the field of view)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    centre = (np.array(shape) - 1) / 2
    radius = np.array(shape) * (0.22 + 0.22 * (age - 28.0) / 16.0)
    r = np.sqrt((((grid - centre[:, None, None, None]) / radius[:, None, None, None]) ** 2).sum(0))
    vol = np.where(r < 1, 400.0, 30.0) * rng.uniform(0.9, 1.1)
    return (vol + rng.normal(0, 25, shape)).astype(np.float32)


def test_regression_beats_the_mean_age_baseline(tmp_path):
    rng = np.random.default_rng(0)
    ages = np.linspace(28.0, 44.0, 24)
    rng.shuffle(ages)
    rows = []
    for s, age in enumerate(ages):
        rel = f"images/s{s:02d}.nii.gz"
        save_nifti(tmp_path / "cohort" / rel, make_age_volume(rng, age))
        rows.append({"path": rel, "label": s % 2, "subject": f"s{s:02d}", "session": "1", "age_weeks": f"{age:.2f}"})
    manifest = write_manifest(tmp_path / "cohort" / "manifest.csv", rows)
    args = [a if a != "2" else "20" for a in TINY]  # 20 epochs
    proc = cli(
        "pretrain-age",
        "--manifest",
        str(manifest),
        "--out",
        str(tmp_path / "age"),
        "--cache-dir",
        str(tmp_path / "cache"),
        *args,
        "--final",
        "best-fold",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "age" / "metrics.json").read_text())
    assert m["baseline_mae_weeks"]["mean"] > 3.0
    assert m["mae_weeks"]["mean"] < 0.6 * m["baseline_mae_weeks"]["mean"], m["mae_weeks"]
    assert all(f["mae_weeks"] < f["baseline_mae_weeks"] for f in m["per_fold"])
    assert m["pooled"]["pearson_r"] > 0.7
    best = min(m["per_fold"], key=lambda f: f["val_mae_weeks"])  # --final best-fold: chosen on validation
    assert json.loads((tmp_path / "age" / "age_backbone.json").read_text())["exported"].startswith(
        f"fold {best['fold']} model"
    )
    fold_model = load_file(str(tmp_path / "age" / f"fold_{best['fold']}" / "model.safetensors"))
    exported = load_file(str(tmp_path / "age" / "age_backbone.safetensors"))
    assert all(torch.equal(v, fold_model[k]) for k, v in exported.items()) and not (tmp_path / "age" / "final").exists()
