"""Example scans for the report's montage: ages 28-44 weeks (whole head and brain-extracted) and each lesion
type beside its lesion-free twin (same subject, same scan, no lesion)."""

from __future__ import annotations

import numpy as np

from .lesions import INJURY_TYPES
from .volume import synth_volume

#: Ages shown (weeks post-menstrual age) and whether that example is brain-extracted.
AGES = ((28.0, False), (32.0, True), (36.0, False), (40.0, False), (44.0, True))


def _centre(mask: np.ndarray | None) -> tuple[int, ...] | None:
    """A voxel of the lesion mask (the middle of its voxel list), or None without a lesion."""
    if mask is None or not mask.any():
        return None
    idx = np.argwhere(mask)
    return tuple(int(v) for v in idx[len(idx) // 2])


def _planes(img: np.ndarray, mask: np.ndarray | None) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    from ..report import orthogonal_planes

    point = _centre(mask)
    planes = orthogonal_planes(img, point)
    return planes, (orthogonal_planes(mask.astype(np.float32), point) if point is not None else None)


def montage_examples(
    seed: int = 0, voxel_mm: float = 1.2, max_dim: int = 112, twins: bool = True
) -> list[tuple[str, list[np.ndarray], list[np.ndarray] | None]]:
    """Rendered examples on an axis-aligned RAS grid, three planes each, for :func:`report.montage_png`.

    Args:
        seed: base seed (example ``k`` uses ``seed * 100 + k``).
        voxel_mm: voxel size of the examples.
        max_dim: matrix cap per axis.
        twins: also show each lesion example's lesion-free twin.
    Returns:
        ``(title, planes, mask planes or None)`` per example; the planes go through the lesion when there is one.
    """
    out = []
    kw = {"orientation": "RAS", "rotation_deg": 0.0, "voxel_size": voxel_mm, "max_dim": max_dim, "difficulty": 0.3}
    for k, (age, extracted) in enumerate(AGES):
        img, _, _, info = synth_volume(seed * 100 + k, age, (), brain_extracted=extracted, **kw)
        title = (
            f"{age:.0f} w, {'brain-extracted' if extracted else 'whole head'}, no injury "
            f"(brain {info['brain_volume_ml']:.0f} ml)"
        )
        out.append((title, *_planes(img, None)))
    for k, kind in enumerate(INJURY_TYPES):
        s, age = seed * 100 + 10 + k, 34.0 + 2.0 * k
        img, _, mask, info = synth_volume(s, age, (kind,), brain_extracted=False, **kw)
        extra = f", ventricular index {max(info['ventricular_index_mm']):.1f} mm" if kind == "phvd" else ""
        planes, mplanes = _planes(img, mask)
        out.append((f"{age:.0f} w, {kind}{extra}", planes, mplanes))
        if twins:  # the lesion-free twin, cut through the same point
            twin, _, _, tinfo = synth_volume(s, age, (), brain_extracted=False, **kw)
            extra = f", ventricular index {max(tinfo['ventricular_index_mm']):.1f} mm" if kind == "phvd" else ""
            out.append((f"{age:.0f} w, same subject without {kind}{extra}", _planes(twin, mask)[0], None))
    return out
