"""The samples of a training dataset and the one report of every problem found (:class:`DatasetReport`),
with the small cell parsers the manifest and dHCP readers share."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError
from ..io import VOLUME_SUFFIXES

__all__ = [
    "CLASS_NAMES",
    "DatasetReport",
    "Problem",
    "Sample",
    "clean_cell",
    "has_volume_suffix",
    "is_synthetic_folder",
    "parse_float",
]

CLASS_NAMES = ("no BI", "BI")


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
    mask_path: Path | None = None  # lesion mask on the volume's grid (manifest column mask_path), if given
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "label": self.label,
            "subject": self.subject,
            "session": self.session,
            "age_weeks": self.age_weeks,
            "site": self.site,
            **({"mask_path": str(self.mask_path)} if self.mask_path else {}),
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
            lines.append(f"{len(self.problems)} problem(s): " + ", ".join(f"{v} {k}" for k, v in kinds.items()))
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
            raise DatasetError(f"dataset {self.source}: needs volumes of both classes, has {cc}\n{self.format()}")

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


def clean_cell(value: Any) -> str:
    """A table cell stripped; the usual spellings of 'missing' (n/a, NaN, none, ...) become ''."""
    text = "" if value is None else str(value).strip()
    return "" if text.lower() in ("n/a", "na", "nan", "none", "null") else text


def parse_float(text: str) -> float | None:
    """A finite number, or None (empty, not a number, NaN or infinite)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def has_volume_suffix(path: Path) -> bool:
    """True for a file name with an image suffix this library reads."""
    return path.name.lower().endswith(VOLUME_SUFFIXES)
