"""``gloresnet train``, ``folds``, ``evaluate`` and ``pretrain-age`` (registered by :func:`add_parser`).

Importing this module is cheap (no torch); the handlers import the training code when they run.
Exit codes: 0 done, 2 bad option / bad dataset / bad run folder (one clear message, no traceback),
130 stopped by Ctrl-C or SIGTERM after saving a checkpoint (resume with ``--resume RUN_DIR``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError
from .age_cli import add_parser as add_age_parser
from .config import JOB_FIELDS, TRAIN, TrainConfig
from .options import EPILOG, add_config_options, add_data_options, given_options

__all__ = ["add_parser", "run_evaluate", "run_folds", "run_train"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``, ``folds``, ``evaluate`` and ``pretrain-age``.

    Args:
        subparsers: the ``gloresnet`` parser's subcommands.
    """
    p = subparsers.add_parser(
        "train",
        help="cross-validated training (subject-grouped k-fold) ending in an ensemble bundle",
        epilog=EPILOG,
        description="Train GloResNet with subject-grouped, stratified k-fold cross-validation (defaults: the "
        "GloResNet authors' settings) and write RUN_DIR with config, folds, checkpoints, "
        "metrics.json, oof.csv, plots, a log and bundle/ (the k fold models as one ensemble). "
        "Ctrl-C stops after saving a checkpoint; --resume RUN_DIR continues. Runs under torchrun.",
    )
    add_config_options(p, TRAIN)
    p.set_defaults(func=run_train)

    f = subparsers.add_parser(
        "folds",
        help="write the cross-validation split for inspection",
        epilog=EPILOG,
        description="Subject-grouped, stratified k-fold split (the one `gloresnet train` "
        "uses with the same options), as JSON and a table.",
    )
    add_data_options(f)
    f.add_argument("--out", default=argparse.SUPPRESS, metavar="FOLDS.json", help="write the split here (JSON)")
    f.set_defaults(func=run_folds)

    e = subparsers.add_parser(
        "evaluate",
        help="print a training run's cross-validation metrics",
        epilog=EPILOG,
        description="Reprint RUN_DIR/metrics.json as a table; with --merge (or when "
        "metrics.json is missing) first merge the finished folds "
        "(metrics, oof.csv, plots, bundle).",
    )
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--merge", action="store_true", help="recompute metrics and the bundle from the folds")
    e.add_argument("--json", action="store_true", help="print metrics.json instead of a table")
    e.set_defaults(func=run_evaluate)

    add_age_parser(subparsers)  # `pretrain-age` (brain-age transfer), the same options


def _merge_resume(given: dict) -> dict:
    """With --resume, run options given again must equal the stored ones (only job options may change)."""
    from .runfolder import read_run_config

    run_dir = Path(given["resume"]).expanduser().resolve()
    if not (run_dir / "config.json").is_file():
        raise InputError(f"{run_dir}: not a training run folder (no config.json) - nothing to resume")
    stored = json.loads(json.dumps(read_run_config(run_dir).run_fields()))
    paths = ("manifest", "dhcp", "pretrained", "out")
    diffs = []
    for k, v in given.items():
        if k in JOB_FIELDS:
            continue
        v = str(Path(v).expanduser().resolve()) if k in paths and v else json.loads(json.dumps(v))
        if v != stored.get(k):
            diffs.append(k)
    if diffs:
        raise InputError(
            f"--resume continues {run_dir} with its own options; these differ: {', '.join(diffs)} "
            "(leave them out, or start a new run with --out)"
        )
    return {k: v for k, v in given.items() if k in JOB_FIELDS}


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``gloresnet train``."""
    given = given_options(args, TrainConfig)
    if given.get("resume"):
        given = _merge_resume(given)
    progress_json = bool(given.get("progress_json"))
    cfg = TrainConfig(**given, progress_bar=not progress_json, log_to_stderr=True)
    if cfg.check_only:
        return _check_only(cfg)
    from .run import train_cv
    from .stopping import TrainingStopped

    try:
        run_dir = train_cv(cfg.validate())
    except TrainingStopped as exc:
        print(f"gloresnet: {exc}", file=sys.stderr)
        return 130
    if not progress_json:
        bundle = run_dir / "bundle"
        print(f"run: {run_dir}")
        print(f"bundle: {bundle}" if bundle.is_dir() else "bundle: not yet (other folds unfinished)")
    return 0


def _check_only(cfg) -> int:
    from .run import check_dataset

    if not cfg.manifest and not cfg.dhcp:
        raise InputError("give --manifest CSV or --dhcp ROOT to check")
    report = check_dataset(cfg)
    if cfg.progress_json:
        print(json.dumps({"event": "dataset", "report": report.to_dict()}), flush=True)
    else:
        print(report.format())
    return 2 if report.problems else 0


def run_folds(args: argparse.Namespace) -> int:
    """Handler of ``gloresnet folds``."""
    from .datasets import load_dataset
    from .folds import folds_document, format_folds, make_folds, write_folds

    given = {k: v for k, v in given_options(args, TrainConfig).items() if k != "out"}
    if not given.get("manifest") and not given.get("dhcp"):
        raise InputError("give --manifest CSV or --dhcp ROOT")
    cfg = TrainConfig(**given)
    if cfg.folds < 2 or not 0 < cfg.val_fraction < 0.5:
        raise InputError("--folds must be at least 2 and --val-fraction in (0, 0.5)")
    report = load_dataset(cfg)
    report.raise_if_problems(cfg.skip_bad)
    splits = make_folds(report.labels, report.subjects, cfg.folds, cfg.seed, cfg.protocol, cfg.val_fraction)
    doc = folds_document(report, splits, cfg.seed, cfg.protocol, cfg.val_fraction)
    if getattr(args, "out", None):
        write_folds(args.out, doc)
        print(f"folds written: {args.out}", file=sys.stderr)
    print(format_folds(doc))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``gloresnet evaluate``."""
    from .merge import evaluate_run
    from .metrics import format_table

    doc = evaluate_run(args.run_dir, merge=args.merge)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(format_table(doc))
        print(EPILOG)
    return 0
