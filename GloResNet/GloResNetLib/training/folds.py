"""Stratified, subject-grouped k-fold cross-validation (seeded, reproducible) with an inner validation split.

Outer split: scikit-learn's ``StratifiedGroupKFold(k, shuffle=True, random_state=seed)`` over the samples with
the subject as group, so the sessions of one infant are never split across folds and each test fold keeps the
class balance as far as grouping allows. Samples keep the dataset's order (manifest rows; dHCP sorted by
subject, session), so the same data and seed always give the same folds.

Inner split (protocol ``honest``, the default): inside each training fold a second grouped, stratified split
holds out about ``val_fraction`` of the subjects as the validation set that chooses the checkpoint (and early
stopping); the test fold is used for nothing but the final evaluation. Protocol ``paper`` reproduces the
GloResNet authors' code: the model trains on the whole training fold and each fold's best epoch is chosen on
its own *test* fold, so its figures are optimistic (biased upward); every report made with it says so.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError
from ..io import write_text_atomic
from .config import TrainConfig

__all__ = [
    "HONEST_NOTE",
    "OPTIMISTIC_NOTE",
    "Split",
    "check_splittable",
    "folds_document",
    "format_folds",
    "inner_split",
    "make_folds",
    "splits_from_document",
    "write_folds",
]

OPTIMISTIC_NOTE = (
    "protocol 'paper': each fold's checkpoint was chosen on that fold's own test data (as in "
    "the GloResNet authors' code), so these figures are OPTIMISTIC (biased upward)"
)
HONEST_NOTE = (
    "protocol 'honest': each fold's checkpoint was chosen on a grouped validation split inside its "
    "training fold; the test folds were used for nothing else"
)


@dataclass
class Split:
    """Sample indices of one fold: ``train`` (optimised on), ``val`` (chooses the checkpoint), ``test``."""

    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def to_dict(self, labels: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
        def counts(idx: np.ndarray) -> list[int]:
            return [int((labels[idx] == c).sum()) for c in (0, 1)]

        return {
            "fold": self.fold,
            "train": self.train.tolist(),
            "val": self.val.tolist(),
            "test": self.test.tolist(),
            "counts": {"train": counts(self.train), "val": counts(self.val), "test": counts(self.test)},
            "test_subjects": sorted({str(g) for g in groups[self.test]}),
        }


def _sgkf(n_splits: int, seed: int, labels: np.ndarray, groups: np.ndarray):
    from sklearn.model_selection import StratifiedGroupKFold

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only n members"
        return list(
            StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(
                np.zeros(len(labels)), labels, groups
            )
        )


def check_splittable(labels: np.ndarray, groups: np.ndarray, k: int) -> None:
    """Refuse datasets too small for ``k`` grouped folds with both classes in each."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    for c, name in ((0, "no BI"), (1, "BI")):
        n = len(set(groups[labels == c]))
        if n < k:
            raise DatasetError(
                f"only {n} subject(s) with label {c} ({name}); {k}-fold cross-validation needs "
                f"at least {k} per class (use fewer --folds or more data)"
            )


def inner_split(
    train: np.ndarray, labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int, fold: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Grouped, stratified hold-out of about ``val_fraction`` of a training fold's subjects.

    Both parts keep both classes: a validation set of one class gives no AUC and, with class weights from an
    inner training part that lost a class, a NaN loss that would choose the checkpoint. Where too few
    subjects of a class make ``round(1 / val_fraction)`` stratified splits impossible, fewer splits (a larger
    validation share) are tried; with fewer than 2 subjects of a class nothing can hold out both classes,
    and the fold is refused.

    Raises:
        DatasetError: naming the fold and its class counts.
    """
    y, g = labels[train], groups[train]
    n_groups = len(set(g))
    per_class = [len(set(g[y == c])) for c in (0, 1)]
    first = min(max(2, int(round(1.0 / val_fraction))), n_groups)
    for n_splits in range(first, 1, -1):
        try:
            splits = _sgkf(n_splits, seed, y, g)
        except ValueError:  # every class smaller than n_splits
            continue
        both = [s for s in splits if len(set(y[s[1]])) == 2 and len(set(y[s[0]])) == 2]
        if both:
            inner_train, inner_val = both[0]
            return np.sort(train[inner_train]), np.sort(train[inner_val])
    raise DatasetError(
        f"fold {fold}: its training part has {per_class[0]} no-BI and {per_class[1]} BI subject(s), too few for "
        "an inner validation split holding both classes (at least 2 subjects of each class are needed); use "
        "fewer --folds, more data, or --protocol paper"
    )


def make_folds(
    labels: np.ndarray | list[int],
    groups: np.ndarray | list[str],
    k: int = TrainConfig.folds,
    seed: int = TrainConfig.seed,
    protocol: str = TrainConfig.protocol,
    val_fraction: float = TrainConfig.val_fraction,
) -> list[Split]:
    """The k outer folds (and inner validation splits) of a dataset; deterministic for a given seed."""
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray([str(g) for g in groups])
    check_splittable(labels, groups, k)
    splits = []
    for fold, (train, test) in enumerate(_sgkf(k, seed, labels, groups)):
        train, test = np.sort(train), np.sort(test)
        if protocol == "paper":
            splits.append(Split(fold, train, test.copy(), test))
        else:
            tr, val = inner_split(train, labels, groups, val_fraction, seed, fold)
            splits.append(Split(fold, tr, val, test))
    return splits


def folds_document(report, splits: list[Split], seed: int, protocol: str, val_fraction: float) -> dict[str, Any]:
    """JSON document describing the split (written as ``folds.json``)."""
    labels = report.labels
    groups = np.asarray(report.subjects)
    return {
        "k": len(splits),
        "seed": seed,
        "protocol": protocol,
        "val_fraction": val_fraction,
        "note": OPTIMISTIC_NOTE if protocol == "paper" else HONEST_NOTE,
        "dataset": {
            "source": str(report.source),
            "kind": report.kind,
            "n": len(report.samples),
            "n_subjects": len(set(report.subjects)),
            "classes": report.class_counts(),
        },
        "samples": [
            {"index": i, "path": str(s.path), "label": s.label, "subject": s.subject, "session": s.session}
            for i, s in enumerate(report.samples)
        ],
        "folds": [s.to_dict(labels, groups) for s in splits],
    }


def splits_from_document(doc: dict[str, Any]) -> list[Split]:
    """Inverse of :func:`folds_document` (the fold index lists)."""
    return [
        Split(
            int(f["fold"]),
            np.asarray(f["train"], dtype=np.int64),
            np.asarray(f["val"], dtype=np.int64),
            np.asarray(f["test"], dtype=np.int64),
        )
        for f in doc["folds"]
    ]


def write_folds(path: str | Path, doc: dict[str, Any]) -> Path:
    """Write ``folds.json`` atomically."""
    return write_text_atomic(path, json.dumps(doc, indent=1) + "\n")


def format_folds(doc: dict[str, Any]) -> str:
    """Human-readable table of a folds document."""
    lines = [
        f"{doc['k']}-fold split, seed {doc['seed']}, protocol {doc['protocol']}: "
        f"{doc['dataset']['n']} volumes of {doc['dataset']['n_subjects']} subjects "
        f"{doc['dataset']['classes']}",
        f"{'fold':>4}  {'train (noBI/BI)':>16}  {'val (noBI/BI)':>14}  {'test (noBI/BI)':>15}  test subjects",
    ]
    for f in doc["folds"]:
        c = f["counts"]
        val = "= test" if doc["protocol"] == "paper" else f"{sum(c['val'])} ({c['val'][0]}/{c['val'][1]})"
        lines.append(
            f"{f['fold']:>4}  {sum(c['train']):>6} ({c['train'][0]:>3}/{c['train'][1]:>3})  {val:>14}  "
            f"{sum(c['test']):>5} ({c['test'][0]:>3}/{c['test'][1]:>3})  {len(f['test_subjects'])}"
        )
    lines.append(doc["note"])
    return "\n".join(lines)
