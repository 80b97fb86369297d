"""Preterm brain injuries placed in the template anatomy, each drawn with its own mask.

Types (label rule: any of them = brain injury):

- ``pwml`` punctate white-matter lesions: small T2-hypointense foci in periventricular white matter and the
  centrum semiovale, often clustered;
- ``ivh`` germinal-matrix / intraventricular haemorrhage: hypointense blood at the caudothalamic groove and a clot
  layering in the dependent (occipital) part of a lateral ventricle (the infant lies supine);
- ``phvd`` post-haemorrhagic ventricular dilatation: ventricles enlarged by pushing the surrounding anatomy
  outwards (a displacement field, :mod:`.volume`); its mask is the dilated part;
- ``cpvl`` cystic periventricular leukomalacia: T2-bright cysts in periventricular white matter near the
  trigones or frontal horns;
- ``cbh`` cerebellar haemorrhage: a hypointense focus in a cerebellar hemisphere.

Positions are drawn from the template's own tissue labels (so a lesion starts in its intended tissue) and each
lesion is evaluated at the scan's voxels in template coordinates, clipped to its host tissues there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import anatomy as A
from .common import input_error

INJURY_TYPES = ("pwml", "ivh", "phvd", "cpvl", "cbh")
INJURY_DESCRIPTIONS = {
    "pwml": "punctate white-matter lesions: small T2-hypointense foci in periventricular white matter and the "
    "centrum semiovale",
    "ivh": "germinal-matrix / intraventricular haemorrhage: T2-hypointense blood at the caudothalamic groove and "
    "clot layering in the occipital horn of a lateral ventricle",
    "phvd": "post-haemorrhagic ventricular dilatation: ventricles enlarged by deformation of the surrounding "
    "anatomy (mask = the dilated part; ventricular index recorded)",
    "cpvl": "cystic periventricular leukomalacia: T2-hyperintense cysts in periventricular white matter",
    "cbh": "cerebellar haemorrhage: a T2-hypointense focus in a cerebellar hemisphere",
}
#: Lesion size factor at difficulty 0 and 1 (multiplies the radii drawn per type, in neonatal mm).
LESION_SIZE = (2.6, 0.8)
#: Host tissues each lesion kind may occupy (the mask is clipped to them).
HOSTS = {
    "pwml": (A.WM,),
    "cpvl": (A.WM,),
    "gmh": (A.DGM, A.VENTRICLE, A.WM),
    "clot": (A.VENTRICLE,),
    "cbh": (A.CEREBELLUM, A.CB_WM),
}


def check_injuries(injuries: Sequence[str] | str | None) -> tuple[str, ...]:
    """Normalise injury names (``"pwml+ivh"`` or a list) to the canonical order; refuse unknown ones."""
    if injuries is None:
        return ()
    if isinstance(injuries, str):
        injuries = [s for s in injuries.replace("+", ",").split(",") if s.strip()]
    out = {str(s).strip().lower() for s in injuries}
    bad = sorted(s for s in out if s not in INJURY_TYPES)
    if bad:
        raise input_error(f"unknown injury type(s) {bad}; expected some of {list(INJURY_TYPES)}")
    return tuple(s for s in INJURY_TYPES if s in out)


@dataclass
class Lesion:
    """One focal lesion: an ellipsoid in template mm with a target relative intensity (white matter = 1)."""

    kind: str
    part: str
    centre: np.ndarray
    radii: np.ndarray
    intensity: float


def size_factor(difficulty: float) -> float:
    lo, hi = LESION_SIZE
    return lo + (hi - lo) * float(difficulty)


def _candidates(t: A.Template, where: str) -> np.ndarray:
    """Template-mm positions (N, 3) of the voxels where a lesion part may be centred (memoised on ``t``)."""
    if where not in t.cache:
        t.cache[where] = _find_candidates(t, where)
    return t.cache[where]


def _find_candidates(t: A.Template, where: str) -> np.ndarray:
    lab, vent = t.labels, t.ventricle_mm
    idx = np.indices(lab.shape, sparse=True)
    x, y, z = (t.affine[a, a] * idx[a] + t.affine[a, 3] for a in range(3))
    if where == "pwml":
        ok = (lab == A.WM) & (((vent > 3) & (vent < 16)) | ((z > 22) & (vent < 28))) & (t.outside_mm <= 0)
    elif where == "cpvl":
        ok = (lab == A.WM) & (vent > 2) & (vent < 10) & ((y < -22) | (y > 8))
    elif where == "gmh":
        ok = (lab == A.DGM) & (vent < 3.5) & (y > -14) & (y < 8)
    elif where == "clot":
        ok = (lab == A.VENTRICLE) & (y < -30) & (np.abs(x) > 8)
    elif where == "cbh":
        ok = np.isin(lab, (A.CEREBELLUM, A.CB_WM)) & (np.abs(x) > 14)
    else:  # pragma: no cover - internal
        raise ValueError(where)
    ijk = np.argwhere(ok).astype(np.float64)
    if len(ijk) == 0:
        raise input_error(f"the anatomy has no place for a '{where}' lesion (tissue missing from its label map)")
    return (ijk @ t.affine[:3, :3].T + t.affine[:3, 3]).astype(np.float32)


def _pick(rng: np.random.Generator, t: A.Template, where: str) -> np.ndarray:
    pts = _candidates(t, where)
    return pts[int(rng.integers(len(pts)))].astype(np.float64)


def place_lesions(
    rng: np.random.Generator, t: A.Template, injuries: tuple[str, ...], scale: float, difficulty: float
) -> list[Lesion]:
    """Draw the focal lesions of ``injuries`` (``phvd`` has none: it is a deformation).

    Args:
        rng: the subject's lesion generator.
        t: the subject's template (step 1).
        injuries: injury types.
        scale: neonatal mm per template mm.
        difficulty: 0 (large, conspicuous) to 1 (small, faint).
    Returns:
        lesions with centres and radii in template mm.
    """
    size = size_factor(difficulty) / scale  # neonatal mm -> template mm, times the difficulty factor
    faint = float(difficulty)
    out: list[Lesion] = []
    if "pwml" in injuries:
        n_clusters = int(rng.integers(1, 4))
        for _ in range(n_clusters):
            anchor = _pick(rng, t, "pwml")
            for k in range(int(rng.integers(3, 7))):
                c = anchor + (rng.normal(0.0, 3.0, 3) * size if k else 0.0)
                r = rng.uniform(1.2, 2.4) * size * rng.uniform(0.8, 1.2, 3)
                out.append(Lesion("pwml", "focus", c, r, rng.uniform(0.15, 0.3) + 0.35 * faint))
    if "cpvl" in injuries:
        for _ in range(int(rng.integers(1, 3))):
            anchor = _pick(rng, t, "cpvl")
            for k in range(int(rng.integers(2, 6))):
                c = anchor + (rng.normal(0.0, 3.5, 3) * size if k else 0.0)
                r = rng.uniform(1.5, 3.5) * size * rng.uniform(0.85, 1.15, 3)
                out.append(Lesion("cpvl", "cyst", c, r, rng.uniform(1.25, 1.4) - 0.15 * faint))
    if "ivh" in injuries:
        sides = 2 if rng.random() < 0.3 else 1
        for _ in range(sides):
            c = _pick(rng, t, "gmh")
            out.append(
                Lesion(
                    "ivh",
                    "gmh",
                    c,
                    rng.uniform(2.5, 4.5) * size * np.array([1.0, 1.3, 1.0]),
                    rng.uniform(0.12, 0.25) + 0.3 * faint,
                )
            )
            if rng.random() < 0.75:
                clot = _pick(rng, t, "clot")
                clot[2] -= 2.0  # layering: the clot sits in the lowest part of the horn
                out.append(
                    Lesion(
                        "ivh",
                        "clot",
                        clot,
                        rng.uniform(4.5, 8.0) * size * np.ones(3),
                        rng.uniform(0.15, 0.3) + 0.3 * faint,
                    )
                )
    if "cbh" in injuries:
        c = _pick(rng, t, "cbh")
        out.append(
            Lesion(
                "cbh",
                "cbh",
                c,
                rng.uniform(3.0, 5.0) * size * rng.uniform(0.85, 1.15, 3),
                rng.uniform(0.12, 0.25) + 0.3 * faint,
            )
        )
    return out


def paint(lesions: list[Lesion], q: np.ndarray, labels: np.ndarray, image: np.ndarray, voxel_t: float) -> np.ndarray:
    """Blend ``lesions`` into ``image`` (in place) and return their mask.

    Args:
        lesions: from :func:`place_lesions`.
        q: float32 (3, N) template-mm position of each scan voxel (flattened).
        labels: uint8 (N,) tissue label of each voxel (before lesions).
        image: float32 (N,) relative intensities, modified in place.
        voxel_t: scan voxel size in template mm (width of the partial-volume edge).
    Returns:
        mask: bool (N,) voxels at least half inside a lesion (within its host tissue); a lesion smaller than a
            voxel marks the voxel nearest its centre.
    """
    mask = np.zeros(labels.shape, bool)
    for les in lesions:
        reach = float(les.radii.max()) + voxel_t
        near = np.all(np.abs(q - les.centre[:, None].astype(np.float32)) < reach, axis=0)
        idx = np.nonzero(near)[0]
        if idx.size == 0:
            continue
        d = (q[:, idx] - les.centre[:, None]) / les.radii[:, None]
        rho = np.sqrt((d * d).sum(0))
        # signed distance to the surface (template mm, negative inside), first order; partial volume over a voxel
        sdf = (rho - 1.0) * float(les.radii.min())
        frac = np.clip(0.5 - sdf / max(voxel_t, 1e-3), 0.0, 1.0)
        frac *= np.isin(labels[idx], HOSTS[les.part if les.part in HOSTS else les.kind])
        image[idx] = image[idx] * (1.0 - frac) + np.float32(les.intensity) * frac
        inside = frac >= 0.5
        if not inside.any() and frac.max() > 0:  # a sub-voxel focus still marks the voxel that holds most of it
            inside = frac == frac.max()
        mask[idx] |= inside
    return mask
