"""Checking saliency against known lesions: the pointing game and CAM energy inside vs outside a mask.

Both work on the input's own grid (``PredictionResult.cam`` and a lesion mask of the same shape) so that the
tolerance is in millimetres of the real acquisition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths (mm) from a 4x4 voxel-to-world affine."""
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)


def dilate_mm(mask: np.ndarray, affine: np.ndarray, radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of the mask (Euclidean distance in millimetres)."""
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask) > 0
    if radius_mm <= 0 or not mask.any():
        return mask
    return distance_transform_edt(~mask, sampling=voxel_sizes(affine)) <= radius_mm


@dataclass
class SaliencyScore:
    """Pointing-game hit, distance of the CAM peak to the lesion, and CAM energy inside vs outside."""

    hit: bool
    peak_distance_mm: float
    mean_inside: float
    mean_outside: float
    energy_fraction_inside: float
    volume_fraction_inside: float

    @property
    def energy_ratio(self) -> float:
        """Mean CAM inside the lesion over mean CAM outside it (> 1: saliency concentrates on the lesion)."""
        return self.mean_inside / self.mean_outside if self.mean_outside > 0 else float("inf")


def score_saliency(cam: np.ndarray, mask: np.ndarray, affine: np.ndarray, tolerance_mm: float = 5.0) -> SaliencyScore:
    """Pointing game (is the CAM maximum inside the mask dilated by ``tolerance_mm``?) and energy figures."""
    from scipy.ndimage import distance_transform_edt

    cam = np.asarray(cam, dtype=np.float64)
    lesion = np.asarray(mask) > 0
    if cam.shape != lesion.shape:
        raise ValueError(f"CAM shape {cam.shape} differs from mask shape {lesion.shape}")
    if not lesion.any():
        raise ValueError("empty lesion mask: the pointing game needs an injured case")
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    distance = distance_transform_edt(~lesion, sampling=voxel_sizes(affine))
    total = cam.sum()
    return SaliencyScore(
        hit=bool(distance[peak] <= tolerance_mm),
        peak_distance_mm=float(distance[peak]),
        mean_inside=float(cam[lesion].mean()),
        mean_outside=float(cam[~lesion].mean()) if (~lesion).any() else 0.0,
        energy_fraction_inside=float(cam[lesion].sum() / total) if total > 0 else 0.0,
        volume_fraction_inside=float(lesion.mean()),
    )


def pointing_game(scores: list[SaliencyScore]) -> float:
    """Fraction of cases whose CAM maximum hits the (dilated) lesion."""
    return float(np.mean([s.hit for s in scores])) if scores else float("nan")


def pointing_game_interval(scores: list[SaliencyScore], confidence: float = 0.95) -> tuple[float, float]:
    """Wilson confidence interval of the pointing game (few injured cases make it wide); NaNs if no scores."""
    from scipy.stats import binomtest

    if not scores:
        return float("nan"), float("nan")
    ci = binomtest(sum(s.hit for s in scores), len(scores)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)
