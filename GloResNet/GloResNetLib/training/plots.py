"""The run folder's plots: ROC curves of the folds and pooled out-of-fold predictions, learning curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .metrics import best_epoch


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", bbox_inches="tight")


def plot_roc(path: Path, rows: list[dict[str, Any]], k: int, optimistic: bool) -> None:
    """ROC curve of each fold and of the pooled out-of-fold predictions."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = _figure(5.5, 5)
    ax = fig.add_subplot(1, 1, 1)
    for fold in range(k):
        sub = [r for r in rows if r["fold"] == fold]
        y = [r["label"] for r in sub]
        if len(set(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, [r["probability"] for r in sub])
        ax.plot(
            fpr,
            tpr,
            lw=1,
            alpha=0.6,
            label=f"fold {fold} (AUC {roc_auc_score(y, [r['probability'] for r in sub]):.2f})",
        )
    y = [r["label"] for r in rows]
    if len(set(y)) == 2:
        p = [r["probability"] for r in rows]
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2.5, color="black", label=f"pooled out-of-fold (AUC {roc_auc_score(y, p):.2f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    title = "ROC, cross-validation test folds"
    ax.set_title(title + ("\n(paper protocol: OPTIMISTIC)" if optimistic else ""))
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_learning_curves(path: Path, results: list[dict[str, Any]], selection: str, optimistic: bool) -> None:
    """Training and validation loss, and validation AUC, per fold and epoch (selected epochs marked)."""
    fig = _figure(11, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for res in results:
        hist = [h for h in res["history"] if h]
        ep = [h["epoch"] + 1 for h in hist]
        line = ax1.plot(ep, [h["train_loss"] for h in hist], lw=1, label=f"fold {res['fold']} train")[0]
        ax1.plot(ep, [h["val_loss"] for h in hist], lw=1, ls="--", color=line.get_color())
        auc = [np.nan if h["val_auc"] is None else h["val_auc"] for h in hist]
        ax2.plot(ep, auc, lw=1, color=line.get_color(), label=f"fold {res['fold']}")
        if 1 <= best_epoch(res) <= len(hist):
            ax2.axvline(best_epoch(res), color=line.get_color(), lw=0.5, ls=":")
    val = "test fold (paper protocol: OPTIMISTIC)" if optimistic else "inner validation split"
    ax1.set_title(f"loss (solid: training, dashed: {val})", fontsize=9)
    ax1.set_xlabel("epoch")
    ax1.legend(fontsize=7)
    ax2.set_title(f"AUC on the {val}; dotted: selected epoch ({selection})", fontsize=9)
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1.02)
    _save(fig, path)
