"""Merging a pretrain-age run (:mod:`.age`): ``oof.csv``, ``metrics.json``, the exported backbone
``age_backbone.safetensors`` with its metadata, the brain-age bundle, and the MAE table."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..io import atomic_path, write_text_atomic
from ..models import PRETRAINED_FORMAT, build_model
from ..models.weights import HEAD_PREFIXES
from .age_bundle import write_age_bundle
from .age_trainer import PRED_COLUMNS, mae, mean_sd, regression_metrics
from .config import TrainConfig
from .datasets import DatasetReport
from .runfolder import preprocess_config, read_json, write_json

__all__ = ["WEIGHTS_FILE", "finalize_age_run", "format_age_table", "head_keys", "read_age_summary"]

WEIGHTS_FILE = "age_backbone.safetensors"


def head_keys(arch: str, arch_params: dict[str, Any]) -> set[str]:
    """Names of the tensors of an architecture's output head: those whose shape depends on the output count
    (plus any under :data:`~GloResNetLib.models.weights.HEAD_PREFIXES`)."""
    one = build_model(arch, 1, **arch_params).state_dict()
    two = build_model(arch, 2, **arch_params).state_dict()
    return {k for k in one if k not in two or one[k].shape != two[k].shape or k.startswith(HEAD_PREFIXES)}


def finalize_age_run(
    run_dir: Path, report: DatasetReport, ages: np.ndarray, cfg: TrainConfig, loss: str, final: str
) -> dict[str, Any]:
    """Merge the folds (``oof.csv``, ``metrics.json``), export the backbone weights with their metadata and
    write the fold models' brain-age bundle (``bundle/``).

    Args:
        run_dir: the pretrain-age folder; report: its dataset; ages: age at scan per sample (N,), weeks.
        cfg: its options; loss: its loss; final: ``all`` or ``best-fold``.
    Returns:
        The ``metrics.json`` document.
    """
    from safetensors.torch import load_file, save_file

    results = [read_json(run_dir / f"fold_{k}" / "result.json") for k in range(cfg.folds)]
    rows: list[dict[str, Any]] = []
    for k in range(cfg.folds):
        with open(run_dir / f"fold_{k}" / "predictions.csv", newline="", encoding="utf-8") as f:
            rows += list(csv.DictReader(f))
    rows.sort(key=lambda r: int(r["index"]))
    true = np.array([float(r["age_weeks"]) for r in rows])
    pred = np.array([float(r["predicted_weeks"]) for r in rows])
    per_fold = [
        {
            "fold": k,
            **res["test"],
            "baseline_mae_weeks": res["baseline"]["mae_weeks"],
            "baseline_prediction_weeks": res["baseline"]["prediction_weeks"],
            "last_epoch_mae_weeks": res["test_last_epoch"]["mae_weeks"],
            "val_mae_weeks": res["val_mae_weeks"],
            "best_epoch": res["best_epoch"],
            "epochs_run": res["epochs_run"],
        }
        for k, res in enumerate(results)
    ]
    if final == "all":
        source_state = run_dir / "final" / "model.safetensors"
        exported = (
            f"final model trained on all {len(ages)} volumes for {cfg.epochs} epochs (last epoch kept); "
            "its expected error is the CV MAE of the last epoch (last_epoch_mae_weeks)"
        )
        expected = mean_sd([m["last_epoch_mae_weeks"] for m in per_fold])
    else:
        best = min(per_fold, key=lambda m: m["val_mae_weeks"])
        source_state = run_dir / f"fold_{best['fold']}" / "model.safetensors"
        exported = (
            f"fold {best['fold']} model (lowest inner-validation MAE, {best['val_mae_weeks']:.3f} weeks); "
            f"its own test MAE {best['mae_weeks']:.3f} weeks"
        )
        expected = mean_sd([m["mae_weeks"] for m in per_fold])
    summary = {
        "task": "age",
        "unit": "weeks",
        "k": cfg.folds,
        "n": len(rows),
        "note": "protocol 'honest': each fold's checkpoint was chosen on a grouped validation split inside its "
        "training fold; baseline = always predicting the mean age of the fold's training data",
        "per_fold": per_fold,
        "mae_weeks": mean_sd([m["mae_weeks"] for m in per_fold]),
        "last_epoch_mae_weeks": mean_sd([m["last_epoch_mae_weeks"] for m in per_fold]),
        "baseline_mae_weeks": mean_sd([m["baseline_mae_weeks"] for m in per_fold]),
        "pooled": regression_metrics(true, pred),
        "pooled_baseline_mae_weeks": mae(
            true, np.array([m["baseline_prediction_weeks"] for m in per_fold])[[int(r["fold"]) for r in rows]]
        ),
        "exported": exported,
        "library_version": __version__,
    }
    lines = [",".join(PRED_COLUMNS)]
    lines += [",".join(r[c] for c in PRED_COLUMNS) for r in rows]
    write_text_atomic(run_dir / "oof.csv", "\n".join(lines) + "\n")
    write_json(run_dir / "metrics.json", summary)

    state = load_file(str(source_state))
    drop = head_keys(cfg.arch, cfg.arch_params)
    backbone = {k: v.contiguous() for k, v in state.items() if k not in drop}
    pre = preprocess_config(cfg)
    synthetic = bool(report.synthetic)
    doc = {
        "format": PRETRAINED_FORMAT,
        "format_version": 1,
        "task": "brain-age regression (gloresnet pretrain-age; after AGE2HIE, arXiv 2411.05188)",
        "arch": cfg.arch,
        "arch_params": cfg.arch_params,
        "input_size": list(pre.size),
        "preprocess": pre.to_dict(),
        "tensors": f"{len(backbone)} backbone tensors (architecture's own names); output head dropped: {sorted(drop)}",
        "data": {
            "source": str(report.source),
            "kind": report.kind,
            "n": len(ages),
            "n_subjects": len(set(report.subjects)),
            "age_weeks": {
                "min": float(ages.min()),
                "max": float(ages.max()),
                "mean": float(ages.mean()),
                "sd": float(ages.std()),
            },
            "synthetic": synthetic,
        },
        "synthetic": synthetic,
        "target": "age at scan in weeks, standardised (age - mean) / sd with the training data's mean and sd",
        "loss": loss,
        "training": {
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "mixup_alpha": cfg.mixup_alpha,
            "flip_prob": cfg.flip_prob,
            "affine_degrees": cfg.affine_degrees,
            "affine_scale": cfg.affine_scale,
            "seed": cfg.seed,
            "tta": cfg.tta,
            "initialisation": Path(cfg.pretrained).name if cfg.pretrained else "random",
        },
        "cv": {
            "k": cfg.folds,
            "mae_weeks": {k: summary["mae_weeks"][k] for k in ("mean", "sd")},
            "baseline_mae_weeks": {k: summary["baseline_mae_weeks"][k] for k in ("mean", "sd")},
            "last_epoch_mae_weeks": {k: summary["last_epoch_mae_weeks"][k] for k in ("mean", "sd")},
            "per_fold_mae_weeks": summary["mae_weeks"]["values"],
        },
        "mae_weeks": expected["mean"],
        "exported": exported,
        "library_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    target = read_json(source_state.parent / "result.json")["target"]
    doc["target_mean_weeks"], doc["target_sd_weeks"] = target["mean"], target["sd"]
    weights = run_dir / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        save_file(backbone, str(tmp), metadata={"format": PRETRAINED_FORMAT, "gloresnet_pretrained": json.dumps(doc)})
    write_json(weights.with_suffix(".json"), doc)
    write_age_bundle(run_dir, cfg, loss, summary, ages)
    return summary


def format_age_table(summary: dict[str, Any]) -> str:
    """Human-readable per-fold MAE table."""
    per = summary["per_fold"]
    lines = [
        f"Brain-age cross-validation: {summary['k']} folds, {summary['n']} volumes (MAE in weeks)",
        f"{'':<22} {'mean ± sd':>15}  " + " ".join(f"{'fold' + str(m['fold']):>7}" for m in per),
    ]
    for key, name in (
        ("mae_weeks", "MAE (selected epoch)"),
        ("last_epoch_mae_weeks", "MAE (last epoch)"),
        ("baseline_mae_weeks", "baseline (mean age)"),
    ):
        s = summary[key]
        lines.append(f"{name:<22} {s['mean']:>7.3f} ± {s['sd']:<6.3f} " + " ".join(f"{v:>7.3f}" for v in s["values"]))
    p = summary["pooled"]
    r = "n/a" if p["pearson_r"] is None else f"{p['pearson_r']:.3f}"
    lines.append(
        f"pooled out-of-fold: MAE {p['mae_weeks']:.3f}, RMSE {p['rmse_weeks']:.3f}, bias {p['bias_weeks']:+.3f}, "
        f"r {r}; baseline MAE {summary['pooled_baseline_mae_weeks']:.3f}"
    )
    lines.append(f"exported: {summary['exported']}")
    lines.append(summary["note"])
    return "\n".join(lines)


def read_age_summary(run_dir: str | Path) -> dict[str, Any]:
    """``RUN_DIR/metrics.json`` of a pretrain-age run."""
    return read_json(Path(run_dir) / "metrics.json")
