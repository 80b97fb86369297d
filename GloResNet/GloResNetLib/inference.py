"""Prediction with test-time augmentation and Grad-CAM taken from the same network pass.

All TTA views go through the network as one batch, and Grad-CAM comes from that pass
(:mod:`.predict_common`, which also holds what brain-age prediction shares). :func:`predict` is the one entry
point for every bundle: a brain-age bundle is handed to :mod:`.age_inference`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .bundle import Bundle
from .disclaimer import DISCLAIMER  # re-exported: report.py takes it from here
from .errors import BundleError
from .io import read_volume
from .predict_common import (
    AXIS_NAMES,
    flip_batch,
    gradcam_map,
    gradcam_weights,
    network_pass,
    peak_ras,
    pool_features,
    prepare_pass,
    provenance,
    sync_device,
    tta_views,
    upsample_cam,
    view_name,
)

if TYPE_CHECKING:
    from .age_inference import AgePrediction

__all__ = [
    "AXIS_NAMES",
    "DISCLAIMER",
    "SALIENCY_METHODS",
    "PredictionResult",
    "flip_batch",
    "gradcam_map",
    "gradcam_weights",
    "network_pass",
    "peak_ras",
    "pool_features",
    "predict",
    "predict_file",
    "prepare_pass",
    "tta_views",
    "upsample_cam",
    "view_name",
]

#: Saliency methods of :func:`predict`: Grad-CAM, gradient (:mod:`.gradient_saliency`), occlusion sensitivity
#: (:mod:`.occlusion`); "both" is Grad-CAM and occlusion, "all" the three. A comma list picks several.
SALIENCY_METHODS = ("gradcam", "gradient", "occlusion", "both", "all")
_SALIENCY_SETS = {"both": ("gradcam", "occlusion"), "all": ("gradcam", "gradient", "occlusion")}


def saliency_set(saliency: str) -> tuple[str, ...]:
    """The methods named by ``saliency`` ("gradcam", "gradient", "occlusion", "both", "all" or a comma list).

    Raises:
        ValueError: an unknown name.
    """
    names: list[str] = []
    for part in str(saliency).split(","):
        part = part.strip()
        if part not in SALIENCY_METHODS:
            raise ValueError(
                f"saliency must be one of {', '.join(SALIENCY_METHODS)} or a comma list (got {saliency!r})"
            )
        names += _SALIENCY_SETS.get(part, (part,))
    return tuple(m for m in ("gradcam", "gradient", "occlusion") if m in names)


@dataclass
class PredictionResult:
    """Outcome of :func:`predict` for one volume. Arrays are numpy; ``cam`` is on the input's own grid."""

    probability: float
    label: int
    label_name: str
    threshold: float
    view_probabilities: dict[str, float]
    model_probabilities: list[float]
    spread: float
    resampled: np.ndarray = field(repr=False)
    resampled_affine: np.ndarray = field(repr=False)
    input_affine: np.ndarray = field(repr=False)
    cam: np.ndarray | None = field(default=None, repr=False)
    cam_network: np.ndarray | None = field(default=None, repr=False)
    occlusion: np.ndarray | None = field(default=None, repr=False)
    occlusion_network: np.ndarray | None = field(default=None, repr=False)
    gradient: np.ndarray | None = field(default=None, repr=False)
    gradient_network: np.ndarray | None = field(default=None, repr=False)
    model_name: str = ""
    device: str = "cpu"
    training_data: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def is_synthetic(self) -> bool:
        return bool(self.training_data.get("synthetic", False))

    def cam_peak_ras(self) -> list[float] | None:
        """World (RAS, mm) position of the Grad-CAM maximum on the input grid (:func:`peak_ras`)."""
        return peak_ras(self.cam, self.input_affine)

    def occlusion_peak_ras(self) -> list[float] | None:
        """World (RAS, mm) position of the largest occlusion drop of P(BI) on the input grid (:func:`peak_ras`)."""
        return peak_ras(self.occlusion, self.input_affine)

    def gradient_peak_ras(self) -> list[float] | None:
        """World (RAS, mm) position of the gradient saliency maximum on the input grid (:func:`peak_ras`)."""
        return peak_ras(self.gradient, self.input_affine)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {
            "probability": round(self.probability, 6),
            "label": self.label,
            "label_name": self.label_name,
            "threshold": self.threshold,
            "view_probabilities": {k: round(v, 6) for k, v in self.view_probabilities.items()},
            "model_probabilities": [round(p, 6) for p in self.model_probabilities],
            "spread": round(self.spread, 6),
            "cam_peak_ras": self.cam_peak_ras(),
            "gradient_peak_ras": self.gradient_peak_ras(),
            "occlusion_peak_ras": self.occlusion_peak_ras(),
            "occlusion_max_drop": (
                round(float(self.occlusion_network.max()), 6) if self.occlusion_network is not None else None
            ),
            **provenance(self),
        }


def predict(
    bundle: Bundle,
    array: np.ndarray,
    affine: np.ndarray,
    tta: bool = True,
    cam: bool = True,
    device: str | torch.device | None = None,
    tta_axes: list[int] | None = None,
    cam_class: int = 1,
    saliency: str = "gradcam",
    occlusion: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> PredictionResult | AgePrediction:
    """Predict brain injury for one volume (array indexed as stored, 4x4 voxel-to-RAS affine).

    ``saliency`` (with ``cam=True``): ``"gradcam"`` (``result.cam``), ``"gradient"`` (``result.gradient``: the
    smoothed input-gradient magnitude, :mod:`.gradient_saliency`), ``"occlusion"`` (``result.occlusion``: the
    drop of the ensemble's P(class ``cam_class``) when each region is hidden, see :mod:`.occlusion`, settings
    ``occlusion``, an :class:`~.occlusion.OcclusionConfig`) or ``"both"``; ``progress(done, total)`` follows the
    occluded copies. Both maps are on the input's own grid; ``cam=False`` computes neither.

    TTA averages the softmax of the identity and flipped views (the bundle's ``tta_axes``, default the
    left-right axis; ``tta_axes=[0, 1, 2]`` gives all 8 views) over every model of the bundle. The Grad-CAM
    (class ``cam_class``, default brain injury) is the ensemble's: the mean of the models' raw Grad-CAMs of
    the identity view, which is the Grad-CAM of the models' mean logit on their stacked CAM-layer features.
    A model that sees little evidence adds a faint map, so the ensemble's map follows the models that see the
    injury (scaling each map to max 1 before averaging would not). The result is scaled to max 1.

    A brain-age bundle (``task: age_regression``) is handed to :func:`.age_inference.predict_age`, which
    returns an :class:`~.age_inference.AgePrediction` (``age_weeks``; no probability or label).

    Args:
        bundle: the loaded bundle.
        array: the volume as stored, shape (I, J, K).
        affine: its 4x4 voxel-to-RAS matrix.
        tta: average over the flip views; tta_axes: their axes (None: the bundle's).
        cam: compute the saliency map(s).
        device: where to run (None: the bundle's device).
        cam_class: the class the maps explain.
        saliency: ``"gradcam"``, ``"gradient"``, ``"occlusion"``, ``"both"`` (Grad-CAM and occlusion), ``"all"``
            or a comma list.
        occlusion: :class:`~.occlusion.OcclusionConfig` (None: defaults).
        progress: ``progress(done, total)`` over the occluded copies.
    Returns:
        A :class:`PredictionResult` (``cam`` / ``occlusion`` (I, J, K) on the input grid, ``cam_network`` /
        ``occlusion_network`` (X, Y, Z) on the network grid), or an ``AgePrediction`` for a brain-age bundle.
    Raises:
        ValueError: unknown ``saliency``; BundleError: NaN or infinite outputs, or occlusion asked of a
        brain-age bundle.
    """
    methods = saliency_set(saliency)
    if bundle.task != "classification":
        if cam and methods != ("gradcam",):
            raise BundleError(
                f"model '{bundle.name}' is a brain-age bundle: its saliency is Grad-CAM only "
                "(occlusion sensitivity is for classifiers)"
            )
        from .age_inference import predict_age

        return predict_age(bundle, array, affine, tta=tta, cam=cam, device=device, tta_axes=tta_axes)
    gradcam, occ = cam and "gradcam" in methods, cam and "occlusion" in methods
    dev, models, pre, views, batch, timings = prepare_pass(bundle, array, affine, device, tta, tta_axes)
    t0 = time.perf_counter()
    per_model, cams = [], []
    for model in models:
        probs, cam_map = network_pass(model, batch, cam_class if gradcam else None)
        per_model.append(probs[:, 1])
        if cam_map is not None:
            cams.append(cam_map[0])
    view_probs = torch.stack(per_model).mean(0).cpu().numpy()  # (V,)
    model_probs = torch.stack(per_model).mean(1).cpu().numpy()  # (M,)
    sync_device(dev)
    timings["network"] = time.perf_counter() - t0
    small = torch.stack(cams).mean(0) if cams else None
    if not np.isfinite(model_probs).all() or (small is not None and not bool(torch.isfinite(small).all())):
        raise BundleError(f"model '{bundle.name}' gave NaN or infinite outputs for this volume; no result reported")

    cam_network = cam_input = None
    if small is not None:
        t0 = time.perf_counter()
        cam_network, cam_input = upsample_cam(small, pre)
        timings["cam"] = time.perf_counter() - t0
    occ_network = occ_input = None
    if occ:
        from .occlusion import occlusion_sensitivity
        from .preprocessing import to_input_grid

        t0 = time.perf_counter()
        occ_map = occlusion_sensitivity(models, pre.tensor[0, 0], occlusion, class_idx=cam_class, progress=progress)
        occ_network = occ_map.drop
        occ_input = to_input_grid(torch.from_numpy(occ_network).to(dev), pre)
        sync_device(dev)
        if not (np.isfinite(occ_network).all() and np.isfinite(occ_input).all()):
            raise BundleError(f"model '{bundle.name}' gave a NaN or infinite occlusion map; no result reported")
        timings["occlusion"] = time.perf_counter() - t0

    grad_network = grad_input = None
    if cam and "gradient" in methods:
        from .gradient_saliency import gradient_saliency
        from .preprocessing import to_input_grid

        t0 = time.perf_counter()
        grad_network = gradient_saliency(models, pre.tensor[0, 0], class_idx=cam_class)
        grad_input = to_input_grid(torch.from_numpy(grad_network).to(dev), pre)
        if not (np.isfinite(grad_network).all() and np.isfinite(grad_input).all()):
            raise BundleError(f"model '{bundle.name}' gave a NaN or infinite gradient map; no result reported")
        timings["gradient"] = time.perf_counter() - t0

    probability = float(view_probs.mean())
    label = int(probability >= bundle.threshold)
    names = bundle.metadata.get("class_names", ["no BI", "BI"])
    return PredictionResult(
        probability=probability,
        label=label,
        label_name=str(names[label]),
        threshold=bundle.threshold,
        view_probabilities={view_name(v): float(p) for v, p in zip(views, view_probs)},
        model_probabilities=[float(p) for p in model_probs],
        spread=float(view_probs.max() - view_probs.min()) if len(views) > 1 else 0.0,
        resampled=pre.array,
        resampled_affine=pre.affine,
        input_affine=np.asarray(affine, dtype=np.float64),
        cam=cam_input,
        cam_network=cam_network,
        occlusion=occ_input,
        occlusion_network=occ_network,
        gradient=grad_input,
        gradient_network=grad_network,
        model_name=bundle.name,
        device=str(dev),
        training_data=bundle.training_data,
        timings=timings,
    )


def predict_file(bundle: Bundle, path: str | os.PathLike, **kwargs: Any) -> PredictionResult:
    """Read a volume file and :func:`predict` it.

    Args:
        bundle: the loaded bundle.
        path: a NIfTI or NRRD file.
        **kwargs: options of :func:`predict`.
    Returns:
        The prediction, its read time in ``timings['load']``.
    """
    t0 = time.perf_counter()
    array, affine = read_volume(path)
    load = time.perf_counter() - t0
    result = predict(bundle, array, affine, **kwargs)
    result.timings = {"load": load, **result.timings}
    return result
