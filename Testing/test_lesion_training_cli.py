"""Lesion-map supervision from the command line: ``gloresnet train --lesion-weight`` with a "mil" and the default
"aux" head, prediction with the resulting bundle, and the one-line refusals (no head, no masks). Real NIfTI files
and subprocesses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors import safe_open
from test_lesion_supervision import write_lesion_cohort
from training_fixtures import TINY_WIDTHS, cli, one_error_line, read_manifest_rows, tiny_cli_args, write_manifest


@pytest.fixture(scope="module")
def cli_cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """12 scans (6 BI, one without mask) for the command-line runs."""
    root = tmp_path_factory.mktemp("lesion_cli")
    return {
        "root": root,
        "manifest": write_lesion_cohort(root / "cohort", n_subjects=12, seed=1, unmasked_bi=1),
        "cache": root / "cache",
    }


def train_args(c: dict, out: Path, *extra: str) -> list[str]:
    """Tiny ``gloresnet train`` arguments (2 folds, 2 epochs, batch 4)."""
    return tiny_cli_args(c["manifest"], out, c["cache"], "--folds", "2", "--batch-size", "4", *extra)


def test_cli_trains_a_mil_lesion_model_and_predicts(cli_cohort: dict, tmp_path: Path) -> None:
    """``train --lesion-weight 2`` with a "mil" head: a bundle that records the head and the lesion loss, and
    that ``predict`` runs (gradient saliency)."""
    run = tmp_path / "run"
    arch = json.dumps({"lesion_head": "mil", "cam_layer": "layer1"})
    proc = cli(train_args(cli_cohort, run, "--lesion-weight", "2", "--arch-params", arch))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    meta = json.loads((run / "bundle" / "metadata.json").read_text())
    assert meta["arch_params"]["lesion_head"] == "mil" and meta["arch_params"]["cam_layer"] == "layer1"
    assert meta["arch_params"]["widths"] == TINY_WIDTHS
    assert "lesion-map loss weight 2" in meta["provenance"]
    history = json.loads((run / "fold_0" / "result.json").read_text())["history"]
    assert len(history) == 2 and all(math.isfinite(h["train_loss"]) for h in history)
    scan = cli_cohort["manifest"].parent / read_manifest_rows(cli_cohort["manifest"])[1]["path"]
    out = tmp_path / "pred"
    pred = cli(
        [
            "predict",
            str(scan),
            "--model",
            str(run / "bundle"),
            "--saliency",
            "gradient",
            "--out",
            str(out),
            "--json",
            "--no-tta",
            "--device",
            "cpu",
        ]
    )
    assert pred.returncode == 0, pred.stderr[-3000:]
    records = [json.loads(ln) for ln in pred.stdout.splitlines() if ln.startswith("{")]
    assert len(records) == 1 and 0.0 <= records[0]["probability"] <= 1.0
    assert math.isfinite(records[0]["probability"])
    assert (out / f"{scan.name.split('.')[0]}_gradient.nii.gz").is_file()


def test_cli_trains_aux_head_by_default(cli_cohort: dict, tmp_path: Path) -> None:
    """``--lesion-weight`` without a head in --arch-params trains (and bundles) an "aux" head."""
    run = tmp_path / "run"
    proc = cli(train_args(cli_cohort, run, "--lesion-weight", "1", "--epochs", "1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((run / "bundle" / "metadata.json").read_text())
    assert meta["arch_params"]["lesion_head"] == "aux"
    assert json.loads((run / "config.json").read_text())["lesion_weight"] == 1.0
    with safe_open(str(run / "fold_0" / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert any(k.startswith("lesion_head.") for k in names) and "fc.weight" in names


def test_cli_refuses_lesion_weight_without_head_or_masks(cli_cohort: dict, tmp_path: Path) -> None:
    """--lesion-weight on an architecture without a lesion head (refused at once: exit 2, one line) or on a
    manifest without masks (exit 2, one error line, no traceback, no fold trained)."""
    line = one_error_line(cli(train_args(cli_cohort, tmp_path / "a", "--lesion-weight", "1", "--arch", "mrf_dsnet")))
    assert "--lesion-weight" in line and "resnet10" in line
    bare = cli_cohort["root"] / "bare.csv"
    rows = read_manifest_rows(cli_cohort["manifest"])
    for r in rows:
        r["path"] = str(cli_cohort["manifest"].parent / r["path"])
    write_manifest(bare, rows, columns=("path", "label", "subject"))
    args = tiny_cli_args(bare, tmp_path / "b", cli_cohort["cache"], "--folds", "2", "--lesion-weight", "1")
    proc = cli(args)  # refused once the dataset is read: the run's log lines come first, then one error
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("gloresnet:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and "--lesion-weight" in errors[0] and "mask_path" in errors[0], proc.stderr[-3000:]
    assert not (tmp_path / "b" / "fold_0").exists()
