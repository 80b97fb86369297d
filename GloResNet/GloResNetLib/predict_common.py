"""What classifier and brain-age prediction share (:mod:`.inference`, :mod:`.age_inference`): the record's
provenance and disclaimer (:func:`provenance`), the TTA views, the network pass with Grad-CAM from the same
pass, the map's upsampling onto the network and input grids, the saliency peak, and the prologue before the
pass (:func:`prepare_pass`).

Grad-CAM needs no second pass: after global average pooling the score is a function of the pooled features
only, so the Grad-CAM channel weights are the gradient of the head with respect to the pooled vector (for a
linear head, the class row of its weight matrix), and the map is ``ReLU(sum_k alpha_k A_k)`` over the CAM
stage ``A`` of the identity view. This is exactly what ``monai.visualize.GradCAM`` computes with a separate
forward and backward pass.
"""

from __future__ import annotations

import functools
import itertools
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from . import fastnet
from .bundle import Bundle, resolve_device
from .disclaimer import DISCLAIMER
from .preprocessing import Preprocessed, preprocess

if TYPE_CHECKING:
    from .models.contracts import Backbone

__all__ = [
    "AXIS_NAMES",
    "flip_batch",
    "gradcam_map",
    "gradcam_weights",
    "head_pass",
    "network_pass",
    "peak_ras",
    "pool_features",
    "prepare_pass",
    "provenance",
    "sync_device",
    "tta_views",
    "upsample_cam",
    "view_name",
]

AXIS_NAMES = "xyz"


def provenance(result: Any) -> dict[str, Any]:
    """The last fields of every prediction record (``PredictionResult`` and ``AgePrediction``): the model, its
    training data and whether it is synthetic, the device, the timings and the research-use disclaimer."""
    return {
        "model": result.model_name,
        "training_data": result.training_data,
        "synthetic_model": result.is_synthetic,
        "device": result.device,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "disclaimer": DISCLAIMER,
    }


def tta_views(axes: list[int] | tuple[int, ...] | None) -> list[tuple[int, ...]]:
    """All combinations of flips over ``axes``, identity first.

    Args:
        axes: flip axes among 0, 1, 2 (x, y, z of the network grid); None or empty: the identity only.
    Returns:
        The views as tuples of flipped axes: [0] -> [(), (0,)]; [0, 1, 2] -> 8 views.
    Raises:
        ValueError: an axis outside 0..2.
    """
    axes = sorted({int(a) for a in (axes or [])})
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"TTA flip axes must be among 0, 1, 2 (got {axes})")
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def view_name(view: tuple[int, ...]) -> str:
    """Readable name of a flip view.

    Args:
        view: the flipped axes, e.g. ``()`` or ``(0,)``.
    Returns:
        ``'identity'``, ``'flip_x'`` (left-right), ``'flip_xz'``, ...
    """
    return "identity" if not view else "flip_" + "".join(AXIS_NAMES[a] for a in view)


def flip_batch(x: torch.Tensor, views: list[tuple[int, ...]]) -> torch.Tensor:
    """Stack flipped copies of one volume.

    Args:
        x: shape (1, C, X, Y, Z).
        views: flip views (:func:`tta_views`).
    Returns:
        Shape (V, C, X, Y, Z), V = len(views), in the order of ``views``.
    """
    return torch.cat([x.flip([2 + a for a in v]) if v else x for v in views], dim=0)


def pool_features(model: Backbone, feats: torch.Tensor) -> torch.Tensor:
    """The vector the model's head takes (:mod:`.models.contracts`).

    Args:
        model: a backbone; its own ``pool_features`` is used when it has one (e.g. slice position embeddings
            and attention pooling), else global average pooling.
        feats: the model's ``features``, shape (B, C, x, y, z).
    Returns:
        Shape (B, C') (C' = C for global average pooling).
    """
    pool = getattr(model, "pool_features", None)
    return pool(feats) if pool is not None else torch.flatten(F.adaptive_avg_pool3d(feats, 1), 1)


def gradcam_weights(model: Backbone, pooled: torch.Tensor, class_idx: int) -> torch.Tensor:
    """Grad-CAM channel weights (up to 1/N) from the head alone: d score_c / d pooled.

    Args:
        model: a backbone (only its ``head`` runs).
        pooled: globally average-pooled features, shape (B, C).
        class_idx: the output c whose score is explained.
    Returns:
        Shape (B, C).
    """
    with torch.enable_grad():
        p = pooled.detach().clone().requires_grad_(True)
        score = model.head(p)[:, class_idx].sum()
        (grad,) = torch.autograd.grad(score, p)
    return grad


def gradcam_map(model: Backbone, feats: torch.Tensor, class_idx: int) -> torch.Tensor:
    """Grad-CAM ``ReLU(sum_k alpha_k A_k)`` of feature maps.

    A model may define ``gradcam(feats, class_idx)`` (e.g. per-slice weights for a slice encoder). For models
    with their own ``pool_features`` the weights are the spatial mean of d score / d A, as in
    ``monai.visualize.GradCAM``; with global average pooling that equals :func:`gradcam_weights`, which needs
    only the head.

    Args:
        model: a backbone (:mod:`.models.contracts`).
        feats: the model's ``features``, shape (B, C, x, y, z).
        class_idx: the output whose score is explained.
    Returns:
        Non-negative maps on the feature grid, shape (B, x, y, z), float32, not normalised.
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


def head_pass(
    model: Backbone, batch: torch.Tensor, cam_output: int | None = None, cam_rows: int = 1
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward pass over a batch: the head's raw outputs, with Grad-CAM from the same pass.

    The features come from :mod:`.fastnet`'s warm inference copy of the model (BatchNorm folded, oneDNN /
    cuDNN-friendly layout) when it applies, else from the model itself.

    Args:
        model: a backbone in eval mode (a classifier, or a one-output age model).
        batch: preprocessed views, shape (B, 1, X, Y, Z).
        cam_output: the output (class) whose Grad-CAM is computed; None: no map.
        cam_rows: how many leading rows (views) get a map.
    Returns:
        Raw outputs (B, K), and raw Grad-CAM maps (cam_rows, x, y, z) on the feature grid or None.
    """
    with torch.inference_mode():
        feats = fastnet.features(model, batch).float()
        pooled = pool_features(model, feats)
    with torch.no_grad():
        raw = model.head(pooled.clone()).float()
    if cam_output is None:
        return raw, None
    feats = feats[:cam_rows].clone()  # a normal tensor: gradients below are taken with autograd
    return raw, gradcam_map(model, feats, cam_output).clone()


def network_pass(
    model: Backbone, batch: torch.Tensor, cam_class: int | None = 1, cam_rows: int = 1
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward pass of a classifier over a batch, with Grad-CAM from the same pass (:func:`head_pass`).

    Args:
        model: a classifier backbone in eval mode.
        batch: preprocessed views, shape (B, 1, X, Y, Z).
        cam_class: the class whose Grad-CAM is computed; None: no map.
        cam_rows: how many leading rows (views) get a map.
    Returns:
        Softmax probabilities (B, K), and raw Grad-CAM maps (cam_rows, x, y, z) on the feature grid or None.
    """
    raw, cam = head_pass(model, batch, cam_class, cam_rows)
    return torch.softmax(raw, dim=1), cam


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
    """A feature-grid map on the network grid and on the input grid, scaled to max 1.

    Equal to trilinear upsampling onto the network grid, division by the maximum, then trilinear
    resampling onto the input grid in storage order (:func:`~.preprocessing.to_input_grid`): both
    resamplings are separable and linear, so each axis's two interpolation matrices are multiplied first
    and the large input-grid map is written once, directly in storage order.

    Args:
        small: a map on the feature grid, shape (x, y, z).
        pre: the preprocessed volume (network grid (X, Y, Z), orientation and the input's shape).
    Returns:
        (map on the network grid (X, Y, Z), C-ordered; map on the input grid (I, J, K) in storage order,
        Fortran-ordered), float32, maximum 1 (or all zero).
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


def sync_device(device: torch.device) -> None:
    """Wait for a CUDA device's queued work (so that timings are true); nothing elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare_pass(
    bundle: Bundle, array: np.ndarray, affine: np.ndarray, device, tta: bool, tta_axes
) -> tuple[torch.device, list, Preprocessed, list[tuple[int, ...]], torch.Tensor, dict[str, float]]:
    """What every prediction does before its network pass (classifier and brain-age bundles alike).

    Args:
        bundle: the loaded bundle.
        array: the volume as stored, shape (I, J, K).
        affine: its 4x4 voxel-to-RAS matrix.
        device: where to run (None: the bundle's device).
        tta: use the flip views; tta_axes: their axes (None: the bundle's).
    Returns:
        (device, the bundle's models on it, the preprocessed volume (tensor kept), the TTA views, the batch
        of flipped views (V, 1, X, Y, Z), timings with ``preprocess`` filled in).
    """
    dev = resolve_device(device) if device is not None else bundle.device
    models = [m.to(dev) for m in bundle.models] if dev != bundle.device else bundle.models
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    pre: Preprocessed = preprocess(array, affine, bundle.preprocess_config, device=dev, keep_tensor=True)
    sync_device(dev)
    timings["preprocess"] = time.perf_counter() - t0
    views = tta_views(bundle.tta_axes if tta_axes is None else tta_axes) if tta else [()]
    return dev, models, pre, views, flip_batch(pre.tensor, views), timings
