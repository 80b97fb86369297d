"""A cross-validated training run in one folder: ``train_cv`` (merging: :mod:`.merge`; files: :mod:`.runfolder`;
the job frame: :mod:`.jobframe`).

Run directory::

    RUN_DIR/config.json        run-level options (TrainConfig without job options)
            dataset.json       dataset report (source, classes, exclusions, problems) and the samples with
                               the SHA-256 cache key of each file (a resumed or joined run refuses changes)
            folds.json         the split (same format as ``gloresnet folds``)
            train.log          human log (appended by every job)
            fold_K/            last.pt + best.pt while training; when the fold is finished: result.json
                               (completion marker: test metrics, selected epoch, history), predictions.csv,
                               model.safetensors (the selected weights); the .pt files are then removed
            tensorboard/fold_K/  TensorBoard event files (when tensorboard is installed)
            oof.csv            out-of-fold predictions of all folds         } written by the merge step,
            metrics.json       per fold, mean/sd/best, pooled               } once every fold is finished
            roc.png, learning_curves.png                                    }
            bundle/            ensemble of the k fold models (``gloresnet predict --model RUN_DIR/bundle``)

Folds as separate jobs: ``gloresnet train ... --out RUN_DIR --fold K`` trains only fold K; jobs for different
folds may run at the same time (same options; the first writes config.json and folds.json, the others check
that theirs match). A fold is finished when its ``result.json`` exists, and the merge step (``finalize_run``)
is a pure, idempotent function of the finished folds, run under a file lock by whichever job finds all folds
finished - or later by ``gloresnet train --resume RUN_DIR`` (which also trains any unfinished folds) or
``gloresnet evaluate RUN_DIR --merge``. Resume continues each unfinished fold from its ``last.pt``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import DatasetError, InputError
from .cache import PreprocessCache, VolumeStore
from .config import JOB_FIELDS, TrainConfig
from .datasets import DatasetReport, load_dataset
from .distributed import Dist
from .folds import OPTIMISTIC_NOTE, folds_document, make_folds, splits_from_document, write_folds
from .integrity import SYNTHETIC_NOTE, flag_identical_content, preflight
from .jobframe import run_job, tensorboard_factory
from .lesion_masks import MaskStore, prepare_masks
from .lesion_trainer import LesionFoldTrainer
from .merge import finalize_run
from .metrics import event_summary, format_table, summarize
from .progress import Reporter
from .runfolder import check_new_run_dir, fold_done, preprocess_config, read_json, read_run_config, write_json
from .stopping import StopSignal, TrainingStopped
from .trainer import FoldTrainer

__all__ = ["check_dataset", "prepare_dataset", "train_cv"]

log = logging.getLogger("GloResNetLib.training")


# ------------------------------------------------------------------------------------------- dataset


# ------------------------------------------------------------------------------------------- dataset


def prepare_dataset(
    cfg: TrainConfig,
    dist: Dist | None = None,
    reporter: Reporter | None = None,
    stop: StopSignal | None = None,
) -> tuple[DatasetReport, list[str], PreprocessCache, MaskStore | None]:
    """Read the dataset and fill the preprocessing cache (this finds unreadable images), and the lesion masks'
    (``lesion_weight`` > 0).

    Args:
        cfg: the options naming the dataset and the preprocessing.
        dist: this process's place in a distributed run (each rank decodes its share).
        reporter: receives ``stage`` progress events.
        stop: polled while decoding; a stop raises :class:`TrainingStopped`.
    Returns:
        ``(report, cache keys of report.samples, cache, lesion masks or None)``; the report lists every problem
        found.
    """
    dist = dist or Dist()
    report = load_dataset(cfg)
    cache = PreprocessCache(cfg.cache_dir, preprocess_config(cfg))
    paths = [s.path for s in report.samples]
    mine = range(dist.rank, len(paths), dist.world)
    t0 = time.perf_counter()

    def on_progress(done: int, total: int) -> None:
        if stop is not None and stop.requested:
            raise TrainingStopped(Path(cfg.out or "."), -1, -1)
        if reporter is not None and dist.main and (done == total or done % max(1, total // 20) == 0):
            reporter.emit(
                {
                    "event": "stage",
                    "stage": "preprocessing",
                    "done": done,
                    "total": total,
                    "stage_fraction": done / max(total, 1),
                }
            )

    keys, problems = cache.prepare(paths, mine, on_progress)
    gathered = dist.gather_objects((keys, problems, cache.hits, cache.misses, cache.file_hashes, cache.writable))
    all_keys: dict[int, str] = {}
    all_problems: dict[int, str] = {}
    hits = misses = 0
    for k, p, h, m, fh, _ in gathered:
        all_keys.update(k)
        all_problems.update(p)
        cache.file_hashes.update(fh)
        hits, misses = hits + h, misses + m
    if not all(g[-1] for g in gathered) and dist.active:  # no shared cache: each rank holds every volume
        cache.prepare(paths, [i for i in all_keys if i not in keys])
    if dist.main:
        log.info(
            "preprocessing cache %s: %d hit(s), %d volume(s) decoded in %.1fs",
            cache.root,
            hits,
            misses,
            time.perf_counter() - t0,
        )
    samples = list(report.samples)
    for i in sorted(all_problems):
        report.add_problem(samples[i], "unreadable image", all_problems[i])
    flag_identical_content(report, cache.file_hashes)
    kept = {id(s) for s in report.samples}
    keys_list = [all_keys[i] for i, s in enumerate(samples) if i in all_keys and id(s) in kept]
    masks = None
    if cfg.lesion_weight:
        keys_list, masks = prepare_masks(report, keys_list, cache)
    return report, keys_list, cache, masks


def check_dataset(cfg: TrainConfig) -> DatasetReport:
    """Read and decode a dataset (filling the cache); nothing is raised for problems.

    Args:
        cfg: the options naming the dataset.
    Returns:
        The dataset report (problems included).
    """
    report, *_ = prepare_dataset(cfg)
    return report


def _dataset_document(report: DatasetReport, keys: list[str], hashes: dict[str, str]) -> dict[str, Any]:
    doc = report.to_dict()
    doc["samples"] = [dict(s.to_dict(), sha256=hashes.get(str(s.path)), key=k) for s, k in zip(report.samples, keys)]
    return doc


def _same_samples(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """None when two dataset documents hold the same samples and file contents, else the first difference."""
    a, b = stored.get("samples", []), current.get("samples", [])
    if len(a) != len(b):
        return f"{len(a)} volumes then, {len(b)} now"
    for x, y in zip(a, b):
        for field in ("path", "label", "subject", "session", "sha256"):
            if x.get(field) != y.get(field):
                what = "file content" if field == "sha256" else field
                return f"{x.get('path')}: {what} changed"
    return None


# ------------------------------------------------------------------------------------------- run folder


def _resolve_paths(cfg: TrainConfig) -> TrainConfig:
    changes = {}
    for name in ("manifest", "dhcp", "pretrained"):
        value = getattr(cfg, name)
        if value:
            changes[name] = str(Path(value).expanduser().resolve())
    if cfg.out:
        changes["out"] = str(Path(cfg.out).expanduser().resolve())
    return cfg.replace(**changes)


def _config_for_job(cfg: TrainConfig) -> TrainConfig:
    """Resolve ``--resume`` (stored run options + this job's options) and check a joined run's options."""
    if cfg.resume:
        run_dir = Path(cfg.resume).expanduser().resolve()
        if not (run_dir / "config.json").is_file():
            raise InputError(f"{run_dir}: not a training run folder (no config.json) - nothing to resume")
        stored = read_run_config(run_dir)
        job = {k: getattr(cfg, k) for k in JOB_FIELDS if k != "resume"}
        stored_doc = read_json(run_dir / "config.json")
        if not job["cache_dir"]:  # keep reading the run's own cache unless told otherwise
            job["cache_dir"] = stored_doc.get("_cache_dir")
        if not job["num_threads"]:  # same threads, same floating-point sums: a plain --resume reproduces
            job["num_threads"] = stored_doc.get("_num_threads")
        return stored.replace(**job, out=str(run_dir), resume=None).validate()
    cfg = _resolve_paths(cfg)
    if cfg.cache_dir:
        cfg = cfg.replace(cache_dir=str(Path(cfg.cache_dir).expanduser().resolve()))
    run_dir = Path(cfg.out)
    if (run_dir / "config.json").is_file():
        if cfg.fold is None:
            raise InputError(
                f"{run_dir} already holds a training run; continue it with "
                f"`gloresnet train --resume {run_dir}` or choose another --out"
            )
        stored = json.loads(json.dumps(read_run_config(run_dir).run_fields()))
        mine = json.loads(json.dumps(cfg.run_fields()))
        diffs = sorted(k for k in mine if k != "out" and mine[k] != stored.get(k))
        if diffs:
            raise InputError(
                f"{run_dir}: this fold job's options differ from the run's ({', '.join(diffs)}); "
                "jobs of one run must use the same options"
            )
    else:
        check_new_run_dir(run_dir)
    return cfg


def train_cv(
    config: TrainConfig, progress: Callable[[dict], None] | None = None, stop: threading.Event | None = None
) -> Path:
    """Run (or resume, or join with ``fold``) a cross-validated training; returns the run directory.

    ``progress`` receives every event dict (see :mod:`.progress`); ``stop`` (optional ``threading.Event``)
    asks for a clean stop like Ctrl-C. A stop saves a checkpoint, emits ``stopped`` and raises
    :class:`~GloResNetLib.training.stopping.TrainingStopped`. Dataset problems raise ``DatasetError`` (with the
    full report) before anything trains. Under ``torchrun`` each process calls this; rank 0 writes.

    Args:
        config: the run's options (validated here).
        progress: receives every progress event dict.
        stop: a ``threading.Event`` that asks for a clean stop.
    Returns:
        The run folder.
    Raises:
        InputError: bad options or run folder; DatasetError: dataset problems; TrainingStopped: stopped.
    """
    config = config.validate()
    return run_job(config, progress, stop, _config_for_job, _train)


def _train(cfg: TrainConfig, run_dir: Path, dist: Dist, reporter: Reporter, stop: StopSignal) -> None:
    import torch

    if dist.main:
        log.info(
            "gloresnet %s training run %s (%d process(es), device %s, %d CPU thread(s), torch %s)",
            __version__,
            run_dir,
            dist.world,
            dist.device,
            torch.get_num_threads(),
            torch.__version__,
        )
        if cfg.protocol == "paper":
            log.warning("WARNING: %s", OPTIMISTIC_NOTE)
    report, keys, cache, masks = prepare_dataset(cfg, dist, reporter, stop)
    report.raise_if_problems(cfg.skip_bad)
    if dist.main and report.synthetic:
        log.warning("WARNING: %s", SYNTHETIC_NOTE)
    if report.problems:
        log.warning(
            "leaving out %d volume(s) with problems (--skip-bad):\n%s",
            len(report.bad_samples),
            report.format(),
        )
    if dist.main:
        log.info("%s", report.format())
    doc = _dataset_document(report, keys, cache.file_hashes)
    splits = make_folds(report.labels, report.subjects, cfg.folds, cfg.seed, cfg.protocol, cfg.val_fraction)
    fdoc = folds_document(report, splits, cfg.seed, cfg.protocol, cfg.val_fraction)
    preflight(cfg, splits, dist.world)  # what a fold would refuse, refused before the run folder is written
    if dist.main and not (run_dir / "config.json").is_file():
        write_json(
            run_dir / "config.json",
            dict(
                cfg.run_fields(),
                _library_version=__version__,
                _cache_dir=str(cache.root.resolve()),
                _num_threads=cfg.num_threads or torch.get_num_threads(),
            ),
        )
    if dist.main:
        if (run_dir / "dataset.json").is_file():
            stored_doc = read_json(run_dir / "dataset.json")
            diff = _same_samples(stored_doc, doc)
            if diff:
                raise DatasetError(
                    f"{run_dir}: the dataset changed since this run started ({diff}); "
                    "start a new run with another --out"
                )
            if [s.get("key") for s in stored_doc["samples"]] != keys:
                log.warning(
                    "WARNING: same files, but this library reads or preprocesses them differently from "
                    "when the run started (gloresnet was updated); the remaining epochs use the new inputs"
                )
        else:
            write_json(run_dir / "dataset.json", doc)
        if (run_dir / "folds.json").is_file():
            stored = splits_from_document(read_json(run_dir / "folds.json"))
            if any(
                not (
                    np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val) and np.array_equal(a.test, b.test)
                )
                for a, b in zip(stored, splits)
            ):
                raise DatasetError(f"{run_dir}/folds.json does not match the split of this dataset and seed")
        else:
            write_folds(run_dir / "folds.json", fdoc)
    dist.barrier()
    store = VolumeStore(cache, keys)
    labels = report.labels
    todo = [cfg.fold] if cfg.fold is not None else list(range(cfg.folds))
    pending = [k for k in todo if not fold_done(run_dir, k)]
    done_units = (len(todo) - len(pending)) * cfg.epochs
    reporter.emit(
        {
            "event": "start",
            "run_dir": str(run_dir),
            "folds": cfg.folds,
            "epochs": cfg.epochs,
            "n_train": len(report.samples),
        }
    )
    reporter.begin(len(todo) * cfg.epochs, done_units)
    if dist.main and len(pending) < len(todo):
        log.info("folds already finished and kept: %s", [k for k in todo if k not in pending])
    tb = tensorboard_factory(run_dir, cfg.tensorboard) if dist.main else None
    for pos, k in enumerate(todo):
        if k not in pending:
            continue
        args = (cfg, splits[k], store, labels, dist, run_dir, reporter, stop, pos, report.samples, tb)
        trainer = FoldTrainer(*args) if masks is None else LesionFoldTrainer(*args, masks=masks)
        trainer.run()
        del trainer
    if dist.main:
        missing = [k for k in range(cfg.folds) if not fold_done(run_dir, k)]
        if missing:
            results = [
                read_json(run_dir / f"fold_{k}" / "result.json")["test"] for k in range(cfg.folds) if k not in missing
            ]
            log.info(
                "folds %s are not finished yet; the merge (metrics, bundle) runs when they are "
                "(gloresnet train --resume %s, or gloresnet evaluate %s --merge)",
                missing,
                run_dir,
                run_dir,
            )
            reporter.emit(
                {
                    "event": "done",
                    "run_dir": str(run_dir),
                    "bundle": None,
                    "metrics": event_summary(summarize(results)),
                }
            )
        else:
            mdoc = finalize_run(run_dir)
            event = {
                "event": "done",
                "run_dir": str(run_dir),
                "bundle": str(run_dir / "bundle"),
                "metrics": event_summary(mdoc["summary"]),
            }
            if mdoc["optimistic"]:
                event["warning"] = OPTIMISTIC_NOTE
            reporter.at(len(todo) * cfg.epochs)
            reporter.emit(event)
            log.info("\n%s", format_table(mdoc))
            log.info("bundle: %s", run_dir / "bundle")
    dist.barrier()
