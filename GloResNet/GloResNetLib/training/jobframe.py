"""The frame of a training job (:func:`run_job`, shared by ``train`` and ``pretrain-age``): the run-folder
lock, distributed set-up, threads, the stop signal, ``train.log`` and TensorBoard, errors and warnings in
``train.log``, and leaving no empty folder behind after a refused start."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import GloResNetError, InputError
from .config import TrainConfig
from .distributed import Dist, setup_distributed, teardown_distributed
from .lock import RunLock, is_lock_file, stale_note
from .progress import BarSafeHandler, Reporter
from .stopping import StopSignal, TrainingStopped

__all__ = ["hold_run_folder", "log_error_to_files", "log_warning", "remove_if_empty", "run_job", "tensorboard_factory"]

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


def _setup_logging(run_dir: Path | None, dist: Dist, reporter: Reporter, to_stderr: bool) -> list[logging.Handler]:
    handlers: list[logging.Handler] = []
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if dist.main and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        h = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        h.setFormatter(fmt)
        handlers.append(h)
    if to_stderr:
        h = BarSafeHandler(reporter)
        h.setFormatter(logging.Formatter("%(message)s"))
        h.setLevel(logging.INFO if dist.main else logging.WARNING)
        handlers.append(h)
    for h in handlers:
        log.addHandler(h)
    log.setLevel(logging.INFO)
    return handlers


def tensorboard_factory(run_dir: Path, enabled: bool) -> Callable[[int, int], Any] | None:
    """A factory of TensorBoard writers ``(fold, start epoch) -> SummaryWriter`` under ``RUN_DIR/tensorboard``,
    or None when disabled or when tensorboard is not installed (said once in the log)."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard missing or broken: no event files, say so once
        log.info("tensorboard is not installed: no TensorBoard event files (pip install tensorboard)")
        return None
    return lambda fold, start: SummaryWriter(
        log_dir=str(run_dir / "tensorboard" / f"fold_{fold}"), purge_step=start if start > 0 else None
    )


def run_job(
    config: TrainConfig,
    progress: Callable[[dict], None] | None,
    stop: threading.Event | None,
    prepare: Callable[[TrainConfig], TrainConfig],
    body: Callable[[TrainConfig, Path, Dist, Reporter, StopSignal], None],
    stopped_error: Callable[[Path, TrainingStopped], Exception] | None = None,
    job_name: str = "gloresnet train",
) -> Path:
    """The frame of a training job shared by ``train`` and ``pretrain-age``: ``prepare`` the configuration
    (run folder), set up distributed training, threads, the stop signal and ``train.log``, run ``body``, emit
    ``stopped`` / ``error`` events, and restore the caller's threads and torch RNG. The run folder is locked
    (:mod:`.lock`) from before ``prepare`` to the end: a second job on it raises ``InputError`` naming the
    first; an error is also written to ``train.log`` when one is open. A stop re-raises
    :class:`TrainingStopped`, or ``stopped_error(run_dir, exc)`` when given.

    Args:
        config: the job's options.
        progress: receives every progress event dict; stop: asks for a clean stop.
        prepare: checks and completes the options (run folder); runs under the lock.
        body: ``body(config, run_dir, dist, reporter, stop)`` does the work.
        stopped_error: the exception a stop raises instead of :class:`TrainingStopped`.
        job_name: names this job in the lock (and so in another job's refusal).
    Returns:
        The run folder.
    """
    import torch

    reporter = Reporter(progress, json_stdout=config.progress_json, bar=config.progress_bar)
    handlers: list[logging.Handler] = []
    dist = None
    threads, rng_state = torch.get_num_threads(), torch.get_rng_state()
    run_dir = Path(config.resume or config.out or ".")
    lock = None
    try:
        lock = hold_run_folder(config, job_name)  # before any check, so that checks see a settled folder
        config = prepare(config)
        run_dir = Path(config.out)
        dist = setup_distributed(config.device)
        reporter.enabled = dist.main
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        with StopSignal(stop) as stopper, warnings.catch_warnings():
            handlers = _setup_logging(run_dir, dist, reporter, config.log_to_stderr)
            warnings.showwarning = log_warning  # never glued onto the progress bar; kept in train.log
            if lock is not None and stale_note(lock):
                log.info("%s", stale_note(lock))
            try:
                body(config, run_dir, dist, reporter, stopper)
            except TrainingStopped as exc:
                reporter.emit(
                    {
                        "event": "stopped",
                        "run_dir": str(run_dir),
                        "fold": None if exc.fold < 0 else exc.fold,
                        "epoch": None if exc.epoch < 0 else exc.epoch,
                    }
                )
                if stopped_error is None:
                    log.warning("%s", exc)
                    raise
                error = stopped_error(run_dir, exc)
                log.warning("%s", error)
                raise error from None
        return run_dir
    except GloResNetError as exc:
        log_error_to_files(log, handlers, exc)
        reporter.emit({"event": "error", "message": str(exc)})
        raise
    finally:
        if lock is not None:
            lock.release()
            remove_if_empty(lock)  # a refused first start leaves no folder behind
        if config.num_threads:
            torch.set_num_threads(threads)
        torch.set_rng_state(rng_state)  # training reseeds torch per step; leave the caller's RNG alone
        reporter.close()
        for h in handlers:
            log.removeHandler(h)
            h.close()
        if dist is not None:
            teardown_distributed(dist)
