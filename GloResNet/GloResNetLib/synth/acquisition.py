"""MR acquisition artefacts applied to a rendered scan (intensity domain randomisation).

MONAI's randomised transforms do the work where they exist (``RandBiasField``, ``RandAdjustContrast`` for gamma,
``RandGibbsNoise``, ``RandRicianNoise``), each seeded from the scan's own generator so that a seed gives the same
volume. Two effects MONAI lacks are written here: the slice profile of thick slices (partial volume along the
slice axis: a Gaussian of the slice thickness's FWHM) and motion ghosting (k-space lines taken from a shifted
copy of the image, as when the head moves between phase-encoding steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Artefacts:
    """One scan's drawn artefact settings."""

    gain: float
    noise_sd: float
    bias_coeff: float
    gamma: float
    gibbs_alpha: float
    ghost_fraction: float
    ghost_axis: int
    brain_extracted: bool
    seeds: tuple[int, ...]


def draw_artefacts(
    rng: np.random.Generator, *, quality_fail: bool = False, strength: float = 1.0, brain_extracted: bool | None = None
) -> Artefacts:
    """Draw artefact settings; ``strength`` 0 turns the random ones off (noise stays), 1 is the default."""
    s = float(strength)
    art = Artefacts(
        gain=float(rng.uniform(800.0, 2000.0)),
        noise_sd=float(rng.uniform(0.01, 0.04)),
        bias_coeff=float(rng.uniform(0.05, 0.35) * s),
        gamma=float(np.exp(rng.normal(0.0, 0.15 * s))),
        gibbs_alpha=float(rng.uniform(0.0, 0.45) * s) if rng.random() < 0.3 else 0.0,
        ghost_fraction=float(rng.uniform(0.02, 0.08) * s) if rng.random() < 0.15 else 0.0,
        ghost_axis=int(rng.integers(0, 3)),
        brain_extracted=bool(rng.random() < 0.3),
        seeds=tuple(int(v) for v in rng.integers(0, 2**31 - 1, 4)),
    )
    if brain_extracted is not None:
        art.brain_extracted = bool(brain_extracted)
    if quality_fail:  # failed quality control: strong motion
        art.ghost_fraction, art.noise_sd = 0.35, art.noise_sd * 2.0
    return art


def slice_profile(image: np.ndarray, voxel_size, thickness: float | None = None) -> np.ndarray:
    """Partial volume along the slice axis: Gaussian slice profile of FWHM ``thickness`` (default: voxel).

    Args:
        image: float32 (I, J, K), rendered at the scan's voxel centres.
        voxel_size: (3,) mm.
        thickness: slice thickness (mm) of the third axis; None = that voxel size.
    Returns:
        float32 (I, J, K).
    """
    vox = np.asarray(voxel_size, float)
    fwhm = np.array([vox[0], vox[1], thickness or vox[2]]) / vox  # in voxels; in-plane: one voxel
    return ndimage.gaussian_filter(image, fwhm / 2.355 * 0.8, mode="nearest").astype(np.float32)


def ghosting(image: np.ndarray, fraction: float, axis: int, rng: np.random.Generator) -> np.ndarray:
    """Motion ghosts along the phase-encoding ``axis``: a random subset of k-space lines from a shifted copy."""
    if fraction <= 0.0:
        return image
    k = np.fft.fftn(image)
    shift = [0, 0, 0]
    shift[(axis + 1) % 3] = int(rng.integers(2, 5))
    moved = np.fft.fftn(np.roll(image, shift, axis=(0, 1, 2)))
    n = image.shape[axis]
    lines = rng.random(n) < fraction
    sel = [slice(None)] * 3
    sel[axis] = lines
    k[tuple(sel)] = moved[tuple(sel)]
    return np.abs(np.fft.ifftn(k)).astype(np.float32)


def apply(image: np.ndarray, art: Artefacts, brain_mask: np.ndarray | None = None) -> np.ndarray:
    """Bias field, gamma, Gibbs ringing, ghosting, scanner gain and Rician noise (in that order).

    Args:
        image: float32 (I, J, K) relative intensities (white matter about 1), slice profile already applied.
        art: from :func:`draw_artefacts`.
        brain_mask: bool (I, J, K); with ``art.brain_extracted`` everything outside it is set to 0 after the
            artefacts (as a brain-extraction tool would), noise included.
    Returns:
        float32 (I, J, K) scanner-like intensities (hundreds to thousands).
    """
    from monai.transforms import RandAdjustContrast, RandBiasField, RandGibbsNoise, RandRicianNoise

    x = image[None].astype(np.float32)
    if art.bias_coeff > 0:
        t = RandBiasField(degree=3, coeff_range=(art.bias_coeff * 0.5, art.bias_coeff), prob=1.0)
        t.set_random_state(art.seeds[0])
        x = np.asarray(t(x), dtype=np.float32)
    if abs(art.gamma - 1.0) > 1e-3:
        # min-max gamma (not retain_stats): zero background stays zero
        t = RandAdjustContrast(prob=1.0, gamma=(art.gamma, art.gamma), retain_stats=False)
        t.set_random_state(art.seeds[1])
        x = np.asarray(t(np.maximum(x, 0.0)), dtype=np.float32)
    if art.gibbs_alpha > 0:
        t = RandGibbsNoise(prob=1.0, alpha=(art.gibbs_alpha, art.gibbs_alpha))
        t.set_random_state(art.seeds[2])
        x = np.asarray(t(x), dtype=np.float32)
    x = ghosting(x[0], art.ghost_fraction, art.ghost_axis, np.random.default_rng(art.seeds[3]))[None]
    x *= np.float32(art.gain)
    if art.noise_sd > 0:
        t = RandRicianNoise(prob=1.0, std=art.noise_sd * art.gain, sample_std=False)
        t.set_random_state(art.seeds[3])
        x = np.asarray(t(x), dtype=np.float32)
    x = x[0]
    if art.brain_extracted and brain_mask is not None:
        x = x * brain_mask
    return np.ascontiguousarray(x, dtype=np.float32)
