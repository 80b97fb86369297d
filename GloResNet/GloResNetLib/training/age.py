"""Brain-age pretraining (``gloresnet pretrain-age``): regress age at scan, then transfer the backbone.

After AGE2HIE (Bao et al., arXiv 2411.05188): a backbone first learns to estimate age at scan (weeks, the
manifest's ``age_weeks`` column or dHCP's ``scan_age``) and its weights then initialise the brain-injury
classifier (``gloresnet train --pretrained OUT/age_backbone.safetensors``; the head is dropped on load).

Same machinery as ``gloresnet train``: the dataset readers, the preprocessing cache, subject-grouped k-fold
with an inner validation split (protocol 'honest' only), the fold trainer (AdamW + cosine, flips, affines,
checkpoints, Ctrl-C / resume, progress events, DDP) with three differences:

* **target**: ages standardised with the mean and SD of the fold's training part; the network has one output
  and predicts ``(age - mean) / sd``; every reported figure is back in weeks;
* **loss**: smooth L1 (Huber, beta = 1 SD) on the standardised age (``--loss l1`` for plain L1); mixup is off
  by default (a blend of two brains is not a brain of the blended age); with ``--mixup-alpha`` > 0 targets are
  mixed linearly with the same lambda;
* **checkpoint choice**: lowest mean absolute error (MAE, weeks) on the inner validation split; the folds are
  stratified by age (younger / older than the median) instead of by label.

Each fold reports its test MAE and the MAE of always predicting the mean age of that fold's training data
(the baseline a useful model must beat). The exported weights come from a **final model trained on all
data** for ``--epochs`` (the last epoch is kept: there is nothing left to validate on), so the CV figures
estimate how well that recipe does; each fold therefore also records the test MAE of its *last* epoch
(``--final best-fold`` instead exports the fold model with the lowest inner-validation MAE, no extra run).

Folder ``OUT``::

    age_config.json      options (TrainConfig fields + _task, _loss, _final)
    dataset.json         dataset report and samples (path, subject, session, age, cache key)
    folds.json           the split (counts per fold: [younger, older] than the median age)
    fold_K/              result.json (test MAE, baseline, history), predictions.csv, model.safetensors
    final/               result.json, model.safetensors (the full regressor, head included)
    oof.csv              out-of-fold predictions of every fold
    metrics.json         per fold, mean +/- sd, pooled; baseline likewise
    age_backbone.safetensors   backbone tensors (architecture's own names, no head) + metadata
    age_backbone.json          the same metadata, readable
    bundle/              the fold models as a brain-age model bundle (task age_regression) for
                         ``gloresnet predict`` (:mod:`.age_bundle`)
    train.log

The fold trainer and its metrics are in :mod:`.age_trainer`, the merge and the export in :mod:`.age_merge`.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import DatasetError, InputError
from .age_bundle import BUNDLE_DIR
from .age_merge import WEIGHTS_FILE, finalize_age_run, format_age_table
from .age_trainer import AgeFoldTrainer
from .cache import VolumeStore
from .config import FINAL_CHOICES, LOSSES, AgeConfig, TrainConfig
from .datasets import DatasetReport, load_dataset
from .distributed import Dist
from .folds import Split, make_folds
from .jobframe import run_job, tensorboard_factory
from .progress import Reporter
from .run import prepare_dataset
from .runfolder import check_new_run_dir, read_json, write_json
from .stopping import StopSignal, TrainingStopped

__all__ = ["BUNDLE_DIR", "WEIGHTS_FILE", "AgeTrainingStopped", "age_folds", "check_ages", "pretrain_age"]

log = logging.getLogger("GloResNetLib.training")

CONFIG_FILE = "age_config.json"
AGE_COLUMN = "age_weeks"


class AgeTrainingStopped(TrainingStopped):
    """Brain-age pretraining stopped on request after saving a checkpoint (rerun the command to continue)."""

    def __init__(self, run_dir: Path, fold: int, epoch: int) -> None:
        where = f"at fold {fold}, epoch {epoch}" if fold >= 0 else "while preprocessing"
        Exception.__init__(
            self, f"pretrain-age stopped {where}; run the same command again (same --out {run_dir}) to continue"
        )
        self.run_dir, self.fold, self.epoch = run_dir, fold, epoch


# ------------------------------------------------------------------------------------------- dataset


def _manifest_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [h.strip().lower() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # the dataset reader reports it


def check_ages(cfg: TrainConfig, report: DatasetReport) -> list:
    """Refuse (one-line :class:`DatasetError`) a dataset whose samples lack a finite, positive age at scan;
    with ``--skip-bad`` return those samples instead (the caller leaves them out)."""
    source = report.source
    if report.kind == "manifest" and AGE_COLUMN not in _manifest_header(Path(cfg.manifest)):
        raise DatasetError(f"{source}: no '{AGE_COLUMN}' column (age at scan in weeks), which pretrain-age needs")
    col = AGE_COLUMN if report.kind == "manifest" else "scan_age"
    missing = [s for s in report.samples if s.age_weeks is None or s.age_weeks <= 0]
    bad = [(p.line, f"{p.where}: {p.message}") for p in report.problems if p.kind == "invalid age"]
    bad += [
        (s.line, f"{s.where}: {'empty or NaN' if s.age_weeks is None else f'non-positive ({s.age_weeks:g})'} {col}")
        for s in missing
    ]
    if bad and not cfg.skip_bad:
        bad.sort(key=lambda b: b[0])
        more = f" (and {len(bad) - 1} more row(s))" if len(bad) > 1 else ""
        raise DatasetError(
            f"{source}: column '{col}' needs a finite age in weeks in every row; {bad[0][1]}{more}; "
            "fix it or pass --skip-bad"
        )
    return missing


def age_bins(ages: np.ndarray) -> np.ndarray:
    """Stratification classes of the age folds: 0 = younger than the median age, 1 = the others."""
    return (ages >= np.median(ages)).astype(np.int64)


def age_folds(ages: np.ndarray, subjects: list[str], cfg: TrainConfig) -> list[Split]:
    """Subject-grouped k folds stratified by age (below / at-or-above the median) with inner validation."""
    bins = age_bins(ages)
    groups = np.asarray(subjects)
    for b, name in ((0, "younger than"), (1, "at least")):
        n = len(set(groups[bins == b]))
        if n < cfg.folds:
            raise DatasetError(
                f"only {n} subject(s) {name} the median age {np.median(ages):g} weeks; {cfg.folds}-fold "
                f"cross-validation of age needs at least {cfg.folds} on each side (use fewer --folds)"
            )
    if float(np.ptp(ages)) == 0.0:
        raise DatasetError(f"every age is {ages[0]:g} weeks: nothing to learn")
    return make_folds(bins, subjects, cfg.folds, cfg.seed, "honest", cfg.val_fraction)


# ------------------------------------------------------------------------------------------- run


def _run_document(cfg: TrainConfig, loss: str, final: str) -> dict[str, Any]:
    return json.loads(json.dumps(dict(cfg.run_fields(), _task="age", _loss=loss, _final=final)))


def _prepare_out(cfg: TrainConfig, loss: str, final: str) -> TrainConfig:
    """Resolve paths; a folder holding this very run is continued, any other non-empty folder refused."""
    changes = {
        k: str(Path(getattr(cfg, k)).expanduser().resolve())
        for k in ("manifest", "dhcp", "pretrained")
        if getattr(cfg, k)
    }
    changes["out"] = str(Path(cfg.out).expanduser().resolve())
    if cfg.cache_dir:
        changes["cache_dir"] = str(Path(cfg.cache_dir).expanduser().resolve())
    cfg = cfg.replace(**changes)
    out = Path(cfg.out)
    if (out / CONFIG_FILE).is_file():
        stored = {k: v for k, v in read_json(out / CONFIG_FILE).items() if not k.startswith("_library")}
        cache_dir = stored.pop("_cache_dir", None)
        if not cfg.cache_dir and cache_dir:  # keep reading the run's own cache unless told otherwise
            cfg = cfg.replace(cache_dir=cache_dir)
        mine = _run_document(cfg, loss, final)
        diffs = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
        if diffs:
            raise InputError(
                f"{out} holds a pretrain-age run with other options ({', '.join(diffs)}); "
                "repeat its options to continue it, or choose another --out"
            )
    else:
        check_new_run_dir(out)
    return cfg


def pretrain_age(
    config: TrainConfig,
    loss: str | None = None,
    final: str | None = None,
    progress: Callable[[dict], None] | None = None,
    stop: threading.Event | None = None,
) -> Path:
    """Cross-validate brain-age regression, train the exported model and write ``OUT/age_backbone.*``.

    Running it again with the same options and ``OUT`` continues a stopped run.

    Args:
        config: an :class:`AgeConfig` (or a :class:`TrainConfig` with the usual training options:
            ``manifest``/``dhcp``, ``out``, ``arch``, ``size``, ``epochs``, ...; ``protocol`` must be 'honest').
        loss: 'smooth_l1' or 'l1' (default: the config's, else :class:`AgeConfig`'s default).
        final: 'all' (train on all data, keep the last epoch) or 'best-fold' (the fold model with the lowest
            validation MAE); default as for ``loss``.
        progress: receives every progress event dict, as for :func:`~GloResNetLib.training.run.train_cv`.
        stop: a ``threading.Event`` that asks for a clean stop like Ctrl-C.
    Returns:
        ``OUT``.
    Raises:
        InputError: a bad option; DatasetError: a dataset without usable ages; AgeTrainingStopped: stopped.
    """
    age = config if isinstance(config, AgeConfig) else AgeConfig()
    loss = age.loss if loss is None else loss
    final = age.final if final is None else final
    if isinstance(config, AgeConfig):
        config = config.train_config()
    config = config.replace(class_weights=False, select_metric="loss").validate()
    if loss not in LOSSES:
        raise InputError(f"--loss must be one of {LOSSES}")
    if final not in FINAL_CHOICES:
        raise InputError(f"--final must be one of {FINAL_CHOICES}")
    if config.protocol != "honest":
        raise InputError("pretrain-age supports only --protocol honest (checkpoint chosen on a validation split)")
    if config.fold is not None or config.resume:
        raise InputError("pretrain-age runs all folds in one job (no --fold / --resume: rerun the command)")
    if not config.out:
        raise InputError("--out DIR is required")
    return run_job(
        config,
        progress,
        stop,
        prepare=lambda c: _prepare_out(c, loss, final),
        body=lambda c, run_dir, dist, reporter, stopper: _pretrain(c, loss, final, run_dir, dist, reporter, stopper),
        stopped_error=lambda run_dir, exc: AgeTrainingStopped(run_dir, exc.fold, exc.epoch),
        job_name="gloresnet pretrain-age",
    )


def _pretrain(
    cfg: TrainConfig, loss: str, final: str, run_dir: Path, dist: Dist, reporter: Reporter, stop: StopSignal
) -> None:
    if dist.main:
        log.info(
            "gloresnet %s brain-age pretraining %s (%d process(es), device %s, torch %s)",
            __version__,
            run_dir,
            dist.world,
            dist.device,
            torch.__version__,
        )
    check_ages(cfg, load_dataset(cfg))  # before decoding anything
    report, keys, cache, _ = prepare_dataset(cfg, dist, reporter, stop)
    no_age = set(map(id, check_ages(cfg, report)))
    keys = [k for s, k in zip(report.samples, keys) if id(s) not in no_age]
    for s in [s for s in report.samples if id(s) in no_age]:
        report.add_problem(s, "invalid age", "no usable age at scan (left out)")
    if report.problems and not cfg.skip_bad:
        raise DatasetError(
            f"dataset {report.source} has {len(report.problems)} problem(s); nothing was trained. "
            f"Fix them or pass --skip-bad to leave those rows out.\n{report.format()}"
        )
    ages = np.array([s.age_weeks for s in report.samples], dtype=np.float64)
    splits = age_folds(ages, report.subjects, cfg)
    if dist.main:
        log.info("%s", report.format())
        log.info(
            "ages %.2f-%.2f weeks (mean %.2f, sd %.2f) of %d volumes",
            ages.min(),
            ages.max(),
            ages.mean(),
            ages.std(),
            len(ages),
        )
        doc = report.to_dict()
        doc["samples"] = [
            dict(s.to_dict(), sha256=cache.file_hashes.get(str(s.path)), key=k) for s, k in zip(report.samples, keys)
        ]
        if (run_dir / "dataset.json").is_file():
            old = [
                (s["path"], s.get("sha256"), s.get("age_weeks")) for s in read_json(run_dir / "dataset.json")["samples"]
            ]
            new = [(s["path"], s.get("sha256"), s.get("age_weeks")) for s in doc["samples"]]
            if old != new:
                raise DatasetError(f"{run_dir}: the dataset changed since this run started; choose another --out")
        else:
            write_json(
                run_dir / CONFIG_FILE,
                dict(
                    _run_document(cfg, loss, final), _library_version=__version__, _cache_dir=str(cache.root.resolve())
                ),
            )
            write_json(run_dir / "dataset.json", doc)
        bins, groups = age_bins(ages), np.asarray(report.subjects)
        write_json(
            run_dir / "folds.json",
            {
                "k": cfg.folds,
                "seed": cfg.seed,
                "protocol": "honest",
                "val_fraction": cfg.val_fraction,
                "stratified_by": f"age below / at-or-above the median {float(np.median(ages)):g} weeks "
                "(counts: [younger, older]); grouped by subject",
                "samples": [
                    {"index": i, "path": str(s.path), "subject": s.subject, "session": s.session, "age_weeks": a}
                    for i, (s, a) in enumerate(zip(report.samples, ages.tolist()))
                ],
                "folds": [sp.to_dict(bins, groups) for sp in splits],
            },
        )
    dist.barrier()
    store = VolumeStore(cache, keys)
    jobs: list[tuple[Split, bool]] = [(sp, False) for sp in splits]
    if final == "all":
        everything = np.arange(len(ages))
        jobs.append((Split(cfg.folds, everything, np.zeros(0, np.int64), np.zeros(0, np.int64)), True))
    done = [_job_done(run_dir, sp, fin) for sp, fin in jobs]
    reporter.emit(
        {
            "event": "start",
            "task": "age",
            "run_dir": str(run_dir),
            "folds": cfg.folds,
            "final": final,
            "epochs": cfg.epochs,
            "n_train": len(ages),
        }
    )
    reporter.begin(len(jobs) * cfg.epochs, sum(done) * cfg.epochs)
    tb = tensorboard_factory(run_dir, cfg.tensorboard) if dist.main else None
    labels = np.zeros(len(ages), dtype=np.int64)
    for pos, ((sp, fin), finished) in enumerate(zip(jobs, done)):
        if finished:
            continue
        job_cfg = cfg.replace(patience=None) if fin else cfg
        if fin and dist.main:
            log.info("final model: all %d volumes, %d epochs, the last epoch is kept", len(ages), cfg.epochs)
        trainer = AgeFoldTrainer(
            job_cfg,
            sp,
            store,
            labels,
            dist,
            run_dir,
            reporter,
            stop,
            pos,
            report.samples,
            tb,
            ages=ages,
            loss=loss,
            final=fin,
        )
        trainer.run()
        del trainer
    if dist.main:
        summary = finalize_age_run(run_dir, report, ages, cfg, loss, final)
        reporter.at(len(jobs) * cfg.epochs)
        reporter.emit(
            {
                "event": "done",
                "task": "age",
                "run_dir": str(run_dir),
                "weights": str(run_dir / WEIGHTS_FILE),
                "bundle": str(run_dir / BUNDLE_DIR),
                "metrics": {
                    "mae_weeks": {k: summary["mae_weeks"][k] for k in ("mean", "sd")},
                    "baseline_mae_weeks": {k: summary["baseline_mae_weeks"][k] for k in ("mean", "sd")},
                },
            }
        )
        log.info("\n%s", format_age_table(summary))
        log.info("weights: %s", run_dir / WEIGHTS_FILE)
        log.info("brain-age bundle (gloresnet predict --model): %s", run_dir / BUNDLE_DIR)
    dist.barrier()


def _job_done(run_dir: Path, split: Split, final: bool) -> bool:
    return (run_dir / ("final" if final else f"fold_{split.fold}") / "result.json").is_file()
