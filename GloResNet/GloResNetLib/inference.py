"""Prediction with test-time augmentation and Grad-CAM taken from the same network pass.

All TTA views go through the network as one batch. Grad-CAM needs no second pass: after global average
pooling the score is a function of the pooled features only, so the Grad-CAM channel weights are the gradient
of the head with respect to the pooled vector (for a linear head, the class row of its weight matrix), and
the map is ``ReLU(sum_k alpha_k A_k)`` over the last convolutional stage ``A`` of the identity view. This is
exactly what ``monai.visualize.GradCAM`` computes with a separate forward and backward pass.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from . import fastnet
from .bundle import Bundle, resolve_device
from .errors import BundleError
from .io import read_volume
from .preprocessing import Preprocessed, preprocess

if TYPE_CHECKING:
    from .age_inference import AgePrediction

DISCLAIMER = "Research use only. Not a medical device; not for clinical decisions."
AXIS_NAMES = "xyz"
#: Saliency methods of :func:`predict`: Grad-CAM, occlusion sensitivity (:mod:`.occlusion`) or both.
SALIENCY_METHODS = ("gradcam", "occlusion", "both")


def tta_views(axes: list[int] | tuple[int, ...] | None) -> list[tuple[int, ...]]:
    """All combinations of flips over ``axes`` (identity first): [0] -> [(), (0,)]; [0,1,2] -> 8 views."""
    axes = sorted({int(a) for a in (axes or [])})
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"TTA flip axes must be among 0, 1, 2 (got {axes})")
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def view_name(view: tuple[int, ...]) -> str:
    """Readable name of a flip view: () -> 'identity', (0,) -> 'flip_x' (left-right)."""
    return "identity" if not view else "flip_" + "".join(AXIS_NAMES[a] for a in view)


def flip_batch(x: torch.Tensor, views: list[tuple[int, ...]]) -> torch.Tensor:
    """Stack flipped copies of a (1, C, X, Y, Z) tensor: (len(views), C, X, Y, Z)."""
    return torch.cat([x.flip([2 + a for a in v]) if v else x for v in views], dim=0)


def pool_features(model: torch.nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """The vector the model's head takes: ``model.pool_features(feats)`` when the model defines it (e.g. slice
    position embeddings and attention pooling), else global average pooling (B, C, x, y, z) -> (B, C)."""
    pool = getattr(model, "pool_features", None)
    return pool(feats) if pool is not None else torch.flatten(F.adaptive_avg_pool3d(feats, 1), 1)


def gradcam_weights(model: torch.nn.Module, pooled: torch.Tensor, class_idx: int) -> torch.Tensor:
    """d score_c / d pooled for each row of ``pooled`` (B, C): Grad-CAM channel weights up to 1/N."""
    with torch.enable_grad():
        p = pooled.detach().clone().requires_grad_(True)
        score = model.head(p)[:, class_idx].sum()
        (grad,) = torch.autograd.grad(score, p)
    return grad


def gradcam_map(model: torch.nn.Module, feats: torch.Tensor, class_idx: int) -> torch.Tensor:
    """Grad-CAM ``ReLU(sum_k alpha_k A_k)`` of feature maps ``feats`` (B, C, x, y, z) -> (B, x, y, z).

    A model may define ``gradcam(feats, class_idx)`` (e.g. per-slice weights for a slice encoder). For models
    with their own ``pool_features`` the weights are the spatial mean of d score / d A, as in
    ``monai.visualize.GradCAM``; with global average pooling that equals :func:`gradcam_weights`, which needs
    only the head.
    """
    own = getattr(model, "gradcam", None)
    if own is not None:
        with torch.enable_grad():
            return own(feats.detach().clone(), class_idx).detach()
    if getattr(model, "pool_features", None) is not None:
        with torch.enable_grad():
            a = feats.detach().clone().requires_grad_(True)
            score = model.head(model.pool_features(a))[:, class_idx].sum()
            (grad,) = torch.autograd.grad(score, a)
        alpha = grad.flatten(2).mean(2)
    else:
        alpha = gradcam_weights(model, pool_features(model, feats), class_idx)
    with torch.inference_mode():
        return F.relu(torch.einsum("bc,bcxyz->bxyz", alpha.to(feats.dtype), feats).float())


def network_pass(model: torch.nn.Module, batch: torch.Tensor, cam_class: int | None = 1,
                 cam_rows: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward pass over a batch: softmax probabilities (B, K) and raw Grad-CAM maps of the first
    ``cam_rows`` rows, (cam_rows, x, y, z) on the feature grid (or None when ``cam_class`` is None).

    The features come from :mod:`.fastnet`'s warm inference copy of the model (BatchNorm folded, oneDNN /
    cuDNN-friendly layout) when it applies, else from the model itself."""
    with torch.inference_mode():
        feats = fastnet.features(model, batch).float()
        pooled = pool_features(model, feats)
    with torch.no_grad():
        probs = torch.softmax(model.head(pooled.clone()).float(), dim=1)
    if cam_class is None:
        return probs, None
    feats = feats[:cam_rows].clone()  # a normal tensor: gradients below are taken with autograd
    return probs, gradcam_map(model, feats, cam_class).clone()


@functools.lru_cache(maxsize=32)
def _interp_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of 1D linear interpolation as ``F.interpolate(align_corners=False)``
    does it (trilinear interpolation is the tensor product of three of these)."""
    eye = torch.eye(n_in, dtype=torch.float64)[None]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


def _separable(small: torch.Tensor, mats: list[torch.Tensor]) -> torch.Tensor:
    """``small`` (a, b, c) times a matrix along each axis: mats[0] (A, a), mats[1] (B, b), mats[2] (C, c)."""
    t = small @ mats[2].T  # (a, b, C)
    t = mats[1] @ t  # (a, B, C)
    return (mats[0] @ t.reshape(t.shape[0], -1)).reshape(mats[0].shape[0], *t.shape[1:])


def upsample_cam(small: torch.Tensor, pre: Preprocessed) -> tuple[np.ndarray, np.ndarray]:
    """Feature-grid map -> (map on the network grid scaled to max 1, the same on the input grid).

    Equal to trilinear upsampling onto the network grid, division by the maximum, then trilinear
    resampling onto the input grid in storage order (:func:`~.preprocessing.to_input_grid`): both
    resamplings are separable and linear, so each axis's two interpolation matrices are multiplied first
    and the large input-grid map is written once, directly in storage order.
    """
    dev = small.device
    net_shape = pre.array.shape
    up = [_interp_matrix(n, m) for n, m in zip(small.shape, net_shape)]  # network grid <- feature grid
    cam_net = _separable(small.float(), [u.to(dev, torch.float32) for u in up])
    peak = float(cam_net.max())
    scale = 1.0 / peak if peak > 0 else 1.0
    cam_net = cam_net * scale
    ornt = np.asarray(pre.orientation)
    mats = []
    for i, (axis, flip) in enumerate(ornt):  # storage axis i is canonical axis `axis`, maybe reversed
        a = int(axis)
        m = _interp_matrix(net_shape[a], pre.canonical_shape[a]) @ up[a]  # input grid <- feature grid
        m = m.flip(0) if flip < 0 else m
        mats.append((m * scale if i == 0 else m).to(dev, torch.float32))
    # computed as its transpose so that the result is Fortran-ordered like NIfTI data: written to disk
    # without reordering, and its transpose is the C-ordered (k, j, i) array 3D Slicer takes
    order = [int(a) for a in ornt[::-1, 0]]
    cam_in = _separable(small.float().permute(*order), mats[::-1])  # flips are in mats
    return cam_net.cpu().numpy(), _host_array(cam_in).T


def _host_array(t: torch.Tensor) -> np.ndarray:
    """numpy copy of a tensor; from a GPU through page-locked memory (faster for large maps)."""
    if t.device.type == "cuda":
        try:
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            return host.copy_(t).numpy()
        except RuntimeError:
            pass
    return t.cpu().numpy()


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
            "occlusion_peak_ras": self.occlusion_peak_ras(),
            "occlusion_max_drop": (round(float(self.occlusion_network.max()), 6)
                                   if self.occlusion_network is not None else None),
            "model": self.model_name,
            "training_data": self.training_data,
            "synthetic_model": self.is_synthetic,
            "device": self.device,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "disclaimer": DISCLAIMER,
        }


def peak_ras(volume: np.ndarray | None, affine: np.ndarray) -> list[float] | None:
    """World (RAS, mm) position of a map's maximum: the centroid of the voxels within 2% of it, so that a flat
    peak gives the same point whatever the storage order.

    Args:
        volume: (I, J, K) map on the grid of ``affine`` (C- or Fortran-ordered), or None.
        affine: 4x4 voxel-to-RAS matrix.

    Returns:
        [R, A, S] in mm, or None for no map or one without a positive maximum.
    """
    if volume is None:
        return None
    peak = float(volume.max())
    if not peak > 0:
        return None
    # scan in memory order (a Fortran-ordered map's transpose has indices (k, j, i))
    fortran = volume.flags.f_contiguous and not volume.flags.c_contiguous
    ijk = np.argwhere((volume.T if fortran else volume) >= 0.98 * peak).mean(axis=0)
    ijk = ijk[::-1] if fortran else ijk
    return [float(v) for v in (np.asarray(affine) @ np.array([*ijk, 1.0]))[:3]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare_pass(bundle: Bundle, array: np.ndarray, affine: np.ndarray, device, tta: bool, tta_axes
                 ) -> tuple[torch.device, list, Preprocessed, list[tuple[int, ...]], torch.Tensor, dict[str, float]]:
    """What every prediction does before its network pass (classifier and brain-age bundles alike).

    Returns:
        (device, the bundle's models on it, the preprocessed volume (tensor kept), the TTA views, the batch
        of flipped views (V, 1, X, Y, Z), timings with ``preprocess`` filled in).
    """
    dev = resolve_device(device) if device is not None else bundle.device
    models = [m.to(dev) for m in bundle.models] if dev != bundle.device else bundle.models
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    pre: Preprocessed = preprocess(array, affine, bundle.preprocess_config, device=dev, keep_tensor=True)
    _sync(dev)
    timings["preprocess"] = time.perf_counter() - t0
    views = tta_views(bundle.tta_axes if tta_axes is None else tta_axes) if tta else [()]
    return dev, models, pre, views, flip_batch(pre.tensor, views), timings


def predict(bundle: Bundle, array: np.ndarray, affine: np.ndarray, tta: bool = True, cam: bool = True,
            device: str | torch.device | None = None, tta_axes: list[int] | None = None,
            cam_class: int = 1, saliency: str = "gradcam", occlusion: Any = None,
            progress: Callable[[int, int], None] | None = None) -> PredictionResult | AgePrediction:
    """Predict brain injury for one volume (array indexed as stored, 4x4 voxel-to-RAS affine).

    ``saliency`` (with ``cam=True``): ``"gradcam"`` (``result.cam``), ``"occlusion"`` (``result.occlusion``: the
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
    """
    if saliency not in SALIENCY_METHODS:
        raise ValueError(f"saliency must be one of {', '.join(SALIENCY_METHODS)} (got {saliency!r})")
    if bundle.task != "classification":
        if cam and saliency != "gradcam":
            raise BundleError(f"model '{bundle.name}' is a brain-age bundle: its saliency is Grad-CAM only "
                              "(occlusion sensitivity is for classifiers)")
        from .age_inference import predict_age

        return predict_age(bundle, array, affine, tta=tta, cam=cam, device=device, tta_axes=tta_axes)
    gradcam, occ = cam and saliency in ("gradcam", "both"), cam and saliency in ("occlusion", "both")
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
    _sync(dev)
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
        _sync(dev)
        if not (np.isfinite(occ_network).all() and np.isfinite(occ_input).all()):
            raise BundleError(f"model '{bundle.name}' gave a NaN or infinite occlusion map; no result reported")
        timings["occlusion"] = time.perf_counter() - t0

    probability = float(view_probs.mean())
    label = int(probability >= bundle.threshold)
    names = bundle.metadata.get("class_names", ["no BI", "BI"])
    return PredictionResult(
        probability=probability, label=label, label_name=str(names[label]), threshold=bundle.threshold,
        view_probabilities={view_name(v): float(p) for v, p in zip(views, view_probs)},
        model_probabilities=[float(p) for p in model_probs],
        spread=float(view_probs.max() - view_probs.min()) if len(views) > 1 else 0.0,
        resampled=pre.array, resampled_affine=pre.affine, input_affine=np.asarray(affine, dtype=np.float64),
        cam=cam_input, cam_network=cam_network, occlusion=occ_input, occlusion_network=occ_network,
        model_name=bundle.name, device=str(dev),
        training_data=bundle.training_data, timings=timings)


def predict_file(bundle: Bundle, path: str | os.PathLike, **kwargs: Any) -> PredictionResult:
    """Read a volume file and :func:`predict` it; the read time is reported as ``timings['load']``."""
    t0 = time.perf_counter()
    array, affine = read_volume(path)
    load = time.perf_counter() - t0
    result = predict(bundle, array, affine, **kwargs)
    result.timings = {"load": load, **result.timings}
    return result
