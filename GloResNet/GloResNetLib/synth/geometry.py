"""Scan geometry and acquisition artefacts of the synthetic cohort.

Geometry: storage orientation (RAS, LPS, permuted axes, sometimes oblique), voxel size (isotropic or thick
slices), matrix, field of view covering the head, head pose. Artefacts are MONAI's randomised transforms
(bias field, Rician noise, gamma contrast, Gibbs ringing) with the scan's own seeds, plus what MONAI does not
provide: slice-thickness partial volume (a Gaussian slice profile along the slice axis) and motion ghosting
(k-space lines of a shifted copy, as from motion between phase-encoding steps).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .common import input_error as _input_error

DEFAULT_MAX_DIM = 144
#: Storage orientations (nibabel axis codes) drawn for random scans, with weights.
ORIENTATIONS = {
    "RAS": 0.3,
    "LAS": 0.1,
    "LPS": 0.2,
    "LPI": 0.05,
    "RPI": 0.05,
    "PSR": 0.06,
    "ASL": 0.06,
    "PIR": 0.04,
    "RSP": 0.05,
    "LIP": 0.05,
    "SRA": 0.04,
}
_AXIS_CODES = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def orientation_matrix(code: str) -> np.ndarray:
    """3x3 signed permutation whose column ``a`` is the world (RAS) direction of storage axis ``a``.

    ``code`` uses nibabel's axis codes (``"RAS"``, ``"LPS"``, ``"PSR"``...): each letter is the direction in
    which that storage axis increases.
    """
    code = str(code).upper()
    if (
        len(code) != 3
        or any(c not in _AXIS_CODES for c in code)
        or sorted(_AXIS_CODES[c][0] for c in code) != [0, 1, 2]
    ):
        raise _input_error(f"orientation '{code}' is not three distinct axis codes from R/L, A/P, S/I")
    mat = np.zeros((3, 3))
    for a, c in enumerate(code):
        axis, sign = _AXIS_CODES[c]
        mat[axis, a] = sign
    return mat


def rotation(degrees: Sequence[float]) -> np.ndarray:
    """Rotation matrix from angles (degrees) about x, y and z (applied z, then y, then x)."""
    ax, ay, az = np.deg2rad(np.asarray(degrees, dtype=float))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


class Grid:
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
            coords.append(
                (m[0] * idx[0])[:, None, None]
                + (m[1] * idx[1])[None, :, None]
                + (m[2] * idx[2] + np.float32(self.o[r]))[None, None, :]
            )
        return sl, tuple(coords)


@dataclass
class Acquisition:
    affine: np.ndarray
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    orientation: str
    head_rotation: np.ndarray
    head_centre: np.ndarray

    def grid(self) -> Grid:
        """The scan voxels seen from the head frame."""
        m = self.head_rotation.T @ self.affine[:3, :3]
        o = self.head_rotation.T @ (self.affine[:3, 3] - self.head_centre)
        return Grid(self.shape, m, o)


def draw_acquisition(
    rng: np.random.Generator,
    head_box,
    shape=None,
    voxel_size=None,
    orientation=None,
    rotation_deg=None,
    max_dim: int | None = DEFAULT_MAX_DIM,
) -> Acquisition:
    """Draw a scan geometry (every draw happens whatever is overridden: overrides never shift the anatomy)."""
    codes = list(ORIENTATIONS)
    weights = np.array([ORIENTATIONS[c] for c in codes])
    code = codes[int(rng.choice(len(codes), p=weights / weights.sum()))]
    anisotropic = rng.random() < 0.4  # thicker slices along the third storage axis (clinical protocols)
    inplane = rng.uniform(0.5, 0.9)
    vox = (
        np.array([inplane, inplane, rng.uniform(max(0.8, inplane + 0.2), 3.0)])
        if anisotropic
        else np.full(3, rng.uniform(0.5, 1.2))
    )
    angles = rng.uniform(-1.0, 1.0, 3) * np.array([12.0, 8.0, 10.0])  # pitch, roll, yaw (degrees)
    oblique = rotation(rng.uniform(-3.0, 3.0, 3)) if rng.random() < 0.25 else np.eye(3)
    head_centre = np.array([rng.uniform(-8, 8), rng.uniform(-25, 15), rng.uniform(-15, 25)])
    fov_scale = rng.uniform(1.02, 1.15, 3)
    fov_shift = rng.uniform(-4.0, 4.0, 3)

    if orientation is not None:
        code, oblique = str(orientation).upper(), np.eye(3)
    orient = orientation_matrix(code)
    if rotation_deg is not None:
        rot = np.broadcast_to(np.asarray(rotation_deg, dtype=float), (3,))
        angles = np.array(rot)
    head_rot = rotation(angles)
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
    return Acquisition(affine, tuple(int(d) for d in dims), tuple(float(x) for x in vox), code, head_rot, head_centre)
