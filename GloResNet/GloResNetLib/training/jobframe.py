"""Helpers of the job frame (:func:`~GloResNetLib.training.run.run_job`): the run-folder lock, errors and
warnings in ``train.log``, and leaving no empty folder behind after a refused start."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import InputError
from .config import TrainConfig
from .lock import RunLock, is_lock_file

log = logging.getLogger("GloResNetLib.training")


def hold_run_folder(config: TrainConfig, job_name: str) -> RunLock | None:
    """Lock the run folder of this job (``--resume`` / ``--out``; one fold's lock with ``--fold K``).

    A missing ``--out`` is created first (a refused start removes it again: :func:`remove_if_empty`); a
    ``--resume`` of a missing folder is left to the job's own check. Under ``torchrun`` only rank 0 locks
    (the other ranks wait for it). Returns the held lock, or None when there is nothing to lock.

    Raises:
        InputError: another live job holds the folder (named in the message), or ``--out`` cannot be made.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    target = config.resume or config.out
    if not target:
        return None
    run_dir = Path(target).expanduser().resolve()
    created = False
    if not run_dir.is_dir():
        if config.resume or run_dir.exists():
            return None
        try:
            run_dir.mkdir(parents=True)
        except OSError as exc:
            raise InputError(f"{run_dir}: cannot create the run folder ({exc.strerror or exc})") from None
        created = True
    name = job_name + (" --resume" if config.resume else "")
    name += f" --fold {config.fold}" if config.fold is not None else ""
    lock = RunLock(run_dir, config.fold, name)
    lock.created_dir = created
    try:
        return lock.acquire()
    except OSError as exc:  # a read-only or otherwise unwritable folder
        raise InputError(f"{run_dir}: cannot write a lock file there ({exc.strerror or exc})") from None


def remove_if_empty(lock: RunLock) -> None:
    """Remove the run folder that this job created when nothing but lock files is in it (a start refused
    before writing anything); a folder that existed before is left alone."""
    run_dir = lock.run_dir
    if not lock.created_dir:
        return
    try:
        if run_dir.is_dir() and all(is_lock_file(p.name) for p in run_dir.iterdir()):
            for p in run_dir.iterdir():
                p.unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:  # another job just wrote there, or no permission: leave it
        pass


def log_error_to_files(logger: logging.Logger, handlers: list[logging.Handler], exc: BaseException) -> None:
    """Record a job's error in its log files only (stderr gets the command line's one error line)."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "error: %s", (exc,), None)
    for h in handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


def log_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """``warnings.showwarning`` replacement: a Python warning becomes one log line (it clears the progress
    bar and lands in ``train.log``) instead of text written over the bar."""
    log.warning("%s: %s (%s:%s)", category.__name__, message, Path(filename).name, lineno)
