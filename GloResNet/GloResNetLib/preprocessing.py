"""Global manifold mapping: the GloResNet preprocessing of a whole T2w volume.

1. reorient to canonical RAS (our addition: storage order cannot change a prediction),
2. resample the *whole* field of view to ``size`` (trilinear, voxel centres aligned, optional anti-aliasing),
3. subject-wise z-score over the whole resampled volume (background included) or over a foreground mask.

Every step keeps the affine exact, so anything computed on the network grid maps back onto the input.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .bundle_schema import NORMALIZATIONS, SIZE_RANGE
from .errors import InputError


@dataclass(frozen=True)
class PreprocessConfig:
    """How a volume becomes the network input; stored in every bundle and re-applied at prediction."""

    size: tuple[int, int, int] = (128, 128, 128)
    reorient: bool = True
    antialias: bool = False
    normalization: str = "zscore"

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in (self.size if np.ndim(self.size) else (self.size,) * 3))
        if len(size) != 3 or min(size) < SIZE_RANGE[0] or max(size) > SIZE_RANGE[1]:
            raise InputError(
                f"preprocessing size {self.size} must be 3 integers between {SIZE_RANGE[0]} and {SIZE_RANGE[1]}"
            )
        object.__setattr__(self, "size", size)
        if self.normalization not in NORMALIZATIONS:
            raise InputError(f"unknown normalization '{self.normalization}' (choose from {NORMALIZATIONS})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (stored in bundle metadata)."""
        d = asdict(self)
        d["size"] = list(self.size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown preprocessing settings {sorted(unknown)}")
        return cls(**{k: tuple(v) if k == "size" else v for k, v in d.items()})


@dataclass
class Preprocessed:
    """The network input ``array`` (X, Y, Z) float32 on the RAS grid with its voxel-to-RAS ``affine``.

    ``orientation`` is the nibabel orientation transform from storage to canonical order and
    ``canonical_shape`` the reoriented input shape; both let results on the network grid map back exactly.
    """

    array: np.ndarray
    affine: np.ndarray
    orientation: np.ndarray = field(repr=False)
    canonical_shape: tuple[int, int, int] = (0, 0, 0)
    tensor: torch.Tensor | None = field(default=None, repr=False)


def _check_layout(array: np.ndarray, name: str) -> None:
    """The checks of :func:`check_volume` that need no pass over the voxels."""
    if not isinstance(array, np.ndarray):
        raise InputError(f"{name}: expected a numpy array, got {type(array).__name__}")
    if array.ndim != 3:
        raise InputError(f"{name}: expected a 3D volume, got shape {array.shape}")
    if array.size == 0 or min(array.shape) < 2:
        raise InputError(f"{name}: empty volume of shape {array.shape}")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise InputError(f"{name}: unsupported voxel type {array.dtype}; expected real scalars")


def _check_range(lo: float, hi: float, count_bad, name: str) -> None:
    """Refuse NaN/Inf (min and max propagate NaN, so finite extremes mean finite voxels) and constants."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError(f"{name}: {int(count_bad())} voxels are NaN or infinite")
    if hi == lo:
        raise InputError(f"{name}: volume is constant (all voxels = {lo:g}); nothing to see")


def check_volume(array: np.ndarray, name: str = "volume") -> None:
    """Refuse arrays that cannot be a T2w volume: not 3D, empty, non-real, NaN/Inf, constant."""
    _check_layout(array, name)
    lo, hi = float(array.min()), float(array.max())
    _check_range(lo, hi, lambda: np.size(array) - np.count_nonzero(np.isfinite(array)), name)


def check_affine(affine: np.ndarray, name: str = "volume") -> np.ndarray:
    """Return ``affine`` as a float64 4x4 matrix, refusing singular or non-finite ones."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{name}: invalid voxel-to-RAS affine (expected a finite invertible 4x4 matrix)")
    return affine


def canonical_orientation(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform taking storage axes to RAS axes (nearest axis, no resampling)."""
    import nibabel.orientations as nio

    return nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt("RAS"))


def reorient(array: np.ndarray, affine: np.ndarray, ornt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply an orientation transform (axis permutation and flips) to an array and its affine, exactly."""
    import nibabel.orientations as nio

    out = nio.apply_orientation(array, ornt)
    return out, affine @ nio.inv_ornt_aff(ornt, array.shape)


def undo_reorient(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of :func:`reorient` for an array in canonical order (back to storage order)."""
    import nibabel.orientations as nio

    return nio.apply_orientation(array, _invert_ornt(ornt))


def _invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """Orientation transform that undoes ``ornt``: storage axis i went to canonical axis ornt[i, 0]."""
    ornt = np.asarray(ornt, dtype=float)
    inv = np.zeros_like(ornt)
    for i, (axis, flip) in enumerate(ornt):
        inv[int(axis)] = [i, flip]
    return inv


def resize_affine(affine: np.ndarray, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    """Affine of a grid of ``out_shape`` voxels covering the same field of view as ``in_shape``.

    Matches ``torch.nn.functional.interpolate(..., align_corners=False)``: output voxel o samples input
    coordinate ``(o + 0.5) * s - 0.5`` with ``s = in / out``.
    """
    scale = np.asarray(in_shape, dtype=np.float64) / np.asarray(out_shape, dtype=np.float64)
    t = np.eye(4)
    t[:3, :3] = np.diag(scale)
    t[:3, 3] = 0.5 * scale - 0.5
    return affine @ t


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def antialias_blur(t: torch.Tensor, scale: tuple[float, ...]) -> torch.Tensor:
    """Separable Gaussian blur of a (B, C, X, Y, Z) tensor before shrinking by ``scale`` (sigma=(s-1)/2)."""
    for axis, s in enumerate(scale):
        sigma = (s - 1.0) / 2.0
        if sigma <= 0.1:
            continue
        k = _gaussian_kernel(sigma).to(t)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = k.numel() // 2
        t = F.conv3d(F.pad(t, pad, mode="replicate"), k.reshape(shape))
    return t


def resample_to(t: torch.Tensor, size: tuple[int, int, int], antialias: bool = False) -> torch.Tensor:
    """Trilinear resize of a (B, C, X, Y, Z) tensor to ``size`` over the whole field of view."""
    if tuple(t.shape[2:]) == tuple(size):
        return t
    if antialias:
        t = antialias_blur(t, tuple(i / o for i, o in zip(t.shape[2:], size)))
    return F.interpolate(t, size=tuple(size), mode="trilinear", align_corners=False)


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of a 1D tensor of intensities."""
    lo, hi = float(values.min()), float(values.max())
    hist = torch.histc(values.float(), bins=bins, min=lo, max=hi).double()
    centers = torch.linspace(lo, hi, bins, dtype=torch.float64, device=hist.device)
    w0 = torch.cumsum(hist, 0)
    w1 = hist.sum() - w0
    m0 = torch.cumsum(hist * centers, 0) / w0.clamp_min(1e-12)
    m1 = ((hist * centers).sum() - torch.cumsum(hist * centers, 0)) / w1.clamp_min(1e-12)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centers[int(torch.argmax(between[:-1]))])


def _zscore_stats(t: torch.Tensor, normalization: str) -> tuple[torch.Tensor, torch.Tensor]:
    values = t.reshape(-1)
    if normalization == "zscore_foreground":
        fg = values[values > otsu_threshold(values)]
        values = fg if fg.numel() > 1 else values
    mean, std = values.mean(), values.std()
    if not torch.isfinite(std) or float(std) < 1e-8:
        raise InputError("volume has no intensity variation after resampling; cannot normalise")
    return mean, std


def zscore(t: torch.Tensor, normalization: str = "zscore") -> torch.Tensor:
    """Subject-wise z-score of a tensor: over all voxels, or over the Otsu foreground."""
    mean, std = _zscore_stats(t, normalization)
    return (t - mean) / std


def _orientation_for(affine: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    return canonical_orientation(affine) if config.reorient else np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


def to_network_grid(volume: np.ndarray, affine: np.ndarray, config: PreprocessConfig | None = None) -> np.ndarray:
    """Bring another volume on the input's grid (e.g. a lesion mask) onto the network grid, without z-score."""
    config = config or PreprocessConfig()
    canon, _ = reorient(np.asarray(volume, dtype=np.float32), check_affine(affine), _orientation_for(affine, config))
    t = torch.from_numpy(np.ascontiguousarray(canon))[None, None]
    return resample_to(t, config.size, config.antialias)[0, 0].numpy()


def memory_order_view(array: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """A view of ``array`` with non-negative strides and its axes in memory order (largest stride first).

    Returns ``(view, perm, flipped)`` with ``view == np.flip(array, flipped).transpose(perm)``: for a
    Fortran-ordered, transposed or flipped array (NIfTI data, Slicer's (k, j, i) arrays, LPS storage) the view
    is C-contiguous, so it reaches torch without a copy.
    """
    flipped = tuple(a for a in range(array.ndim) if array.strides[a] < 0)
    view = np.flip(array, flipped) if flipped else array
    perm = tuple(sorted(range(array.ndim), key=lambda a: -abs(view.strides[a])))
    return view.transpose(perm), perm, flipped


def _float_tensor(view: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """float32 tensor on ``device`` with the values of ``view``, sharing its memory where possible."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # read-only arrays: the tensor is never written to
            t = torch.from_numpy(view)
    except (TypeError, ValueError):  # byte-swapped or types torch lacks
        t = torch.from_numpy(np.ascontiguousarray(view, dtype=np.float32))
    if not t.is_contiguous():
        t = t.contiguous() if t.dtype == torch.float32 else t
    t = t.to(device)  # integers travel before conversion (half the bytes for int16)
    return t.float().contiguous()


def preprocess(
    array: np.ndarray,
    affine: np.ndarray,
    config: PreprocessConfig | None = None,
    device: torch.device | str | None = None,
    keep_tensor: bool = False,
) -> Preprocessed:
    """Global manifold mapping of one volume (array indexed as stored, voxel-to-RAS affine).

    Returns the ``config.size`` float32 network input on the canonical RAS grid with its affine in the
    input's world space. With ``keep_tensor`` the result also holds the (1, 1, X, Y, Z) tensor on ``device``.

    The volume is resampled in its own memory order and the small result permuted and flipped onto the RAS
    grid (interpolation commutes with axis permutations and flips), so the input is never copied on the CPU.
    """
    config = config or PreprocessConfig()
    _check_layout(array, "volume")
    affine = check_affine(affine)
    ornt = _orientation_for(affine, config)
    canon, canon_affine = reorient(array, affine, ornt)
    view, perm, flipped = memory_order_view(canon)
    t = _float_tensor(view, device or "cpu")
    lo, hi = torch.aminmax(t)
    _check_range(float(lo), float(hi), lambda: t.numel() - int(torch.isfinite(t).sum()), "volume")
    t = resample_to(t[None, None], tuple(config.size[a] for a in perm), config.antialias)
    mean, std = _zscore_stats(t, config.normalization)  # same values in any order
    t = t.permute(0, 1, *(2 + int(i) for i in np.argsort(perm)))
    if flipped:
        t = t.flip([2 + a for a in flipped])
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device)  # z-score and reordering in one pass
    t = torch.sub(t, mean, out=out).div_(std)
    out_affine = resize_affine(canon_affine, canon.shape, config.size)
    return Preprocessed(
        array=t[0, 0].cpu().numpy(),
        affine=out_affine,
        orientation=ornt,
        canonical_shape=tuple(int(s) for s in canon.shape),
        tensor=t if keep_tensor else None,
    )


def canonical_to_storage(t: torch.Tensor, ornt: np.ndarray) -> torch.Tensor:
    """Permute and flip the last three (canonical RAS) axes of a tensor into storage order (a view)."""
    ornt = np.asarray(ornt)
    lead = t.dim() - 3
    t = t.permute(*range(lead), *(lead + int(c) for c in ornt[:, 0]))
    flips = [lead + i for i in range(3) if ornt[i, 1] < 0]
    return t.flip(flips) if flips else t


def to_input_grid(volume: torch.Tensor, pre: Preprocessed) -> np.ndarray:
    """Map a (X, Y, Z) tensor on the network grid back onto the input's own grid (storage order).

    The small volume is put in storage order first and then interpolated, which gives the same values as
    interpolating on the canonical grid and reordering the large result, without copying the latter.
    """
    ornt = np.asarray(pre.orientation)
    t = canonical_to_storage(volume.float(), ornt).contiguous()[None, None]
    shape = tuple(int(pre.canonical_shape[int(c)]) for c in ornt[:, 0])
    t = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
    return t[0, 0].cpu().numpy()
