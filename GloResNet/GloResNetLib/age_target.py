"""Bundle tasks and the brain-age regression target of a bundle's ``metadata.json`` (no torch).

A bundle's optional ``task`` is ``"classification"`` (brain injury; the default when absent) or
``"age_regression"`` (brain age, written by ``gloresnet pretrain-age``). An age bundle has one network output
per model and a ``target`` object saying how that raw output maps back to weeks::

    "target": {"name": "age_weeks", "unit": "weeks post-menstrual age",
               "transform": "age_weeks = offset + scale * output",
               "offset": [37.1, 36.8, 37.4], "scale": [2.9, 3.1, 2.8], ...}

``offset`` and ``scale`` are one number for every model, or a list with one entry per weights file (in the
order of ``weights``): each fold model of ``pretrain-age`` was trained on ``(age - mean) / sd`` with the mean
and sd of its own training fold, so offset = that mean and scale = that sd. Age bundles carry no class names
or decision threshold.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import BundleError

CLASSIFICATION = "classification"
AGE_REGRESSION = "age_regression"
TASKS = (CLASSIFICATION, AGE_REGRESSION)
AGE_TARGET_NAME = "age_weeks"
AGE_UNIT = "weeks post-menstrual age"
#: Keys every bundle's metadata has, whatever its task (``weights`` is filled in by ``save_bundle``).
COMMON_KEYS = ("format_version", "name", "arch", "num_classes", "preprocess", "training_data", "provenance", "weights")
#: Keys only a classifier bundle has.
CLASSIFIER_KEYS = ("class_names", "threshold")


def task_of(meta: dict[str, Any], where: str = "bundle") -> str:
    """The bundle's task (``classification`` when absent); :class:`BundleError` for an unknown one."""
    task = meta.get("task", CLASSIFICATION)
    if task not in TASKS:
        raise BundleError(f"{where}: unknown task {task!r} (this library knows {', '.join(TASKS)})")
    return str(task)


def required_keys(meta: dict[str, Any]) -> tuple[str, ...]:
    """Metadata keys a bundle of this task must have."""
    return COMMON_KEYS + (CLASSIFIER_KEYS if meta.get("task", CLASSIFICATION) == CLASSIFICATION else ())


def age_target(offsets: list[float], scales: list[float], **extra: Any) -> dict[str, Any]:
    """The ``target`` object of an age bundle: per-model ``offset``/``scale`` (weeks = offset + scale * output)."""
    return {
        "name": AGE_TARGET_NAME,
        "unit": AGE_UNIT,
        "transform": "age_weeks = offset + scale * output",
        "offset": [float(v) for v in offsets],
        "scale": [float(v) for v in scales],
        **extra,
    }


def _per_model(target: dict[str, Any], key: str, n_models: int, where: str) -> list[float]:
    value = target.get(key)
    values = value if isinstance(value, list) else [value] * n_models
    if len(values) != n_models:
        raise BundleError(f"{where}: target.{key} lists {len(values)} values for {n_models} weights file(s)")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BundleError(f"{where}: target.{key} must be finite numbers (got {v!r})")
        out.append(float(v))
    return out


def check_age_metadata(meta: dict[str, Any], where: str, n_models: int) -> None:
    """Refuse (:class:`BundleError`, one line) an age bundle whose output count or ``target`` is unusable;
    nothing to check for a classifier bundle."""
    if task_of(meta, where) != AGE_REGRESSION:
        return
    if meta.get("num_classes") != 1:
        raise BundleError(
            f"{where}: an age_regression bundle has num_classes 1 (one output), not {meta.get('num_classes')!r}"
        )
    target = meta.get("target")
    if not isinstance(target, dict):
        raise BundleError(f"{where}: an age_regression bundle needs a 'target' object (name, unit, offset, scale)")
    if target.get("name") != AGE_TARGET_NAME:
        raise BundleError(f"{where}: target.name must be '{AGE_TARGET_NAME}' (got {target.get('name')!r})")
    _per_model(target, "offset", n_models, where)
    if any(s <= 0 for s in _per_model(target, "scale", n_models, where)):
        raise BundleError(f"{where}: target.scale must be positive")


def target_scaling(meta: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(offsets, scales) per weights file of a checked age bundle: weeks = offset + scale * raw output."""
    n = len(meta["weights"])
    return (_per_model(meta["target"], "offset", n, "bundle"), _per_model(meta["target"], "scale", n, "bundle"))


__all__ = [
    "AGE_REGRESSION",
    "AGE_TARGET_NAME",
    "AGE_UNIT",
    "CLASSIFICATION",
    "TASKS",
    "age_target",
    "check_age_metadata",
    "required_keys",
    "target_scaling",
    "task_of",
]
