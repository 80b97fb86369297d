"""Render synthetic subjects from tissue label maps the user has (e.g. dHCP DRAW-EM 9-tissue segmentations).

``gloresnet synth --anatomy LABELMAPS...`` gives each synthetic subject one of these label maps in turn (subject
``i`` uses map ``i mod n``) and draws the contrast, artefacts and lesions as for the built-in anatomy. The maps
are real neonatal brains in millimetres, so they are not rescaled to an age's brain volume; the plan's age sets
the contrast (myelination) only.

DRAW-EM 9-tissue labels (dHCP ``*_desc-drawem9_dseg.nii.gz``): 0 background, 1 CSF, 2 cortical grey matter,
3 white matter, 4 background inside the head (non-brain), 5 ventricles, 6 cerebellum, 7 deep grey matter,
8 brainstem, 9 hippocampi and amygdala. Other label sets: a JSON mapping file
(``{"their label": "our tissue name or number", ...}``; tissue names as in :data:`~.anatomy.TISSUES`). Labels
not in the mapping are refused, so that nothing is silently treated as background.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import anatomy as A
from .common import input_error
from .volume import Anatomy

#: The DRAW-EM 9-tissue table (identity onto this generator's labels 0-9).
DRAWEM9 = {v: v for v in range(10)}
_MAX_VOXELS = 400**3


def read_mapping(path: str | os.PathLike | None) -> dict[int, int]:
    """Label mapping from a JSON file (their label -> our tissue name or number); None = DRAW-EM 9-tissue."""
    if path is None:
        return dict(DRAWEM9)
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise input_error(f"{path}: cannot read the label mapping ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise input_error(f"{path}: the label mapping must be a JSON object {{label: tissue}}")
    names = {name: k for k, name in A.TISSUES.items()}
    out: dict[int, int] = {}
    for key, value in raw.items():
        try:
            theirs = int(key)
        except ValueError:
            raise input_error(f"{path}: label {key!r} is not an integer") from None
        ours = names.get(value) if isinstance(value, str) else value
        if not isinstance(ours, int) or isinstance(ours, bool) or ours not in A.TISSUES:
            raise input_error(f"{path}: label {key} maps to {value!r}, not a tissue of {sorted(names)}")
        out[theirs] = ours
    return out


class UserAnatomy(Anatomy):
    """Templates made from the user's label maps (loaded lazily, one per file, kept in memory)."""

    def __init__(self, paths: Sequence[str | os.PathLike], mapping: dict[int, int] | None = None):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise input_error("--anatomy needs at least one label map")
        for p in self.paths:
            if not p.is_file():
                raise input_error(f"{p}: label map not found")
        self.mapping = dict(DRAWEM9 if mapping is None else mapping)
        self._templates: dict[tuple[int, int], A.Template] = {}

    def describe(self) -> str:
        return f"user label maps ({len(self.paths)}): " + ", ".join(p.name for p in self.paths)

    def template(self, age: float, step: int, index: int) -> A.Template:
        k = index % len(self.paths)
        if (k, step) not in self._templates:
            fine = self._templates.get((k, 1)) or self._load(self.paths[k])
            self._templates[(k, 1)] = fine
            if step == 2:
                self._templates[(k, 2)] = A.coarser(fine)
        return self._templates[(k, step)]

    def _load(self, path: Path) -> A.Template:
        from ..io import read_volume

        array, affine = read_volume(path)
        if array.ndim != 3 or array.size > _MAX_VOXELS:
            raise input_error(f"{path}: a label map must be one 3D volume of at most {_MAX_VOXELS} voxels")
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)) or array.min() < 0:
            raise input_error(f"{path}: a label map must hold non-negative integer labels")
        theirs = array.astype(np.int64)
        unknown = sorted(set(np.unique(theirs).tolist()) - set(self.mapping))
        if unknown:
            raise input_error(f"{path}: labels {unknown[:10]} are not in the label mapping (see --anatomy-labels)")
        lut = np.zeros(max(max(self.mapping), int(theirs.max())) + 1, np.uint8)
        for t, o in self.mapping.items():
            lut[t] = o
        labels = lut[theirs]
        # Resample onto an axis-aligned RAS grid of STEP_MM-ish spacing so that templates share one convention.
        labels, affine = _to_ras_grid(labels, affine)
        brain = np.isin(labels, A.BRAIN_LABELS) | (labels == A.CSF)
        if brain.sum() < 1000:
            raise input_error(f"{path}: the label map has almost no brain tissue after mapping")
        if not (labels == A.VENTRICLE).any():
            raise input_error(f"{path}: the label map has no ventricles (label 5 in DRAW-EM numbering)")
        labels[labels == A.NONBRAIN] = A.BG  # head layers are drawn by the generator
        pad = 30
        labels = np.pad(labels, pad)
        brain = np.pad(brain, pad)
        affine = affine.copy()
        affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
        spacing = np.abs(np.diag(affine[:3, :3]))
        envelope = ndimage.binary_fill_holes(ndimage.binary_closing(brain, iterations=2))
        outside = ndimage.distance_transform_edt(~envelope, sampling=spacing).astype(np.float32)
        vent = ndimage.distance_transform_edt(labels != A.VENTRICLE, sampling=spacing).astype(np.float32)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        return A.Template(
            labels,
            affine,
            float(np.isin(labels, A.BRAIN_LABELS).sum() * voxel_ml),
            float("nan"),
            outside,
            vent,
            neonatal=True,
        )


def _to_ras_grid(labels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour resampling of a label map onto an axis-aligned RAS grid of about 1 mm."""
    spacing = max(0.8, float(np.cbrt(abs(np.linalg.det(affine[:3, :3])))))
    corners = (
        np.array(
            [
                [i, j, k, 1]
                for i in (0, labels.shape[0] - 1)
                for j in (0, labels.shape[1] - 1)
                for k in (0, labels.shape[2] - 1)
            ],
            float,
        )
        @ affine.T
    )
    lo, hi = corners[:, :3].min(0), corners[:, :3].max(0)
    shape = np.ceil((hi - lo) / spacing).astype(int) + 1
    out_aff = np.diag([spacing, spacing, spacing, 1.0])
    out_aff[:3, 3] = lo
    m = np.linalg.inv(affine) @ out_aff
    out = ndimage.affine_transform(labels, m[:3, :3], m[:3, 3], output_shape=tuple(shape), order=0, cval=0)
    return out.astype(np.uint8), out_aff
