"""Cross-validated training of GloResNet models (``gloresnet train``, ``folds``, ``evaluate``).

Python API (imported lazily, so that ``gloresnet --help`` does not import torch)::

    from GloResNetLib.training import TrainConfig, train_cv
    run_dir = train_cv(TrainConfig(manifest="cohort/manifest.csv", out="runs/r1", epochs=20, size=64),
                       progress=print)

Modules: :mod:`.config` (``TrainConfig``), :mod:`.datasets` (CSV manifest and dHCP BIDS reader, dataset
report), :mod:`.cache` (preprocessing cache), :mod:`.folds` (subject-grouped stratified k-fold),
:mod:`.augment` (mixup, flips, small affine), :mod:`.metrics`, :mod:`.trainer` (one fold, DDP-aware),
:mod:`.run` (the run directory: ``train_cv``), :mod:`.merge` (merge/finalise, ``evaluate``), :mod:`.cli`.

Layout by concern::

    options, defined once      config (TrainConfig, AgeConfig, list_options) -> options (argparse, to_argv)
    commands                   cli (train, folds, evaluate) -> age_cli (pretrain-age)
    data                       datasets (manifest, load_dataset) -> dhcp, dataset_report; cache; folds
    one fold                   trainer (FoldTrainer) <- distributed, stopping, checkpoints, amp, recipe,
                               augment, metrics
    one job / run folder       run (train_cv) <- jobframe (run_job), runfolder (files), merge (finalize_run)
    brain-age pretraining      age (pretrain_age) <- age_trainer, age_merge, age_bundle

"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainConfig": "config",
    "train_cv": "run",
    "check_dataset": "run",
    "finalize_run": "merge",
    "evaluate_run": "merge",
    "TrainingStopped": "stopping",
    "load_dataset": "datasets",
    "read_manifest": "datasets",
    "read_dhcp": "datasets",
    "make_folds": "folds",
    "binary_metrics": "metrics",
    "PreprocessCache": "cache",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
