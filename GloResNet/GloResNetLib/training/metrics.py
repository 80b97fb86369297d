"""Classification metrics (scikit-learn) per fold, over folds (mean, sd, best fold) and pooled out-of-fold.

Label 1 (brain injury) is the positive class: sensitivity = recall of BI, specificity = recall of no BI.
The standard deviation over folds is the sample standard deviation (ddof=1). ``best`` is the best fold's
value of each metric, as the GloResNet paper reports its best fold. ROC AUC is ``None`` when a set holds a
single class.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: The metrics reported in progress events, ``metrics.json`` and the bundle's ``cv_metrics``.
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc", "f1")


def binary_metrics(y_true, prob, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, balanced accuracy, sensitivity, specificity, ROC AUC, F1 and the confusion matrix.

    ``prob`` is P(BI); the predicted label is ``prob >= threshold``. ``confusion_matrix`` is
    ``[[TN, FP], [FN, TP]]`` (rows: true label 0, 1).
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        recall_score,
        roc_auc_score,
    )

    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(prob, dtype=np.float64)
    pred = (p >= threshold).astype(np.int64)
    both = len(np.unique(y)) == 2
    cm = confusion_matrix(y, pred, labels=[0, 1])
    return {
        "n": int(len(y)),
        "n_positive": int(y.sum()),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if both else None,
        "sensitivity": float(recall_score(y, pred, pos_label=1, zero_division=0)),
        "specificity": float(recall_score(y, pred, pos_label=0, zero_division=0)),
        "auc": float(roc_auc_score(y, p)) if both else None,
        "f1": float(f1_score(y, pred, pos_label=1, zero_division=0)),
        "confusion_matrix": cm.astype(int).tolist(),
        "threshold": float(threshold),
    }


def epoch_metrics(y_true, prob, threshold: float = 0.5) -> dict[str, Any]:
    """The per-epoch validation figures (accuracy, balanced accuracy, ROC AUC), cheaply.

    Accuracy and balanced accuracy are simple counts (numpy); the AUC is scikit-learn's. Reported fold and
    cross-validation metrics always come from :func:`binary_metrics`.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(prob, dtype=np.float64)
    pred = (p >= threshold).astype(np.int64)
    both = len(np.unique(y)) == 2
    recalls = [float((pred[y == c] == c).mean()) for c in (0, 1) if (y == c).any()]
    return {
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "balanced_accuracy": float(np.mean(recalls)) if both else None,
        # NaN outputs (a diverged model) have no AUC; the NaN loss then keeps that epoch from being chosen
        "auc": float(roc_auc_score(y, p)) if both and np.isfinite(p).all() else None,
    }


def summarize(per_fold: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{metric: {mean, sd, best, best_fold, values}} over folds (folds with a ``None`` value are skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for name in SUMMARY_METRICS:
        pairs = [(k, m[name]) for k, m in enumerate(per_fold) if m.get(name) is not None]
        values = [v for _, v in pairs]
        if not values:
            out[name] = {"mean": None, "sd": None, "best": None, "best_fold": None, "values": []}
            continue
        best_fold, best = max(pairs, key=lambda kv: kv[1])
        out[name] = {
            "mean": float(np.mean(values)),
            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "best": float(best),
            "best_fold": int(per_fold[best_fold].get("fold", best_fold)),
            "values": [float(v) for v in values],
        }
    return out


def event_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """The six summary metrics of one fold (for ``fold_end`` events)."""
    return {k: m.get(k) for k in SUMMARY_METRICS}


def event_summary(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{metric: {mean, sd, best}} (for the ``done`` event)."""
    return {k: {"mean": v["mean"], "sd": v["sd"], "best": v["best"]} for k, v in summary.items()}


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def format_table(metrics_doc: dict[str, Any]) -> str:
    """Human-readable metrics table of a ``metrics.json`` document."""
    per_fold = metrics_doc["per_fold"]
    summary = metrics_doc["summary"]
    folds = [f"fold{m['fold']}" for m in per_fold]
    lines = [
        f"Cross-validation: {len(per_fold)} folds, {metrics_doc.get('n', '?')} volumes, "
        f"threshold {metrics_doc.get('threshold', 0.5):g}",
        f"{'metric':<18} {'mean ± sd':>15} {'best':>7}  " + " ".join(f"{f:>6}" for f in folds),
    ]
    for name in SUMMARY_METRICS:
        s = summary[name]
        ms = f"{_fmt(s['mean'])} ± {_fmt(s['sd'])}" if s["mean"] is not None else "n/a"
        lines.append(
            f"{name:<18} {ms:>15} {_fmt(s['best']):>7}  " + " ".join(f"{_fmt(m.get(name)):>6}" for m in per_fold)
        )
    pooled = metrics_doc.get("pooled")
    if pooled:
        lines.append(
            "pooled out-of-fold: "
            + ", ".join(f"{k} {_fmt(pooled.get(k))}" for k in SUMMARY_METRICS)
            + f"; confusion [[TN, FP], [FN, TP]] = {pooled['confusion_matrix']}"
        )
    lines.append(metrics_doc.get("note", ""))
    if (metrics_doc.get("dataset") or {}).get("synthetic"):
        lines.append(
            "SYNTHETIC data: trained and tested on generated images - demonstration only, not clinical evidence"
        )
    return "\n".join(lines)


def best_epoch(result: dict[str, Any]) -> int:
    """A fold's selected epoch counted from 1 (older ``result.json`` files, without ``best_epoch_base``,
    counted from 0)."""
    return int(result["best_epoch"]) + (0 if result.get("best_epoch_base") == 1 else 1)
