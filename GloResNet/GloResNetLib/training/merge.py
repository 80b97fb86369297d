"""Merging the finished folds of a run: ``oof.csv``, ``metrics.json``, plots and the ensemble ``bundle/``
(:func:`finalize_run`, idempotent, under a file lock), and ``gloresnet evaluate`` (:func:`evaluate_run`)."""

from __future__ import annotations

import contextlib
import csv
import logging
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputError
from ..io import write_text_atomic
from .folds import HONEST_NOTE, OPTIMISTIC_NOTE
from .metrics import SUMMARY_METRICS, best_epoch, binary_metrics, event_summary, summarize
from .plots import plot_learning_curves, plot_roc
from .runfolder import fold_done, preprocess_config, read_json, read_run_config, write_json

__all__ = ["OOF_COLUMNS", "evaluate_run", "finalize_run", "read_predictions", "training_data"]

log = logging.getLogger("GloResNetLib.training")

OOF_COLUMNS = ["index", "path", "subject", "session", "label", "fold", "probability", "predicted"]


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
    """A fold's ``predictions.csv``.

    Args:
        path: the file.
    Returns:
        One dict per row (:data:`OOF_COLUMNS`), numbers parsed.
    """
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
    """Merge finished folds: ``oof.csv``, ``metrics.json``, plots and the ensemble ``bundle/``; idempotent.

    Args:
        run_dir: the run folder.
    Returns:
        The ``metrics.json`` document.
    Raises:
        InputError: a fold is not finished.
    """
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
    dataset_doc = read_json(run_dir / "dataset.json")
    with _locked(run_dir):
        results = [read_json(run_dir / f"fold_{k}" / "result.json") for k in range(cfg.folds)]
        rows: list[dict[str, Any]] = []
        per_fold = []
        for k, res in enumerate(results):
            preds = read_predictions(run_dir / f"fold_{k}" / "predictions.csv")
            rows += preds
            m = binary_metrics([r["label"] for r in preds], [r["probability"] for r in preds], cfg.threshold)
            per_fold.append({"fold": k, **m, "best_epoch": best_epoch(res), "epochs_run": res["epochs_run"]})
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
            "dataset": {k: dataset_doc.get(k) for k in ("source", "kind", "n", "n_subjects", "classes", "synthetic")},
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
            f"class weights {'on' if cfg.class_weights else 'off'}, "
            f"{f'lesion-map loss weight {cfg.lesion_weight:g} on lesion masks, ' if cfg.lesion_weight else ''}"
            f"{init}, seed {cfg.seed}. "
            f"{doc['note']}."
        )
        meta = default_metadata(
            cfg.name or run_dir.name,
            arch=cfg.arch,
            arch_params=cfg.model_params,
            preprocess=pre,
            training_data=td,
            provenance=provenance,
            threshold=cfg.threshold,
            cv_metrics=cv,
            tta_axes=(0,),
            extra={"pretrained": dict(pre_doc, file=Path(cfg.pretrained).name)} if pre_doc else None,
        )
        save_bundle(run_dir / "bundle", states, meta, overwrite=True)
        write_json(run_dir / "metrics.json", doc)
    log.info("merged %d folds into %s (metrics.json, oof.csv, bundle/)", cfg.folds, run_dir)
    return doc


class _Lines:
    """Minimal file-like sink for csv.writer collecting one string per row."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> None:
        self.lines.append(text)


def evaluate_run(run_dir: str | Path, merge: bool = False) -> dict[str, Any]:
    """A run's ``metrics.json``.

    Args:
        run_dir: the run folder.
        merge: merge the folds first (also done when ``metrics.json`` is missing).
    Returns:
        The ``metrics.json`` document.
    Raises:
        InputError: not a run folder, or folds unfinished when a merge is needed.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise InputError(f"{run_dir}: not a training run folder (no config.json)")
    if merge or not (run_dir / "metrics.json").is_file():
        return finalize_run(run_dir)
    return read_json(run_dir / "metrics.json")
