"""The JSON progress events of every ``gloresnet`` command, and the one stream they go to.

With ``--progress-json`` (``predict``, ``train``, ``pretrain-age``) a command prints each event as one JSON
object per line on **stdout** (:func:`emit`), interleaved with its JSON results (``predict --json`` records:
objects without an ``"event"`` key). Human messages, log lines and the progress bar stay on stderr, so a
program follows one stream and a person the other; the Slicer modules read both
(:class:`GloResNetLib.slicer_side.background.BackgroundProcess`).

Every event has ``"event"``: one of :data:`EVENTS`. ``fraction`` (0..1, when given) is the part of the
command's work done; ``eta_s`` an estimate of the seconds left.
"""

from __future__ import annotations

import json
import sys
from typing import Any

#: Preparing or working on something that is not an epoch: ``stage`` (text), optional ``fraction``, ``index``
#: and ``total`` (predict: input ``index`` of ``total``), ``done``/``total`` (train: volumes cached so far),
#: ``copies`` (predict: occluded copies of the input).
STAGE = "stage"
#: Training begins: ``run_dir``, ``folds``, ``epochs``, ``n_train`` (train, pretrain-age).
START = "start"
#: A training batch: ``fold``, ``epoch``, ``step``, ``steps``, ``loss``, ``fraction``.
STEP = "step"
#: An epoch ended, its checkpoint on disk: ``fold``, ``epoch``, ``epochs``, losses and validation metrics,
#: ``lr``, ``fraction``, ``eta_s``.
EPOCH = "epoch"
#: A fold finished: ``fold``, ``metrics`` (its test metrics).
FOLD_END = "fold_end"
#: The command finished: predict ``failures``; train ``run_dir``, ``bundle``, ``metrics`` (mean, sd, best),
#: optional ``warning``.
DONE = "done"
#: Stopped on request (Ctrl-C / SIGINT) after saving a checkpoint: ``fold``, ``epoch`` (None before training).
STOPPED = "stopped"
#: A refused input or a failure: ``message`` (predict: ``input``, the file concerned).
ERROR = "error"
#: The ``train --check-only`` report: ``report`` (summary, classes, notes, problems).
DATASET = "dataset"

#: Every event kind, in the order a run reports them.
EVENTS = (STAGE, START, STEP, EPOCH, FOLD_END, DONE, STOPPED, ERROR, DATASET)
#: The stream of the events and of the JSON results (the name of a ``sys`` attribute).
STREAM = "stdout"


def emit(event: dict[str, Any]) -> None:
    """Print one event as a JSON line on :data:`STREAM` and flush it (a reader sees it at once).

    Args:
        event: a dict with ``"event"`` one of :data:`EVENTS` (Testing/test_progress_events.py checks that the
            library emits no other kind).
    """
    print(json.dumps(event), file=getattr(sys, STREAM), flush=True)


__all__ = [
    "DATASET",
    "DONE",
    "EPOCH",
    "ERROR",
    "EVENTS",
    "FOLD_END",
    "START",
    "STAGE",
    "STEP",
    "STOPPED",
    "STREAM",
    "emit",
]
