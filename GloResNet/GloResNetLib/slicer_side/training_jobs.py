"""Training from Slicer in the background: the dataset check (:class:`DatasetCheck`), the training process
(:class:`TrainingJob`, stopped cleanly with SIGINT, resumed with ``--resume RUN_DIR``, or cancelled) and, once
it is done, a held-out case to inspect in the GloResNet module (:func:`pick_heldout_case`)."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..progress_events import DATASET, DONE, START, STOPPED
from .background import LOG, PROCESS_EXIT
from .diagnosis import Diagnosis
from .jobs import Job
from .training_params import STOPPED_EXIT_CODE, TrainingParameters, can_resume, check_args, resume_args, train_args

if TYPE_CHECKING:  # the monitor imports slicer: not needed to start a job
    from .training_monitor import TrainingMonitor


def format_report(report: Mapping[str, Any]) -> str:
    """The dataset check report as text: summary, notes, problems."""
    lines = [f"Dataset ({report.get('kind', '?')}): {report.get('summary', '')}"]
    lines += [f"  note: {n}" for n in report.get("notes") or []]
    if report.get("label_rule"):
        lines.append(f"  label rule: {report['label_rule']}")
    problems = report.get("problems") or []
    if problems:
        lines.append(f"{len(problems)} problem(s) - training will refuse this dataset until they are fixed:")
        lines += [f"  - {p}" for p in problems]
    else:
        classes = report.get("classes") or {}
        if classes and min(classes.values()) == 0:
            lines.append("Only one class: training needs volumes of both classes.")
        else:
            lines.append("No problems found: ready to train.")
    return "\n".join(lines)


class DatasetCheck(Job):
    """``gloresnet train --check-only`` in the background: the report of the dataset, before training."""

    name = "gloresnet train --check-only"

    def __init__(
        self, params: TrainingParameters, python: str | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(check_args(params), python, env)
        self.dataset = params.dataset_path()
        self.report: dict[str, Any] | None = None

    def _handle(self, event: dict[str, Any]) -> None:
        if event.get("event") == DATASET:
            self.report = dict(event.get("report") or {})

    @property
    def ok(self) -> bool:
        """True when the check ran and found a usable dataset (no problems, both classes)."""
        if not self.finished or self.report is None or self.process.returncode != 0:
            return False
        classes = self.report.get("classes") or {}
        return not self.report.get("problems") and bool(classes) and min(classes.values()) > 0

    def text(self) -> str:
        """The report, or why there is none."""
        if self.report is not None:
            return format_report(self.report)
        if not self.finished:
            return "Checking the dataset..."
        return self.process.failure() or "The dataset check gave no report."


class TrainingJob(Job):
    """One ``gloresnet train ... --progress-json`` process; its events go to a :class:`TrainingMonitor`."""

    name = "gloresnet train"

    def __init__(
        self,
        args: Sequence[str],
        monitor: TrainingMonitor | None = None,
        run_dir: str | Path | None = None,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(args, python, env)
        self.monitor = monitor
        self.run_dir = Path(run_dir) if run_dir else None
        self.events_seen: dict[str, int] = {}
        self.done = False
        self.stopped = False
        self.exit: dict[str, Any] | None = None

    def _handle(self, event: dict[str, Any]) -> None:
        kind = str(event.get("event"))
        self.events_seen[kind] = self.events_seen.get(kind, 0) + 1
        if kind in (START, DONE, STOPPED) and event.get("run_dir"):
            self.run_dir = Path(event["run_dir"])
        if kind == DONE:
            self.done = True
        elif kind == STOPPED:
            self.stopped = True
        elif kind == PROCESS_EXIT:
            self.exit = event
        if self.monitor is not None and kind != LOG:
            self.monitor.handle(event)

    @property
    def outcome(self) -> str | None:
        """None while running, else "done", "stopped", "cancelled" or "failed"."""
        if not self.finished:
            return None
        rc = self.process.returncode
        if self.process.cancelled:
            return "cancelled"
        if self.done and rc == 0 and not self.process.errors:
            return "done"
        if self.stopped or (self.process.stop_requested and rc in (0, STOPPED_EXIT_CODE)):
            return "stopped"
        return "failed"

    @property
    def resumable(self) -> bool:
        """The run folder holds an unfinished run that ``--resume`` continues."""
        return can_resume(self.run_dir)

    def diagnosis(self) -> Diagnosis | None:
        """What went wrong (None while running or after success or a requested stop)."""
        if self.outcome in (None, "done", "stopped"):
            return None
        return self._diagnose()

    def _failure_lines(self, diagnosis: Diagnosis) -> list[str]:
        lines = super()._failure_lines(diagnosis)
        if self.run_dir is not None:
            where = "resume it with Resume" if self.resumable else "see its train.log"
            lines.append(f"Run folder: {self.run_dir} ({where}).")
        return lines


def start_training(
    params: TrainingParameters,
    monitor: TrainingMonitor | None = None,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
    validate: bool = True,
) -> TrainingJob:
    """Validate the parameters and start ``gloresnet train`` in the background (returns at once)."""
    params = params.with_run_name()
    if validate:
        params.validate()
    run_dir = params.run_dir
    if monitor is not None:
        monitor.reset(run_dir)
    return TrainingJob(train_args(params), monitor, run_dir, python, env).start()


def resume_training(
    run_dir: str | os.PathLike,
    monitor: TrainingMonitor | None = None,
    device: str | None = None,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
    num_threads: int | None = None,
    cache_dir: str | None = None,
) -> TrainingJob:
    """Continue a stopped (or killed) run from its checkpoints: ``gloresnet train --resume RUN_DIR``."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / "config.json").is_file():
        raise InputError(
            f"{run_dir}: not a training run folder (no config.json) - nothing to resume; start it again instead"
        )
    if monitor is not None and monitor.run_dir != run_dir:
        monitor.reset(run_dir)
        monitor.load_run(run_dir)
    args = resume_args(run_dir, device, num_threads, cache_dir)
    return TrainingJob(args, monitor, run_dir, python, env).start()


@dataclass
class HeldOutCase:
    """A case of the cross-validation's test folds: held out from fold ``fold``'s model (the ensemble's other
    fold models were trained on it - it is not an independent test case)."""

    path: Path
    label: int
    fold: int
    probability: float
    subject: str = ""
    session: str = ""

    @property
    def description(self) -> str:
        name = "BI" if self.label == 1 else "no BI"
        return (
            f"{self.path.name} (true label {name}; held out from fold {self.fold}'s model, "
            f"its P(BI) there {self.probability:.2f})"
        )


def pick_heldout_case(run_dir: str | os.PathLike) -> HeldOutCase | None:
    """A held-out case to inspect: from ``oof.csv`` (or the folds' ``predictions.csv``), preferably a brain
    injury its fold's model found with the highest probability, else the highest-probability BI case, else any
    case; None if there are no predictions yet or the files are gone."""
    run_dir = Path(run_dir)
    files = [run_dir / "oof.csv"] if (run_dir / "oof.csv").is_file() else sorted(run_dir.glob("fold_*/predictions.csv"))
    rows = []
    for path in files:
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows += list(csv.DictReader(f))
        except OSError:
            continue
    cases = []
    for r in rows:
        try:
            case = HeldOutCase(
                Path(r["path"]),
                int(r["label"]),
                int(r["fold"]),
                float(r["probability"]),
                r.get("subject", ""),
                r.get("session", ""),
            )
        except (KeyError, ValueError):
            continue
        if case.path.is_file():
            cases.append(case)
    if not cases:
        return None
    bi = [c for c in cases if c.label == 1]
    return max(bi or cases, key=lambda c: (c.probability, -c.fold))


__all__ = [
    "DatasetCheck",
    "HeldOutCase",
    "TrainingJob",
    "format_report",
    "pick_heldout_case",
    "resume_training",
    "start_training",
]
