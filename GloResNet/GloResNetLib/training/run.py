"""A cross-validated training run in one folder: ``train_cv``, merging folds, ``evaluate``.

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

import contextlib
import csv
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import DatasetError, GloResNetError, InputError
from ..io import write_text_atomic
from ..preprocessing import PreprocessConfig
from .cache import PreprocessCache, VolumeStore
from .config import JOB_FIELDS, TrainConfig
from .datasets import DatasetReport, load_dataset
from .folds import HONEST_NOTE, OPTIMISTIC_NOTE, folds_document, make_folds, splits_from_document, write_folds
from .integrity import SYNTHETIC_NOTE, flag_identical_content, preflight
from .jobframe import hold_run_folder, log_error_to_files, log_warning, remove_if_empty
from .lock import is_lock_file, stale_note
from .metrics import SUMMARY_METRICS, best_epoch, binary_metrics, event_summary, format_table, summarize
from .plots import plot_learning_curves, plot_roc
from .progress import BarSafeHandler, Reporter
from .trainer import Dist, FoldTrainer, StopSignal, TrainingStopped, setup_distributed, teardown_distributed

log = logging.getLogger("GloResNetLib.training")

OOF_COLUMNS = ["index", "path", "subject", "session", "label", "fold", "probability", "predicted"]


def preprocess_config(cfg: TrainConfig) -> PreprocessConfig:
    """The preprocessing a run trains with (stored in its bundle)."""
    return PreprocessConfig(
        size=(int(cfg.size),) * 3,
        reorient=cfg.reorient,
        antialias=cfg.antialias,
        normalization=cfg.normalization,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: not found (not a training run folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: invalid JSON ({exc})") from None


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The run-level configuration stored in ``RUN_DIR/config.json``."""
    doc = _read_json(Path(run_dir) / "config.json")
    doc = {k: v for k, v in doc.items() if not k.startswith("_")}
    return TrainConfig.from_dict(doc)


# ------------------------------------------------------------------------------------------- dataset


def prepare_dataset(
    cfg: TrainConfig,
    dist: Dist | None = None,
    reporter: Reporter | None = None,
    stop: StopSignal | None = None,
) -> tuple[DatasetReport, list[str], PreprocessCache]:
    """Read the dataset, fill the preprocessing cache (this finds unreadable images) and return
    ``(report, cache keys of report.samples, cache)``; the report then lists every problem found."""
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
    return report, keys_list, cache


def check_dataset(cfg: TrainConfig) -> DatasetReport:
    """Read and decode a dataset (filling the cache) and return its report; nothing is raised for problems."""
    report, _, _ = prepare_dataset(cfg)
    return report


def _dataset_document(report: DatasetReport, keys: list[str], hashes: dict[str, str]) -> dict[str, Any]:
    doc = report.to_dict()
    doc["samples"] = [
        dict(s.to_dict(), sha256=hashes.get(str(s.path)), key=k) for s, k in zip(report.samples, keys)
    ]
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
        stored_doc = _read_json(run_dir / "config.json")
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


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse an ``--out`` that exists and holds anything but a log of a failed start (or lock files)."""
    if run_dir.exists() and (
        not run_dir.is_dir() or any(p.name != "train.log" and not is_lock_file(p.name) for p in run_dir.iterdir())
    ):
        raise InputError(f"{run_dir}: exists and is not an empty folder; choose another --out")


def _setup_logging(
    run_dir: Path | None, dist: Dist, reporter: Reporter, to_stderr: bool
) -> list[logging.Handler]:
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


def _tensorboard_factory(run_dir: Path, enabled: bool) -> Callable[[int, int], Any] | None:
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


def fold_done(run_dir: Path, k: int) -> bool:
    return (run_dir / f"fold_{k}" / "result.json").is_file()


def train_cv(
    config: TrainConfig, progress: Callable[[dict], None] | None = None, stop: threading.Event | None = None
) -> Path:
    """Run (or resume, or join with ``fold``) a cross-validated training; returns the run directory.

    ``progress`` receives every event dict (see :mod:`.progress`); ``stop`` (optional ``threading.Event``)
    asks for a clean stop like Ctrl-C. A stop saves a checkpoint, emits ``stopped`` and raises
    :class:`~GloResNetLib.training.trainer.TrainingStopped`. Dataset problems raise ``DatasetError`` (with the
    full report) before anything trains. Under ``torchrun`` each process calls this; rank 0 writes.
    """
    config = config.validate()
    return run_job(config, progress, stop, _config_for_job, _train)


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
    :class:`TrainingStopped`, or ``stopped_error(run_dir, exc)`` when given. Returns the run directory."""
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
    report, keys, cache = prepare_dataset(cfg, dist, reporter, stop)
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
        _write_json(
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
            stored_doc = _read_json(run_dir / "dataset.json")
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
            _write_json(run_dir / "dataset.json", doc)
        if (run_dir / "folds.json").is_file():
            stored = splits_from_document(_read_json(run_dir / "folds.json"))
            if any(
                not (
                    np.array_equal(a.train, b.train)
                    and np.array_equal(a.val, b.val)
                    and np.array_equal(a.test, b.test)
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
    tb = _tensorboard_factory(run_dir, cfg.tensorboard) if dist.main else None
    for pos, k in enumerate(todo):
        if k not in pending:
            continue
        trainer = FoldTrainer(
            cfg, splits[k], store, labels, dist, run_dir, reporter, stop, pos, report.samples, tb
        )
        trainer.run()
        del trainer
    if dist.main:
        missing = [k for k in range(cfg.folds) if not fold_done(run_dir, k)]
        if missing:
            results = [
                _read_json(run_dir / f"fold_{k}" / "result.json")["test"]
                for k in range(cfg.folds)
                if k not in missing
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


# ------------------------------------------------------------------------------------------- merge


@contextlib.contextmanager
def _locked(run_dir: Path):
    try:
        import fcntl
    except ImportError:  # Windows: jobs of one run should not finish at the same instant there
        yield
        return
    with open(run_dir / ".merge.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_predictions(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [
            dict(
                r,
                index=int(r["index"]),
                label=int(r["label"]),
                fold=int(r["fold"]),
                probability=float(r["probability"]),
                predicted=int(r["predicted"]),
            )
            for r in csv.DictReader(f)
        ]


def training_data(dataset_doc: dict[str, Any]) -> dict[str, Any]:
    """The bundle's ``training_data``: description of the dataset, ``synthetic`` flag."""
    classes = dataset_doc.get("classes", {})
    synthetic = bool(dataset_doc.get("synthetic"))
    desc = (
        f"{'SYNTHETIC data (demonstration only): ' if synthetic else ''}{dataset_doc['n']} volumes of "
        f"{dataset_doc['n_subjects']} subjects ({', '.join(f'{k} {v}' for k, v in classes.items())}) from "
        f"{dataset_doc['kind']} {dataset_doc['source']}"
    )
    out = {
        "description": desc,
        "synthetic": synthetic,
        "trained": True,
        "n": dataset_doc["n"],
        "n_subjects": dataset_doc["n_subjects"],
        "classes": classes,
        "source": dataset_doc["source"],
        "source_kind": dataset_doc["kind"],
        "excluded": dataset_doc.get("excluded", {}),
        "skipped": dataset_doc.get("skipped", 0),
    }
    if dataset_doc.get("label_rule"):
        out["label_rule"] = dataset_doc["label_rule"]
    return out


def finalize_run(run_dir: str | Path) -> dict[str, Any]:
    """Merge finished folds: ``oof.csv``, ``metrics.json``, plots and the ensemble ``bundle/``; idempotent."""
    from safetensors.torch import load_file

    from ..bundle import default_metadata, save_bundle
    from ..models import describe_pretrained, pretrained_metadata

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    missing = [k for k in range(cfg.folds) if not fold_done(run_dir, k)]
    if missing:
        raise InputError(
            f"{run_dir}: fold(s) {missing} not finished; train them first "
            f"(`gloresnet train --resume {run_dir}` or `--fold K`)"
        )
    dataset_doc = _read_json(run_dir / "dataset.json")
    with _locked(run_dir):
        results = [_read_json(run_dir / f"fold_{k}" / "result.json") for k in range(cfg.folds)]
        rows: list[dict[str, Any]] = []
        per_fold = []
        for k, res in enumerate(results):
            preds = read_predictions(run_dir / f"fold_{k}" / "predictions.csv")
            rows += preds
            m = binary_metrics([r["label"] for r in preds], [r["probability"] for r in preds], cfg.threshold)
            per_fold.append(
                {"fold": k, **m, "best_epoch": best_epoch(res), "epochs_run": res["epochs_run"]}
            )
        rows.sort(key=lambda r: r["index"])
        pooled = binary_metrics([r["label"] for r in rows], [r["probability"] for r in rows], cfg.threshold)
        optimistic = cfg.protocol == "paper"
        doc = {
            "protocol": cfg.protocol,
            "optimistic": optimistic,
            "note": OPTIMISTIC_NOTE if optimistic else HONEST_NOTE,
            "selection": cfg.selection,
            "threshold": cfg.threshold,
            "k": cfg.folds,
            "n": len(rows),
            "per_fold": per_fold,
            "summary": summarize(per_fold),
            "pooled": pooled,
            "dataset": {
                k: dataset_doc.get(k) for k in ("source", "kind", "n", "n_subjects", "classes", "synthetic")
            },
            "bundle": "bundle",
            "library_version": __version__,
        }
        lines = [",".join(OOF_COLUMNS)]
        out = csv.writer(_Lines(lines), lineterminator="")
        for r in rows:
            out.writerow([r[c] if c != "probability" else repr(r[c]) for c in OOF_COLUMNS])
        write_text_atomic(run_dir / "oof.csv", "\n".join(lines) + "\n")
        try:
            plot_roc(run_dir / "roc.png", rows, cfg.folds, optimistic)
            plot_learning_curves(run_dir / "learning_curves.png", results, cfg.selection, optimistic)
        except Exception as exc:  # noqa: BLE001 - a plotting failure must not lose the run's results
            log.warning("could not draw the plots: %s", exc)
        states = [load_file(str(run_dir / f"fold_{k}" / "model.safetensors")) for k in range(cfg.folds)]
        pre = preprocess_config(cfg)
        cv = {
            "protocol": cfg.protocol,
            "optimistic": optimistic,
            "note": doc["note"],
            "k": cfg.folds,
            "selection": cfg.selection,
            "summary": event_summary(doc["summary"]),
            "pooled": {m: pooled[m] for m in SUMMARY_METRICS},
        }
        td = training_data(dataset_doc)
        init = describe_pretrained(cfg.pretrained, cfg.arch) if cfg.pretrained else "random initialisation"
        pre_doc = pretrained_metadata(cfg.pretrained) if cfg.pretrained else None  # e.g. pretrain-age weights
        provenance = (
            f"GloResNet {cfg.folds}-fold cross-validation ensemble ({cfg.arch}, {cfg.size}^3 input), "
            f"trained by gloresnet {__version__} on {td['description']}; {cfg.epochs} epochs, AdamW lr "
            f"{cfg.lr:g} wd {cfg.weight_decay:g}, batch {cfg.batch_size}, mixup alpha {cfg.mixup_alpha:g}, "
            f"class weights {'on' if cfg.class_weights else 'off'}, {init}, seed {cfg.seed}. "
            f"{doc['note']}."
        )
        meta = default_metadata(
            cfg.name or run_dir.name,
            arch=cfg.arch,
            arch_params=cfg.arch_params,
            preprocess=pre,
            training_data=td,
            provenance=provenance,
            threshold=cfg.threshold,
            cv_metrics=cv,
            tta_axes=(0,),
            extra={"pretrained": dict(pre_doc, file=Path(cfg.pretrained).name)} if pre_doc else None,
        )
        save_bundle(run_dir / "bundle", states, meta, overwrite=True)
        _write_json(run_dir / "metrics.json", doc)
    log.info("merged %d folds into %s (metrics.json, oof.csv, bundle/)", cfg.folds, run_dir)
    return doc


class _Lines:
    """Minimal file-like sink for csv.writer collecting one string per row."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> None:
        self.lines.append(text)


def evaluate_run(run_dir: str | Path, merge: bool = False) -> dict[str, Any]:
    """A run's ``metrics.json`` (merged first with ``merge`` or when it is missing but all folds are done)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise InputError(f"{run_dir}: not a training run folder (no config.json)")
    if merge or not (run_dir / "metrics.json").is_file():
        return finalize_run(run_dir)
    return _read_json(run_dir / "metrics.json")


__all__ = ["check_dataset", "evaluate_run", "finalize_run", "prepare_dataset", "read_run_config", "train_cv"]
