"""Prediction with a brain-age bundle (``task: age_regression``, written by ``gloresnet pretrain-age``).

:func:`GloResNetLib.inference.predict` hands age bundles to :func:`predict_age`. The preprocessing, the TTA
views (one batch) and the warm inference copy of each model are the classifier's; what differs:

* **output**: each model's single raw output becomes weeks with that model's ``offset + scale * output``
  (the bundle's ``target``); the estimate is the mean over fold models and TTA views, reported with the
  per-view and per-model means and the spread (max - min) of all model x view estimates. There is no
  probability, label or threshold.
* **saliency**: Grad-CAM of the predicted age (weeks), taken as for the classifier from the same pass:
  ``ReLU(sum_k alpha_k A_k)`` with ``alpha`` the gradient of the age output with respect to the pooled
  features, each model's map multiplied by its ``scale`` (so the ensemble's map is that of its mean age in
  weeks) and the mean scaled to max 1. It shows where the features *raise* the age estimate; regions that
  lower it are cut off by the ReLU, so it is not a map of everything the estimate depends on, and not a
  lesion map.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .age_target import AGE_REGRESSION, AGE_TARGET_NAME, AGE_UNIT, target_scaling
from .bundle import Bundle
from .errors import BundleError
from .predict_common import (
    head_pass,
    peak_ras,
    prepare_pass,
    provenance,
    sync_device,
    upsample_cam,
    view_name,
)

__all__ = ["AgePrediction", "SALIENCY", "age_pass", "age_table", "cv_mae", "predict_age"]

SALIENCY = (
    "Grad-CAM of the predicted age: where the features raise the age estimate (regions that lower it "
    "are not shown); not a lesion map"
)


@dataclass
class AgePrediction:
    """Outcome of :func:`predict_age` for one volume; arrays as in :class:`~.inference.PredictionResult`.

    The fields from ``resampled`` on have the names and meaning of PredictionResult's, so the writers of
    ``gloresnet predict`` and of the Slicer module take either result."""

    age_weeks: float
    view_age_weeks: dict[str, float]
    model_age_weeks: list[float]
    spread_weeks: float
    resampled: np.ndarray = field(repr=False)
    resampled_affine: np.ndarray = field(repr=False)
    input_affine: np.ndarray = field(repr=False)
    cam: np.ndarray | None = field(default=None, repr=False)
    cam_network: np.ndarray | None = field(default=None, repr=False)
    occlusion: None = field(default=None, repr=False)  # occlusion sensitivity is for classifiers only
    occlusion_network: None = field(default=None, repr=False)
    model_name: str = ""
    device: str = "cpu"
    training_data: dict[str, Any] = field(default_factory=dict)
    cv_mae_weeks: float | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def cam_peak_ras(self) -> list[float] | None:
        """World (RAS, mm) position of the Grad-CAM maximum on the input grid (the classifiers' rule,
        :func:`~.predict_common.peak_ras`)."""
        return peak_ras(self.cam, self.input_affine)

    @property
    def is_synthetic(self) -> bool:
        return bool(self.training_data.get("synthetic", False))

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays): the age estimate and its parts; no probability or label fields."""
        return {
            "task": AGE_REGRESSION,
            "age_weeks": round(self.age_weeks, 4),
            "target": {"name": AGE_TARGET_NAME, "unit": AGE_UNIT, "meaning": "estimated post-menstrual age at scan"},
            "view_age_weeks": {k: round(v, 4) for k, v in self.view_age_weeks.items()},
            "model_age_weeks": [round(v, 4) for v in self.model_age_weeks],
            "spread_weeks": round(self.spread_weeks, 4),
            "cv_mae_weeks": self.cv_mae_weeks,
            "cam_peak_ras": self.cam_peak_ras(),
            "saliency": SALIENCY if self.cam is not None else None,
            **provenance(self),
        }


def age_pass(model: torch.nn.Module, batch: torch.Tensor, cam: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward pass of a one-output model: raw outputs (B,) and, with ``cam``, the raw Grad-CAM of the
    output for the first row, (1, x, y, z) on the feature grid (:func:`~.predict_common.head_pass`)."""
    raw, cam_map = head_pass(model, batch, 0 if cam else None)
    return raw[:, 0], cam_map


def cv_mae(bundle: Bundle) -> float | None:
    """The bundle's cross-validated MAE in weeks (mean over folds), if recorded."""
    value = ((bundle.metadata.get("cv_metrics") or {}).get("mae_weeks") or {}).get("mean")
    return float(value) if isinstance(value, (int, float)) else None


def predict_age(
    bundle: Bundle,
    array: np.ndarray,
    affine: np.ndarray,
    tta: bool = True,
    cam: bool = True,
    device: str | torch.device | None = None,
    tta_axes: list[int] | None = None,
) -> AgePrediction:
    """Estimate post-menstrual age at scan (weeks) for one volume (array indexed as stored, 4x4 affine).

    Args:
        bundle: a loaded ``age_regression`` bundle.
        array: the volume (I, J, K) as stored; affine: its 4x4 voxel-to-RAS matrix.
        tta: average over the flip views of ``tta_axes`` (default the bundle's, left-right).
        cam: compute the saliency (Grad-CAM of the age output; see the module docstring).
    Returns:
        :class:`AgePrediction`; ``cam`` has the input's shape, ``cam_network`` the network grid's.
    """
    if bundle.task != AGE_REGRESSION:
        raise BundleError(f"{bundle.path}: not a brain-age bundle (task {bundle.task})")
    offsets, scales = target_scaling(bundle.metadata)
    dev, models, pre, views, batch, timings = prepare_pass(bundle, array, affine, device, tta, tta_axes)
    t0 = time.perf_counter()
    weeks, cams = [], []
    for model, offset, scale in zip(models, offsets, scales):
        raw, cam_map = age_pass(model, batch, cam)
        weeks.append(offset + scale * raw.double())
        if cam_map is not None:
            cams.append(cam_map[0] * scale)
    estimates = torch.stack(weeks).cpu().numpy()  # (M, V)
    sync_device(dev)
    timings["network"] = time.perf_counter() - t0
    if not np.isfinite(estimates).all():
        raise BundleError(f"{bundle.path}: the network gave a non-finite age for this volume")

    cam_network = cam_input = None
    if cam:
        t0 = time.perf_counter()
        cam_network, cam_input = upsample_cam(torch.stack(cams).mean(0), pre)
        timings["cam"] = time.perf_counter() - t0
    return AgePrediction(
        age_weeks=float(estimates.mean()),
        view_age_weeks={view_name(v): float(a) for v, a in zip(views, estimates.mean(0))},
        model_age_weeks=[float(a) for a in estimates.mean(1)],
        spread_weeks=float(estimates.max() - estimates.min()),
        resampled=pre.array,
        resampled_affine=pre.affine,
        input_affine=np.asarray(affine, dtype=np.float64),
        cam=cam_input,
        cam_network=cam_network,
        model_name=bundle.name,
        device=str(dev),
        training_data=bundle.training_data,
        cv_mae_weeks=cv_mae(bundle),
        timings=timings,
    )


def age_table(rows: list[dict[str, Any]], bundle: Bundle) -> list[str]:
    """Console lines for ``gloresnet predict`` with an age bundle: one row per input (its JSON record)."""
    from pathlib import Path

    width = max(12, *(len(Path(r["input"]).name) for r in rows))
    lines = [f"{'input':<{width}}  {'age (weeks)':>11}  {'spread':>6}  {'time s':>6}"]
    for r in rows:
        total = sum(r["timings_s"].values())
        lines.append(
            f"{Path(r['input']).name:<{width}}  {r['age_weeks']:>11.2f}  {r['spread_weeks']:>6.2f}  {total:>6.2f}"
        )
    mae = cv_mae(bundle)
    lines.append(
        "age: estimated post-menstrual age at scan, mean over fold models and TTA views; spread: max - "
        "min of those estimates" + (f"; cross-validated MAE {mae:.2f} weeks" if mae is not None else "")
    )
    lines.append(f"model {bundle.name}; trained on: {bundle.training_data.get('description', 'unknown')}")
    if bundle.is_synthetic:
        lines.append("NOTE: this model was trained on SYNTHETIC data - demonstration only.")
    return lines
