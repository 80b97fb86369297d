"""``gloresnet train``, ``folds``, ``evaluate`` and ``pretrain-age`` (registered by :func:`add_parser`).

Importing this module is cheap (no torch); the handlers import the training code when they run.
Exit codes: 0 done, 2 bad option / bad dataset / bad run folder (one clear message, no traceback),
130 stopped by Ctrl-C or SIGTERM after saving a checkpoint (resume with ``--resume RUN_DIR``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..errors import InputError

EPILOG = "Research use only. Not a medical device; not for clinical decisions."
S = argparse.SUPPRESS


def _widths(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--widths needs 4 positive integers (got '{text}')")
    return values


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"dropout\": 0.2}'")
    return value


def _add_data_options(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--manifest",
        default=S,
        metavar="CSV",
        help="CSV with path,label[,subject,session,age_weeks,site]; label 0 = no BI, 1 = BI",
    )
    src.add_argument(
        "--dhcp",
        default=S,
        metavar="ROOT",
        help="dHCP BIDS folder (participants.tsv, sub-*/sub-*_sessions.tsv, sub-*/ses-*/anat/)",
    )
    p.add_argument(
        "--dhcp-label-rule",
        default=S,
        choices=["ge3", "3or5"],
        help="radiology score -> label: ge3 = 1-2 no BI, 3-5 BI (GloResNet authors, default); "
        "3or5 = 3 or 5 BI, 4 (non-brain finding) excluded. 'Q' sessions are always excluded",
    )
    p.add_argument(
        "--dhcp-all-ages",
        dest="dhcp_preterm_only",
        action="store_false",
        default=S,
        help="keep term-born infants too (default: preterm only, birth_age < --dhcp-max-birth-age)",
    )
    p.add_argument(
        "--dhcp-max-birth-age",
        type=float,
        default=S,
        metavar="WEEKS",
        help="preterm filter: gestational age at birth below this (default 37)",
    )
    p.add_argument(
        "--dhcp-sessions",
        default=S,
        choices=["all", "first", "last"],
        help="which sessions of each infant to use (default all; folds are grouped by infant)",
    )
    p.add_argument(
        "--max-volumes",
        type=int,
        default=S,
        metavar="N",
        help="use a seeded, class-balanced subset of about N volumes (whole subjects)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        default=S,
        help="leave out rows with problems instead of refusing to train",
    )
    p.add_argument("--folds", type=int, default=S, help="number of cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=S, help="seed of the split and the training (default 42)")
    p.add_argument(
        "--protocol",
        default=S,
        choices=["honest", "paper"],
        help="honest (default): checkpoint chosen on a grouped validation split inside the training "
        "fold; paper: chosen on the test fold, as the authors' code (OPTIMISTIC figures)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=S,
        help="share of a training fold's subjects held out for validation (default 0.2)",
    )


def add_parser(subparsers) -> None:
    """Register ``train``, ``folds`` and ``evaluate``."""
    p = subparsers.add_parser(
        "train",
        help="cross-validated training (subject-grouped k-fold) ending in an ensemble bundle",
        epilog=EPILOG,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train GloResNet with subject-grouped, stratified k-fold cross-validation (defaults: the "
        "GloResNet authors' settings) and write RUN_DIR with config, folds, checkpoints, "
        "metrics.json, oof.csv, plots, a log and bundle/ (the k fold models as one ensemble). "
        "Ctrl-C stops after saving a checkpoint; --resume RUN_DIR continues. Runs under torchrun.",
    )
    _add_data_options(p)
    p.add_argument("--out", default=S, metavar="RUN_DIR", help="run folder to create")
    p.add_argument(
        "--resume",
        default=S,
        metavar="RUN_DIR",
        help="continue a stopped or killed run (finished folds are kept), or merge a finished one; refused "
        "(exit 2, holder named) while another job holds RUN_DIR",
    )
    p.add_argument(
        "--fold",
        type=int,
        default=S,
        metavar="K",
        help="train only fold K (0-based) in RUN_DIR; run the others as separate jobs",
    )
    p.add_argument("--epochs", type=int, default=S, help="epochs per fold (default 150)")
    p.add_argument("--batch-size", type=int, default=S, help="optimizer batch size (default 32)")
    p.add_argument(
        "--grad-accum",
        type=int,
        default=S,
        metavar="N",
        help="split each batch into N micro-batches (less memory, same batch; default 1)",
    )
    p.add_argument("--lr", type=float, default=S, help="AdamW learning rate (default 2e-3)")
    p.add_argument("--weight-decay", type=float, default=S, help="AdamW weight decay (default 0.01)")
    p.add_argument("--warmup-epochs", type=int, default=S, help="linear warm-up epochs before the cosine (0)")
    p.add_argument(
        "--patience",
        type=int,
        default=S,
        metavar="EPOCHS",
        help="early stopping after this many epochs without a better validation score (off)",
    )
    p.add_argument(
        "--select-metric",
        default=S,
        choices=["auto", "loss", "auc", "accuracy", "balanced_accuracy"],
        help="checkpoint choice (auto: validation loss; accuracy under --protocol paper)",
    )
    p.add_argument(
        "--mixup-alpha", type=float, default=S, help="mixup Beta(alpha, alpha), 0 = off (default 1.0)"
    )
    p.add_argument(
        "--no-class-weights",
        dest="class_weights",
        action="store_false",
        default=S,
        help="unweighted cross-entropy (default: class weights N / (2 N_c) of the training fold)",
    )
    p.add_argument("--flip-prob", type=float, default=S, help="random left-right flip probability (0.5)")
    p.add_argument(
        "--affine-degrees", type=float, default=S, help="random rotation up to +/- degrees (0 = off)"
    )
    p.add_argument(
        "--affine-scale", type=float, default=S, help="random zoom up to +/- this fraction (0 = off)"
    )
    p.add_argument(
        "--pretrained",
        default=S,
        metavar="WEIGHTS",
        help="backbone weights, classifier keys dropped: MedicalNet resnet_10*.pth (resnet10/18), a torchvision "
        "2D resnet18 state dict (acs_resnet18, slice_resnet18) or pretrain-age's age_backbone.safetensors",
    )
    p.add_argument("--arch", default=S, help="architecture (default resnet10; also resnet10_dilated, resnet18, "
                   "mrf_dsnet, acs_resnet18, slice_resnet18)")
    p.add_argument(
        "--widths",
        type=_widths,
        default=S,
        metavar="W1,W2,W3,W4",
        help="ResNet stage widths (default 64,128,256,512; MedicalNet weights need the default)",
    )
    p.add_argument(
        "--arch-params", type=_json_dict, default=S, metavar="JSON", help="extra architecture parameters"
    )
    p.add_argument("--size", type=int, default=S, help="network input size per axis (default 128)")
    p.add_argument(
        "--normalization",
        default=S,
        choices=["zscore", "zscore_foreground"],
        help="z-score over the whole volume (paper, default) or the Otsu foreground",
    )
    p.add_argument(
        "--antialias", action="store_true", default=S, help="Gaussian anti-aliasing before shrinking"
    )
    p.add_argument(
        "--no-tta",
        dest="tta",
        action="store_false",
        default=S,
        help="evaluate without the left-right flip test-time augmentation",
    )
    p.add_argument("--threshold", type=float, default=S, help="decision threshold on P(BI) (default 0.5)")
    p.add_argument("--name", default=S, help="bundle name (default: the run folder's name)")
    p.add_argument(
        "--synthetic",
        action="store_true",
        default=S,
        help="mark the training data as synthetic in the bundle (automatic when the data folder "
        "has a cohort.json from `gloresnet synth`)",
    )
    p.add_argument("--device", default=S, help="auto (CUDA if available), cpu or cuda (default auto)")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=S, help="no mixed precision on CUDA")
    p.add_argument(
        "--cache-dir",
        default=S,
        metavar="DIR",
        help="preprocessing cache (default $GLORESNET_CACHE or ~/.cache/gloresnet/preprocessed)",
    )
    p.add_argument(
        "--no-tensorboard",
        dest="tensorboard",
        action="store_false",
        default=S,
        help="do not write TensorBoard event files",
    )
    p.add_argument(
        "--num-threads",
        type=int,
        default=S,
        help="CPU threads for torch (default: torch's choice); stored with the run, --resume reuses it",
    )
    p.add_argument(
        "--check-only",
        action="store_true",
        default=S,
        help="read and decode the dataset, print its report and exit (2 if it has problems)",
    )
    p.add_argument(
        "--progress-json",
        action="store_true",
        default=S,
        help="one JSON progress event per line on stdout (human log on stderr)",
    )
    p.set_defaults(func=run_train)

    f = subparsers.add_parser(
        "folds",
        help="write the cross-validation split for inspection",
        epilog=EPILOG,
        description="Subject-grouped, stratified k-fold split (the one `gloresnet train` "
        "uses with the same options), as JSON and a table.",
    )
    _add_data_options(f)
    f.add_argument("--out", default=S, metavar="FOLDS.json", help="write the split here (JSON)")
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

    from .age_cli import add_parser as add_age_parser  # `pretrain-age` (brain-age transfer), same options

    add_age_parser(subparsers)


def _given(args: argparse.Namespace) -> dict:
    from .config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    params = dict(given.pop("arch_params", {}) or {})
    if "widths" in vars(args):
        params["widths"] = args.widths
    if params:
        given["arch_params"] = params
    return given


def _merge_resume(given: dict) -> dict:
    """With --resume, run options given again must equal the stored ones (only job options may change)."""
    from .config import JOB_FIELDS
    from .run import read_run_config

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
    from .config import TrainConfig

    given = _given(args)
    if given.get("resume"):
        given = _merge_resume(given)
    progress_json = bool(given.get("progress_json"))
    cfg = TrainConfig(**given, progress_bar=not progress_json, log_to_stderr=True)
    if cfg.check_only:
        return _check_only(cfg)
    from .run import train_cv
    from .trainer import TrainingStopped

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
    from .config import TrainConfig
    from .datasets import load_dataset
    from .folds import folds_document, format_folds, make_folds, write_folds

    given = {k: v for k, v in _given(args).items() if k != "out"}
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
    from .metrics import format_table
    from .run import evaluate_run

    doc = evaluate_run(args.run_dir, merge=args.merge)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(format_table(doc))
        print(EPILOG)
    return 0
