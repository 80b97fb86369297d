"""Stopping a training job cleanly: Ctrl-C, SIGTERM or a ``threading.Event`` become a polled flag
(:class:`StopSignal`); the job saves a checkpoint and raises :class:`TrainingStopped`."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

__all__ = ["StopSignal", "TrainingStopped"]

log = logging.getLogger("GloResNetLib.training")


class TrainingStopped(Exception):
    """Training was stopped on request (Ctrl-C, SIGTERM or a stop event) after saving a checkpoint."""

    def __init__(self, run_dir: Path, fold: int, epoch: int) -> None:
        super().__init__(
            f"training stopped at fold {fold}, epoch {epoch}; resume with `gloresnet train --resume {run_dir}`"
        )
        self.run_dir, self.fold, self.epoch = run_dir, fold, epoch


class StopSignal:
    """Turns SIGINT/SIGTERM (main thread only) and an optional ``threading.Event`` into a polled flag.

    A second Ctrl-C while the checkpoint is being written restores the default handler and interrupts.
    """

    def __init__(self, event: threading.Event | None = None) -> None:
        self.event = event
        self.flag = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            # SIGBREAK: what a graceful stop (CTRL_BREAK_EVENT) delivers on Windows
            for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)):
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.flag and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.flag = True
        log.warning("stop requested (%s): saving a checkpoint at the end of this step", signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @property
    def requested(self) -> bool:
        return self.flag or bool(self.event is not None and self.event.is_set())
