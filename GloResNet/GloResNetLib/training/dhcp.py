"""The dHCP BIDS reader (:func:`read_dhcp`; the layout and label rules: :mod:`.datasets`)."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

from ..errors import DatasetError
from .config import TrainConfig
from .dataset_report import DatasetReport, Problem, Sample, clean_cell, is_synthetic_folder, parse_float

__all__ = ["find_t2w", "label_from_score", "read_dhcp"]


def _read_tsv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [
                {(k or "").strip(): clean_cell(v) for k, v in row.items()} for row in csv.DictReader(f, delimiter="\t")
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: not a readable TSV file ({exc})") from None


def _bids_dirs(root: Path) -> list[Path]:
    """Candidate BIDS folders under a dHCP root, anatomical-pipeline derivatives first."""
    cands = [root / "derivatives" / "dhcp_anat_pipeline", root, root / "rawdata"]
    return [d for d in cands if d.is_dir()]


def _sub(pid: str) -> str:
    return pid if pid.startswith("sub-") else f"sub-{pid}"


def _ses(sid: str) -> str:
    return sid if sid.startswith("ses-") else f"ses-{sid}"


def find_t2w(bids_dirs: list[Path], sub: str, ses: str) -> Path | None:
    """The session's T2w image: ``*_desc-restore_T2w.nii[.gz]`` anywhere first, then a plain ``*_T2w``."""
    plain: list[Path] = []
    for d in bids_dirs:
        anat = d / sub / ses / "anat"
        if not anat.is_dir():
            continue
        files = sorted(p for p in anat.iterdir() if p.name.endswith(("_T2w.nii.gz", "_T2w.nii")))
        restore = [p for p in files if "_desc-restore_" in p.name]
        if restore:
            return restore[0]
        plain += [p for p in files if "_desc-" not in p.name]
    return plain[0] if plain else None


def label_from_score(score: int, rule: str = TrainConfig.dhcp_label_rule) -> int | None:
    """Radiology score (1-5) -> label under a rule; None = excluded by the rule."""
    if rule == "3or5":
        return {1: 0, 2: 0, 3: 1, 5: 1}.get(score)
    return 0 if score <= 2 else 1


def read_dhcp(
    root: str | os.PathLike,
    label_rule: str = TrainConfig.dhcp_label_rule,
    preterm_only: bool = TrainConfig.dhcp_preterm_only,
    max_birth_age: float = TrainConfig.dhcp_max_birth_age,
    sessions: str = TrainConfig.dhcp_sessions,
) -> DatasetReport:
    """Read the dHCP BIDS layout (see module docstring); ``sessions`` = all | first | last per subject."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: dHCP folder not found")
    dirs = _bids_dirs(root)
    participants_file = next((d / "participants.tsv" for d in dirs if (d / "participants.tsv").is_file()), None)
    if participants_file is None:
        raise DatasetError(f"{root}: no participants.tsv (expected the dHCP BIDS layout, see --help)")
    report = DatasetReport(source=root, kind="dhcp", label_rule=label_rule)
    report.notes.append(
        f"label rule '{label_rule}': "
        + (
            "radiology score 1-2 -> no BI, 3-5 -> BI (GloResNet authors)"
            if label_rule == "ge3"
            else "radiology score 1-2 -> no BI, 3 or 5 -> BI, 4 (non-brain finding) excluded"
        )
    )
    if preterm_only:
        report.notes.append(f"preterm filter: gestational age at birth < {max_birth_age:g} weeks")
    excluded: Counter[str] = Counter()
    participants = _read_tsv(participants_file)
    if participants and "participant_id" not in participants[0]:
        raise DatasetError(f"{participants_file}: no 'participant_id' column")
    seen: set[str] = set()
    for prow in participants:
        pid = prow.get("participant_id", "")
        if not pid:
            continue
        sub = _sub(pid)
        if sub in seen:
            report.problems.append(Problem("duplicate row", f"{participants_file.name}", f"{sub} listed twice"))
            continue
        seen.add(sub)
        birth_age = parse_float(prow.get("birth_age", ""))
        if preterm_only:
            if birth_age is None:
                excluded["without birth age (preterm filter)"] += 1
                continue
            if birth_age >= max_birth_age:
                excluded[f"born at >= {max_birth_age:g} weeks (subjects)"] += 1
                continue
        sess_file = next(
            (d / sub / f"{sub}_sessions.tsv" for d in dirs if (d / sub / f"{sub}_sessions.tsv").is_file()),
            None,
        )
        if sess_file is None:
            report.problems.append(Problem("missing file", sub, f"no {sub}/{sub}_sessions.tsv"))
            continue
        rows = [r for r in _read_tsv(sess_file) if r.get("session_id")]
        rows.sort(key=lambda r: (parse_float(r.get("scan_age", "")) or 0.0, r["session_id"]))
        if sessions != "all" and rows:
            rows = [rows[0] if sessions == "first" else rows[-1]]
        seen_ses: set[str] = set()
        for srow in rows:
            ses = _ses(srow["session_id"])
            where = f"{sub} {ses}"
            if ses in seen_ses:
                report.problems.append(Problem("duplicate row", where, f"listed twice in {sess_file.name}"))
                continue
            seen_ses.add(ses)
            score_text = srow.get("radiology_score", "")
            if score_text.upper() == "Q":
                excluded["'Q' (poor quality) sessions"] += 1
                continue
            image = find_t2w(dirs, sub, ses)
            sample = Sample(
                path=image or (dirs[0] / sub / ses / "anat"),
                label=None,
                subject=sub,
                session=ses,
                age_weeks=parse_float(srow.get("scan_age", "")),
                where=where,
                extra={"birth_age": birth_age, "radiology_score": score_text},
            )
            score = parse_float(score_text)
            if score_text == "":
                report.samples.append(sample)
                report.add_problem(sample, "missing label", "no radiology_score")
                continue
            if score is None or score not in (1, 2, 3, 4, 5):
                report.samples.append(sample)
                report.add_problem(sample, "invalid label", f"radiology_score '{score_text}' is not 1-5 or Q")
                continue
            label = label_from_score(int(score), label_rule)
            if label is None:
                excluded[f"score {int(score)} sessions (rule {label_rule})"] += 1
                continue
            sample.label = label
            report.samples.append(sample)
            if image is None:
                report.add_problem(sample, "missing file", f"no *_T2w.nii.gz in {sub}/{ses}/anat")
    report.excluded = dict(excluded)
    # the synthetic generator writes cohort.json next to its dHCP-layout folder
    report.synthetic = is_synthetic_folder(root) or is_synthetic_folder(root.parent)
    return report
