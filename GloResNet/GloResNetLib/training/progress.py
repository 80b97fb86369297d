"""Progress of a training run: JSON events (:mod:`GloResNetLib.progress_events`, the list of kinds and the
stream every command shares: stdout, one per line), a Python callback and a tqdm bar (stderr).

Events: ``start``, ``step``, ``epoch``, ``fold_end``, ``done``, ``stopped``, ``error``; plus ``stage`` events
while the preprocessing cache is filled (before ``start``; GUIs may ignore them). ``fraction`` runs from 0 to 1
over the epochs this process trains (folds already finished when it starts count as done; a fold stopped early
jumps to its end). An ``epoch`` event is
emitted only after that epoch's checkpoint is on disk, so a process killed after it resumes from there.
Only DDP rank 0 reports.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from ..progress_events import emit

log = logging.getLogger("GloResNetLib.training")


class Reporter:
    """Fan-out of progress events; computes ``fraction`` and ``eta_s``.

    Args:
        callback: called with a copy of each event. json_stdout: print each event as a JSON line
            (:func:`GloResNetLib.progress_events.emit`: on stdout). bar: a tqdm bar on stderr.
        enabled: False silences every sink (DDP ranks other than 0).
    """

    def __init__(
        self,
        callback: Callable[[dict], None] | None = None,
        json_stdout: bool = False,
        bar: bool = False,
        enabled: bool = True,
    ) -> None:
        self.callback = callback
        self.json_stdout = json_stdout
        self.enabled = enabled
        self.use_bar = bar and enabled
        self.bar = None
        self.total_units = 1.0
        self.t0 = time.perf_counter()
        self.f0 = 0.0
        self.fraction = 0.0

    def emit(self, event: dict[str, Any]) -> None:
        """Send one event to every sink."""
        if not self.enabled:
            return
        if self.json_stdout:
            emit(event)
        if self.callback is not None:
            self.callback(dict(event))

    def begin(self, total_units: float, done_units: float) -> None:
        """Start timing; ``total_units`` epochs in this job, ``done_units`` of them already done."""
        self.total_units = max(total_units, 1e-9)
        self.fraction = self.f0 = min(1.0, done_units / self.total_units)
        self.t0 = time.perf_counter()
        if self.use_bar and self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=round(total_units, 3),
                initial=round(done_units, 3),
                unit="epoch",
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.0f} epochs [{elapsed}<{remaining}{postfix}]",
            )

    def at(self, units_done: float) -> tuple[float, float | None]:
        """Update the position; returns (fraction, eta_s)."""
        fraction = min(1.0, max(0.0, units_done / self.total_units))
        if self.bar is not None:
            self.bar.update(round(units_done - self.bar.n, 4))
        self.fraction = fraction
        elapsed = time.perf_counter() - self.t0
        done = fraction - self.f0
        eta = elapsed * (1.0 - fraction) / done if done > 1e-9 else None
        return fraction, eta

    def postfix(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def write(self, text: str) -> None:
        """A human line on stderr that does not break the bar."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class BarSafeHandler(logging.StreamHandler):
    """Logging handler on stderr that goes through ``tqdm.write`` while a bar is shown."""

    def __init__(self, reporter: Reporter) -> None:
        super().__init__(sys.stderr)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        if self.reporter.bar is not None:
            try:
                self.reporter.write(self.format(record))
            except Exception:  # noqa: BLE001 - logging must never raise
                self.handleError(record)
        else:
            super().emit(record)
