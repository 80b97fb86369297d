"""The ``gloresnet`` command: predict, bundle, synth, train, folds, evaluate, demo.

User errors (bad path, bad file, bad option, bad model) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from . import __version__
from .disclaimer import DISCLAIMER as EPILOG
from .errors import GloResNetError, InputError
from .progress_events import emit

#: Subcommands contributed by other modules: module name -> its ``add_parser(subparsers)`` registers them.
PLUGIN_MODULES = ("synth", "training.cli", "demo", "compare")


def _progress(enabled: bool, **event) -> None:
    """One JSON progress event (:mod:`.progress_events`) per line on stdout, with the ``--json`` records."""
    if enabled:
        emit(event)


def _parse_axes(text: str) -> list[int]:
    try:
        axes = sorted({int(a) for a in text.split(",") if a.strip() != ""})
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of axes 0,1,2") from None
    if any(a not in (0, 1, 2) for a in axes):
        raise argparse.ArgumentTypeError(f"TTA axes must be among 0,1,2 (got '{text}')")
    return axes


def _saliency_arg(text: str) -> str:
    """argparse type of --saliency: a method, both, all or a comma list (checked by the library)."""
    from .inference import saliency_set

    try:
        saliency_set(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def run_predict(args: argparse.Namespace) -> int:
    """``gloresnet predict``: predict each input, write CAM / resampled volumes and a JSON per input."""
    from .bundle import load_bundle
    from .inference import predict_file
    from .io import volume_stem, write_text_atomic, write_volume
    from .occlusion import OcclusionConfig
    from .outputs import OutputSet, check_writable_folder

    inputs = [Path(p) for p in args.inputs]
    stems = [volume_stem(p) for p in inputs]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise InputError(f"several inputs share the output name {dupes[0]!r}; rename them or predict separately")
    for p in inputs:
        if not p.exists():
            raise InputError(f"{p}: file not found")
    out = check_writable_folder(args.out)  # before any computing
    occlusion = OcclusionConfig(mask_size=args.occlusion_mask, overlap=args.occlusion_overlap)
    _progress(args.progress_json, event="stage", stage="loading model", fraction=0.0)
    t0 = time.perf_counter()
    bundle = load_bundle(args.model, device=args.device)
    load_model_s = time.perf_counter() - t0
    if not args.json:
        print(f"Model: {bundle.describe()}", file=sys.stderr)
        if not bundle.is_trained:
            print(
                "WARNING: this bundle's classifier was never trained; its probabilities mean nothing.", file=sys.stderr
            )
    rows, failures = [], 0
    for n, (path, stem) in enumerate(zip(inputs, stems)):
        _progress(
            args.progress_json,
            event="stage",
            stage=f"predicting {path.name}",
            index=n,
            total=len(inputs),
            fraction=n / len(inputs),
        )
        names = {
            "cam": f"{stem}_cam.nii.gz",
            "gradient": f"{stem}_gradient.nii.gz",
            "occlusion": f"{stem}_occlusion.nii.gz",
            "resampled": f"{stem}_resampled.nii.gz",
            "json": f"{stem}.json",
        }
        try:
            result = predict_file(
                bundle,
                path,
                tta=not args.no_tta,
                cam=not args.no_cam,
                tta_axes=args.tta_axes,
                saliency=args.saliency,
                occlusion=occlusion,
                progress=_occlusion_progress(args.progress_json, path, n, len(inputs)),
            )
            t0 = time.perf_counter()
            # one set or nothing: written into a staging folder, renamed into place together (JSON last)
            with OutputSet(out, list(names.values())) as stage:
                files = {}
                if result.cam is not None:
                    write_volume(stage / names["cam"], result.cam, result.input_affine)
                    files["cam"] = str(out / names["cam"])
                if getattr(result, "gradient", None) is not None:
                    write_volume(stage / names["gradient"], result.gradient, result.input_affine)
                    files["gradient"] = str(out / names["gradient"])
                if getattr(result, "occlusion", None) is not None:
                    write_volume(stage / names["occlusion"], result.occlusion, result.input_affine)
                    files["occlusion"] = str(out / names["occlusion"])
                write_volume(stage / names["resampled"], result.resampled, result.resampled_affine)
                files["resampled"] = str(out / names["resampled"])
                result.timings["write"] = time.perf_counter() - t0
                record = {
                    "input": str(path),
                    **result.to_json_dict(),
                    "outputs": files,
                    "model_path": str(bundle.path),
                    "model_provenance": bundle.provenance,
                    "model_load_s": round(load_model_s, 4),
                    "library_version": __version__,
                }
                files["json"] = str(out / names["json"])
                write_text_atomic(stage / names["json"], json.dumps(record, indent=2, allow_nan=False) + "\n")
        except GloResNetError as exc:
            failures += 1
            print(f"error: {exc}", file=sys.stderr)
            _progress(args.progress_json, event="error", input=str(path), message=str(exc))
            continue
        rows.append(record)
        if args.json:
            print(json.dumps(record), flush=True)
    _progress(args.progress_json, event="done", fraction=1.0, failures=failures)
    if not args.json and rows:
        _print_table(rows, bundle)
    return 2 if failures else 0


def _occlusion_progress(enabled: bool, path: Path, index: int, count: int):
    """``progress(done, total)`` for the occluded copies of input ``index`` of ``count``: a JSON event each
    ~5% (None when events are off)."""
    if not enabled:
        return None
    last = [-1.0]

    def progress(done: int, total: int) -> None:
        part = done / max(total, 1)
        if part - last[0] >= 0.05 or done == total:
            last[0] = part
            _progress(
                True,
                event="stage",
                stage=f"occlusion {path.name}",
                index=index,
                total=count,
                done=done,
                copies=total,
                fraction=round((index + part) / count, 4),
            )

    return progress


def _bounded(convert, ok, rule: str):
    """argparse ``type``: ``convert(text)`` (int or float) that must satisfy ``ok``, else a one-line error."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number of type {convert.__name__}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule} (got {text})")
        return value

    return parse


def _print_table(rows: list[dict], bundle) -> None:
    if bundle.task != "classification":  # brain age: estimated weeks, no probability or label
        from .age_inference import age_table

        print("\n".join([*age_table(rows, bundle), EPILOG]))
        return
    width = max(12, *(len(Path(r["input"]).name) for r in rows))
    print(f"{'input':<{width}}  {'P(BI)':>6}  {'label':<6}  {'spread':>6}  {'time s':>6}")
    for r in rows:
        total = sum(r["timings_s"].values())
        print(
            f"{Path(r['input']).name:<{width}}  {r['probability']:>6.3f}  {r['label_name']:<6}  "
            f"{r['spread']:>6.3f}  {total:>6.2f}"
        )
    print(
        f"threshold {bundle.threshold:g}; model {bundle.name}; trained on: "
        f"{bundle.training_data.get('description', 'unknown')}"
    )
    if bundle.is_synthetic:
        print("NOTE: this model was trained on SYNTHETIC data - demonstration only.")
    print(EPILOG)


def run_bundle_create(args: argparse.Namespace) -> int:
    """``gloresnet bundle create``: wrap MedicalNet or externally trained weights as a bundle."""
    from .bundle import UNTRAINED, check_state, default_metadata, save_bundle
    from .models import build_model, load_medicalnet_weights, load_state_dict_file
    from .models.weights import load_pretrained
    from .preprocessing import PreprocessConfig

    if args.pretrained and args.weights:
        raise InputError("give either --pretrained or --weights, not both")
    cfg = PreprocessConfig(size=(args.size,) * 3, antialias=args.antialias, normalization=args.normalization)
    model = build_model(args.arch)
    if args.weights:
        state = load_state_dict_file(args.weights)
        check_state(model, state, args.weights)  # floating, finite, BatchNorm variances >= 0
        report = load_pretrained(model, state, source=args.weights, drop_heads=False)
        if report.missing:
            raise InputError(
                f"{args.weights}: lacks {len(report.missing)} tensors of '{args.arch}' (first: {report.missing[0]})"
            )
        provenance = f"weights from {Path(args.weights).name}, trained elsewhere"
        training = {
            "description": args.training_data or "unknown (not recorded)",
            "synthetic": args.synthetic,
            "trained": True,
        }
    elif args.pretrained:
        report = load_medicalnet_weights(model, args.pretrained)
        provenance = (
            f"MedicalNet backbone from {Path(args.pretrained).name} ({report.summary()}); "
            "classifier head randomly initialised, not trained for brain injury"
        )
        training = dict(UNTRAINED)
    else:
        provenance = "random initialisation; not trained"
        training = dict(UNTRAINED)
    name = args.name or Path(args.out).name
    meta = default_metadata(
        name, arch=args.arch, preprocess=cfg, training_data=training, provenance=provenance, threshold=args.threshold
    )
    path = save_bundle(args.out, [model.state_dict()], meta)
    print(f"bundle written: {path} ({provenance})")
    return 0


def run_bundle_info(args: argparse.Namespace) -> int:
    """``gloresnet bundle info``: print a bundle's metadata after verifying its checksums."""
    from .bundle import load_bundle

    bundle = load_bundle(args.bundle, device="cpu")
    if args.json:
        print(json.dumps(bundle.metadata, indent=2))
        return 0
    meta = bundle.metadata
    print(bundle.describe())
    print(f"  task: {bundle.task}")
    for key in (
        "arch",
        "arch_params",
        "preprocess",
        "threshold",
        "tta_axes",
        "class_names",
        "target",
        "provenance",
        "library_version",
        "created",
    ):
        if key in meta:
            print(f"  {key}: {meta.get(key)}")
    if meta.get("cv_metrics"):
        print(f"  cv_metrics: {json.dumps(meta['cv_metrics'])}")
    print(f"  weights: {len(meta['weights'])} file(s), SHA-256 verified")
    print(EPILOG)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to document every command in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="gloresnet",
        epilog=EPILOG,
        description="GloResNet: preterm brain-injury prediction from T2-weighted MRI (3D ResNet-10, "
        "whole-volume 128^3 'global manifold mapping', TTA, Grad-CAM).",
    )
    parser.add_argument("--version", action="version", version=f"gloresnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "predict",
        help="predict brain injury (or brain age) for one or more volumes",
        epilog=EPILOG,
        description="Writes NAME_cam.nii.gz (Grad-CAM on the input grid), "
        "NAME_gradient.nii.gz (gradient saliency) and/or NAME_occlusion.nii.gz "
        "(occlusion sensitivity: drop of P(BI) when each region "
        "is hidden, on the input grid), NAME_resampled.nii.gz (128^3 network input) and "
        "NAME.json (with each map's peak, RAS mm) per input, as one set or not at all "
        "(a failure keeps the previous set). NaN or infinite results are refused "
        "(exit 2). A brain-age bundle (pretrain-age's OUT/bundle) reports age_weeks, "
        "the estimated post-menstrual age at scan, instead of P(BI) and a label; its "
        "saliency is the Grad-CAM of the predicted age.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="T2w volume(s): .nii, .nii.gz, .nrrd, .nhdr")
    p.add_argument("--model", required=True, metavar="BUNDLE", help="model bundle folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda (default auto)")
    p.add_argument("--no-tta", action="store_true", help="no test-time augmentation (identity view only)")
    p.add_argument(
        "--tta-axes",
        type=_parse_axes,
        default=None,
        metavar="AXES",
        help="flip axes for TTA, e.g. 0 (left-right, the bundle default) or 0,1,2 (all 8 views)",
    )
    p.add_argument("--no-cam", action="store_true", help="skip the saliency map(s)")
    p.add_argument(
        "--saliency",
        type=_saliency_arg,
        default="gradcam",
        metavar="METHOD",
        help="saliency method(s): gradcam (default, from the prediction pass), gradient (smoothed "
        "input-gradient magnitude, one backward pass per model: NAME_gradient.nii.gz), occlusion "
        "(hides each region and records the drop of P(BI); thousands of network passes, a minute "
        "or more per model on a 2-core CPU), both (gradcam and occlusion), all, or a comma list",
    )
    p.add_argument(
        "--occlusion-mask",
        type=_bounded(int, lambda v: v >= 1, ">= 1"),
        default=None,
        metavar="VOXELS",
        help="occlusion box edge in network voxels (default 1/8 of the grid: 8 at 64^3, 16 at 128^3, "
        "about 16 mm on a neonatal head)",
    )
    p.add_argument(
        "--occlusion-overlap",
        type=_bounded(float, lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
        default=0.5,
        metavar="F",
        help="overlap of neighbouring occlusion boxes, 0 <= F < 1 (default 0.5: step = half a box)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per input instead of a table")
    p.add_argument(
        "--progress-json",
        action="store_true",
        help="JSON progress events on stdout, one per line (with the --json records)",
    )
    p.set_defaults(func=run_predict)

    b = sub.add_parser("bundle", help="create or inspect model bundles")
    bsub = b.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    bc = bsub.add_parser("create", help="wrap MedicalNet or trained weights as a bundle", epilog=EPILOG)
    bc.add_argument("--arch", default="resnet10", help="architecture (default resnet10)")
    bc.add_argument("--pretrained", metavar="MEDICALNET.pth", help="MedicalNet resnet_10*.pth backbone weights")
    bc.add_argument("--weights", metavar="STATE_DICT", help="a complete trained state dict (.pt/.pth/.safetensors)")
    bc.add_argument("--out", required=True, metavar="DIR", help="bundle folder to create")
    bc.add_argument("--name", help="bundle name (default: folder name)")
    bc.add_argument("--size", type=int, default=128, help="network input size per axis (default 128)")
    bc.add_argument("--antialias", action="store_true", help="Gaussian anti-aliasing before shrinking")
    bc.add_argument(
        "--normalization",
        default="zscore",
        choices=["zscore", "zscore_foreground"],
        help="z-score over the whole volume (paper) or over the Otsu foreground",
    )
    bc.add_argument("--threshold", type=float, default=0.5, help="decision threshold on P(BI) (default 0.5)")
    bc.add_argument("--training-data", help="with --weights: description of the data that trained them")
    bc.add_argument("--synthetic", action="store_true", help="with --weights: they were trained on synthetic data")
    bc.set_defaults(func=run_bundle_create)
    bi = bsub.add_parser("info", help="print a bundle's metadata (checksums verified)")
    bi.add_argument("bundle", metavar="DIR")
    bi.add_argument("--json", action="store_true", help="print the raw metadata JSON")
    bi.set_defaults(func=run_bundle_info)

    for name in PLUGIN_MODULES:
        try:
            module = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(__package__):
                continue
            raise
        module.add_parser(sub)
    return parser


def accept_stop_signals() -> None:
    """Make Ctrl-C / SIGINT reach this process even if its parent ignored or blocked it (both are inherited
    across exec, e.g. from a GUI host); the GUI's Stop button sends SIGINT for a clean stop."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gloresnet`` console script; returns the exit code."""
    if argv is None:  # run as a program (not called from Python code)
        accept_stop_signals()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at interpreter exit
        return code
    except GloResNetError as exc:
        print(f"gloresnet: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _stdout_closed()
    except OSError as exc:  # the file system refused: read-only, disk full, a file where a folder should be...
        print(f"gloresnet: error: {_os_error_line(exc)}", file=sys.stderr)
        try:
            sys.stdout.flush()
        except OSError:  # standard output itself cannot be written (e.g. redirected to a full disk)
            _stdout_closed()
        return 2
    except KeyboardInterrupt:
        print("gloresnet: interrupted", file=sys.stderr)
        return 130


def _os_error_line(exc: OSError) -> str:
    """One line for an OSError: the file(s) it names and the system's reason."""
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    reason = exc.strerror or str(exc)
    return f"{' -> '.join(names)}: {reason}" if names else f"{reason}"


def _stdout_closed() -> int:
    """The reader of our output went away (``gloresnet ... | head``): stop quietly, as ``cat`` does. Standard
    output is pointed at /dev/null so that Python's final flush cannot raise again (also used when standard
    output cannot be written at all); exit status 141 is what a shell reports for a program ended by SIGPIPE."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141


if __name__ == "__main__":
    sys.exit(main())
