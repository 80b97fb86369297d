"""``gloresnet pretrain-age``: brain-age pretraining (registered by :func:`add_parser` from ``training.cli``).

Its options are those of :class:`~GloResNetLib.training.config.AgeConfig` (the training options it shares with
``gloresnet train``, plus ``--loss`` and ``--final``).

Importing this module is cheap (no torch). Exit codes as ``gloresnet train``: 0 done, 2 bad option / dataset
(one line), 130 stopped by Ctrl-C or SIGTERM after saving a checkpoint (run the same command to continue).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from .config import AGE, AgeConfig
from .options import EPILOG, add_config_options, given_options

__all__ = ["add_parser", "run_pretrain_age"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``pretrain-age``.

    Args:
        subparsers: the ``gloresnet`` parser's subcommands.
    """
    p = subparsers.add_parser(
        "pretrain-age",
        help="pretrain a backbone on brain-age regression (age_weeks), for train --pretrained",
        epilog=EPILOG,
        description="Brain-age transfer (after AGE2HIE, arXiv 2411.05188): train the backbone to regress age "
        "at scan (manifest column age_weeks, dHCP scan_age) with the preprocessing and the subject-grouped "
        "k-fold CV of `gloresnet train` (test MAE in weeks per fold and of the mean-age baseline), then train "
        "a final model on all data and write OUT/age_backbone.safetensors (backbone tensors + metadata) for "
        "`gloresnet train --pretrained OUT/age_backbone.safetensors` with the same --arch. Targets are "
        "standardised ages; loss smooth L1; checkpoints chosen on validation MAE. Ctrl-C stops after saving a "
        "checkpoint; the same command continues. Also writes OUT/bundle: the fold models as a brain-age model "
        "bundle (task age_regression) for `gloresnet predict --model OUT/bundle`, which reports age_weeks.",
    )
    add_config_options(p, AGE)
    p.set_defaults(func=run_pretrain_age)


def run_pretrain_age(args: argparse.Namespace) -> int:
    """Handler of ``gloresnet pretrain-age``."""
    given = given_options(args, AgeConfig)
    if not given.get("manifest") and not given.get("dhcp"):
        raise InputError("give --manifest CSV (with an age_weeks column) or --dhcp ROOT")
    progress_json = bool(given.get("progress_json"))
    cfg = AgeConfig(**given, progress_bar=not progress_json, log_to_stderr=True)
    from .age import BUNDLE_DIR, WEIGHTS_FILE, pretrain_age
    from .stopping import TrainingStopped

    try:
        out = pretrain_age(cfg)
    except TrainingStopped as exc:
        print(f"gloresnet: {exc}", file=sys.stderr)
        return 130
    if not progress_json:
        print(f"run: {out}")
        print(f"weights: {out / WEIGHTS_FILE}")
        print(f"bundle: {out / BUNDLE_DIR} (gloresnet predict --model)")
    return 0
