"""``gloresnet pretrain-age``: brain-age pretraining (registered by :func:`add_parser` from ``training.cli``).

Importing this module is cheap (no torch). Exit codes as ``gloresnet train``: 0 done, 2 bad option / dataset
(one line), 130 stopped by Ctrl-C or SIGTERM after saving a checkpoint (run the same command to continue).
"""

from __future__ import annotations

import argparse
import sys

from .cli import EPILOG, S, _add_data_options, _given, _json_dict, _widths


def add_parser(subparsers) -> None:
    """Register ``pretrain-age``."""
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
    _add_data_options(p)
    p.add_argument("--out", default=S, required=True, metavar="DIR", help="output folder to create")
    p.add_argument("--arch", default=S, help="architecture (default resnet10)")
    p.add_argument(
        "--widths",
        type=_widths,
        default=S,
        metavar="W1,W2,W3,W4",
        help="stage widths (default: the architecture's; MedicalNet weights need the ResNet default)",
    )
    p.add_argument("--arch-params", type=_json_dict, default=S, metavar="JSON", help="extra architecture parameters")
    p.add_argument(
        "--pretrained",
        default=S,
        metavar="MEDICALNET.pth",
        help="start from these backbone weights (e.g. MedicalNet resnet_10*.pth)",
    )
    p.add_argument("--size", type=int, default=S, help="network input size per axis (default 128)")
    p.add_argument("--normalization", default=S, choices=["zscore", "zscore_foreground"], help="(zscore)")
    p.add_argument("--antialias", action="store_true", default=S, help="Gaussian anti-aliasing before shrinking")
    p.add_argument("--epochs", type=int, default=S, help="epochs per fold and for the final model (default 150)")
    p.add_argument("--batch-size", type=int, default=S, help="optimizer batch size (default 32)")
    p.add_argument("--grad-accum", type=int, default=S, metavar="N", help="micro-batches per batch (default 1)")
    p.add_argument("--lr", type=float, default=S, help="AdamW learning rate (default 2e-3)")
    p.add_argument("--weight-decay", type=float, default=S, help="AdamW weight decay (default 0.01)")
    p.add_argument("--warmup-epochs", type=int, default=S, help="linear warm-up epochs before the cosine (0)")
    p.add_argument("--patience", type=int, default=S, metavar="EPOCHS", help="early stopping of the folds (off)")
    p.add_argument(
        "--loss",
        default="smooth_l1",
        choices=["smooth_l1", "l1"],
        help="loss on the standardised age: smooth L1 (Huber, beta 1 SD; default) or L1",
    )
    p.add_argument(
        "--final",
        default="all",
        choices=["all", "best-fold"],
        help="exported weights: all = a final model trained on all data, last epoch (default); best-fold = "
        "the fold model with the lowest inner-validation MAE (no extra training)",
    )
    p.add_argument(
        "--mixup-alpha",
        type=float,
        default=S,
        help="mixup Beta(alpha, alpha) with linearly mixed ages (default 0 = off)",
    )
    p.add_argument("--flip-prob", type=float, default=S, help="random left-right flip probability (0.5)")
    p.add_argument("--affine-degrees", type=float, default=S, help="random rotation up to +/- degrees (0)")
    p.add_argument("--affine-scale", type=float, default=S, help="random zoom up to +/- this fraction (0)")
    p.add_argument(
        "--no-tta", dest="tta", action="store_false", default=S, help="evaluate without the left-right flip TTA"
    )
    p.add_argument(
        "--synthetic",
        action="store_true",
        default=S,
        help="mark the data as synthetic (automatic for `gloresnet synth` folders)",
    )
    p.add_argument("--device", default=S, help="auto (CUDA if available), cpu or cuda (default auto)")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=S, help="no mixed precision on CUDA")
    p.add_argument("--cache-dir", default=S, metavar="DIR", help="preprocessing cache (as for train)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=S, help="no TensorBoard files")
    p.add_argument("--num-threads", type=int, default=S, help="CPU threads for torch (default: torch's choice)")
    p.add_argument(
        "--progress-json",
        action="store_true",
        default=S,
        help="one JSON progress event per line on stdout (human log on stderr)",
    )
    p.set_defaults(func=run_pretrain_age)


def run_pretrain_age(args: argparse.Namespace) -> int:
    """Handler of ``gloresnet pretrain-age``."""
    from ..errors import InputError
    from .config import TrainConfig

    given = _given(args)
    given.setdefault("mixup_alpha", 0.0)
    if not given.get("manifest") and not given.get("dhcp"):
        raise InputError("give --manifest CSV (with an age_weeks column) or --dhcp ROOT")
    progress_json = bool(given.get("progress_json"))
    cfg = TrainConfig(**given, progress_bar=not progress_json, log_to_stderr=True)
    from .age import BUNDLE_DIR, WEIGHTS_FILE, pretrain_age
    from .trainer import TrainingStopped

    try:
        out = pretrain_age(cfg, loss=args.loss, final=args.final)
    except TrainingStopped as exc:
        print(f"gloresnet: {exc}", file=sys.stderr)
        return 130
    if not progress_json:
        print(f"run: {out}")
        print(f"weights: {out / WEIGHTS_FILE}")
        print(f"bundle: {out / BUNDLE_DIR} (gloresnet predict --model)")
    return 0
