"""Synthetic neonatal T2-weighted MRI cohort: demonstration and test data only, not for clinical use.

The anatomy is a set of analytic shapes (ellipsoids, cylinders, a folded cortical ribbon) in a head frame
(millimetres, RAS axes, origin near the brain centre) evaluated directly at the world position of every voxel,
with soft edges one voxel wide so that small structures get partial-volume intensities. Neonatal T2w contrast:
CSF brightest, unmyelinated white matter bright, cortex and deep grey matter dark; brain size, folding and
myelination change with post-menstrual age. Each scan gets its own voxel size, matrix, field of view, storage
orientation (RAS, LPS, permuted axes, sometimes oblique), small head rotation, bias field and Rician noise;
its NIfTI affine places the anatomy at the same world position whatever the storage order.

Injuries of preterm infants, optional and mixed: punctate white-matter lesions (``pwml``), germinal-matrix /
intraventricular haemorrhage (``ivh``), post-haemorrhagic ventricular dilatation (``phvd``) and cystic
periventricular leukomalacia (``cpvl``). ``difficulty`` in [0, 1] makes them smaller and fainter.

A diffuse white-matter component (slight volume loss with larger ventricles and extra-axial CSF, brighter
white matter, a little less folding; like the diffuse excessive high signal intensity often seen in infants
born preterm) is drawn for a fraction :data:`DIFFUSE_FRACTION` of *all* subjects, injured or not, and is not
part of the lesion mask. As in dHCP's radiology scores, the label depends on the focal injuries only.

Since generator 1.1.0 the lesions are the main signal (so that Grad-CAM can be checked against the masks):
lesion radii scale by :data:`LESION_SIZE` (2.2 at difficulty 0 down to 0.6 at 1; was 1.6 to 0.6), PWML are
darker (:data:`PWML_TARGET`, was 0.18-0.28), cluster around an anchor focus of several millimetres, and the
diffuse component has weight :data:`DIFFUSE_WEIGHT` = 0.4 (was 1). Until 1.2.0 every injured brain and no
healthy one had the diffuse component: a label cue outside the lesion mask, which classifiers learned and
which drew their saliency away from the lesions. The default difficulty stays 0.3; ``gloresnet demo`` uses
difficulty 0.

Randomness: everything about subject ``i`` comes from generators seeded by ``(seed, i, ...)``, so a volume
never depends on the other subjects and the same seed gives byte-identical arrays.
"""

from __future__ import annotations

import argparse
import csv
import io as _io
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GENERATOR_VERSION = "1.2.0"
DISCLAIMER = "synthetic data, demonstration only, not for clinical use"
DEFAULT_DIFFICULTY = 0.3
DEFAULT_MAX_DIM = 144
DEFAULT_BI_FRACTION = 0.42
#: Lesion conspicuity knobs. Lesion size factor at difficulty 0 and 1 (radii in mm are drawn per type and
#: multiplied by it), PWML intensity (relative to CSF = 1; white matter is about 0.6-0.8), and the weight of
#: the diffuse component (not in the lesion mask), and the fraction of subjects (either class) who have it.
LESION_SIZE = (2.2, 0.6)
PWML_TARGET = (0.1, 0.2)
DIFFUSE_WEIGHT = 0.4
DIFFUSE_FRACTION = 0.35
DEFAULT_SECOND_SESSION_FRACTION = 0.2
INJURY_TYPES = ("pwml", "ivh", "phvd", "cpvl")
INJURY_DESCRIPTIONS = {
    "pwml": "punctate white-matter lesions: small T2-hypointense foci in periventricular white matter",
    "ivh": "germinal-matrix / intraventricular haemorrhage: T2-hypointense blood at the caudothalamic "
           "groove and clot in the dependent (occipital) part of the lateral ventricle",
    "phvd": "post-haemorrhagic ventricular dilatation: enlarged ventricles (mask = the dilated part)",
    "cpvl": "cystic periventricular leukomalacia: clusters of T2-hyperintense cysts in periventricular "
            "white matter",
}
LABEL_RULE = (
    "label 1 (BI) if the synthetic subject was given at least one focal injury (pwml, ivh, phvd, cpvl), else 0 "
    "(no BI); every session of an injured subject is injured. The diffuse white-matter component (about "
    f"{DIFFUSE_FRACTION:.0%} of subjects of either class) does not count. In the dHCP-style layout "
    "radiology_score is 1-2 for no BI, 3-5 for BI, and 'Q' for sessions that failed quality control "
    "(motion artefacts; not in manifest.csv)."
)
#: Tissue labels of the label map returned in ``info["labels"]`` (dHCP draw-em 9-tissue numbering).
LABELS = {0: "background", 1: "csf", 2: "cortical_grey_matter", 3: "white_matter", 4: "non_brain",
          5: "ventricles", 6: "cerebellum", 7: "deep_grey_matter", 8: "brainstem"}
CSF, CORTEX, WM, NONBRAIN, VENTRICLE, CEREBELLUM, DGM, BRAINSTEM = 1, 2, 3, 4, 5, 6, 7, 8

#: Storage orientations (nibabel axis codes) drawn for random scans, with weights.
ORIENTATIONS = {"RAS": 0.3, "LAS": 0.1, "LPS": 0.2, "LPI": 0.05, "RPI": 0.05, "PSR": 0.06, "ASL": 0.06,
                "PIR": 0.04, "RSP": 0.05, "LIP": 0.05, "SRA": 0.04}
_AXIS_CODES = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
MANIFEST_COLUMNS = ("path", "label", "subject", "session", "age_weeks", "ga_weeks", "injury_types",
                    "mask_path")

# Lateral ventricle parts at term (right side; x mirrored for the left): centre, radii (mm).
_VENTRICLE_PARTS = (((9.0, 15.0, 12.0), (3.8, 10.0, 5.0)),    # frontal horn
                    ((10.0, -5.0, 15.0), (3.8, 16.0, 4.5)),   # body
                    ((15.0, -25.0, 8.0), (5.0, 11.0, 6.5)),   # atrium and occipital horn
                    ((24.0, -8.0, -10.0), (2.2, 9.0, 2.5)))   # temporal horn
_THIRD_VENTRICLE = ((0.0, -6.0, 3.0), (1.2, 10.0, 7.0))


def _input_error(message: str) -> Exception:
    from .errors import InputError

    return InputError(message)


# ----------------------------------------------------------------------------------------------- geometry


def orientation_matrix(code: str) -> np.ndarray:
    """3x3 signed permutation whose column ``a`` is the world (RAS) direction of storage axis ``a``.

    ``code`` uses nibabel's axis codes (``"RAS"``, ``"LPS"``, ``"PSR"``...): each letter is the direction in
    which that storage axis increases.
    """
    code = str(code).upper()
    if len(code) != 3 or any(c not in _AXIS_CODES for c in code) or \
            sorted(_AXIS_CODES[c][0] for c in code) != [0, 1, 2]:
        raise _input_error(f"orientation '{code}' is not three distinct axis codes from R/L, A/P, S/I")
    mat = np.zeros((3, 3))
    for a, c in enumerate(code):
        axis, sign = _AXIS_CODES[c]
        mat[axis, a] = sign
    return mat


def _rotation(degrees: Sequence[float]) -> np.ndarray:
    """Rotation matrix from angles (degrees) about x, y and z (applied z, then y, then x)."""
    ax, ay, az = np.deg2rad(np.asarray(degrees, dtype=float))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


class _Grid:
    """Voxel grid seen from the head frame: ``head = M @ (i, j, k) + o``."""

    def __init__(self, shape: tuple[int, int, int], m: np.ndarray, o: np.ndarray):
        self.shape = tuple(int(s) for s in shape)
        self.m = np.asarray(m, dtype=np.float64)
        self.o = np.asarray(o, dtype=np.float64)
        self.minv = np.linalg.inv(self.m)

    def block(self, lo: Sequence[float], hi: Sequence[float]):
        """``(slices, (x, y, z))`` head coordinates of the voxels that may lie in the box, or None."""
        corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))), dtype=np.float64)
        corners = np.clip(corners, -1e5, 1e5)
        ijk = (corners - self.o) @ self.minv.T
        a = np.clip(np.floor(ijk.min(0)).astype(int) - 1, 0, self.shape)
        b = np.clip(np.ceil(ijk.max(0)).astype(int) + 2, 0, self.shape)
        if np.any(b <= a):
            return None
        sl = tuple(slice(int(a_), int(b_)) for a_, b_ in zip(a, b, strict=True))
        idx = [np.arange(a_, b_, dtype=np.float32) for a_, b_ in zip(a, b, strict=True)]
        coords = []
        for r in range(3):
            m = self.m[r].astype(np.float32)
            coords.append((m[0] * idx[0])[:, None, None] + (m[1] * idx[1])[None, :, None]
                          + (m[2] * idx[2] + np.float32(self.o[r]))[None, None, :])
        return sl, tuple(coords)


class _Points:
    """A list of head-frame points, evaluated like a grid (used to place lesions inside white matter)."""

    def __init__(self, points: np.ndarray):
        self.points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        self.shape = (len(self.points),)

    def block(self, lo: Sequence[float], hi: Sequence[float]):
        inside = np.all((self.points >= np.asarray(lo)) & (self.points <= np.asarray(hi)), axis=1)
        idx = np.nonzero(inside)[0]
        if idx.size == 0:
            return None
        p = self.points[idx]
        return idx, (p[:, 0], p[:, 1], p[:, 2])


def _ellipsoid(c, centre, radii, rot: np.ndarray | None = None) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to an ellipsoid: exact for spheres, first order at
    the surface."""
    x = c[0] - np.float32(centre[0])
    y = c[1] - np.float32(centre[1])
    z = c[2] - np.float32(centre[2])
    if rot is not None:  # coordinates in the ellipsoid's own axes
        r = rot.astype(np.float32)
        x, y, z = (r[0, 0] * x + r[1, 0] * y + r[2, 0] * z, r[0, 1] * x + r[1, 1] * y + r[2, 1] * z,
                   r[0, 2] * x + r[1, 2] * y + r[2, 2] * z)
    ix, iy, iz = (np.float32(1.0 / r_) for r_ in radii)
    x *= ix  # x, y, z are fresh arrays: work in place
    y *= iy
    z *= iz
    rho = x * x
    rho += y * y
    rho += z * z
    np.sqrt(rho, out=rho)
    x *= ix
    y *= iy
    z *= iz
    g = x * x
    g += y * y
    g += z * z
    np.sqrt(g, out=g)  # = rho * |grad rho|
    np.maximum(g, np.float32(1e-20), out=g)
    np.divide(rho, g, out=g)
    np.clip(g, np.float32(min(radii)), np.float32(max(radii)), out=g)  # = rho / |grad rho| (centre: r_min)
    rho -= np.float32(1.0)
    rho *= g
    return rho


def _cylinder_z(c, centre_xy, radius: float, z_top: float) -> np.ndarray:
    """Signed distance to a vertical cylinder below ``z_top``."""
    d = np.sqrt((c[0] - np.float32(centre_xy[0])) ** 2 + (c[1] - np.float32(centre_xy[1])) ** 2)
    d -= np.float32(radius)
    return np.maximum(d, c[2] - np.float32(z_top))


def _ellipse_yz(c, centre, radii) -> np.ndarray:
    """Approximate signed distance to an elliptic cylinder along x with the given (y, z) centre, radii."""
    y = (c[1] - np.float32(centre[1])) * np.float32(1 / radii[0])
    z = (c[2] - np.float32(centre[2])) * np.float32(1 / radii[1])
    rho = np.sqrt(y * y + z * z)
    g = np.sqrt((y * np.float32(1 / radii[0])) ** 2 + (z * np.float32(1 / radii[1])) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (rho - np.float32(1.0)) * rho / g
    out[~np.isfinite(out)] = -float(min(radii))
    return out


def _box(centre, half) -> tuple[np.ndarray, np.ndarray]:
    centre = np.asarray(centre, dtype=float)
    half = np.broadcast_to(np.asarray(half, dtype=float), (3,))
    return centre - half, centre + half


def _ramp(sdf: np.ndarray, w: float) -> np.ndarray:
    """Partial-volume fraction inside a surface: 1 deep inside, 0 outside, linear over one voxel width."""
    return np.clip(np.float32(0.5) - sdf * np.float32(1.0 / w), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------- anatomy


@dataclass
class _Traits:
    """Subject-level anatomy (constant over that subject's sessions)."""

    size: float
    ap: float
    vent: float
    vent_asym: float
    extra_csf: float
    skull: float
    scalp: float
    tone: np.ndarray
    waves1: np.ndarray
    waves2: np.ndarray


def _draw_traits(rng: np.random.Generator) -> _Traits:
    def waves(k: int) -> np.ndarray:
        u = rng.standard_normal((k, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        return np.concatenate([u, rng.uniform(0, 2 * np.pi, (k, 1))], axis=1)

    return _Traits(size=float(rng.uniform(0.94, 1.06)), ap=float(rng.uniform(0.97, 1.09)),
                   vent=float(np.clip(rng.lognormal(0.0, 0.1), 0.82, 1.25)),
                   vent_asym=float(rng.uniform(0.9, 1.1)), extra_csf=float(rng.uniform(1.2, 3.0)),
                   skull=float(rng.uniform(1.2, 2.2)), scalp=float(rng.uniform(2.0, 4.0)),
                   tone=rng.uniform(0.95, 1.05, 12), waves1=waves(6), waves2=waves(9))


@dataclass
class _Lesion:
    kind: str
    centre: np.ndarray
    radii: np.ndarray
    target: float
    strength: float
    in_ventricle: bool = False


class _Anatomy:
    """Geometry (head frame, mm) and relative intensities (CSF = 1) of one subject at one age."""

    def __init__(self, traits: _Traits, age: float, dilation: float = 1.0, diffuse: float = 0.0):
        t = traits
        self.age = age = float(age)
        self.diffuse = diffuse  # diffuse white-matter change: volume loss, brighter WM, wider CSF spaces
        s = t.size * math.exp(0.025 * (age - 40.0)) * (1.0 - 0.04 * diffuse)
        self.s = s
        self.S = np.array([s / math.sqrt(t.ap), s * t.ap, s])
        scb = t.size * math.exp(0.045 * (age - 40.0))
        young = float(np.clip((36.0 - age) / 8.0, 0.0, 1.0))
        self.extra = t.extra_csf + 1.2 * young + 2.0 * diffuse
        self.skull, self.scalp = t.skull, t.scalp * (0.7 + 0.3 * s)
        self.egg = 0.07
        self.cerebrum = (self.P(0, 0, 6), self.P(41, 55, 39))
        cb_r = np.array([self.S[0] / s, self.S[1] / s, 1.0]) * scb
        cb_c = self.P(0, -34, -23) + np.array([0.0, 0.0, 13.0 * (s - scb)])  # sits under the tentorium
        hemispheres = [(cb_c + np.array([side * 11.0 * cb_r[0], 0, 0]), np.array([15.0, 15.5, 12.5]) * cb_r)
                       for side in (-1, 1)]
        vermis = (cb_c + np.array([0, -1.0 * cb_r[1], 0]), np.array([7.0, 14.0, 12.0]) * cb_r)
        self.cerebellum = hemispheres + [vermis]
        self.cb_box = _box(cb_c, np.array([28.0, 18.0, 15.0]) * cb_r)
        self.cb_centre = cb_c
        self.brainstem = (self.P(0, -15, -26), self.P(8.5, 9.5, 24))
        self.fourth = (self.P(0, -20.5, -21), self.P(3.0, 2.5, 4.5))
        self.z_foramen = -44.0 * s
        self.canal = (self.P(0, -18, 0)[:2], 5.5 * s, 3.2 * s)
        self.face = (self.P(0, 33, -30), self.P(36, 30, 24))
        self.neck = (self.P(0, -10, 0)[:2], 22.0 * s, -30.0 * s)
        self.cavum = (self.P(0, 6, 12), self.P(1.2 + 0.8 * young, 11, 4.5))
        self.eyes = [(self.P(side * 16, 47, -27), np.full(3, 8.0 * s)) for side in (-1, 1)]
        # cerebral surface: folding, fissures
        flat = 1.0 - 0.25 * diffuse
        self.fold1 = 3.0 * s * flat * float(np.clip((age - 25.0) / 12.0, 0.0, 1.4))
        self.fold2 = 8.0 * s * flat * float(np.clip((age - 30.0) / 10.0, 0.0, 1.4)) ** 1.4
        self.lambda1, self.lambda2 = 34.0, 14.0
        self.waves1, self.waves2 = t.waves1, t.waves2
        self.cortex = float(np.clip(1.3 + 0.06 * (age - 28.0), 1.2, 2.2))
        # fissure above the corpus callosum arc; Sylvian fissure: lateral cleft, wide open in preterms
        self.fissure = (0.25 + 0.1 * self.extra, self.P(0, -2, 6), self.P(0, 26, 17)[1:])
        open_ = float(np.clip((38.0 - age) / 10.0, 0.0, 1.0))
        cleft = self.P(16, 18, 0) + np.array([0.0, 0.0, (0.6 + 3.4 * open_) * s])  # footprint, half-width
        self.sylvian = (self.P(45, 6, -3), cleft, -0.5)
        # deep grey matter, ventricles
        plic = float(np.clip((age - 35.0) / 6.0, 0.0, 1.0))
        tone = t.tone
        a = age - 28.0
        self.v = {
            "csf": 1.0, "wm": (0.80 - 0.012 * a) * tone[0] * (1.0 + 0.12 * diffuse),
            "cortex": (0.46 - 0.003 * a) * tone[1],
            "thalamus": (0.44 - 0.006 * a) * tone[2], "lentiform": (0.50 - 0.004 * a) * tone[3],
            "caudate": (0.50 - 0.002 * a) * tone[4], "brainstem": (0.52 - 0.010 * a) * tone[5],
            "cerebellum": 0.56 * tone[6], "cb_core": (0.47 - 0.008 * a) * tone[7],
            "scalp": 0.5 * tone[8], "skull": 0.07 * tone[9], "eye": 0.95 * tone[10],
            "germinal": 0.33 * tone[11], "cc": (0.58 - 0.006 * a) * tone[0],
        }
        self.v["plic"] = (1 - plic) * self.v["wm"] + plic * 0.34
        self.deep = []
        for side in (-1, 1):
            self.deep += [(self.P(side * 15.3, -6.5, 3), self.P(1.6, 10, 6), _rotation((0, 0, side * 22.0)),
                           WM, "plic"),
                          (self.P(side * 20, 3, 2), self.P(5.5, 12, 8), None, DGM, "lentiform"),
                          (self.P(side * 12.5, 12, 10), self.P(4.5, 9, 6), None, DGM, "caudate"),
                          (self.P(side * 7, -8, 3), self.P(7, 11, 7), None, DGM, "thalamus")]
        gm = 3.0 * float(np.clip((33.0 - age) / 5.0, 0.0, 1.0))  # germinal matrix, involutes by ~33 weeks
        self.germinal = [(self.P(side * 11.5, 5, 9), np.full(3, gm)) for side in (-1, 1)] if gm > 0.3 else []
        vent = t.vent * (1.0 + 0.15 * young) * (1.0 + 0.35 * diffuse)
        self.ventricles = self._ventricles(vent, t.vent_asym, 1.0)
        self.dilation = dilation
        self.ventricles_dilated = self._ventricles(vent, t.vent_asym, dilation) if dilation > 1.0 else None

    def P(self, x: float, y: float, z: float) -> np.ndarray:
        """Template (term, mm) position or size -> this subject's head frame (mm)."""
        return np.array([x, y, z], dtype=float) * self.S

    def _ventricles(self, vent: float, asym: float, dilation: float) -> list:
        parts = []
        for side in (-1, 1):
            f = vent * (asym if side > 0 else 1.0 / asym) * dilation
            for (cx, cy, cz), (rx, ry, rz) in _VENTRICLE_PARTS:
                parts.append((self.P(side * cx, cy, cz), self.P(rx * f, ry * math.sqrt(f), rz * f)))
        f = vent * dilation
        (cx, cy, cz), (rx, ry, rz) = _THIRD_VENTRICLE
        parts.append((self.P(cx, cy, cz), self.P(rx * f, ry, rz * math.sqrt(f))))
        return parts

    def head_box(self) -> tuple[np.ndarray, np.ndarray]:
        """Head-frame bounding box of the head (scalp, face) down to the upper neck."""
        pad = self.extra + self.skull + self.scalp + 2.0
        rx, ry, rz = self.cerebrum[1]
        lo = np.array([-rx * (1 + self.egg) - pad, -ry - pad, -50.0 * self.s])
        hi = np.array([rx * (1 + self.egg) + pad, max(ry + pad, self.face[0][1] + self.face[1][1] + 2.0),
                       self.cerebrum[0][2] + rz + pad])
        return lo, hi

    def head_circumference_cm(self) -> float:
        pad = self.extra + self.skull + self.scalp
        a = self.cerebrum[1][0] + pad
        b = self.cerebrum[1][1] + pad
        return float(math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b))) / 10.0)

    # ---- signed distances used in several places
    def cerebrum_sdf(self, c) -> np.ndarray:
        (cx, cy, cz), (rx, ry, rz) = self.cerebrum
        y = c[1] - np.float32(cy)
        widen = np.float32(1.0) - np.float32(self.egg / ry) * y  # wider posteriorly
        x = (c[0] - np.float32(cx)) / widen
        return _ellipsoid((x, c[1], c[2]), (0.0, cy, cz), (rx, ry, rz))

    def cerebellum_sdf(self, c) -> np.ndarray:
        return np.minimum.reduce([_ellipsoid(c, cc, rr) for cc, rr in self.cerebellum])

    def ventricle_sdf(self, c, dilated: bool = False) -> np.ndarray:
        parts = self.ventricles_dilated if dilated else self.ventricles
        return np.minimum.reduce([_ellipsoid(c, cc, rr) for cc, rr in parts])

    def ventricle_box(self, dilated: bool = False) -> tuple[np.ndarray, np.ndarray]:
        parts = self.ventricles_dilated if dilated else self.ventricles
        lo = np.min([cc - rr for cc, rr in parts], axis=0)
        hi = np.max([cc + rr for cc, rr in parts], axis=0)
        return lo, hi

    def fold_depth(self, x, y, z, medial: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Depth (mm) of the pial and of the white-matter surface below the smooth brain surface.

        Sulci are radial bands along the zero-crossings of random wave fields on the sphere of directions
        (so they cut straight into the brain; on the ``medial`` surface the pattern is projected along x);
        the white-matter surface dips along wider bands so that the cortex lining each sulcus keeps roughly
        its thickness.
        """
        cx, cy, cz = self.cerebrum[0]
        xn = (x - np.float32(cx)) * np.float32(1 / self.S[0])
        yn = (y - np.float32(cy)) * np.float32(1 / self.S[1])
        zn = (z - np.float32(cz)) * np.float32(1 / self.S[2])
        scale = np.float32(45.0) / np.maximum(np.sqrt(xn * xn + yn * yn + zn * zn), np.float32(1e-3))
        if medial is not None:
            scale[medial] = 1.0
        xn *= scale
        if medial is not None:  # a different pattern on each hemisphere's medial surface
            xn[medial] = np.where(x[medial] > np.float32(cx), np.float32(20.0), np.float32(-20.0))
        yn *= scale
        zn *= scale
        pial = np.zeros(x.shape, np.float32)
        white = np.zeros(x.shape, np.float32)
        for waves, lam, depth, band in ((self.waves1, self.lambda1, self.fold1, 0.2),
                                        (self.waves2, self.lambda2, self.fold2, 0.27)):
            if depth < 0.05:
                continue
            k = 2 * np.pi / lam
            g = np.zeros(x.shape, np.float32)
            for ux, uy, uz, phase in waves.astype(np.float32):
                g += np.cos(np.float32(ux * k) * xn + np.float32(uy * k) * yn + np.float32(uz * k) * zn
                            + phase)
            g = np.abs(g, out=g)
            g *= np.float32(1.0 / math.sqrt(len(waves) / 2.0))
            wide = band + 0.6 * k * self.cortex / self.s
            # steep-walled slits (cubic profile); the white surface dips over a band one cortex wider
            pial += np.float32(depth) * np.clip(np.float32(1.0) - (g * np.float32(1 / band)) ** 3, 0.0, 1.0)
            white += np.float32(depth) * np.clip(np.float32(1.0) - (g * np.float32(1 / wide)) ** 3, 0.0, 1.0)
        return pial, white


class _Canvas:
    """Image, tissue labels, brain mask and lesion mask being painted on one region (grid or points)."""

    def __init__(self, region, w: float):
        self.region, self.w = region, float(w)
        self.img = np.zeros(region.shape, np.float32)
        self.lab = np.zeros(region.shape, np.uint8)
        self.brain = np.zeros(region.shape, bool)
        self.lesion = np.zeros(region.shape, bool)

    def paint(self, sl, alpha: np.ndarray, value, label: int | None) -> None:
        cur = self.img[sl]
        self.img[sl] = cur + alpha * (np.float32(value) - cur)
        if label is not None:
            self.lab[sl] = np.where(alpha > 0.5, np.uint8(label), self.lab[sl])

    def shape_(self, lo, hi, sdf: Callable, value, label: int | None, brain: bool = False) -> None:
        blk = self.region.block(lo, hi)
        if blk is None:
            return
        sl, c = blk
        alpha = _ramp(sdf(c), self.w)
        self.paint(sl, alpha, value, label)
        if brain:
            self.brain[sl] |= alpha > 0.5


def _field(region, box, fn: Callable, margin: float) -> np.ndarray:
    """Evaluate ``fn`` on the part of the region inside ``box`` (+ margin); +inf elsewhere."""
    out = np.full(region.shape, np.inf, np.float32)
    blk = region.block(box[0] - margin, box[1] + margin)
    if blk is not None:
        sl, c = blk
        out[sl] = fn(c)
    return out


def _render(an: _Anatomy, region, w: float, lesions: Sequence[_Lesion] = ()) -> _Canvas:
    """Paint the clean (noise-free, unbiased) image, labels and masks of one anatomy on a region."""
    cv = _Canvas(region, w)
    v = an.v
    margin = an.extra + an.skull + an.scalp + 2 * w + 4.0
    cer_c, cer_r = an.cerebrum
    cer_box = _box(cer_c, cer_r * np.array([1 + an.egg, 1, 1]))
    bs_c, bs_r = an.brainstem
    # fields shared by the head layers and the brain (+inf far from each structure)
    sdf_cer = _field(region, cer_box, an.cerebrum_sdf, margin)
    sdf_cb = _field(region, an.cb_box, an.cerebellum_sdf, margin)
    sdf_bs = _field(region, _box(bs_c, bs_r), lambda c: _ellipsoid(c, bs_c, bs_r), margin)
    canal_xy, canal_r, cord_r = an.canal
    sdf_canal = _field(region, (np.array([canal_xy[0] - canal_r, canal_xy[1] - canal_r, -1e4]),
                                np.array([canal_xy[0] + canal_r, canal_xy[1] + canal_r, an.z_foramen + 4])),
                       lambda c: _cylinder_z(c, canal_xy, canal_r, an.z_foramen + 4), margin)
    cranium = np.minimum(np.minimum(sdf_cer, sdf_cb), np.minimum(sdf_bs, sdf_canal))
    cranium -= np.float32(an.extra)
    # head: scalp, face, neck; eyes; skull; CSF
    face_c, face_r = an.face
    sdf_face = _field(region, _box(face_c, face_r), lambda c: _ellipsoid(c, face_c, face_r), 2 * w)
    neck_xy, neck_r, neck_top = an.neck
    sdf_neck = _field(region, (np.array([-neck_r, neck_xy[1] - neck_r, -1e4]),
                               np.array([neck_r, neck_xy[1] + neck_r, neck_top])),
                      lambda c: _cylinder_z(c, neck_xy, neck_r, neck_top), 2 * w)
    head = np.minimum(cranium - np.float32(an.skull + an.scalp), np.minimum(sdf_face, sdf_neck))
    cv.paint(slice(None), _ramp(head, w), v["scalp"], NONBRAIN)
    del head, sdf_face, sdf_neck
    sub = cv.lab == NONBRAIN
    cv.img[sub & (cranium > an.skull + 1.0)] *= np.float32(0.75)  # neck and face darker than scalp
    for cc, rr in an.eyes:
        cv.shape_(*_box(cc, rr + w), lambda c, cc=cc, rr=rr: _ellipsoid(c, cc, rr), v["eye"], NONBRAIN)
    cv.paint(slice(None), _ramp(cranium - np.float32(an.skull), w), v["skull"], NONBRAIN)
    cv.paint(slice(None), _ramp(cranium, w), v["csf"], CSF)
    del cranium
    # cerebrum: folded cortical ribbon and white matter
    blk = region.block(cer_box[0] - 2 * w, cer_box[1] + 2 * w)
    if blk is not None:
        sl, c = blk
        outer = -sdf_cer[sl]
        excl = np.minimum(sdf_cb[sl] - np.float32(2.0),                           # tentorium, brainstem
                          np.maximum(sdf_bs[sl] - np.float32(2.0), c[2] + np.float32(12.0 * an.s)))
        env = np.minimum(outer, excl)
        cv.brain[sl] |= env > 0
        wf, cc_c, cc_r = an.fissure                                                 # interhemispheric fissure
        medial = np.maximum(np.abs(c[0]) - np.float32(wf), -_ellipse_yz(c, cc_c, cc_r))
        d0 = np.minimum(env, medial)
        (sx, sy, sz), (rx, ry, rz), slope = an.sylvian                              # Sylvian fissure
        # a thin cleft: half-thickness rz over an elliptic footprint in (|x|, y), tapering to its rim
        foot = ((np.abs(c[0]) - np.float32(sx)) * np.float32(1 / rx)) ** 2
        foot += ((c[1] - np.float32(sy)) * np.float32(1 / ry)) ** 2
        syl = np.abs(c[2] - np.float32(slope) * c[1] - np.float32(sz))
        syl -= np.float32(rz) * np.sqrt(np.clip(np.float32(1.0) - foot, 0.0, 1.0))
        np.maximum(syl, (np.sqrt(foot) - np.float32(1.0)) * np.float32(min(rx, ry)), out=syl)
        del foot
        # folding weight: none on the insula/Sylvian banks and the tentorial surface, shallower medially
        fold_w = np.clip((syl - d0) * np.float32(0.25), 0.0, 1.0)
        fold_w *= np.clip((excl - np.minimum(outer, medial)) * np.float32(0.25), 0.0, 1.0)
        medial = medial < outer
        fold_w[medial] *= np.float32(0.6)
        np.minimum(d0, syl, out=d0)
        del outer, excl, env, syl
        d_white = d0
        if an.fold1 + an.fold2 > 0.05:
            d_white = d0.copy()
            shell = (d0 > -w) & (d0 < an.fold1 + an.fold2 + an.cortex + w)
            pial, white = an.fold_depth(c[0][shell], c[1][shell], c[2][shell], medial[shell])
            keep = fold_w[shell]
            pial *= keep
            white *= keep
            d0[shell] -= pial
            d_white[shell] -= white
            del shell, pial, white, keep
        del medial, fold_w
        cv.paint(sl, _ramp(-d0, w), v["cortex"], CORTEX)
        cv.paint(sl, _ramp(np.float32(an.cortex) - d_white, w), v["wm"], WM)
        del d0, d_white
    del sdf_cer
    # deep grey matter (PLIC first: the nuclei around it overwrite its edges)
    for cc, rr, rot, label, key in an.deep:
        half = np.full(3, rr.max()) if rot is not None else rr
        cv.shape_(*_box(cc, half + w), lambda c, cc=cc, rr=rr, rot=rot: _ellipsoid(c, cc, rr, rot), v[key],
                  label)
    # corpus callosum (thin, darker than the unmyelinated white matter) and cavum septi pellucidi
    _, cc_c, cc_r = an.fissure
    inner = (cc_r[0] - 2.5 * an.s, cc_r[1] - 2.5 * an.s)
    cv.shape_(np.array([-8.0 * an.S[0], cc_c[1] - cc_r[0], cc_c[2]]) - w,
              np.array([8.0 * an.S[0], cc_c[1] + cc_r[0], cc_c[2] + cc_r[1]]) + w,
              lambda c: np.maximum(np.maximum(_ellipse_yz(c, cc_c, cc_r), -_ellipse_yz(c, cc_c, inner)),
                                   np.maximum(np.abs(c[0]) - np.float32(8.0 * an.S[0]),
                                              np.float32(cc_c[2] + 3.0 * an.s) - c[2])), v["cc"], WM)
    cc, rr = an.cavum
    cv.shape_(*_box(cc, rr + w), lambda c: _ellipsoid(c, cc, rr), v["csf"], CSF)
    for cc, rr in an.germinal:
        cv.shape_(*_box(cc, rr + w), lambda c, cc=cc, rr=rr: _ellipsoid(c, cc, rr), v["germinal"], None)
    # ventricles (dilated ones for PHVD; the lesion mask is the dilated part)
    dilated = an.ventricles_dilated is not None
    lo, hi = an.ventricle_box(dilated)
    blk = region.block(lo - w, hi + w)
    if blk is not None:
        sl, c = blk
        alpha = _ramp(an.ventricle_sdf(c, dilated), w)
        cv.paint(sl, alpha, v["csf"], VENTRICLE)
        if dilated:
            cv.lesion[sl] |= (alpha > 0.5) & (_ramp(an.ventricle_sdf(c), w) <= 0.5)
    # brainstem, spinal cord, cerebellum (with folia), fourth ventricle
    blk = region.block(*_box(bs_c, bs_r + w))
    if blk is not None:
        sl, c = blk
        alpha = _ramp(sdf_bs[sl], w)
        cv.paint(sl, alpha, v["brainstem"], BRAINSTEM)
        cv.brain[sl] |= (alpha > 0.5) & (c[2] > np.float32(an.z_foramen))
    cv.shape_(np.array([canal_xy[0] - cord_r - w, canal_xy[1] - cord_r - w, -1e4]),
              np.array([canal_xy[0] + cord_r + w, canal_xy[1] + cord_r + w, an.z_foramen + 2]),
              lambda c: _cylinder_z(c, canal_xy, cord_r, an.z_foramen + 2), v["brainstem"], BRAINSTEM)
    blk = region.block(an.cb_box[0] - w, an.cb_box[1] + w)
    if blk is not None:
        sl, c = blk
        sdf = sdf_cb[sl]
        alpha = _ramp(sdf, w)
        depth = np.maximum(-sdf, 0.0)
        core = float(min(r.min() for _, r in an.cerebellum)) * 0.45
        # folia: thin CSF-bright fissures fanning out from the core (transverse lines in axial slices)
        theta = np.arctan2(c[2] - np.float32(an.cb_centre[2]), c[1] - np.float32(an.cb_centre[1]))
        n_folia = 14
        spacing = 2 * np.pi * core * 1.6 / n_folia
        amp = 0.35 * float(np.clip(spacing / (4.0 * w), 0.0, 1.0))
        fissures = np.clip((np.cos(theta * np.float32(n_folia)) - np.float32(0.75)) * np.float32(4.0), 0, 1)
        fissures *= np.clip(depth, 0.0, 1.0) * np.clip((np.float32(core) - depth) / np.float32(2.0), 0.0, 1.0)
        core_mix = np.clip((depth - np.float32(core)) / np.float32(3.0), 0.0, 1.0)
        value = (np.float32(v["cerebellum"]) + np.float32(amp) * fissures
                 + np.float32(v["cb_core"] - v["cerebellum"]) * core_mix)
        cv.paint(sl, alpha, value, CEREBELLUM)
        cv.brain[sl] |= alpha > 0.5
    cc, rr = an.fourth
    cv.shape_(*_box(cc, rr + w), lambda c: _ellipsoid(c, cc, rr), v["csf"], VENTRICLE, brain=True)
    del sdf_cb, sdf_bs
    # lesions
    for les in lesions:
        half = les.radii + w
        blk = region.block(les.centre - half, les.centre + half)
        if blk is None:
            continue
        sl, c = blk
        sdf = _ellipsoid(c, les.centre, les.radii)
        if les.in_ventricle:
            sdf = np.maximum(sdf, an.ventricle_sdf(c, dilated))
        alpha = _ramp(sdf, w)
        cv.paint(sl, alpha * np.float32(les.strength), les.target, None)
        hit = alpha > 0.5
        if not hit.any() and alpha.max() > 0:  # lesion smaller than a voxel: mark the voxel it covers most
            hit = alpha == alpha.max()
        cv.lesion[sl] |= hit
    cv.lesion &= cv.brain
    return cv


def _labels_at(an: _Anatomy, points: np.ndarray) -> np.ndarray:
    """Tissue label at head-frame points (hard edges)."""
    return _render(an, _Points(points), 0.05).lab


# ----------------------------------------------------------------------------------------------- injuries


def _place_lesions(rng: np.random.Generator, an: _Anatomy, injuries: Sequence[str], difficulty: float
                   ) -> list[_Lesion]:
    """Draw lesions for the given injury types (PHVD is handled by the anatomy's ventricle dilation)."""
    size = LESION_SIZE[0] + (LESION_SIZE[1] - LESION_SIZE[0]) * difficulty
    strength = 1.0 - 0.7 * difficulty
    lesions: list[_Lesion] = []
    parts = _VENTRICLE_PARTS[:3]

    def periventricular(n_cand: int, up: float, dist: tuple[float, float]) -> np.ndarray:
        """Candidate template points in the white matter next to the lateral ventricles."""
        which = rng.choice(3, size=n_cand, p=[0.3, 0.4, 0.3])
        side = rng.choice([-1.0, 1.0], size=n_cand)
        u = rng.standard_normal((n_cand, 3))
        u[:, 0] = np.abs(u[:, 0]) * side
        u[:, 2] = np.abs(u[:, 2]) * up + u[:, 2] * (1 - up)
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        centre = np.array([parts[k][0] for k in which])
        centre[:, 0] *= side
        radii = np.array([parts[k][1] for k in which])
        r_dir = 1.0 / np.linalg.norm(u / radii, axis=1)
        return centre + u * (r_dir + rng.uniform(*dist, n_cand))[:, None]

    def inside_wm(points_mm: np.ndarray, radius: np.ndarray) -> np.ndarray:
        offsets = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
        pts = points_mm[:, None, :] + offsets[None] * radius[:, None, None]
        return np.all(_labels_at(an, pts.reshape(-1, 3)).reshape(len(points_mm), -1) == WM, axis=1)

    if "pwml" in injuries:
        count = max(1, int(round(rng.uniform(3, 10) * (1.3 - 0.6 * difficulty))))
        cand = periventricular(60, 0.7, (2.5, 9.0)) * an.S
        radius = rng.uniform(1.0, 2.2, len(cand)) * size
        big = np.maximum(radius, 1.9 * size)
        ok = np.nonzero(inside_wm(cand, radius))[0]
        fits_big = np.nonzero(inside_wm(cand, big))[0]
        if fits_big.size:  # the anchor focus is one of several mm
            anchor = int(fits_big[0])
            radius[anchor] = big[anchor]
            ok = np.union1d(ok, [anchor])
        else:
            anchor = int(ok[0]) if ok.size else 0
        if ok.size:  # foci cluster around the anchor (as PWML often do, e.g. in the centrum semiovale)
            ok = ok[np.argsort(np.linalg.norm(cand[ok] - cand[anchor], axis=1), kind="stable")][:count]
        target = rng.uniform(*PWML_TARGET)
        lesions += [_Lesion("pwml", cand[i], np.full(3, radius[i]), target, strength) for i in ok]
    if "cpvl" in injuries:  # fixed numbers of draws, so a subject's lesions stay put across sessions
        n_clusters = max(1, int(round(rng.uniform(1, 3) * (1.2 - 0.5 * difficulty))))
        anchors = periventricular(30, 0.6, (4.0, 8.0)) * an.S
        n_cysts = rng.integers(2, 7, size=4)  # n_clusters <= 4
        offsets = rng.normal(0.0, 2.5, (4, 6, 3))
        radii = rng.uniform(1.2, 2.8, (4, 6)) * size
        good = anchors[inside_wm(anchors, np.full(len(anchors), 2.0))][:n_clusters]
        for k, anchor in enumerate(good):
            pts = anchor + offsets[k, : n_cysts[k]]
            keep = np.nonzero(_labels_at(an, pts) == WM)[0]
            lesions += [_Lesion("cpvl", pts[i], np.full(3, radii[k, i]), 1.0, strength) for i in keep]
    if "ivh" in injuries:
        sides = [-1.0, 1.0] if rng.random() < 0.3 else [float(rng.choice([-1.0, 1.0]))]
        for side in sides:
            centre = np.array([side * 11.5, 5.0, 8.5]) * an.S + rng.normal(0.0, 0.8, 3)
            radii = rng.uniform(2.5, 5.0) * size * np.array([1.0, 1.3, 1.0])
            lesions.append(_Lesion("ivh", centre, radii, rng.uniform(0.12, 0.2), strength))
            if rng.random() < 0.7:  # clot layering in the occipital horn (infant lies supine)
                clot_c = np.array([side * 15.0, -30.0, 3.0]) * an.S + rng.normal(0.0, 1.0, 3)
                clot_r = np.array([7.0, 9.0, 5.0]) * (0.5 + 0.5 * size / 1.6) * rng.uniform(0.7, 1.2)
                lesions.append(_Lesion("ivh", clot_c, clot_r, rng.uniform(0.15, 0.3), strength, True))
    return lesions


def _dilation(rng: np.random.Generator, difficulty: float) -> float:
    """Ventricular enlargement factor for PHVD (about 1.5-2.3 when obvious, 1.15-1.35 when subtle)."""
    return 1.0 + rng.uniform(0.5, 1.1) * (1.15 - 0.85 * difficulty)


def _check_injuries(injuries: Sequence[str] | str | None) -> tuple[str, ...]:
    if injuries is None:
        return ()
    if isinstance(injuries, str):
        injuries = [s for s in injuries.replace("+", ",").split(",") if s.strip()]
    out = tuple(sorted({str(s).strip().lower() for s in injuries}, key=lambda s: (s not in INJURY_TYPES, s)))
    bad = [s for s in out if s not in INJURY_TYPES]
    if bad:
        raise _input_error(f"unknown injury type(s) {bad}; expected some of {list(INJURY_TYPES)}")
    return tuple(s for s in INJURY_TYPES if s in out)


# ----------------------------------------------------------------------------------------------- acquisition


@dataclass
class _Acquisition:
    affine: np.ndarray
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    orientation: str
    head_rotation: np.ndarray
    head_centre: np.ndarray

    def grid(self) -> _Grid:
        m = self.head_rotation.T @ self.affine[:3, :3]
        o = self.head_rotation.T @ (self.affine[:3, 3] - self.head_centre)
        return _Grid(self.shape, m, o)


def _acquisition(rng: np.random.Generator, head_box, shape=None, voxel_size=None, orientation=None,
                 rotation_deg=None, max_dim: int | None = DEFAULT_MAX_DIM) -> _Acquisition:
    """Draw a scan geometry (every draw happens whatever is overridden: overrides never shift the anatomy)."""
    codes = list(ORIENTATIONS)
    weights = np.array([ORIENTATIONS[c] for c in codes])
    code = codes[int(rng.choice(len(codes), p=weights / weights.sum()))]
    anisotropic = rng.random() < 0.35  # thicker slices along the third storage axis
    inplane = rng.uniform(0.5, 0.9)
    vox = np.array([inplane, inplane, rng.uniform(max(0.8, inplane + 0.15), 1.2)]) if anisotropic else \
        np.full(3, rng.uniform(0.5, 1.2))
    angles = rng.uniform(-4.0, 4.0, 3)
    oblique = _rotation(rng.uniform(-3.0, 3.0, 3)) if rng.random() < 0.25 else np.eye(3)
    head_centre = np.array([rng.uniform(-8, 8), rng.uniform(-25, 15), rng.uniform(-15, 25)])
    fov_scale = rng.uniform(1.02, 1.15, 3)
    fov_shift = rng.uniform(-4.0, 4.0, 3)

    if orientation is not None:
        code, oblique = str(orientation).upper(), np.eye(3)
    orient = orientation_matrix(code)
    if rotation_deg is not None:
        rot = np.broadcast_to(np.asarray(rotation_deg, dtype=float), (3,))
        angles = np.array(rot)
    head_rot = _rotation(angles)
    lo, hi = head_box
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
    world = corners @ head_rot.T + head_centre
    wlo, whi = world.min(0), world.max(0)
    extent_world = (whi - wlo) * fov_scale
    centre_world = (wlo + whi) / 2 + fov_shift
    world_axis = np.abs(orient).argmax(0)
    extent = extent_world[world_axis]  # per storage axis
    if voxel_size is not None:
        vox = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,)).copy()
        if np.any(vox <= 0) or not np.all(np.isfinite(vox)):
            raise _input_error(f"voxel size {voxel_size} must be positive")
    if shape is not None:
        dims = np.asarray(shape, dtype=int)
        if dims.shape != (3,) or np.any(dims < 4):
            raise _input_error(f"shape {shape} must be three sizes of at least 4")
        if voxel_size is None:
            vox = extent / dims
    else:
        if max_dim is not None:  # enlarge voxels to fit the matrix cap, keeping (in-plane) isotropy
            need = extent / max_dim
            if voxel_size is None and anisotropic:
                vox = np.array([max(vox[0], need[0], need[1])] * 2 + [max(vox[2], need[2])])
            elif voxel_size is None or np.ptp(vox) == 0:
                vox = np.full(3, max(vox[0], need.max()))
            else:
                vox = np.maximum(vox, need)
        dims = np.ceil(extent / vox - 1e-6).astype(int)
    a3 = oblique @ orient @ np.diag(vox)
    affine = np.eye(4)
    affine[:3, :3] = a3
    affine[:3, 3] = centre_world - a3 @ ((dims - 1) / 2.0)
    return _Acquisition(affine, tuple(int(d) for d in dims), tuple(float(x) for x in vox), code, head_rot,
                        head_centre)


def _finish(img: np.ndarray, rng: np.random.Generator, noise: bool, bias: bool, quality_fail: bool
            ) -> np.ndarray:
    """Bias field, intensity scale, motion ghosts (quality failures) and Rician noise."""
    gain = np.float32(rng.uniform(800.0, 2000.0))
    sigma = float(rng.uniform(0.012, 0.035))
    coefs = rng.uniform(-0.15, 0.15, (3, 2)) * np.array([1.0, 0.6])
    factors = [np.full(n, gain if a == 0 else 1.0, np.float32) for a, n in enumerate(img.shape)]
    if bias:  # smooth multiplicative field, separable along the (world-aligned) storage axes
        for a, ((c1, c2), n) in enumerate(zip(coefs, img.shape, strict=True)):
            u = np.linspace(-1, 1, n, dtype=np.float32)
            factors[a] *= np.exp(np.float32(c1) * u + np.float32(c2) * (u * u - np.float32(1 / 3)))
    img = img * (factors[0][:, None] * factors[1][None, :])[:, :, None]
    img *= factors[2][None, None, :]
    if quality_fail:  # head motion: blur plus ghosts along the phase-encoding axis
        ax = int(rng.integers(0, 3))
        other = (ax + 1) % 3
        img = 0.5 * img + 0.25 * np.roll(img, 2, axis=other) + 0.25 * np.roll(img, -2, axis=other)
        n = img.shape[ax]
        img = (img + 0.3 * (np.roll(img, n // 4, axis=ax) + np.roll(img, -(n // 4), axis=ax))
               + 0.15 * (np.roll(img, n // 2, axis=ax)))
        sigma *= 2.5
    if noise:  # Rician: magnitude of the signal plus complex Gaussian noise
        s = np.float32(sigma) * gain
        n1 = rng.standard_normal(img.shape, dtype=np.float32)
        n1 *= s
        n1 += img
        n1 *= n1
        n2 = rng.standard_normal(img.shape, dtype=np.float32)
        n2 *= s
        n2 *= n2
        n1 += n2
        del n2
        img = np.sqrt(n1, out=n1)
    return np.ascontiguousarray(img, dtype=np.float32)


def _as_rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    try:
        seed = int(rng_or_seed)
    except (TypeError, ValueError):
        raise _input_error(f"seed {rng_or_seed!r} is not an integer or numpy Generator") from None
    if seed < 0:
        raise _input_error(f"seed must be >= 0 (got {seed})")
    return np.random.default_rng(seed)


def _check_common(age_weeks: float, difficulty: float) -> None:
    if not (20.0 <= float(age_weeks) <= 50.0):
        raise _input_error(f"age {age_weeks} weeks is outside 20-50 weeks post-menstrual age")
    if not (0.0 <= float(difficulty) <= 1.0):
        raise _input_error(f"difficulty must be in [0, 1] (got {difficulty})")


def _scan(traits: _Traits, lesion_rng: np.random.Generator, acq_rng: np.random.Generator,
          noise_rng: np.random.Generator, age_weeks: float, injuries: tuple[str, ...], difficulty: float,
          shape, voxel_size, orientation, rotation_deg, max_dim, noise: bool, bias: bool, quality_fail: bool):
    has_diffuse, diffuse_u = lesion_rng.random() < DIFFUSE_FRACTION, lesion_rng.uniform(0.6, 1.0)
    diffuse = DIFFUSE_WEIGHT * (1.0 - difficulty) * diffuse_u if has_diffuse else 0.0  # label-independent
    dilation = _dilation(lesion_rng, difficulty) if "phvd" in injuries else 1.0
    an = _Anatomy(traits, age_weeks, dilation, diffuse)
    lesions = _place_lesions(lesion_rng, an, injuries, difficulty)
    acq = _acquisition(acq_rng, an.head_box(), shape, voxel_size, orientation, rotation_deg, max_dim)
    w = float(np.prod(acq.voxel_size) ** (1.0 / 3.0))
    cv = _render(an, acq.grid(), w, lesions)
    img = _finish(cv.img, noise_rng, noise, bias, quality_fail)
    info = {
        "age_weeks": float(age_weeks), "injuries": list(injuries), "difficulty": float(difficulty),
        "voxel_size": acq.voxel_size, "shape": acq.shape, "orientation": acq.orientation,
        "head_circumference_cm": round(an.head_circumference_cm(), 1),
        "ventricle_dilation": dilation, "diffuse_injury": round(float(diffuse), 3), "n_lesions": len(lesions),
        "labels": cv.lab, "brain_mask": cv.brain.astype(np.uint8), "label_names": dict(LABELS),
        "quality_fail": bool(quality_fail),
    }
    return img, acq.affine, cv.lesion.astype(np.uint8), info


def synth_volume(rng_or_seed: int | np.random.Generator = 0, age_weeks: float = 40.0,
                 injuries: Sequence[str] | str | None = (), shape: Sequence[int] | None = None,
                 voxel_size: float | Sequence[float] | None = None, orientation: str | None = None, *,
                 difficulty: float = DEFAULT_DIFFICULTY, rotation_deg: float | Sequence[float] | None = None,
                 max_dim: int | None = DEFAULT_MAX_DIM, noise: bool = True, bias: bool = True,
                 quality_fail: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """One synthetic neonatal T2w volume: ``(array float32 (I, J, K), affine (4, 4), lesion mask, info)``.

    ``injuries``: any of ``"pwml"``, ``"ivh"``, ``"phvd"``, ``"cpvl"`` (empty = healthy; the mask is then all
    zero). ``shape``/``voxel_size``/``orientation`` (nibabel axis codes such as ``"LPS"``)/``rotation_deg``
    (head rotation about x, y, z) are drawn at random when None; with ``shape`` None the field of view covers
    the head and each axis is at most ``max_dim`` voxels (voxels are enlarged to fit). ``info`` holds the
    tissue label map (``labels``, see :data:`LABELS`), ``brain_mask`` and the scan parameters. The same seed
    and arguments give identical arrays; changing only ``orientation``, ``noise`` or ``bias`` keeps the
    anatomy and its world position.
    """
    _check_common(age_weeks, difficulty)
    injuries = _check_injuries(injuries)
    if max_dim is not None and int(max_dim) < 8:
        raise _input_error(f"max_dim must be at least 8 (got {max_dim})")
    rng = _as_rng(rng_or_seed)
    seeds = rng.integers(0, 2**63 - 1, size=4)
    traits_rng, lesion_rng, acq_rng, noise_rng = (np.random.default_rng(int(s)) for s in seeds)
    return _scan(_draw_traits(traits_rng), lesion_rng, acq_rng, noise_rng, age_weeks, injuries, difficulty,
                 shape, voxel_size, orientation, rotation_deg, max_dim, noise, bias, quality_fail)


# ----------------------------------------------------------------------------------------------- cohort plan


@dataclass(frozen=True)
class SessionPlan:
    """One planned scan of the cohort (everything except the image itself)."""

    subject: str
    session: str
    subject_index: int
    session_index: int
    label: int
    age_weeks: float
    ga_weeks: float
    injury_types: tuple[str, ...]
    radiology_score: str
    sex: str
    birth_weight: float
    singleton: bool
    sedation: int
    quality_fail: bool = False


def _subject_rng(seed: int, index: int, stream: int, session: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream), int(session)]))


def _subject_sessions(seed: int, index: int, second_session_fraction: float) -> int:
    return 2 if _subject_rng(seed, index, 0).random() < second_session_fraction else 1


def _injury_types(rng: np.random.Generator) -> tuple[str, ...]:
    p = {"pwml": 0.55, "ivh": 0.4, "phvd": 0.2, "cpvl": 0.2}
    chosen = {k for k, pk in p.items() if rng.random() < pk}
    if not chosen:
        keys = list(p)
        w = np.array([p[k] for k in keys])
        chosen = {keys[int(rng.choice(len(keys), p=w / w.sum()))]}
    if "phvd" in chosen and rng.random() < 0.7:
        chosen.add("ivh")
    return tuple(k for k in INJURY_TYPES if k in chosen)


def _radiology_score(rng: np.random.Generator, injuries: tuple[str, ...]) -> str:
    u = rng.random()
    if not injuries:
        return "1" if u < 0.75 else "2"
    if "phvd" in injuries or "cpvl" in injuries:
        return "5" if u < 0.9 else "4"
    if "ivh" in injuries:
        return "3" if u < 0.6 else ("5" if u < 0.9 else "4")
    return "3" if u < 0.9 else "4"


def _plan_subject(seed: int, index: int, n_sessions: int, label: int, quality_fail: bool = False
                  ) -> list[SessionPlan]:
    rng = _subject_rng(seed, index, 1)
    u_ga, early_u, a1, a2, a_term, sex_u, bw_z, single_u = rng.random(8)
    ga = 24.0 + 12.0 * u_ga ** (1.15 if label else 0.9)
    injuries = _injury_types(_subject_rng(seed, index, 2)) if label else ()
    if n_sessions == 2:
        first = min(max(28.0, ga + 0.3 + 2.7 * a1), 36.0)
        ages = [first, max(38.0 + 6.0 * a2, first + 2.0)]
    elif early_u < 0.3:
        ages = [max(28.0, ga + 0.3 + 2.7 * a1)]
    else:
        ages = [max(37.0 + 7.0 * a_term, ga + 0.5)]
    ages = [min(a, 44.0) for a in ages]
    subject = f"CC{index + 1:05d}XX{index % 19 + 1:02d}"
    birth_weight = (0.65 + 0.16 * (ga - 24.0)) * math.exp(0.12 * (2 * bw_z - 1))
    plans = []
    for k, age in enumerate(ages):
        srng = _subject_rng(seed, index, 3, k)
        score = "Q" if quality_fail else _radiology_score(srng, injuries)
        plans.append(SessionPlan(subject=subject, session=str(1001 + 2 * index + k), subject_index=index,
                                 session_index=k, label=int(label), age_weeks=round(float(age), 2),
                                 ga_weeks=round(float(ga), 2), injury_types=injuries, radiology_score=score,
                                 sex="female" if sex_u < 0.48 else "male",
                                 birth_weight=round(birth_weight, 3),
                                 singleton=bool(single_u < 0.8), sedation=int(srng.random() < 0.05),
                                 quality_fail=quality_fail))
    return plans


def plan_cohort(n: int = 60, seed: int = 0, *, bi_fraction: float = DEFAULT_BI_FRACTION,
                second_session_fraction: float = DEFAULT_SECOND_SESSION_FRACTION,
                n_quality_fail: int = 0) -> list[SessionPlan]:
    """Plan ``n`` scans (plus ``n_quality_fail`` extra failed-QC scans) without rendering any image.

    Some subjects (``second_session_fraction``) get a preterm and a term-equivalent scan; labels are given
    per subject so that about ``bi_fraction`` of the ``n`` scans show brain injury.
    """
    n = _check_n(n)
    seed = int(_as_seed(seed))
    if not 0.0 <= float(bi_fraction) <= 1.0:
        raise _input_error(f"bi_fraction must be in [0, 1] (got {bi_fraction})")
    if not 0.0 <= float(second_session_fraction) <= 1.0:
        raise _input_error(f"second_session_fraction must be in [0, 1] (got {second_session_fraction})")
    if int(n_quality_fail) < 0:
        raise _input_error(f"n_quality_fail must be >= 0 (got {n_quality_fail})")
    counts: list[int] = []
    while sum(counts) < n:
        counts.append(min(_subject_sessions(seed, len(counts), second_session_fraction), n - sum(counts)))
    target = int(round(float(bi_fraction) * n))
    order = np.random.default_rng(np.random.SeedSequence([seed, 2**31 - 1])).permutation(len(counts))
    labels = [0] * len(counts)
    injured = 0
    for i in order:
        if injured + counts[i] <= target:
            labels[i] = 1
            injured += counts[i]
    plans = [p for i, c in enumerate(counts) for p in _plan_subject(seed, i, c, labels[i])]
    for q in range(int(n_quality_fail)):
        plans += _plan_subject(seed, len(counts) + q, 1, 0, quality_fail=True)
    return plans


def _check_n(n) -> int:
    try:
        value = int(n)
    except (TypeError, ValueError):
        raise _input_error(f"n must be an integer (got {n!r})") from None
    if value != n or value < 2:
        raise _input_error(f"n must be an integer of at least 2 (got {n!r})")
    return value


def _as_seed(seed) -> int:
    try:
        value = int(seed)
    except (TypeError, ValueError):
        raise _input_error(f"seed must be an integer (got {seed!r})") from None
    if value < 0:
        raise _input_error(f"seed must be >= 0 (got {seed})")
    return value


def synth_session(plan: SessionPlan, seed: int, difficulty: float = DEFAULT_DIFFICULTY, *,
                  max_dim: int | None = DEFAULT_MAX_DIM, shape: Sequence[int] | None = None,
                  voxel_size: float | Sequence[float] | None = None):
    """Render one planned scan; same ``(plan, seed, ...)`` gives the same arrays (independent of other scans).

    Anatomy and lesion layout come from the subject's generators (shared by its sessions); the scan geometry
    and noise from the session's. Returns like :func:`synth_volume`.
    """
    _check_common(plan.age_weeks, difficulty)
    i, k = plan.subject_index, plan.session_index
    traits = _draw_traits(_subject_rng(seed, i, 4))
    return _scan(traits, _subject_rng(seed, i, 5), _subject_rng(seed, i, 6, k), _subject_rng(seed, i, 7, k),
                 plan.age_weeks, plan.injury_types, difficulty, shape, voxel_size, None, None, max_dim,
                 True, True, plan.quality_fail)


# ----------------------------------------------------------------------------------------------- writing


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Deterministic NIfTI-1 (.nii.gz) with qform and sform set to ``affine``; written atomically."""
    import nibabel as nib

    from .io import atomic_path

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if array.dtype == np.uint8:
        img.header["cal_min"], img.header["cal_max"] = 0, 1
    raw = img.to_bytes()
    try:
        from isal import igzip

        data = igzip.compress(raw, compresslevel=1, mtime=0)
    except ImportError:
        import gzip

        data = gzip.compress(raw, compresslevel=1, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_tsv(path: Path, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    from .io import write_text_atomic

    lines = ["\t".join(columns)] + ["\t".join(str(v) for v in row) for row in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def _paths(plan: SessionPlan, bids: bool) -> tuple[str, str | None, str | None]:
    """Relative paths (image, lesion mask or None, brain mask or None) of one scan."""
    stem = f"sub-{plan.subject}_ses-{plan.session}"
    mask = f"masks/{stem}_lesion_mask.nii.gz" if plan.label else None
    if bids:
        anat = f"dhcp/sub-{plan.subject}/ses-{plan.session}/anat"
        return f"{anat}/{stem}_desc-restore_T2w.nii.gz", mask, f"{anat}/{stem}_desc-brain_mask.nii.gz"
    return f"images/{stem}_T2w.nii.gz", mask, None


def _write_session(job: tuple) -> dict:
    plan, seed, difficulty, out, bids, max_dim, shape, voxel_size = job
    img, affine, mask, info = synth_session(plan, seed, difficulty, max_dim=max_dim, shape=shape,
                                            voxel_size=voxel_size)
    image_rel, mask_rel, brain_rel = _paths(plan, bids)
    _write_nifti(out / image_rel, img, affine)
    if mask_rel:
        _write_nifti(out / mask_rel, mask, affine)
    if brain_rel:
        _write_nifti(out / brain_rel, info["brain_mask"], affine)
    return {"head_circumference_cm": info["head_circumference_cm"], "shape": list(info["shape"]),
            "voxel_size": [round(v, 3) for v in info["voxel_size"]], "orientation": info["orientation"],
            "lesion_voxels": int(mask.sum())}


@dataclass
class CohortResult:
    """What :func:`generate_cohort` wrote."""

    out_dir: Path
    manifest: Path
    n_volumes: int
    n_injured: int
    n_subjects: int
    seconds: float
    bids_dir: Path | None = None

    def summary(self) -> str:
        where = f"; dHCP layout in {self.bids_dir}" if self.bids_dir else ""
        return (f"synth: wrote {self.n_volumes} volumes ({self.n_volumes - self.n_injured} no BI, "
                f"{self.n_injured} BI; {self.n_subjects} subjects) in {self.seconds:.1f} s; "
                f"manifest {self.manifest}{where} ({DISCLAIMER})")


def generate_cohort(out_dir: str | os.PathLike, n: int = 60, seed: int = 0,
                    difficulty: float = DEFAULT_DIFFICULTY, bids: bool = False, *,
                    max_dim: int | None = DEFAULT_MAX_DIM, shape: Sequence[int] | None = None,
                    voxel_size: float | Sequence[float] | None = None,
                    bi_fraction: float = DEFAULT_BI_FRACTION,
                    second_session_fraction: float = DEFAULT_SECOND_SESSION_FRACTION,
                    n_quality_fail: int | None = None, workers: int = 1,
                    progress: Callable[[int, int], None] | None = None) -> CohortResult:
    """Write a synthetic cohort of ``n`` scans to ``out_dir`` with ``manifest.csv`` and ``cohort.json``.

    Images go to ``images/`` (or, with ``bids``, to the dHCP layout under ``dhcp/`` with ``participants.tsv``,
    per-subject ``sessions.tsv`` and brain masks, plus ``n_quality_fail`` extra sessions scored ``Q`` that are
    left out of the manifest; default 1 for n < 20, else 2). Lesion masks of injured scans go to ``masks/``.
    Manifest paths are relative to ``out_dir``. ``workers`` > 1 renders in parallel processes (fork only).
    """
    n = _check_n(n)
    seed = _as_seed(seed)
    _check_common(40.0, difficulty)
    if max_dim is not None and int(max_dim) < 8:
        raise _input_error(f"max_dim must be at least 8 (got {max_dim})")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise _input_error(f"{out}: output path exists and is not a folder")
    if n_quality_fail is None:
        n_quality_fail = (1 if n < 20 else 2) if bids else 0
    start = time.perf_counter()
    plans = plan_cohort(n, seed, bi_fraction=bi_fraction, second_session_fraction=second_session_fraction,
                        n_quality_fail=n_quality_fail)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(p, seed, float(difficulty), out, bool(bids), max_dim, shape, voxel_size) for p in plans]
    results: list[dict] = []
    workers = max(1, int(workers))
    if workers > 1 and len(jobs) > 1 and "fork" in _mp_methods():
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for k, res in enumerate(pool.map(_write_session, jobs)):
                results.append(res)
                if progress:
                    progress(k + 1, len(jobs))
    else:
        for k, job in enumerate(jobs):
            results.append(_write_session(job))
            if progress:
                progress(k + 1, len(jobs))
    scans = [(p, r) for p, r in zip(plans, results, strict=True)]
    rows = []
    for p, _ in scans:
        if p.quality_fail:
            continue
        image_rel, mask_rel, _ = _paths(p, bids)
        rows.append({"path": image_rel, "label": p.label, "subject": p.subject, "session": p.session,
                     "age_weeks": f"{p.age_weeks:.2f}", "ga_weeks": f"{p.ga_weeks:.2f}",
                     "injury_types": "+".join(p.injury_types), "mask_path": mask_rel or ""})
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    from .io import write_text_atomic

    manifest = write_text_atomic(out / "manifest.csv", buf.getvalue())
    bids_dir = _write_bids_tables(out / "dhcp", scans) if bids else None
    seconds = time.perf_counter() - start
    n_injured = sum(int(r["label"]) for r in rows)
    meta = {
        "description": "GloResNet synthetic neonatal T2w cohort", "synthetic": True, "note": DISCLAIMER,
        "generator": "GloResNetLib.synth", "generator_version": GENERATOR_VERSION, "seed": seed, "n": n,
        "difficulty": float(difficulty), "bids": bool(bids), "max_dim": max_dim,
        "shape": list(shape) if shape is not None else None,
        "voxel_size": voxel_size if voxel_size is None or np.isscalar(voxel_size) else list(voxel_size),
        "bi_fraction": bi_fraction, "second_session_fraction": second_session_fraction,
        "label_rule": LABEL_RULE, "injury_types": INJURY_DESCRIPTIONS, "tissue_labels": LABELS,
        "counts": {"volumes": len(rows), "no_bi": len(rows) - n_injured, "bi": n_injured,
                   "subjects": len({r["subject"] for r in rows})},
        "quality_fail_sessions": [f"sub-{p.subject}/ses-{p.session}" for p, _ in scans if p.quality_fail],
        "scans": [{"subject": p.subject, "session": p.session, **r} for p, r in scans],
        "seconds": round(seconds, 2),
    }
    write_text_atomic(out / "cohort.json", json.dumps(meta, indent=1) + "\n")
    return CohortResult(out, manifest, len(rows), n_injured, meta["counts"]["subjects"], seconds, bids_dir)


def _mp_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def _write_bids_tables(root: Path, scans: list[tuple[SessionPlan, dict]]) -> Path:
    from .io import write_text_atomic

    subjects: dict[str, list[tuple[SessionPlan, dict]]] = {}
    for p, r in scans:
        subjects.setdefault(p.subject, []).append((p, r))
    _write_tsv(root / "participants.tsv", ("participant_id", "sex", "birth_age", "birth_weight", "singleton"),
               [(s, v[0][0].sex, f"{v[0][0].ga_weeks:.2f}", f"{v[0][0].birth_weight:.3f}",
                 "Singleton" if v[0][0].singleton else "Multiple") for s, v in subjects.items()])
    for s, v in subjects.items():
        _write_tsv(root / f"sub-{s}" / f"sub-{s}_sessions.tsv",
                   ("session_id", "scan_age", "scan_head_circumference", "radiology_score", "scan_number",
                    "sedation"),
                   [(p.session, f"{p.age_weeks:.2f}", f"{r['head_circumference_cm']:.1f}", p.radiology_score,
                     p.session_index + 1, p.sedation) for p, r in v])
    description = {"Name": f"GloResNet synthetic dHCP-like cohort ({DISCLAIMER})", "BIDSVersion": "1.8.0",
                   "DatasetType": "derivative",
                   "GeneratedBy": [{"Name": "GloResNetLib.synth", "Version": GENERATOR_VERSION}]}
    write_text_atomic(root / "dataset_description.json", json.dumps(description, indent=1) + "\n")
    return root


# ----------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``gloresnet synth``."""
    p = subparsers.add_parser(
        "synth", help="generate a synthetic neonatal T2w cohort (demonstration data, not for clinical use)",
        description="Generate synthetic neonatal T2-weighted volumes with and without preterm brain injury, "
                    "lesion masks, manifest.csv and cohort.json (optionally the dHCP BIDS layout). "
                    + DISCLAIMER.capitalize() + ".")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--n", type=int, default=60, help="number of scans in the manifest (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--difficulty", type=float, default=DEFAULT_DIFFICULTY,
                   help=f"lesion subtlety in [0, 1]; 0 = large, obvious (default {DEFAULT_DIFFICULTY})")
    p.add_argument("--bids", action="store_true", help="write the dHCP BIDS-like layout under OUT/dhcp")
    p.add_argument("--max-dim", type=int, default=DEFAULT_MAX_DIM,
                   help=f"largest matrix size per axis (default {DEFAULT_MAX_DIM})")
    p.add_argument("--bi-fraction", type=float, default=DEFAULT_BI_FRACTION,
                   help=f"fraction of scans with brain injury (default {DEFAULT_BI_FRACTION})")
    p.add_argument("--second-session-fraction", type=float, default=DEFAULT_SECOND_SESSION_FRACTION,
                   help=f"fraction of subjects scanned twice (default {DEFAULT_SECOND_SESSION_FRACTION})")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.set_defaults(func=run_synth)
    return p


def run_synth(args: argparse.Namespace) -> int:
    """Handler of ``gloresnet synth``: generate the cohort and print a one-line summary."""
    result = generate_cohort(
        args.out, n=args.n, seed=args.seed, difficulty=args.difficulty, bids=args.bids, max_dim=args.max_dim,
        bi_fraction=getattr(args, "bi_fraction", DEFAULT_BI_FRACTION),
        second_session_fraction=getattr(args, "second_session_fraction", DEFAULT_SECOND_SESSION_FRACTION),
        workers=getattr(args, "workers", 1))
    print(result.summary())
    return 0
