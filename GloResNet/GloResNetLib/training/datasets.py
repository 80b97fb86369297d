"""Training datasets: a CSV manifest or the dHCP BIDS layout, and one report of every problem found.

**CSV manifest**: columns ``path,label`` plus optional ``subject``, ``session``, ``age_weeks`` (post-menstrual
age at scan) and ``site``. Relative paths resolve against the manifest's folder. Labels are 0 (no brain
injury) or 1 (brain injury). Without a ``subject`` column every row is its own subject (noted in the report,
since repeated scans of one infant could then fall into different folds).

**dHCP** (third release, https://biomedia.github.io/dHCP-release-notes/): ``participants.tsv``
(``participant_id``, ``birth_age`` in weeks), ``sub-*/sub-*_sessions.tsv`` (``session_id``, ``scan_age``,
``radiology_score``) and ``sub-*/ses-*/anat/*_T2w.nii.gz``. ROOT may be the release root (holding
``rawdata/`` and ``derivatives/dhcp_anat_pipeline/``) or any one of those BIDS folders; the bias-corrected
``*_desc-restore_T2w.nii.gz`` of the anatomical pipeline is preferred over the raw ``*_T2w.nii.gz``.
Label rules from ``radiology_score`` (per session): ``ge3`` (default, the GloResNet authors' code): 1-2 -> no
BI, 3-5 -> BI; ``3or5``: 1-2 -> no BI, 3 or 5 -> BI, 4 (a possibly clinical but *non-brain* finding) excluded.
``Q`` (poor-quality anatomy) sessions are excluded and counted. Preterm filter (default on): gestational age
at birth < 37 weeks.

Problems (missing file, unreadable image, missing or invalid label, duplicate rows) are collected, never
raised one at a time: :func:`load_dataset` returns a :class:`DatasetReport` and the caller decides
(:meth:`DatasetReport.raise_if_problems`); unreadable images are found when the cache decodes them.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError
from ..io import VOLUME_SUFFIXES

CLASS_NAMES = ("no BI", "BI")
MANIFEST_COLUMNS = ("path", "label", "subject", "session", "age_weeks", "site")


@dataclass(eq=False)
class Sample:
    """One training volume."""

    path: Path
    label: int | None
    subject: str
    session: str = ""
    age_weeks: float | None = None
    site: str = ""
    where: str = ""  # "row 7" / "sub-X ses-Y": where it came from, for messages
    line: int = 0  # order in the source (manifest line), for sorting messages
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "label": self.label,
            "subject": self.subject,
            "session": self.session,
            "age_weeks": self.age_weeks,
            "site": self.site,
            **self.extra,
        }


@dataclass
class Problem:
    """One thing wrong with a dataset."""

    kind: str  # missing file | unreadable image | missing label | invalid label | duplicate row | ...
    where: str
    message: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.message}"


@dataclass
class DatasetReport:
    """A dataset as read: valid samples, all problems, exclusions by rule (with counts) and notes."""

    source: Path
    kind: str  # "manifest" | "dhcp"
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    bad_samples: list[Sample] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    synthetic: bool = False
    label_rule: str = ""

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def subjects(self) -> list[str]:
        return [s.subject for s in self.samples]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(s.label for s in self.samples)
        return {name: int(counts.get(i, 0)) for i, name in enumerate(CLASS_NAMES)}

    def add_problem(self, sample: Sample | None, kind: str, message: str, where: str = "") -> None:
        self.problems.append(
            Problem(
                kind,
                where or (sample.where if sample else str(self.source)),
                message,
                sample.line if sample else 0,
            )
        )
        if sample is not None and sample in self.samples:
            self.samples.remove(sample)
            self.bad_samples.append(sample)

    def summary(self) -> str:
        """One line: volumes, subjects, classes, exclusions."""
        cc = self.class_counts()
        classes = ", ".join(f"{k} {v}" for k, v in cc.items())
        text = (
            f"{len(self.samples)} volumes of {len(set(self.subjects))} subjects ({classes}) from "
            f"{self.kind} {self.source}"
        )
        if self.excluded:
            text += "; excluded: " + ", ".join(f"{v} {k}" for k, v in self.excluded.items())
        return text

    def format(self) -> str:
        """The full report: summary, notes and every problem, one per line."""
        lines = [f"Dataset {self.source} ({self.kind}): {self.summary()}"]
        lines += [f"  note: {n}" for n in self.notes]
        if self.problems:
            kinds = Counter(p.kind for p in self.problems)
            lines.append(
                f"{len(self.problems)} problem(s): " + ", ".join(f"{v} {k}" for k, v in kinds.items())
            )
            lines += [f"  - {p}" for p in sorted(self.problems, key=lambda p: p.line)]
        return "\n".join(lines)

    def raise_if_problems(self, skip_bad: bool = False) -> None:
        """Raise :class:`DatasetError` listing every problem unless ``skip_bad``; refuse unusable sets."""
        if self.problems and not skip_bad:
            raise DatasetError(
                f"dataset {self.source} has {len(self.problems)} problem(s); nothing was trained. "
                f"Fix them or pass --skip-bad to leave those rows out.\n{self.format()}"
            )
        cc = self.class_counts()
        if min(cc.values()) == 0:
            raise DatasetError(
                f"dataset {self.source}: needs volumes of both classes, has {cc}\n{self.format()}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "kind": self.kind,
            "summary": self.summary(),
            "n": len(self.samples),
            "n_subjects": len(set(self.subjects)),
            "classes": self.class_counts(),
            "excluded": dict(self.excluded),
            "notes": list(self.notes),
            "synthetic": self.synthetic,
            "label_rule": self.label_rule,
            "problems": [str(p) for p in self.problems],
            "skipped": len(self.bad_samples),
        }


def is_synthetic_folder(folder: Path) -> bool:
    """True when ``folder/cohort.json`` (written by the synthetic generator) marks the data as synthetic."""
    path = Path(folder) / "cohort.json"
    if not path.is_file():
        return False
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return "synthetic" in text.lower()
    if isinstance(obj, dict):
        if isinstance(obj.get("synthetic"), bool):
            return obj["synthetic"]
        return any("synthetic" in str(v).lower() for v in obj.values()) or "synthetic" in text.lower()
    return "synthetic" in text.lower()


def _clean(value: Any) -> str:
    text = "" if value is None else str(value).strip()
    return "" if text.lower() in ("n/a", "na", "nan", "none", "null") else text


def _parse_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _has_volume_suffix(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


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
            "expected path,label[,subject,session,age_weeks,site]"
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
        row = {(k or "").strip().lower(): _clean(v) for k, v in raw.items() if k is not None}
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
        label = _parse_float(label_text) if label_text else None
        if not label_text:
            report.add_problem(sample, "missing label", "empty 'label' (expected 0 = no BI or 1 = BI)")
        elif label not in (0.0, 1.0):
            report.add_problem(sample, "invalid label", f"label '{label_text}' is not 0 (no BI) or 1 (BI)")
        else:
            sample.label = int(label)
        if row.get("age_weeks"):
            sample.age_weeks = _parse_float(row["age_weeks"])
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
        elif not _has_volume_suffix(vol):
            report.add_problem(sample, "unreadable image", f"{vol.name}: not a NIfTI/NRRD file name")
    if not rows:
        report.notes.append("the manifest has no rows")
    report.synthetic = is_synthetic_folder(base)
    return report


# --------------------------------------------------------------------------------------------- dHCP


def _read_tsv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [
                {(k or "").strip(): _clean(v) for k, v in row.items()}
                for row in csv.DictReader(f, delimiter="\t")
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


def label_from_score(score: int, rule: str = "ge3") -> int | None:
    """Radiology score (1-5) -> label under a rule; None = excluded by the rule."""
    if rule == "3or5":
        return {1: 0, 2: 0, 3: 1, 5: 1}.get(score)
    return 0 if score <= 2 else 1


def read_dhcp(
    root: str | os.PathLike,
    label_rule: str = "ge3",
    preterm_only: bool = True,
    max_birth_age: float = 37.0,
    sessions: str = "all",
) -> DatasetReport:
    """Read the dHCP BIDS layout (see module docstring); ``sessions`` = all | first | last per subject."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: dHCP folder not found")
    dirs = _bids_dirs(root)
    participants_file = next(
        (d / "participants.tsv" for d in dirs if (d / "participants.tsv").is_file()), None
    )
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
            report.problems.append(
                Problem("duplicate row", f"{participants_file.name}", f"{sub} listed twice")
            )
            continue
        seen.add(sub)
        birth_age = _parse_float(prow.get("birth_age", ""))
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
        rows.sort(key=lambda r: (_parse_float(r.get("scan_age", "")) or 0.0, r["session_id"]))
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
                age_weeks=_parse_float(srow.get("scan_age", "")),
                where=where,
                extra={"birth_age": birth_age, "radiology_score": score_text},
            )
            score = _parse_float(score_text)
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
