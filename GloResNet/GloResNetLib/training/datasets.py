"""Training datasets: a CSV manifest or the dHCP BIDS layout, and one report of every problem found.

**CSV manifest**: columns ``path,label`` plus optional ``subject``, ``session``, ``age_weeks`` (post-menstrual
age at scan), ``site`` and ``mask_path`` (a lesion mask on the volume's own grid, nonzero = lesion; used by
``train --lesion-weight``; empty for scans without focal lesions; ``gloresnet synth`` writes it). Relative
paths resolve against the manifest's folder. Labels are 0 (no brain injury) or 1 (brain injury). Without a
``subject`` column every row is its own subject (noted in the report, since repeated scans of one infant could
then fall into different folds).

**dHCP** (third release, https://biomedia.github.io/dHCP-release-notes/): ``participants.tsv``
(``participant_id``, ``birth_age`` in weeks), ``sub-*/sub-*_sessions.tsv`` (``session_id``, ``scan_age``,
``radiology_score``) and ``sub-*/ses-*/anat/*_T2w.nii.gz``. ROOT may be the release root (holding
``rawdata/`` and ``derivatives/dhcp_anat_pipeline/``) or any one of those BIDS folders; the bias-corrected
``*_desc-restore_T2w.nii.gz`` of the anatomical pipeline is preferred over the raw ``*_T2w.nii.gz``.
Label rules from ``radiology_score`` (per session): ``ge3`` (the GloResNet authors' code): 1-2 -> no
BI, 3-5 -> BI; ``3or5``: 1-2 -> no BI, 3 or 5 -> BI, 4 (a possibly clinical but *non-brain* finding) excluded.
``Q`` (poor-quality anatomy) sessions are excluded and counted. Preterm filter (``dhcp_preterm_only``): gestational age
at birth below ``dhcp_max_birth_age`` (defaults: :class:`~.config.TrainConfig`).

Problems (missing file, unreadable image, missing or invalid label, duplicate rows) are collected, never
raised one at a time: :func:`load_dataset` returns a :class:`DatasetReport` and the caller decides
(:meth:`DatasetReport.raise_if_problems`); unreadable images are found when the cache decodes them.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .dataset_report import (
    CLASS_NAMES,
    DatasetReport,
    Problem,
    Sample,
    clean_cell,
    has_volume_suffix,
    is_synthetic_folder,
    parse_float,
)
from .dhcp import read_dhcp

__all__ = [
    "CLASS_NAMES",
    "MANIFEST_COLUMNS",
    "DatasetReport",
    "Problem",
    "Sample",
    "load_dataset",
    "read_dhcp",
    "read_manifest",
    "select_subset",
]

MANIFEST_COLUMNS = ("path", "label", "subject", "session", "age_weeks", "site", "mask_path")


def read_manifest(path: str | os.PathLike) -> DatasetReport:
    """Read a CSV manifest; every problem is recorded in the returned report (nothing is raised for rows)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: manifest not found")
    report = DatasetReport(source=path.resolve(), kind="manifest")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: not a readable CSV file ({exc})") from None
    missing_cols = [c for c in ("path", "label") if c not in header]
    if missing_cols:
        raise DatasetError(
            f"{path}: manifest lacks column(s) {missing_cols} (found {header or 'no header'}); "
            "expected path,label[,subject,session,age_weeks,site,mask_path]"
        )
    unknown = [h for h in header if h not in MANIFEST_COLUMNS]
    if unknown:
        report.notes.append(f"ignored unknown column(s) {unknown}")
    has_subject = "subject" in header
    if not has_subject:
        report.notes.append(
            "no 'subject' column: each row is its own subject, so repeated scans of one "
            "infant could fall into different folds"
        )
    base = path.resolve().parent
    seen_paths: dict[Path, str] = {}
    seen_sessions: dict[tuple[str, str], str] = {}
    for n, raw in enumerate(rows, start=2):  # header is line 1
        row = {(k or "").strip().lower(): clean_cell(v) for k, v in raw.items() if k is not None}
        where = f"row {n}"
        rel = row.get("path", "")
        if not rel:
            report.problems.append(Problem("missing path", where, "empty 'path'", n))
            continue
        vol = Path(rel).expanduser()
        vol = (vol if vol.is_absolute() else base / vol).resolve()
        where = f"row {n} ({rel})"
        sample = Sample(
            path=vol,
            label=None,
            subject=row.get("subject") or str(vol),
            session=row.get("session", ""),
            site=row.get("site", ""),
            where=where,
            line=n,
        )
        report.samples.append(sample)
        label_text = row.get("label", "")
        label = parse_float(label_text) if label_text else None
        if not label_text:
            report.add_problem(sample, "missing label", "empty 'label' (expected 0 = no BI or 1 = BI)")
        elif label not in (0.0, 1.0):
            report.add_problem(sample, "invalid label", f"label '{label_text}' is not 0 (no BI) or 1 (BI)")
        else:
            sample.label = int(label)
        if row.get("mask_path"):
            mask = Path(row["mask_path"]).expanduser()
            sample.mask_path = (mask if mask.is_absolute() else base / mask).resolve()
            if not sample.mask_path.exists():
                report.add_problem(sample, "missing file", f"lesion mask {sample.mask_path} not found")
            elif not has_volume_suffix(sample.mask_path):
                report.add_problem(sample, "unreadable image", f"{sample.mask_path.name}: not a NIfTI/NRRD file name")
        if row.get("age_weeks"):
            sample.age_weeks = parse_float(row["age_weeks"])
            if sample.age_weeks is None:
                report.add_problem(sample, "invalid age", f"age_weeks '{row['age_weeks']}' is not a number")
        duplicate = vol in seen_paths
        if duplicate:
            report.add_problem(sample, "duplicate row", f"same file as {seen_paths[vol]}")
        else:
            seen_paths[vol] = where
        if has_subject and sample.session and not duplicate:
            key = (sample.subject, sample.session)
            if key in seen_sessions:
                report.add_problem(
                    sample,
                    "duplicate row",
                    f"subject {key[0]} session {key[1]} already in {seen_sessions[key]}",
                )
            else:
                seen_sessions[key] = where
        if not vol.exists():
            report.add_problem(sample, "missing file", f"{vol} not found")
        elif not has_volume_suffix(vol):
            report.add_problem(sample, "unreadable image", f"{vol.name}: not a NIfTI/NRRD file name")
    if not rows:
        report.notes.append("the manifest has no rows")
    report.synthetic = is_synthetic_folder(base)
    return report


# --------------------------------------------------------------------------------------------- both


def select_subset(report: DatasetReport, max_volumes: int, seed: int) -> None:
    """Keep whole subjects, about ``max_volumes`` volumes, class proportions kept (seeded); in place."""
    if len(report.samples) <= max_volumes:
        return
    rng = np.random.default_rng([seed, 7])
    by_subject: dict[str, list[Sample]] = {}
    for s in report.samples:
        by_subject.setdefault(s.subject, []).append(s)
    per_class: dict[int, list[str]] = {0: [], 1: []}
    for subj, items in by_subject.items():
        per_class[int(round(np.mean([s.label for s in items])))].append(subj)
    n_total = len(report.samples)
    keep: set[str] = set()
    for subjects in per_class.values():
        subjects = sorted(subjects)
        rng.shuffle(subjects)
        target = max(1, round(max_volumes * sum(len(by_subject[s]) for s in subjects) / n_total))
        count = 0
        for subj in subjects:
            if count >= target:
                break
            keep.add(subj)
            count += len(by_subject[subj])
    before = len(report.samples)
    report.samples = [s for s in report.samples if s.subject in keep]
    report.excluded[f"volumes beyond --max-volumes {max_volumes}"] = before - len(report.samples)


def load_dataset(config) -> DatasetReport:
    """Read the dataset named by a :class:`~GloResNetLib.training.config.TrainConfig` (manifest or dHCP)."""
    if config.manifest:
        report = read_manifest(config.manifest)
    else:
        report = read_dhcp(
            config.dhcp,
            label_rule=config.dhcp_label_rule,
            preterm_only=config.dhcp_preterm_only,
            max_birth_age=config.dhcp_max_birth_age,
            sessions=config.dhcp_sessions,
        )
    if config.synthetic:
        report.synthetic = True
    if config.max_volumes:
        select_subset(report, config.max_volumes, config.seed)
    return report
