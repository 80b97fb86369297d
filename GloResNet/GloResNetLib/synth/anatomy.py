"""Neonatal anatomy for the synthetic cohort: tissue label maps with real human topology.

The starting point is the ICBM 2009a non-linear symmetric MNI152 template that nilearn ships (grey- and
white-matter probability maps and the brain-extracted T1 average at 1 mm; BSD-licensed package, the template's
own licence allows redistribution with its copyright notice). Nothing is downloaded: the files are read from the
installed nilearn package.

From those maps, in template (MNI) millimetres, this module derives a label map in the dHCP DRAW-EM 9-tissue
numbering (1 CSF, 2 cortical grey matter, 3 white matter, 5 ventricles, 6 cerebellum, 7 deep grey matter,
8 brainstem, 9 hippocampus and amygdala) plus labels of its own for myelinated white matter (posterior limb of
the internal capsule), skull, scalp, muscle and neck soft tissue, and eyes (:data:`TISSUES`). The deep
structures come from template intensities inside anatomically placed regions (a documented heuristic, checked
by the tests' adjacency and volume invariants): ventricles are the dark CSF components around the lateral,
third and fourth ventricle positions; deep grey matter is the grey tissue of the basal-ganglia/thalamus region
and the white matter between its nuclei is the internal capsule; the cerebellum lies below the tentorium.

Age: the cerebral white matter surface is smoothed with a width that grows as age falls (a nearly smooth
cortex at 28 weeks post-menstrual age, the term pattern at 40) and a cortical ribbon of neonatal thickness is
laid around it, keeping the deep structures; the whole brain is later scaled to the published neonatal brain
volume for that age (:data:`BRAIN_VOLUME_ML`). Templates are built once per age step and process, at two
resolutions (1.5 and 3 mm of template space) so that coarse scans sample a pre-smoothed map.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

BG, CSF, CORTEX, WM, NONBRAIN, VENTRICLE, CEREBELLUM, DGM, BRAINSTEM, HIPPO = range(10)
PLIC, SKULL, SCALP, MUSCLE, EYE, CB_WM = 10, 11, 12, 13, 14, 15
#: Tissue labels of the synthetic label maps: 0-9 are DRAW-EM's 9-tissue numbering (4 is its "background"
#: inside the head; here non-brain tissue that is not one of 11-14), 10-14 are this generator's own.
TISSUES = {
    BG: "background",
    CSF: "csf",
    CORTEX: "cortical_grey_matter",
    WM: "white_matter",
    NONBRAIN: "non_brain",
    VENTRICLE: "ventricles",
    CEREBELLUM: "cerebellum",
    DGM: "deep_grey_matter",
    BRAINSTEM: "brainstem",
    HIPPO: "hippocampus_amygdala",
    PLIC: "internal_capsule_posterior_limb",
    SKULL: "skull",
    SCALP: "scalp",
    MUSCLE: "muscle",
    EYE: "eye",
    CB_WM: "cerebellar_white_matter",
}
BRAIN_LABELS = (CORTEX, WM, VENTRICLE, CEREBELLUM, DGM, BRAINSTEM, HIPPO, PLIC, CB_WM)
#: Our labels written as DRAW-EM's 9 tissues (label maps in cohort files use this numbering).
TO_DRAWEM = {PLIC: WM, CB_WM: CEREBELLUM, SKULL: NONBRAIN, SCALP: NONBRAIN, MUSCLE: NONBRAIN, EYE: NONBRAIN}
#: Brain volume (ml, inside the brain mask: tissue and ventricles) by post-menstrual age (weeks): the Imperial
#: neonatal T2 atlas (Serag et al., NeuroImage 2012) as measured in REFERENCES.md.
BRAIN_VOLUME_ML = {28: 197.0, 30: 232.0, 32: 269.0, 34: 319.0, 36: 377.0, 38: 442.0, 40: 483.0, 42: 536.0, 44: 559.0}
ANATOMY_SOURCE = (
    "built-in: ICBM 2009a MNI152 grey/white-matter maps (from nilearn) reshaped to neonatal "
    "proportions, folding and brain volume by age"
)
#: Ages (weeks) at which a folding template is built; a subject uses the nearest.
TEMPLATE_AGES = (28.0, 30.0, 32.0, 34.0, 36.0, 38.0, 40.0, 42.0, 44.0)
#: Template-space cortical thickness (mm): about 1.8 mm once scaled to a term brain, 1.45 mm at 28 weeks.
CORTEX_MM = 2.8
#: Depth (template mm from the brain surface) below which the original labels are kept as they are.
KEEP_DEPTH_MM = 12.0
STEP_MM = 1.5  # template grid spacing (mm): about 1 mm in a term brain, 0.8 mm at 28 weeks
_DIST_STEP = 0.25  # mm per step of the cached distance maps
_MARGIN = 28  # template voxels of head and neck around the brain box


def brain_volume_ml(age_weeks: float) -> float:
    """Published neonatal brain volume (ml) at ``age_weeks`` (linear between table ages, clamped)."""
    ages = np.array(sorted(BRAIN_VOLUME_ML), dtype=float)
    return float(np.interp(float(age_weeks), ages, [BRAIN_VOLUME_ML[int(a)] for a in ages]))


def folding_sigma(age_weeks: float) -> float:
    """Smoothing (template mm) of the white-matter surface: about 7 at 28 weeks, 1.3 at 40, 0.8 at 44."""
    return float(np.interp(float(age_weeks), [28.0, 32.0, 36.0, 40.0, 44.0], [14.0, 9.0, 5.0, 2.0, 1.2]))


def _template_files() -> tuple[Path, Path, Path]:
    try:
        import nilearn
    except ImportError:  # pragma: no cover - a declared dependency
        from ..errors import InputError

        raise InputError("the synthetic generator needs the 'nilearn' package (pip install nilearn)") from None
    data = Path(nilearn.__file__).parent / "datasets" / "data"
    names = [data / f"mni_icbm152_{t}_tal_nlin_sym_09a_converted.nii.gz" for t in ("gm", "wm", "t1")]
    missing = [p.name for p in names if not p.is_file()]
    if missing:
        from ..errors import InputError

        raise InputError(f"nilearn {nilearn.__version__} lacks the MNI152 files {missing}")
    return names[0], names[1], names[2]


@dataclass
class Template:
    """One age's label map in template space.

    Attributes:
        labels: uint8 (X, Y, Z) label map (:data:`TISSUES`).
        affine: 4x4 voxel -> template mm (RAS, MNI-like: origin near the anterior commissure).
        brain_volume_ml: template-space brain volume (labels in :data:`BRAIN_LABELS`).
        age_weeks: the folding age.
        outside_mm: float32 (X, Y, Z) distance (template mm) outside the brain envelope (0 inside).
        ventricle_mm: float32 (X, Y, Z) distance (template mm) to the nearest ventricle voxel.
        neonatal: True when the template is already a neonatal brain in millimetres (user label maps): it is
            then not rescaled to the age's brain volume.
        cache: per-template memo (lesion candidate positions).
    """

    labels: np.ndarray
    affine: np.ndarray
    brain_volume_ml: float
    age_weeks: float
    outside_mm: np.ndarray
    ventricle_mm: np.ndarray
    neonatal: bool = False
    cache: dict = field(default_factory=dict)

    def head_box(self) -> tuple[np.ndarray, np.ndarray]:
        """Template-mm bounding box of the brain envelope (computed once per template)."""
        if "head_box" not in self.cache:
            idx = np.argwhere(self.outside_mm <= 0.0)
            lo, hi = idx.min(0), idx.max(0)
            self.cache["head_box"] = (
                self.affine[:3, :3] @ lo + self.affine[:3, 3],
                self.affine[:3, :3] @ hi + self.affine[:3, 3],
            )
        return self.cache["head_box"]


@functools.lru_cache(maxsize=1)
def _reference() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Base labels (no head layers) at 1 mm, their affine, and the brain envelope; padded for the head."""
    import nibabel as nib

    paths = _template_files()
    imgs = [nib.load(str(p)) for p in paths]
    gm, wm, t1 = (np.asarray(im.dataobj, dtype=np.float32) for im in imgs)
    gm /= 255.0
    wm /= 255.0
    affine = imgs[0].affine.copy()
    zoom = 1.0 / STEP_MM
    gm, wm, t1 = (ndimage.zoom(a, zoom, order=1, prefilter=False) for a in (gm, wm, t1))
    affine[:3, :3] *= STEP_MM
    affine[:3, 3] += imgs[0].affine[:3, :3] @ np.full(3, (STEP_MM - 1.0) / 2.0)
    pad = _MARGIN
    gm, wm, t1 = (np.pad(a, pad) for a in (gm, wm, t1))
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    brain = t1 > 0
    x, y, z = _mm_grids(brain.shape, affine)
    csf_p = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    depth = ndimage.distance_transform_edt(brain, sampling=STEP_MM)
    labels = np.zeros(brain.shape, np.uint8)
    labels[brain] = CSF
    labels[brain & (gm >= csf_p) & (gm >= wm)] = CORTEX
    labels[brain & (wm > gm) & (wm >= csf_p)] = WM

    # Ventricles: dark CSF components that contain the lateral / third / fourth ventricle seed points.
    tissue_t1 = np.median(t1[brain & (wm > 0.9)])
    box = ((np.abs(x) < 36) & (y > -52) & (y < 42) & (z > -30) & (z < 36)) | (
        (np.abs(x) < 10) & (y > -58) & (y < -32) & (z > -50) & (z <= -30)
    )  # fourth ventricle
    dark = brain & box & (csf_p > 0.5) & (t1 < 0.5 * tissue_t1) & (depth > 9)
    inv = np.linalg.inv(affine)
    comp, _ = ndimage.label(dark)
    seeds = [
        (-14, -5, 20),
        (14, -5, 20),
        (-17, 12, 12),
        (17, 12, 12),
        (-25, -40, 12),
        (25, -40, 12),
        (0, -12, 2),
        (0, -45, -30),
    ]
    keep = set()
    for s in seeds:
        i, j, k = np.round(inv[:3, :3] @ np.asarray(s, float) + inv[:3, 3]).astype(int)
        window = comp[i - 3 : i + 4, j - 3 : j + 4, k - 3 : k + 4]
        ids = np.unique(window[window > 0])
        keep.update(int(v) for v in ids)
    vent = np.isin(comp, sorted(keep)) & (depth > 4)
    vent = ndimage.binary_dilation(vent, iterations=1) & brain & box & (csf_p > 0.3)
    labels[vent] = VENTRICLE

    # Posterior fossa: cerebellum below the tentorium, brainstem in front of the fourth ventricle.
    tent = -8.0 + 0.32 * (y + 50.0)
    fossa = brain & (z < tent) & (y < -28) & ((np.abs(x) < 28) | (y < -52))
    stem = brain & (np.abs(x) < 13) & (y > -42) & (y < -8) & (z < -6) & ~vent & (labels != CSF)
    cb = fossa & ~stem & (labels != CSF) & ~vent
    labels[cb] = CEREBELLUM
    labels[cb & (wm > gm)] = CB_WM
    labels[stem & (z < 2)] = BRAINSTEM

    # Deep grey matter (caudate, lentiform nuclei, thalami) and the internal capsule between them.
    ell = (x / 30.0) ** 2 + ((y + 6.0) / 33.0) ** 2 + ((z - 5.0) / 19.0) ** 2 < 1.0
    deep_region = brain & ell & ~vent & np.isin(labels, (CORTEX, WM))
    grey = ndimage.binary_opening(deep_region & (gm > 0.45), iterations=1)
    labels[grey] = DGM
    thalamus = grey & (np.abs(x) < 20) & (y < -6)
    lentiform = grey & (np.abs(x) > 15) & (y > -22)
    near_thal = ndimage.distance_transform_edt(~thalamus, sampling=STEP_MM) < 7.0
    near_lent = ndimage.distance_transform_edt(~lentiform, sampling=STEP_MM) < 7.0
    capsule = deep_region & ~grey & near_thal & near_lent & (labels == WM)
    labels[capsule] = PLIC

    # Hippocampus and amygdala: grey matter of the medial temporal lobe.
    hippo = (
        brain
        & (labels == CORTEX)
        & (np.abs(x) > 16)
        & (np.abs(x) < 38)
        & (y > -42)
        & (y < 2)
        & (z > -30)
        & (z < -4)
        & (depth > 7)
    )
    labels[hippo] = HIPPO
    envelope = ndimage.binary_closing(brain, structure=_ball(3), iterations=1)
    envelope = ndimage.binary_fill_holes(envelope)
    return labels, affine, envelope


def _ball(r: int) -> np.ndarray:
    g = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return (g**2).sum(0) <= r * r


def _mm_grids(shape, affine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template mm coordinates (x, y, z) of every voxel of an axis-aligned grid, broadcastable views."""
    idx = [np.arange(n, dtype=np.float32) for n in shape]
    x = (affine[0, 0] * idx[0] + affine[0, 3]).astype(np.float32)[:, None, None]
    y = (affine[1, 1] * idx[1] + affine[1, 3]).astype(np.float32)[None, :, None]
    z = (affine[2, 2] * idx[2] + affine[2, 3]).astype(np.float32)[None, None, :]
    return x, y, z


def _fold(labels: np.ndarray, envelope: np.ndarray, age_weeks: float) -> np.ndarray:
    """Cerebral cortex and white matter re-drawn for ``age_weeks``; deep structures kept."""
    sigma = folding_sigma(age_weeks)
    depth = ndimage.distance_transform_edt(envelope, sampling=STEP_MM)
    cerebral = ~np.isin(labels, (CEREBELLUM, BRAINSTEM))
    wm_like = np.isin(labels, (WM, VENTRICLE, DGM, PLIC, HIPPO)) & cerebral
    smooth = ndimage.gaussian_filter(wm_like.astype(np.float32), sigma / STEP_MM) > 0.5 if sigma > 0.5 else wm_like
    keep = (depth > KEEP_DEPTH_MM) | ~cerebral
    new_wm = (smooth | (wm_like & keep)) & envelope
    # The ribbon: a band of CORTEX_MM around the (smoothed) white matter, inside the brain envelope.
    dist_out = ndimage.distance_transform_edt(~new_wm, sampling=STEP_MM)
    ribbon = (dist_out > 0) & (dist_out <= CORTEX_MM) & envelope & cerebral
    out = labels.copy()
    region = cerebral & ~keep & envelope
    out[region] = CSF
    out[region & ribbon] = CORTEX
    out[region & new_wm & ~np.isin(labels, (VENTRICLE, DGM, HIPPO, PLIC))] = WM
    return out


def template(age_weeks: float, step: int = 1) -> Template:
    """The label template of the nearest :data:`TEMPLATE_AGES` age, on the 1.5 mm grid (``step`` 1) or 3 mm (2).

    Built once per process; kept in memory (about 7 MB of labels and 56 MB of distance maps per age at step 1).
    """
    return _template(min(TEMPLATE_AGES, key=lambda a: abs(a - float(age_weeks))), int(step))


@functools.lru_cache(maxsize=len(TEMPLATE_AGES) * 2)
def _template(age: float, step: int) -> Template:
    if step == 2:
        return coarser(_template(age, 1))
    labels, outside, vent, affine = _cached_fold(age)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    brain_ml = float(np.isin(labels, BRAIN_LABELS).sum() * voxel_ml)
    return Template(labels, affine, brain_ml, age, outside, vent)


def coarser(fine: Template) -> Template:
    """The same template on a grid twice as coarse (labels by majority of each 2x2x2 block)."""
    labels = _mode_downsample(fine.labels)
    affine = fine.affine.copy()
    affine[:3, :3] *= 2.0
    affine[:3, 3] += fine.affine[:3, :3] @ np.full(3, 0.5)
    crop = tuple(slice(0, n) for n in labels.shape)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    return Template(
        labels,
        affine,
        float(np.isin(labels, BRAIN_LABELS).sum() * voxel_ml),
        fine.age_weeks,
        fine.outside_mm[::2, ::2, ::2][crop],
        fine.ventricle_mm[::2, ::2, ::2][crop],
        fine.neonatal,
    )


def _cache_file(age: float) -> Path:
    """Disk cache of one age's labels: keyed by this module's source, so a code change rebuilds it."""
    import hashlib

    from ..training.cache import default_cache_dir

    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return default_cache_dir().parent / "synth-anatomy" / f"template-{age:.0f}w-{key}.npz"


def _cached_fold(age: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, outside_mm, ventricle_mm, affine) of one age, from the checksummed disk cache or built.

    Distances are stored in steps of :data:`_DIST_STEP` mm (uint8, so at most 63.75 mm: further is "far").

    A cache entry whose SHA-256 does not match its sidecar, or whose arrays are not what they must be, is
    rebuilt; an unwritable cache folder only means the next process builds the template again.
    """
    import hashlib
    import io
    import warnings

    path = _cache_file(age)
    digest_path = path.with_suffix(".sha256")
    try:
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() == digest_path.read_text().strip():
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                labels, outside_q, vent_q, affine = z["labels"], z["outside"], z["ventricle"], z["affine"]
            if (
                labels.dtype == outside_q.dtype == vent_q.dtype == np.uint8
                and affine.shape == (4, 4)
                and labels.shape == outside_q.shape == vent_q.shape
                and int(labels.max()) <= max(TISSUES)
            ):
                return (
                    labels,
                    outside_q.astype(np.float32) * _DIST_STEP,
                    vent_q.astype(np.float32) * _DIST_STEP,
                    affine,
                )
    except (OSError, ValueError, KeyError):
        pass
    base, affine, envelope = _reference()
    labels = _fold(base, envelope, age)
    outside_q = _quantise(ndimage.distance_transform_edt(~envelope, sampling=STEP_MM))
    vent_q = _quantise(ndimage.distance_transform_edt(labels != VENTRICLE, sampling=STEP_MM))
    buf = io.BytesIO()
    np.savez_compressed(buf, labels=labels, outside=outside_q, ventricle=vent_q, affine=affine)
    data = buf.getvalue()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        digest_path.write_text(hashlib.sha256(data).hexdigest() + "\n")
    except OSError as exc:
        warnings.warn(
            f"synthetic anatomy cache not written ({exc}); templates are rebuilt in each process", stacklevel=2
        )
    return labels, outside_q.astype(np.float32) * _DIST_STEP, vent_q.astype(np.float32) * _DIST_STEP, affine


def _quantise(dist_mm: np.ndarray) -> np.ndarray:
    return np.clip(np.round(dist_mm / _DIST_STEP), 0, 255).astype(np.uint8)


def _mode_downsample(labels: np.ndarray) -> np.ndarray:
    """2x label downsampling by the most frequent label of each 2x2x2 block (brain labels win ties)."""
    n = [s // 2 * 2 for s in labels.shape]
    blocks = labels[: n[0], : n[1], : n[2]].reshape(n[0] // 2, 2, n[1] // 2, 2, n[2] // 2, 2)
    blocks = blocks.transpose(0, 2, 4, 1, 3, 5).reshape(n[0] // 2, n[1] // 2, n[2] // 2, 8)
    counts = np.stack([(blocks == v).sum(-1) for v in range(max(TISSUES) + 1)], axis=-1)
    return counts.argmax(-1).astype(np.uint8)
