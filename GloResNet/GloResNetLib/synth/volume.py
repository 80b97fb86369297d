"""Render one synthetic neonatal T2w scan: anatomy template -> subject -> scan grid -> lesions -> artefacts.

Every scan voxel is mapped back into template space (head pose, neonatal size and shape for the age, a smooth
elastic warp, and the ventricle deformation of normal variation or post-haemorrhagic dilatation) and the tissue
intensities are sampled there with trilinear interpolation, so edges get partial-volume values at the template's
resolution. Tissue outside the brain envelope (extra-axial CSF, skull, scalp) is drawn from the distance to the
envelope; the neck and eyes from their template positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from . import acquisition as acq_mod
from . import anatomy as A
from . import contrast, lesions
from .common import DEFAULT_DIFFICULTY, as_rng, check_common, input_error
from .geometry import DEFAULT_MAX_DIM, draw_acquisition

#: Fraction of subjects (either class) with diffuse excessive high signal in the white matter (not an injury).
DIFFUSE_FRACTION = 0.35
#: Coronal plane (template y, mm) of the foramen of Monro, where the ventricular index is measured.
MONRO_Y = -2.0
_NECK = (0.0, -22.0, 30.0, 34.0)  # template x, y centre and x, y radii (mm) of the neck below the skull base
_EYES = ((-31.0, 50.0, -36.0), (31.0, 50.0, -36.0), 11.0)


@dataclass
class Subject:
    """Subject-level anatomy (the same for all of that infant's scans)."""

    size: float
    shape: np.ndarray
    elastic: np.ndarray
    ventricle_k: float
    extra_csf_mm: float
    skull_mm: float
    scalp_mm: float
    contrast_seed: int


def draw_subject(rng: np.random.Generator) -> Subject:
    """Draw a subject: brain size (sd about 6%), shape, elastic warp, ventricle size, head layers."""
    return Subject(
        size=float(np.exp(rng.normal(0.0, 0.04))),
        shape=_unit_product(np.exp(rng.normal(0.0, 0.05, 3)) * np.array([0.96, 1.06, 0.98])),  # longer AP
        elastic=rng.normal(0.0, 2.0, (3, 4, 4, 4)).astype(np.float32),
        ventricle_k=float(rng.uniform(-3.0, -0.5)),  # MNI152 ventricles are larger than neonatal ones
        extra_csf_mm=float(rng.uniform(0.8, 3.5)),
        skull_mm=float(rng.uniform(1.0, 2.0)),
        scalp_mm=float(rng.uniform(2.0, 4.5)),
        contrast_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _unit_product(f: np.ndarray) -> np.ndarray:
    """Shape factors rescaled to product 1 (shape changes proportions, not volume)."""
    return f / np.cbrt(np.prod(f))


class Anatomy:
    """Where a subject's tissue labels come from: the built-in templates derived from MNI152 (default).

    :class:`~.user_anatomy.UserAnatomy` overrides :meth:`template` to render from label maps the user has.
    """

    def template(self, age: float, step: int, index: int) -> A.Template:
        """Template for subject ``index`` at ``age`` on grid ``step`` (1 fine, 2 coarse)."""
        return A.template(age, step)


class _Mapping:
    """Head-frame (neonatal mm, origin at the brain centre) <-> template mm for one subject at one age."""

    def __init__(
        self, subject: Subject, age: float, k_extra: float = 0.0, anatomy: Anatomy | None = None, index: int = 0
    ):
        self.anatomy = anatomy or Anatomy()
        self.index = index
        self.t1 = self.anatomy.template(age, 1, index)
        if self.t1.neonatal:  # a neonatal brain already: only the subject's small size variation
            self.scale = subject.size**0.5
        else:
            self.scale = (A.brain_volume_ml(age) / self.t1.brain_volume_ml) ** (1.0 / 3.0) * subject.size
        self.factors = self.scale * subject.shape  # neonatal mm per template mm along x, y, z
        lo, hi = self.t1.head_box()
        self.centre = (lo + hi) / 2.0
        self.box = (lo, hi)
        self.subject = subject
        self.k = subject.ventricle_k + k_extra

    def head_box(self, subject: Subject) -> tuple[np.ndarray, np.ndarray]:
        """Neonatal-mm box that holds the head (brain + CSF + skull + scalp) and the top of the neck."""
        lo, hi = self.box
        layers = subject.extra_csf_mm + subject.skull_mm + subject.scalp_mm + 2.0
        lo_n = (lo - self.centre) * self.factors - layers
        hi_n = (hi - self.centre) * self.factors + layers
        lo_n[2] -= 18.0
        return lo_n, hi_n

    def to_template(self, head: np.ndarray, k: float | None = None) -> np.ndarray:
        """Template mm (3, N) of head-frame points (3, N): scale, elastic warp, ventricle deformation."""
        q = head / self.factors[:, None] + self.centre[:, None]
        lo, hi = self.box
        u = (q - lo[:, None]) / (hi - lo)[:, None] * 3.0  # control grid 4^3 over the brain box
        warp = np.stack(
            [ndimage.map_coordinates(self.subject.elastic[a], u, order=1, mode="nearest") for a in range(3)]
        )
        q = (q + warp).astype(np.float32)
        return self._ventricles(q, self.k if k is None else k)

    def _ventricles(self, q: np.ndarray, k: float, lam: float = 12.0) -> np.ndarray:
        """Push the tissue around the ventricles outwards by about ``k`` template mm (k < 0: inwards)."""
        if abs(k) < 1e-3:
            return q
        t = self.t1
        d = _sample(t.ventricle_mm, t.affine, q, order=1, cval=99.0)
        near = np.nonzero((d > 0) & (d < 4.0 * lam))[0]
        if near.size == 0:
            return q
        h = A.STEP_MM
        qn = q[:, near]
        grad = np.empty_like(qn)
        for a in range(3):
            e = np.zeros((3, 1), np.float32)
            e[a] = h
            grad[a] = (
                _sample(t.ventricle_mm, t.affine, qn + e, 1, 99.0) - _sample(t.ventricle_mm, t.affine, qn - e, 1, 99.0)
            ) / (2 * h)
        norm = np.maximum(np.sqrt((grad * grad).sum(0)), 1e-3)
        g = np.float32(k) * np.exp(-d[near] / lam)
        out = q.copy()
        out[:, near] = qn - grad / norm * g
        return out


def _texture(subject: Subject, mapping: _Mapping, q: np.ndarray) -> np.ndarray:
    """Smooth zero-mean unit-sd texture (N,) attached to the anatomy (template space), not to the scan grid."""
    field = contrast.smooth_field(np.random.default_rng(subject.contrast_seed + 1), (24, 24, 24), 7)
    lo, hi = mapping.box
    u = (q - lo[:, None]) / (hi - lo)[:, None] * 23.0
    return ndimage.map_coordinates(field, u, order=1, mode="nearest", prefilter=False)


def _template_points(mapping: _Mapping, grid, shape: tuple[int, int, int], k: float | None = None) -> np.ndarray:
    """Template-mm position (3, N) of every scan voxel.

    The mapping is smooth (pose, scaling, elastic warp, ventricle deformation), so it is evaluated on a grid
    twice as coarse and interpolated trilinearly: 8x fewer evaluations, well under a voxel of error.
    """
    coarse = [np.linspace(0.0, n - 1.0, max(2, (n + 1) // 2 + 1), dtype=np.float32) for n in shape]
    ijk = np.stack(np.meshgrid(*coarse, indexing="ij")).reshape(3, -1)
    head = grid.m.astype(np.float32) @ ijk + grid.o.astype(np.float32)[:, None]
    qc = mapping.to_template(head, k).reshape((3,) + tuple(len(c) for c in coarse))
    pos = [
        np.arange(n, dtype=np.float32) * np.float32((len(c) - 1) / max(n - 1, 1))
        for n, c in zip(shape, coarse, strict=True)
    ]
    fine = np.stack(np.meshgrid(*pos, indexing="ij")).reshape(3, -1)
    return np.stack([ndimage.map_coordinates(qc[a], fine, order=1, mode="nearest", prefilter=False) for a in range(3)])


def _sample(volume: np.ndarray, affine: np.ndarray, q: np.ndarray, order: int, cval: float) -> np.ndarray:
    """Values of ``volume`` (template grid with ``affine``) at template-mm points ``q`` (3, N)."""
    inv = np.linalg.inv(affine)
    ijk = inv[:3, :3].astype(np.float32) @ q + inv[:3, 3:4].astype(np.float32)
    return ndimage.map_coordinates(volume, ijk, order=order, mode="constant", cval=cval, prefilter=False)


def _head_layers(outside_mm: np.ndarray, q: np.ndarray, subject: Subject, scale: float) -> np.ndarray:
    """Labels outside the brain envelope from the neonatal-mm distance to it; neck and eyes by position."""
    d = outside_mm * scale
    lab = np.zeros(d.shape, np.uint8)
    c, s, sc = subject.extra_csf_mm, subject.skull_mm, subject.scalp_mm
    lab[d <= c] = A.CSF
    lab[(d > c) & (d <= c + s)] = A.SKULL
    lab[(d > c + s) & (d <= c + s + sc)] = A.SCALP
    x, y, z = q
    nx, ny, rx, ry = _NECK
    widen = 1.0 + np.clip((z + 45.0) / 25.0, 0.0, 0.6)  # the neck flares into the skull base
    neck = (((x - nx) / (rx * widen)) ** 2 + ((y - ny) / (ry * widen)) ** 2 < 1.0) & (z < -40.0) & (d > c)
    lab[neck] = A.MUSCLE
    lab[neck & (((x - nx) / (rx * widen)) ** 2 + ((y - ny) / (ry * widen)) ** 2 > 0.8)] = A.SCALP
    cord = (np.abs(x) < 5.0) & (np.abs(y + 38.0) < 5.0) & (z < -40.0)
    lab[neck & cord] = A.BRAINSTEM
    r_eye = _EYES[2]
    for e in _EYES[:2]:
        dist = np.sqrt((x - e[0]) ** 2 + (y - e[1]) ** 2 + (z - e[2]) ** 2)
        lab[(dist < r_eye + 3.0) & (d > c)] = A.SCALP
        lab[(dist < r_eye) & (d > c)] = A.EYE
    return lab


def ventricular_index(mapping: _Mapping) -> tuple[float, float]:
    """Levene's ventricular index (mm): midline to the lateral wall of each lateral ventricle, coronal plane
    through the foramen of Monro, measured on the subject's (deformed) anatomy. Returns (right, left)."""
    xs = np.arange(0.5, 45.0, 0.25, dtype=np.float32)
    zs = np.arange(-5.0, 35.0, 1.0, dtype=np.float32)
    out = []
    for side in (1.0, -1.0):
        gx, gz = np.meshgrid(side * xs, zs, indexing="ij")
        y0 = (MONRO_Y - mapping.centre[1]) * mapping.factors[1]
        head = np.stack([gx.ravel(), np.full(gx.size, y0, np.float32), gz.ravel()])
        q = mapping.to_template(head)
        lab = _sample(mapping.t1.labels, mapping.t1.affine, q, 0, 0).reshape(gx.shape)
        hit = (lab == A.VENTRICLE).any(axis=1)
        out.append(float(xs[hit].max()) if hit.any() else 0.0)
    return out[0], out[1]


def render(
    subject: Subject,
    age: float,
    injuries: tuple[str, ...],
    lesion_rng: np.random.Generator,
    acq_rng: np.random.Generator,
    art_rng: np.random.Generator,
    difficulty: float,
    *,
    shape=None,
    voxel_size=None,
    orientation=None,
    rotation_deg=None,
    max_dim=DEFAULT_MAX_DIM,
    noise: bool = True,
    bias: bool = True,
    quality_fail: bool = False,
    brain_extracted: bool | None = None,
    artefact_strength: float = 1.0,
    anatomy: Anatomy | None = None,
    anatomy_index: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Render one scan; see :func:`synth_volume` for the arguments and returns."""
    has_diffuse, diffuse_u = lesion_rng.random() < DIFFUSE_FRACTION, lesion_rng.uniform(0.5, 1.0)
    k_phvd = lesion_rng.uniform(7.0, 12.0) * (1.15 - 0.6 * difficulty) if "phvd" in injuries else 0.0
    mapping = _Mapping(subject, age, k_phvd, anatomy, anatomy_index)
    les = lesions.place_lesions(lesion_rng, mapping.t1, injuries, mapping.scale, difficulty)
    acq = draw_acquisition(acq_rng, mapping.head_box(subject), shape, voxel_size, orientation, rotation_deg, max_dim)
    art = acq_mod.draw_artefacts(
        art_rng, quality_fail=quality_fail, strength=artefact_strength, brain_extracted=brain_extracted
    )
    grid = acq.grid()
    q = _template_points(mapping, grid, acq.shape)
    voxel_t = float(np.mean(acq.voxel_size)) / mapping.scale
    t = mapping.anatomy.template(age, 2 if voxel_t > 2.6 else 1, anatomy_index)
    lut = contrast.tissue_intensities(np.random.default_rng(subject.contrast_seed), age)
    labels = _sample(t.labels, t.affine, q, 0, 0).astype(np.uint8)
    image = _sample(lut[t.labels], t.affine, q, 1, 0.0).astype(np.float32)
    outside = _sample(t.outside_mm, t.affine, q, 1, 1e3)
    beyond = outside > 0.0
    layer_lab = _head_layers(outside[beyond], q[:, beyond], subject, mapping.scale)
    labels[beyond] = layer_lab
    edge = np.clip(outside[beyond] * mapping.scale / max(float(np.mean(acq.voxel_size)), 1e-3), 0.0, 1.0)
    image[beyond] = image[beyond] * (1.0 - edge) + lut[layer_lab] * edge
    # Diffuse excessive high signal (either class): brighter periventricular / posterior white matter.
    diffuse = 0.0
    if has_diffuse:
        diffuse = float(0.12 * diffuse_u * (1.0 - 0.5 * difficulty))
        vd = _sample(t.ventricle_mm, t.affine, q, 1, 99.0)
        wm = labels == A.WM
        image[wm] *= 1.0 + np.float32(diffuse) * np.exp(-vd[wm] / 10.0).astype(np.float32)
    image *= 1.0 + np.float32(0.04) * _texture(subject, mapping, q)
    mask = lesions.paint(les, q, labels, image, voxel_t)
    if "phvd" in injuries:  # the dilated part of the ventricles
        normal = _sample(t.labels, t.affine, _template_points(mapping, grid, acq.shape, subject.ventricle_k), 0, 0)
        mask |= (labels == A.VENTRICLE) & (normal != A.VENTRICLE)
    del q
    shape3 = acq.shape
    image = image.reshape(shape3)
    labels = labels.reshape(shape3)
    brain = np.isin(labels, A.BRAIN_LABELS) | (labels == A.CSF) & (outside.reshape(shape3) <= 0)
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(brain, iterations=1))
    thickness = acq.voxel_size[2] if acq.voxel_size[2] > 1.3 * acq.voxel_size[0] else None
    image = acq_mod.slice_profile(image, acq.voxel_size, thickness)
    if not bias:
        art.bias_coeff = 0.0
    if not noise:
        art.noise_sd = 0.0
    img = acq_mod.apply(image, art, brain)
    drawem = labels.copy()
    for ours, theirs in A.TO_DRAWEM.items():
        drawem[labels == ours] = theirs
    vi = ventricular_index(mapping)
    info = {
        "age_weeks": float(age),
        "template_age_weeks": mapping.t1.age_weeks,
        "injuries": list(injuries),
        "difficulty": float(difficulty),
        "voxel_size": acq.voxel_size,
        "shape": acq.shape,
        "orientation": acq.orientation,
        "brain_volume_ml": round(mapping.t1.brain_volume_ml * float(np.prod(mapping.factors)), 1),
        "head_circumference_cm": round(_head_circumference(mapping, subject), 1),
        "ventricle_dilation": round(float(mapping.k), 2),
        "ventricular_index_mm": [round(v, 1) for v in vi],
        "diffuse_injury": round(diffuse, 3),
        "n_lesions": len(les) + int("phvd" in injuries),
        "lesions": [
            {"kind": x.kind, "part": x.part, "radius_mm": round(float(x.radii.mean() * mapping.scale), 2)} for x in les
        ],
        "brain_extracted": bool(art.brain_extracted),
        "labels": drawem,
        "labels_full": labels,
        "brain_mask": brain.astype(np.uint8),
        "label_names": {k: A.TISSUES[k] for k in range(10)},
        "quality_fail": bool(quality_fail),
    }
    return img, acq.affine, mask.reshape(shape3).astype(np.uint8), info


def _head_circumference(mapping: _Mapping, subject: Subject) -> float:
    """Occipito-frontal circumference (cm) of the head ellipse through the widest axial plane."""
    lo, hi = mapping.head_box(subject)
    a, b = (hi[0] - lo[0]) / 2.0, (hi[1] - lo[1]) / 2.0
    return float(np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b))) / 10.0)


def synth_volume(
    rng_or_seed: int | np.random.Generator = 0,
    age_weeks: float = 40.0,
    injuries: Sequence[str] | str | None = (),
    shape: Sequence[int] | None = None,
    voxel_size: float | Sequence[float] | None = None,
    orientation: str | None = None,
    *,
    difficulty: float = DEFAULT_DIFFICULTY,
    rotation_deg: float | Sequence[float] | None = None,
    max_dim: int | None = DEFAULT_MAX_DIM,
    noise: bool = True,
    bias: bool = True,
    quality_fail: bool = False,
    brain_extracted: bool | None = None,
    artefact_strength: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """One synthetic neonatal T2w volume.

    Args:
        rng_or_seed: seed (>= 0) or numpy Generator.
        age_weeks: post-menstrual age at scan (20-50; anatomy templates cover 28-44).
        injuries: any of :data:`~.lesions.INJURY_TYPES` (empty = no brain injury; the mask is then all zero).
        shape, voxel_size, orientation, rotation_deg: scan geometry (nibabel axis codes such as ``"LPS"``;
            head rotation about x, y, z in degrees); drawn at random when None. With ``shape`` None the field of
            view covers the head and each axis has at most ``max_dim`` voxels (voxels are enlarged to fit).
        difficulty: 0 (large, conspicuous lesions) to 1 (small, faint).
        noise, bias: Rician noise and bias field on/off.
        quality_fail: strong motion ghosting (a scan that fails quality control).
        brain_extracted: True/False forces a brain-extracted / whole-head volume; None draws it (30% extracted).
        artefact_strength: scales the random artefacts (bias, gamma, Gibbs, ghosts); 0 = none but noise.
    Returns:
        image: float32 (I, J, K); affine: (4, 4) voxel -> RAS mm; lesion mask: uint8 (I, J, K);
        info: dict with the DRAW-EM label map (``labels``), ``brain_mask``, ventricular index and scan settings.
    """
    check_common(age_weeks, difficulty)
    injuries = lesions.check_injuries(injuries)
    if max_dim is not None and int(max_dim) < 8:
        raise input_error(f"max_dim must be at least 8 (got {max_dim})")
    rng = as_rng(rng_or_seed)
    seeds = rng.integers(0, 2**63 - 1, size=4)
    subject_rng, lesion_rng, acq_rng, art_rng = (np.random.default_rng(int(s)) for s in seeds)
    return render(
        draw_subject(subject_rng),
        age_weeks,
        injuries,
        lesion_rng,
        acq_rng,
        art_rng,
        difficulty,
        shape=shape,
        voxel_size=voxel_size,
        orientation=orientation,
        rotation_deg=rotation_deg,
        max_dim=max_dim,
        noise=noise,
        bias=bias,
        quality_fail=quality_fail,
        brain_extracted=brain_extracted,
        artefact_strength=artefact_strength,
    )
