"""Write a synthetic cohort: images, lesion masks, manifest.csv, cohort.json and the optional dHCP layout."""

from __future__ import annotations

import csv
import io as _io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import anatomy as A
from .common import DEFAULT_DIFFICULTY, DISCLAIMER, GENERATOR_VERSION, check_common
from .common import input_error as _input_error
from .geometry import DEFAULT_MAX_DIM
from .lesions import INJURY_DESCRIPTIONS
from .plan import (
    DEFAULT_BI_FRACTION,
    DEFAULT_SECOND_SESSION_FRACTION,
    LABEL_RULE,
    SessionPlan,
    as_seed,
    check_n,
    plan_cohort,
    subject_rng,
)
from .volume import Anatomy, draw_subject, render

MANIFEST_COLUMNS = ("path", "label", "subject", "session", "age_weeks", "ga_weeks", "injury_types", "mask_path")


def synth_session(
    plan: SessionPlan,
    seed: int,
    difficulty: float = DEFAULT_DIFFICULTY,
    *,
    max_dim: int | None = DEFAULT_MAX_DIM,
    shape: Sequence[int] | None = None,
    voxel_size: float | Sequence[float] | None = None,
    anatomy: Anatomy | None = None,
    artefact_strength: float = 1.0,
):
    """Render one planned scan; the same ``(plan, seed, ...)`` gives the same arrays, whatever the other scans.

    Anatomy and lesion layout come from the subject's generators (shared by its sessions); the scan geometry
    and artefacts from the session's. Returns like :func:`~.volume.synth_volume`.
    """
    check_common(plan.age_weeks, difficulty)
    i, k = plan.subject_index, plan.session_index
    subject = draw_subject(subject_rng(seed, i, 4))
    return render(
        subject,
        plan.age_weeks,
        plan.injury_types,
        subject_rng(seed, i, 5),
        subject_rng(seed, i, 6, k),
        subject_rng(seed, i, 7, k),
        difficulty,
        shape=shape,
        voxel_size=voxel_size,
        max_dim=max_dim,
        quality_fail=plan.quality_fail,
        anatomy=anatomy,
        anatomy_index=i,
        artefact_strength=artefact_strength,
    )


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Deterministic NIfTI-1 (.nii.gz) with qform and sform set to ``affine``; written atomically."""
    import nibabel as nib

    from ..io import atomic_path

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
    from ..io import write_text_atomic

    lines = ["\t".join(columns)] + ["\t".join(str(v) for v in row) for row in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def _paths(plan: SessionPlan, bids: bool) -> tuple[str, str | None, str | None, str | None]:
    """Relative paths (image, lesion mask or None, brain mask or None, DRAW-EM 9-tissue labels or None)."""
    stem = f"sub-{plan.subject}_ses-{plan.session}"
    mask = f"masks/{stem}_lesion_mask.nii.gz" if plan.label else None
    if bids:
        anat = f"dhcp/sub-{plan.subject}/ses-{plan.session}/anat"
        return (
            f"{anat}/{stem}_desc-restore_T2w.nii.gz",
            mask,
            f"{anat}/{stem}_desc-brain_mask.nii.gz",
            f"{anat}/{stem}_desc-drawem9_dseg.nii.gz",
        )
    return f"images/{stem}_T2w.nii.gz", mask, None, None


_WORKER_ANATOMY: Anatomy | None = None


def _init_worker(anatomy: Anatomy | None) -> None:
    """Worker start: one thread each (the workers share the cores), the user's anatomy kept for all jobs."""
    global _WORKER_ANATOMY
    import torch

    torch.set_num_threads(1)
    _WORKER_ANATOMY = anatomy


def _write_session(job: tuple) -> dict:
    plan, seed, difficulty, out, bids, max_dim, shape, voxel_size, anatomy, artefact_strength = job
    anatomy = anatomy if anatomy is not None else _WORKER_ANATOMY
    img, affine, mask, info = synth_session(
        plan,
        seed,
        difficulty,
        max_dim=max_dim,
        shape=shape,
        voxel_size=voxel_size,
        anatomy=anatomy,
        artefact_strength=artefact_strength,
    )
    if not np.all(np.isfinite(img)):  # never write a non-finite volume
        raise RuntimeError(f"synthetic scan {plan.subject}/{plan.session} has non-finite values")
    image_rel, mask_rel, brain_rel, labels_rel = _paths(plan, bids)
    _write_nifti(out / image_rel, img, affine)
    if mask_rel:
        _write_nifti(out / mask_rel, mask, affine)
    if brain_rel:
        _write_nifti(out / brain_rel, info["brain_mask"], affine)
    if labels_rel:
        _write_nifti(out / labels_rel, info["labels"].astype(np.uint8), affine)
    return {
        "head_circumference_cm": info["head_circumference_cm"],
        "shape": list(info["shape"]),
        "voxel_size": [round(v, 3) for v in info["voxel_size"]],
        "orientation": info["orientation"],
        "lesion_voxels": int(mask.sum()),
        "brain_volume_ml": info["brain_volume_ml"],
        "ventricular_index_mm": info["ventricular_index_mm"],
        "brain_extracted": info["brain_extracted"],
    }


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
        return (
            f"synth: wrote {self.n_volumes} volumes ({self.n_volumes - self.n_injured} no BI, "
            f"{self.n_injured} BI; {self.n_subjects} subjects) in {self.seconds:.1f} s; "
            f"manifest {self.manifest}{where} ({DISCLAIMER})"
        )


def generate_cohort(
    out_dir: str | os.PathLike,
    n: int = 60,
    seed: int = 0,
    difficulty: float = DEFAULT_DIFFICULTY,
    bids: bool = False,
    *,
    max_dim: int | None = DEFAULT_MAX_DIM,
    shape: Sequence[int] | None = None,
    voxel_size: float | Sequence[float] | None = None,
    bi_fraction: float = DEFAULT_BI_FRACTION,
    second_session_fraction: float = DEFAULT_SECOND_SESSION_FRACTION,
    n_quality_fail: int | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    anatomy: Anatomy | None = None,
    artefact_strength: float = 1.0,
) -> CohortResult:
    """Write a synthetic cohort of ``n`` scans to ``out_dir`` with ``manifest.csv`` and ``cohort.json``.

    Images go to ``images/`` (or, with ``bids``, to the dHCP layout under ``dhcp/`` with ``participants.tsv``,
    per-subject ``sessions.tsv`` and brain masks, plus ``n_quality_fail`` extra sessions scored ``Q`` that are
    left out of the manifest; default 1 for n < 20, else 2). Lesion masks of injured scans go to ``masks/``.
    Manifest paths are relative to ``out_dir``. ``workers`` > 1 renders in parallel processes (started clean,
    by forkserver or spawn; the anatomy templates are built first, in this process, so that the workers only
    read them from the disk cache). ``anatomy``: render
    from the user's label maps (:class:`~.user_anatomy.UserAnatomy`) instead of the built-in templates.
    """
    n = check_n(n)
    seed = as_seed(seed)
    check_common(40.0, difficulty)
    if max_dim is not None and int(max_dim) < 8:
        raise _input_error(f"max_dim must be at least 8 (got {max_dim})")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise _input_error(f"{out}: output path exists and is not a folder")
    if n_quality_fail is None:
        n_quality_fail = (1 if n < 20 else 2) if bids else 0
    start = time.perf_counter()
    plans = plan_cohort(
        n, seed, bi_fraction=bi_fraction, second_session_fraction=second_session_fraction, n_quality_fail=n_quality_fail
    )
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (p, seed, float(difficulty), out, bool(bids), max_dim, shape, voxel_size, anatomy, float(artefact_strength))
        for p in plans
    ]
    if anatomy is None:  # build the templates once (disk cache), before the workers start
        for age in sorted({min(A.TEMPLATE_AGES, key=lambda a, p=p: abs(a - p.age_weeks)) for p in plans}):
            A.template(age, 1)
            A.template(age, 2)
    results: list[dict] = []
    workers = max(1, int(workers))
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Not "fork": the artefacts run MONAI/torch code, and a process forked from a parent whose OpenMP
        # threads already ran (any torch work before this call) can hang in its first parallel region.
        # Workers start clean and read the templates from the disk cache built above.
        method = "forkserver" if "forkserver" in _mp_methods() else "spawn"
        jobs = [j[:8] + (None,) + j[9:] for j in jobs]  # the anatomy goes to each worker once
        with ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context(method), initializer=_init_worker, initargs=(anatomy,)
        ) as pool:
            for k, res in enumerate(pool.map(_write_session, jobs, chunksize=4)):
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
        image_rel, mask_rel, _, _ = _paths(p, bids)
        rows.append(
            {
                "path": image_rel,
                "label": p.label,
                "subject": p.subject,
                "session": p.session,
                "age_weeks": f"{p.age_weeks:.2f}",
                "ga_weeks": f"{p.ga_weeks:.2f}",
                "injury_types": "+".join(p.injury_types),
                "mask_path": mask_rel or "",
            }
        )
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    from ..io import write_text_atomic

    manifest = write_text_atomic(out / "manifest.csv", buf.getvalue())
    bids_dir = _write_bids_tables(out / "dhcp", scans) if bids else None
    seconds = time.perf_counter() - start
    n_injured = sum(int(r["label"]) for r in rows)
    meta = {
        "description": "GloResNet synthetic neonatal T2w cohort",
        "synthetic": True,
        "note": DISCLAIMER,
        "generator": "GloResNetLib.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n": n,
        "difficulty": float(difficulty),
        "bids": bool(bids),
        "max_dim": max_dim,
        "shape": list(shape) if shape is not None else None,
        "voxel_size": voxel_size if voxel_size is None or np.isscalar(voxel_size) else list(voxel_size),
        "bi_fraction": bi_fraction,
        "second_session_fraction": second_session_fraction,
        "label_rule": LABEL_RULE,
        "injury_types": INJURY_DESCRIPTIONS,
        "tissue_labels": A.TISSUES,
        "tissue_label_note": "label maps use DRAW-EM's 9-tissue numbering (labels 0-9)",
        "anatomy": anatomy.describe() if anatomy is not None else A.ANATOMY_SOURCE,
        "artefact_strength": float(artefact_strength),
        "counts": {
            "volumes": len(rows),
            "no_bi": len(rows) - n_injured,
            "bi": n_injured,
            "subjects": len({r["subject"] for r in rows}),
        },
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
    from ..io import write_text_atomic

    subjects: dict[str, list[tuple[SessionPlan, dict]]] = {}
    for p, r in scans:
        subjects.setdefault(p.subject, []).append((p, r))
    _write_tsv(
        root / "participants.tsv",
        ("participant_id", "sex", "birth_age", "birth_weight", "singleton"),
        [
            (
                s,
                v[0][0].sex,
                f"{v[0][0].ga_weeks:.2f}",
                f"{v[0][0].birth_weight:.3f}",
                "Singleton" if v[0][0].singleton else "Multiple",
            )
            for s, v in subjects.items()
        ],
    )
    for s, v in subjects.items():
        _write_tsv(
            root / f"sub-{s}" / f"sub-{s}_sessions.tsv",
            ("session_id", "scan_age", "scan_head_circumference", "radiology_score", "scan_number", "sedation"),
            [
                (
                    p.session,
                    f"{p.age_weeks:.2f}",
                    f"{r['head_circumference_cm']:.1f}",
                    p.radiology_score,
                    p.session_index + 1,
                    p.sedation,
                )
                for p, r in v
            ],
        )
    description = {
        "Name": f"GloResNet synthetic dHCP-like cohort ({DISCLAIMER})",
        "BIDSVersion": "1.8.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "GloResNetLib.synth", "Version": GENERATOR_VERSION}],
    }
    write_text_atomic(root / "dataset_description.json", json.dumps(description, indent=1) + "\n")
    return root
