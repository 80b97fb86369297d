"""Neonatal T2-weighted contrast: relative tissue intensities by age, per-subject randomisation and texture.

Pattern (bias-corrected term scan, white matter = 1; REFERENCES.md "Neonatal anatomy facts"): CSF about 1.3,
unmyelinated white matter 1, cortex about 0.72 and deep grey matter about 0.71. Myelination darkens the
brainstem, the posterior limb of the internal capsule and the cerebellar white matter from about 30 weeks to term
and beyond; unmyelinated white matter and cortex differ more in younger brains. Each subject draws its own
intensities around that pattern (:func:`tissue_intensities`), so models cannot key on one fixed grey level.
"""

from __future__ import annotations

import numpy as np

from . import anatomy as A

#: Relative T2 intensity (white matter = 1) at 28 and 40 weeks; linear in age between, extrapolated to 44.
_PATTERN = {
    A.BG: (0.0, 0.0),
    A.CSF: (1.38, 1.3),
    A.VENTRICLE: (1.4, 1.32),
    A.CORTEX: (0.64, 0.72),
    A.WM: (1.0, 1.0),
    A.DGM: (0.7, 0.71),
    A.HIPPO: (0.72, 0.76),
    A.PLIC: (0.95, 0.62),
    A.BRAINSTEM: (0.88, 0.62),
    A.CEREBELLUM: (0.74, 0.74),
    A.CB_WM: (0.9, 0.62),
    A.NONBRAIN: (0.45, 0.45),
    A.SKULL: (0.07, 0.07),
    A.SCALP: (0.75, 0.75),
    A.MUSCLE: (0.42, 0.42),
    A.EYE: (1.35, 1.35),
}
N_LABELS = max(A.TISSUES) + 1


def mean_intensity(label: int, age_weeks: float) -> float:
    """Population relative T2 intensity of ``label`` at ``age_weeks`` (white matter = 1)."""
    a28, a40 = _PATTERN[label]
    return float(a28 + (a40 - a28) * (float(age_weeks) - 28.0) / 12.0)


def tissue_intensities(rng: np.random.Generator, age_weeks: float, spread: float = 0.06) -> np.ndarray:
    """One subject's intensity lookup table: float32 (N_LABELS,), indexed by label.

    Each tissue is the age pattern times a log-normal factor (sd ``spread``), then ordered so that CSF stays
    brightest and cortex darker than white matter, as in every neonatal T2w scan.

    Args:
        rng: the subject's generator.
        age_weeks: post-menstrual age at scan.
        spread: log-sd of the per-tissue factor (0.06 = about 6%; domain randomisation uses more).
    Returns:
        lut: float32 (N_LABELS,) relative intensities.
    """
    lut = np.zeros(N_LABELS, np.float32)
    factors = rng.lognormal(0.0, spread, N_LABELS)
    for label in _PATTERN:
        lut[label] = mean_intensity(label, age_weeks) * factors[label]
    lut[A.VENTRICLE] = lut[A.CSF] * rng.uniform(0.98, 1.04)
    top = lut[A.WM] * 1.12
    lut[A.CSF] = max(lut[A.CSF], top)
    lut[A.VENTRICLE] = max(lut[A.VENTRICLE], top)
    for grey in (A.CORTEX, A.DGM, A.HIPPO, A.CEREBELLUM):
        lut[grey] = min(lut[grey], lut[A.WM] * 0.9)
    return lut


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int = 6) -> np.ndarray:
    """A smooth zero-mean unit-sd random field: float32 of ``shape``, trilinear upsampling of a coarse grid."""
    from scipy import ndimage

    small = rng.standard_normal((coarse,) * len(shape)).astype(np.float32)
    field = ndimage.zoom(small, [s / coarse for s in shape], order=1, mode="nearest", prefilter=False)
    field = field[tuple(slice(0, s) for s in shape)]
    pad = [(0, s - f) for s, f in zip(shape, field.shape, strict=True)]
    field = np.pad(field, pad, mode="edge")
    sd = float(field.std()) or 1.0
    return ((field - field.mean()) / sd).astype(np.float32)
