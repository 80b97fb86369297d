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
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..errors import DatasetError, InputError
from ..io import atomic_path, write_text_atomic
from ..models import PRETRAINED_FORMAT, build_model
from ..models.weights import HEAD_PREFIXES
from .age_bundle import BUNDLE_DIR, write_age_bundle
from .cache import VolumeStore
from .config import FINAL_CHOICES, LOSSES, AgeConfig, TrainConfig
from .datasets import DatasetReport, load_dataset
from .folds import Split, make_folds
from .progress import Reporter
from .run import (
    _read_json,
    _tensorboard_factory,
    _write_json,
    check_new_run_dir,
    prepare_dataset,
    preprocess_config,
    run_job,
)
from .trainer import (
    Dist,
    FoldTrainer,
    StopSignal,
    TrainingStopped,
    load_checkpoint,
)

log = logging.getLogger("GloResNetLib.training")

WEIGHTS_FILE = "age_backbone.safetensors"
CONFIG_FILE = "age_config.json"
AGE_COLUMN = "age_weeks"
PRED_COLUMNS = ["index", "path", "subject", "session", "fold", "age_weeks", "predicted_weeks"]


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


# ------------------------------------------------------------------------------------------- metrics


def mae(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error (same unit as the inputs); 0 for empty inputs."""
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    return float(np.abs(true - pred).mean()) if len(true) else 0.0


def regression_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """MAE, RMSE, mean error (bias, predicted - true) and Pearson r, in weeks."""
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    r = None
    if len(true) > 1 and np.std(true) > 0 and np.std(pred) > 0:
        r = float(np.corrcoef(true, pred)[0, 1])
    return {
        "n": int(len(true)),
        "mae_weeks": mae(true, pred),
        "rmse_weeks": float(np.sqrt(((true - pred) ** 2).mean())) if len(true) else 0.0,
        "bias_weeks": float((pred - true).mean()) if len(true) else 0.0,
        "pearson_r": r,
    }


def mean_sd(values: list[float]) -> dict[str, Any]:
    """{mean, sd (ddof=1), values}."""
    v = [float(x) for x in values]
    return {
        "mean": float(np.mean(v)) if v else None,
        "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
        "values": v,
    }


# ------------------------------------------------------------------------------------------- trainer


class AgeFoldTrainer(FoldTrainer):
    """The fold trainer with one output, standardised-age targets, an L1-type loss and MAE checkpoint choice.

    ``final=True`` trains on ``split.train`` (all data) with no validation or test part and keeps the last
    epoch; its files go to ``RUN_DIR/final``.
    """

    num_outputs = 1

    def __init__(self, *args: Any, ages: np.ndarray, loss: str = "smooth_l1", final: bool = False, **kw: Any):
        super().__init__(*args, **kw)
        self.ages = np.asarray(ages, dtype=np.float64)
        self.loss_name = loss
        self.final = final
        if final:
            self.fold_dir = self.run_dir / "final"
        train_ages = self.ages[self.split.train]
        self.mean = float(train_ages.mean())
        sd = float(train_ages.std())
        self.sd = sd if sd > 1e-6 else 1.0
        self.targets = ((self.ages - self.mean) / self.sd).astype(np.float32)

    def _inputs(self, bidx: np.ndarray, pos: np.ndarray, plan) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented (mixed) inputs as for the classifier; standardised ages mixed with the same lambda."""
        x, _ = super()._inputs(bidx, pos, plan)
        t = self.targets[bidx[pos]]
        if plan.mixing:
            t = plan.lam * t + (1.0 - plan.lam) * self.targets[bidx[plan.perm[pos]]]
        return x, torch.from_numpy(np.asarray(t, dtype=np.float32)).to(self.device).unsqueeze(1)

    def _per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Smooth L1 (beta 1 SD) or L1 between output and standardised age, per sample (B,)."""
        fn = F.smooth_l1_loss if self.loss_name == "smooth_l1" else F.l1_loss
        return fn(outputs.float()[:, :1], targets.float(), reduction="none")[:, 0]

    def predict_weeks(self, indices: np.ndarray) -> np.ndarray:
        """Predicted ages (weeks) of samples."""
        raw = self._predict(indices, per_sample=lambda y: y[:, 0]).astype(np.float64)  # standardised
        return raw * self.sd + self.mean

    def _evaluate(self, indices: np.ndarray, full: bool = False) -> tuple[np.ndarray, dict[str, Any], float]:
        """(predicted weeks, metrics, MAE in weeks); the MAE is the 'validation loss' that picks the epoch."""
        if len(indices) == 0:  # the final model has no validation part
            return np.zeros(0), {"auc": None, "accuracy": None, "balanced_accuracy": None}, 0.0
        pred = self.predict_weeks(indices)
        err = mae(self.ages[indices], pred)
        return pred, {"auc": None, "accuracy": None, "balanced_accuracy": None, "mae_weeks": err}, err

    def _report_epoch(self, r: dict[str, Any], tb) -> None:
        cfg, e = self.cfg, r["epoch"]
        units = self.fold_pos * cfg.epochs + (cfg.epochs if self.stopped_early else e + 1)
        fraction, eta = self.reporter.at(units)
        val = None if self.final else r["val_loss"]
        self.reporter.emit(
            {
                "event": "epoch",
                "task": "age",
                "fold": self.fold,
                "final": self.final,
                "epoch": e,
                "epochs": cfg.epochs,
                "train_loss": r["train_loss"],
                "val_loss": val,
                "val_mae_weeks": val,
                "val_auc": None,
                "val_accuracy": None,
                "lr": r["lr"],
                "fraction": fraction,
                "eta_s": eta,
            }
        )
        what = "final model (all data)" if self.final else f"fold {self.fold}"
        log.info(
            "%s epoch %d/%d: train loss %.4f (%s, standardised age)%s, lr %.2e, %.1fs%s%s",
            what,
            e + 1,
            cfg.epochs,
            r["train_loss"],
            self.loss_name,
            "" if val is None else f", val MAE {val:.3f} weeks",
            r["lr"],
            r["train_s"] + r["eval_s"],
            " *" if self.best_epoch == e and not self.final else "",
            " early stop" if self.stopped_early else "",
        )
        self.reporter.postfix(
            f"{'final' if self.final else f'fold {self.fold}'} ep {e + 1} loss {r['train_loss']:.3f}"
            + ("" if val is None else f" MAE {val:.2f}w")
        )
        if tb is not None:
            tb.add_scalar("train_loss", r["train_loss"], e)
            if val is not None:
                tb.add_scalar("val_mae_weeks", val, e)
            tb.add_scalar("lr", r["lr"], e)
            tb.flush()

    def _finish(self) -> dict[str, Any]:
        """Test the selected checkpoint (and the last epoch); write predictions, weights and result.json."""
        from safetensors.torch import save_file

        test = self.split.test
        last_pred = self.predict_weeks(test) if len(test) else np.zeros(0)
        best = self.fold_dir / "best.pt"
        if best.is_file() and not self.final:
            self.model.load_state_dict(load_checkpoint(best)["model"])
        pred = self.predict_weeks(test) if len(test) else np.zeros(0)
        true = self.ages[test]
        rows = io.StringIO()
        w = csv.writer(rows, lineterminator="\n")
        w.writerow(PRED_COLUMNS)
        for i, p in zip(test, pred):
            s = self.samples[int(i)]
            w.writerow(
                [int(i), str(s.path), s.subject, s.session, self.fold, repr(float(self.ages[i])), repr(float(p))]
            )
        if not self.final:
            write_text_atomic(self.fold_dir / "predictions.csv", rows.getvalue())
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(self.fold_dir / "model.safetensors") as tmp:
            save_file(state, str(tmp))
        seen = np.concatenate([self.split.train, self.split.val])
        base = float(self.ages[seen].mean())
        result = {
            "task": "age",
            "fold": None if self.final else self.fold,
            "final": self.final,
            "best_epoch": self.history[-1]["epoch"] if self.final and self.history else self.best_epoch,
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
            "selection": "last epoch" if self.final else "lowest validation MAE",
            "n_train": len(self.split.train),
            "n_val": len(self.split.val),
            "n_test": len(test),
            "target": {"unit": "weeks", "mean": self.mean, "sd": self.sd, "standardised": True},
            "loss": self.loss_name,
            "pretrained": self.pretrained_report,
            "val_mae_weeks": None if self.final or self.best_score is None else -float(self.best_score),
            "test": regression_metrics(true, pred) if len(test) else None,
            "test_last_epoch": regression_metrics(true, last_pred) if len(test) else None,
            "baseline": {
                "rule": "always predict the mean age of the fold's training data (train + validation)",
                "prediction_weeks": base,
                "mae_weeks": mae(true, np.full(len(test), base)) if len(test) else None,
            },
            "history_note": "train_loss: training loss on standardised ages; val_loss: validation MAE (weeks)",
            "history": self.history,
        }
        write_text_atomic(self.fold_dir / "result.json", json.dumps(result, indent=1) + "\n")
        for name in ("last.pt", "best.pt"):
            (self.fold_dir / name).unlink(missing_ok=True)
        if self.final:
            log.info("final model finished (%d epochs on %d volumes)", len(self.history), len(self.split.train))
            self.reporter.emit({"event": "fold_end", "task": "age", "fold": None, "final": True, "metrics": {}})
        else:
            m = result["test"]
            log.info(
                "fold %d finished: best epoch %d; test MAE %.3f weeks (last epoch %.3f; mean-age baseline %.3f)",
                self.fold,
                self.best_epoch + 1,
                m["mae_weeks"],
                result["test_last_epoch"]["mae_weeks"],
                result["baseline"]["mae_weeks"],
            )
            self.reporter.emit(
                {
                    "event": "fold_end",
                    "task": "age",
                    "fold": self.fold,
                    "metrics": {
                        "mae_weeks": m["mae_weeks"],
                        "baseline_mae_weeks": result["baseline"]["mae_weeks"],
                    },
                }
            )
        return result


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
        stored = {k: v for k, v in _read_json(out / CONFIG_FILE).items() if not k.startswith("_library")}
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
        config, progress, stop,
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
    report, keys, cache = prepare_dataset(cfg, dist, reporter, stop)
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
                (s["path"], s.get("sha256"), s.get("age_weeks"))
                for s in _read_json(run_dir / "dataset.json")["samples"]
            ]
            new = [(s["path"], s.get("sha256"), s.get("age_weeks")) for s in doc["samples"]]
            if old != new:
                raise DatasetError(f"{run_dir}: the dataset changed since this run started; choose another --out")
        else:
            _write_json(
                run_dir / CONFIG_FILE,
                dict(
                    _run_document(cfg, loss, final), _library_version=__version__, _cache_dir=str(cache.root.resolve())
                ),
            )
            _write_json(run_dir / "dataset.json", doc)
        bins, groups = age_bins(ages), np.asarray(report.subjects)
        _write_json(
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
    tb = _tensorboard_factory(run_dir, cfg.tensorboard) if dist.main else None
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


def head_keys(arch: str, arch_params: dict[str, Any]) -> set[str]:
    """Names of the tensors of an architecture's output head: those whose shape depends on the output count
    (plus any under :data:`~GloResNetLib.models.weights.HEAD_PREFIXES`)."""
    one = build_model(arch, 1, **arch_params).state_dict()
    two = build_model(arch, 2, **arch_params).state_dict()
    return {k for k in one if k not in two or one[k].shape != two[k].shape or k.startswith(HEAD_PREFIXES)}


def finalize_age_run(
    run_dir: Path, report: DatasetReport, ages: np.ndarray, cfg: TrainConfig, loss: str, final: str
) -> dict[str, Any]:
    """Merge the folds (``oof.csv``, ``metrics.json``), export the backbone weights with their metadata and
    write the fold models' brain-age bundle (``bundle/``)."""
    from safetensors.torch import load_file, save_file

    results = [_read_json(run_dir / f"fold_{k}" / "result.json") for k in range(cfg.folds)]
    rows: list[dict[str, Any]] = []
    for k in range(cfg.folds):
        with open(run_dir / f"fold_{k}" / "predictions.csv", newline="", encoding="utf-8") as f:
            rows += list(csv.DictReader(f))
    rows.sort(key=lambda r: int(r["index"]))
    true = np.array([float(r["age_weeks"]) for r in rows])
    pred = np.array([float(r["predicted_weeks"]) for r in rows])
    per_fold = [
        {
            "fold": k,
            **res["test"],
            "baseline_mae_weeks": res["baseline"]["mae_weeks"],
            "baseline_prediction_weeks": res["baseline"]["prediction_weeks"],
            "last_epoch_mae_weeks": res["test_last_epoch"]["mae_weeks"],
            "val_mae_weeks": res["val_mae_weeks"],
            "best_epoch": res["best_epoch"],
            "epochs_run": res["epochs_run"],
        }
        for k, res in enumerate(results)
    ]
    if final == "all":
        source_state = run_dir / "final" / "model.safetensors"
        exported = (
            f"final model trained on all {len(ages)} volumes for {cfg.epochs} epochs (last epoch kept); "
            "its expected error is the CV MAE of the last epoch (last_epoch_mae_weeks)"
        )
        expected = mean_sd([m["last_epoch_mae_weeks"] for m in per_fold])
    else:
        best = min(per_fold, key=lambda m: m["val_mae_weeks"])
        source_state = run_dir / f"fold_{best['fold']}" / "model.safetensors"
        exported = (
            f"fold {best['fold']} model (lowest inner-validation MAE, {best['val_mae_weeks']:.3f} weeks); "
            f"its own test MAE {best['mae_weeks']:.3f} weeks"
        )
        expected = mean_sd([m["mae_weeks"] for m in per_fold])
    summary = {
        "task": "age",
        "unit": "weeks",
        "k": cfg.folds,
        "n": len(rows),
        "note": "protocol 'honest': each fold's checkpoint was chosen on a grouped validation split inside its "
        "training fold; baseline = always predicting the mean age of the fold's training data",
        "per_fold": per_fold,
        "mae_weeks": mean_sd([m["mae_weeks"] for m in per_fold]),
        "last_epoch_mae_weeks": mean_sd([m["last_epoch_mae_weeks"] for m in per_fold]),
        "baseline_mae_weeks": mean_sd([m["baseline_mae_weeks"] for m in per_fold]),
        "pooled": regression_metrics(true, pred),
        "pooled_baseline_mae_weeks": mae(
            true, np.array([m["baseline_prediction_weeks"] for m in per_fold])[[int(r["fold"]) for r in rows]]
        ),
        "exported": exported,
        "library_version": __version__,
    }
    lines = [",".join(PRED_COLUMNS)]
    lines += [",".join(r[c] for c in PRED_COLUMNS) for r in rows]
    write_text_atomic(run_dir / "oof.csv", "\n".join(lines) + "\n")
    _write_json(run_dir / "metrics.json", summary)

    state = load_file(str(source_state))
    drop = head_keys(cfg.arch, cfg.arch_params)
    backbone = {k: v.contiguous() for k, v in state.items() if k not in drop}
    pre = preprocess_config(cfg)
    synthetic = bool(report.synthetic)
    doc = {
        "format": PRETRAINED_FORMAT,
        "format_version": 1,
        "task": "brain-age regression (gloresnet pretrain-age; after AGE2HIE, arXiv 2411.05188)",
        "arch": cfg.arch,
        "arch_params": cfg.arch_params,
        "input_size": list(pre.size),
        "preprocess": pre.to_dict(),
        "tensors": f"{len(backbone)} backbone tensors (architecture's own names); output head dropped: {sorted(drop)}",
        "data": {
            "source": str(report.source),
            "kind": report.kind,
            "n": len(ages),
            "n_subjects": len(set(report.subjects)),
            "age_weeks": {
                "min": float(ages.min()),
                "max": float(ages.max()),
                "mean": float(ages.mean()),
                "sd": float(ages.std()),
            },
            "synthetic": synthetic,
        },
        "synthetic": synthetic,
        "target": "age at scan in weeks, standardised (age - mean) / sd with the training data's mean and sd",
        "loss": loss,
        "training": {
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "mixup_alpha": cfg.mixup_alpha,
            "flip_prob": cfg.flip_prob,
            "affine_degrees": cfg.affine_degrees,
            "affine_scale": cfg.affine_scale,
            "seed": cfg.seed,
            "tta": cfg.tta,
            "initialisation": Path(cfg.pretrained).name if cfg.pretrained else "random",
        },
        "cv": {
            "k": cfg.folds,
            "mae_weeks": {k: summary["mae_weeks"][k] for k in ("mean", "sd")},
            "baseline_mae_weeks": {k: summary["baseline_mae_weeks"][k] for k in ("mean", "sd")},
            "last_epoch_mae_weeks": {k: summary["last_epoch_mae_weeks"][k] for k in ("mean", "sd")},
            "per_fold_mae_weeks": summary["mae_weeks"]["values"],
        },
        "mae_weeks": expected["mean"],
        "exported": exported,
        "library_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    target = _read_json(source_state.parent / "result.json")["target"]
    doc["target_mean_weeks"], doc["target_sd_weeks"] = target["mean"], target["sd"]
    weights = run_dir / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        save_file(backbone, str(tmp), metadata={"format": PRETRAINED_FORMAT, "gloresnet_pretrained": json.dumps(doc)})
    _write_json(weights.with_suffix(".json"), doc)
    write_age_bundle(run_dir, cfg, loss, summary, ages)
    return summary


def format_age_table(summary: dict[str, Any]) -> str:
    """Human-readable per-fold MAE table."""
    per = summary["per_fold"]
    lines = [
        f"Brain-age cross-validation: {summary['k']} folds, {summary['n']} volumes (MAE in weeks)",
        f"{'':<22} {'mean ± sd':>15}  " + " ".join(f"{'fold' + str(m['fold']):>7}" for m in per),
    ]
    for key, name in (
        ("mae_weeks", "MAE (selected epoch)"),
        ("last_epoch_mae_weeks", "MAE (last epoch)"),
        ("baseline_mae_weeks", "baseline (mean age)"),
    ):
        s = summary[key]
        lines.append(f"{name:<22} {s['mean']:>7.3f} ± {s['sd']:<6.3f} " + " ".join(f"{v:>7.3f}" for v in s["values"]))
    p = summary["pooled"]
    r = "n/a" if p["pearson_r"] is None else f"{p['pearson_r']:.3f}"
    lines.append(
        f"pooled out-of-fold: MAE {p['mae_weeks']:.3f}, RMSE {p['rmse_weeks']:.3f}, bias {p['bias_weeks']:+.3f}, "
        f"r {r}; baseline MAE {summary['pooled_baseline_mae_weeks']:.3f}"
    )
    lines.append(f"exported: {summary['exported']}")
    lines.append(summary["note"])
    return "\n".join(lines)


def read_age_summary(run_dir: str | Path) -> dict[str, Any]:
    """``RUN_DIR/metrics.json`` of a pretrain-age run."""
    return _read_json(Path(run_dir) / "metrics.json")


__all__ = [
    "AgeFoldTrainer",
    "AgeTrainingStopped",
    "check_ages",
    "finalize_age_run",
    "format_age_table",
    "head_keys",
    "pretrain_age",
    "read_age_summary",
]
