"""The one wrapper of a background ``gloresnet`` command that both modules follow: :class:`Job`.

A job builds its arguments, starts them with Slicer's Python (:func:`.command.start_gloresnet`) and hands every
event of the child to :meth:`Job._handle` whether it is followed from a GUI timer (:meth:`Job.poll`) or a script
(:meth:`Job.wait`). Prediction (:class:`.prediction_job.PredictionJob`), the dataset check and training
(:mod:`.training_jobs`) subclass it. No Qt, no slicer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .background import BackgroundProcess
from .command import start_gloresnet
from .diagnosis import Diagnosis, diagnose


class Job:
    """A ``gloresnet`` child process followed from a GUI timer (:meth:`poll`) or a script (:meth:`wait`).

    Subclasses override :meth:`_handle` (one event), :attr:`succeeded` and :meth:`_failure_lines` (what their
    failure message adds); ``args`` may be set by :meth:`start` of a subclass before it calls this one.
    """

    name = "gloresnet"

    def __init__(
        self, args: Sequence[str] = (), python: str | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.args = list(args)
        self.python = python
        self.env = dict(env or {})
        self.process: BackgroundProcess | None = None

    # -- running ------------------------------------------------------------------------------------------
    def start(self) -> Job:
        """Start the child in the background (returns at once).

        Returns:
            self.
        Raises:
            RuntimeError: already started. OSError: the Python cannot be run.
        """
        if self.process is not None:
            raise RuntimeError(f"{self.name}: already started")
        self.process = start_gloresnet(self.args, python=self.python, env=self.env, name=self.name)
        return self

    def _handle(self, event: dict[str, Any]) -> None:
        """Update the job from one event of the child (log lines included); nothing by default."""

    def poll(self) -> list[dict[str, Any]]:
        """Handle the events that arrived (non-blocking; from a GUI timer).

        Returns:
            The events, log lines included, for display.
        """
        if self.process is None:
            return []
        events = self.process.poll()
        for event in events:
            self._handle(event)
        return events

    def wait(
        self, timeout: float | None = None, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> list[dict[str, Any]]:
        """Block until the process ends (scripts, tests), starting it first if needed.

        Args:
            timeout: seconds before :class:`TimeoutError` (the process keeps running); None waits for ever.
            on_event: called with each event after the job has handled it.
        Returns:
            The events handled while waiting.
        """
        if self.process is None:
            self.start()
        events = []
        for event in self.process.follow(timeout):
            self._handle(event)
            events.append(event)
            if on_event is not None:
                on_event(event)
        return events

    def stop(self) -> bool:
        """Ask for a clean stop (SIGINT: training saves a checkpoint and exits 130); False if not running."""
        return self.process.stop() if self.process is not None else False

    def cancel(self, wait: float | None = None) -> bool:
        """Kill the whole process tree now (with ``wait``, wait that long for it to be gone)."""
        return self.process.cancel(wait) if self.process is not None else False

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop cleanly, wait up to ``timeout`` seconds, then kill what is left (Slicer or scene closing)."""
        if self.process is None or not self.process.alive:
            return
        self.stop()
        deadline = time.monotonic() + timeout
        while self.process.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.process.alive:
            self.cancel(wait=5.0)

    # -- state --------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True from :meth:`start` until the exit event has been handled."""
        return self.process is not None and self.process.running

    @property
    def finished(self) -> bool:
        """True once the exit event has been handled."""
        return self.process is not None and self.process.finished

    @property
    def succeeded(self) -> bool:
        """Finished with exit code 0 and no error event."""
        return self.finished and self.process.returncode == 0 and not self.process.errors

    @property
    def elapsed_s(self) -> float:
        """Seconds since the start (until the exit once finished); 0 before the start."""
        return self.process.elapsed_s if self.process is not None else 0.0

    def log_text(self, n: int = 20) -> str:
        """The last ``n`` human-readable output lines."""
        return self.process.log_text(n) if self.process is not None else ""

    def _error_messages(self) -> list[str]:
        return list(self.process.errors)

    def diagnosis(self) -> Diagnosis | None:
        """What went wrong (None while running or after success)."""
        if not self.finished or self.succeeded:
            return None
        return self._diagnose()

    def _diagnose(self) -> Diagnosis:
        return diagnose(
            self.process.returncode,
            self.process.log_text(200),
            self._error_messages(),
            self.process.stop_requested,
            self.process.cancelled,
        )

    def _failure_lines(self, diagnosis: Diagnosis) -> list[str]:
        """Lines the failure message adds below the diagnosis (the error events not already in it)."""
        return [e for e in self._error_messages() if e and e not in diagnosis.message]

    def failure_message(self, log_lines: int = 15) -> str | None:
        """A message for the user with the last log lines; None unless the job failed (a cancel is no failure).

        Args:
            log_lines: how many of the last output lines to add.
        """
        diag = self.diagnosis()
        if diag is None or diag.kind == "cancelled":
            return None
        lines = [diag.message, *self._failure_lines(diag)]
        tail = self.process.failure_tail(log_lines)
        if tail:
            lines += ["", "Last output:", tail]
        return "\n".join(lines)


__all__ = ["Job"]
