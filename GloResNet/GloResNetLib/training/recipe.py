"""The training recipe's small rules: seeds, class weights, the learning-rate schedule, the validation loss
and the checkpoint choice (defaults of the GloResNet authors' code: see :mod:`.trainer`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["class_weights", "is_improvement", "lr_factor", "seed_for", "selection_score", "weighted_log_loss"]


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, fold, epoch, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0]) >> 1


def class_weights(labels: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """``N / (K * N_c)`` per class (balanced weights, as the GloResNet authors)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    return np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)


def lr_factor(epoch: int, epochs: int, warmup: int = 0) -> float:
    """Learning-rate multiplier of an epoch: linear warm-up, then cosine from 1 to 0 over the rest."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    span = max(1, epochs - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / span))


def weighted_log_loss(labels: np.ndarray, prob: np.ndarray, weights: np.ndarray | None) -> float:
    """Class-weighted mean cross-entropy of predicted P(BI) (weights normalised by their sum)."""
    p = np.clip(np.where(labels == 1, prob, 1.0 - prob), 1e-7, 1.0)
    w = weights[labels] if weights is not None else np.ones(len(labels))
    return float(-(w * np.log(p)).sum() / w.sum())


def selection_score(metric: str, val_loss: float, m: dict[str, Any], epoch: int = 0) -> float:
    """Higher is better: -loss, or the metric (a missing AUC falls back to -loss); ``last``: the epoch number
    (the last epoch whose validation loss is finite: a fixed schedule, no choice on noisy validation scores)."""
    if metric == "last":
        return float(epoch) if math.isfinite(val_loss) else math.nan
    if metric == "loss":
        return -val_loss
    value = m.get(metric)
    return -val_loss if value is None else float(value)


def is_improvement(score: float, best: float | None) -> bool:
    """True when ``score`` beats ``best`` (None: nothing chosen yet); a NaN or infinite score never does."""
    return math.isfinite(score) and (best is None or score > best + 1e-12)
