"""``gloresnet compare RUN_DIR...``: one table comparing finished cross-validated training runs.

Per run: architecture (and pretraining source), parameters, forward GFLOPs at the run's input size,
cross-validation accuracy / sensitivity / specificity / ROC AUC (mean +/- sd over folds, from
``metrics.json``) and the CPU time of one ``inference.predict`` of the run's bundle (TTA and Grad-CAM on,
the bundle's own preprocessing). Printed as an aligned table; ``--out`` also writes CSV, Markdown or JSON.

Conventions: FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one (1, C, S, S, S) input
of one fold model: convolutions and matrix products only (BatchNorm, activations and pooling are not
counted), a multiply-add counts as 2 FLOPs, GFLOPs = 1e9 FLOPs. Parameters are the trainable parameters of
one fold model (the bundle runs all k of them). The predict time is the median over ``--repeats`` runs after
one warm-up run, for the whole bundle (k models x TTA views) on the CPU.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compare_cost import count_flops, predict_volume, time_predict
from .disclaimer import DISCLAIMER
from .errors import GloResNetError, InputError

#: (metrics.json name, column title) of the metrics the table shows.
METRICS = (("accuracy", "accuracy"), ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("auc", "AUC"))
OUT_SUFFIXES = (".csv", ".md", ".json")
FLOP_CONVENTION = (
    "FLOPs counted by torch.utils.flop_counter.FlopCounterMode for one forward pass of one "
    "fold model on a (1, 1, S, S, S) input: convolutions and matrix products only, a "
    "multiply-add counts as 2 FLOPs; GFLOPs = 1e9 FLOPs"
)
SYNTHETIC_NOTE = "synthetic: trained on SYNTHETIC data (demonstration only, not clinical evidence)"
OPTIMISTIC_NOTE = "paper*: paper protocol, each fold's epoch chosen on its own test data (optimistic figures)"


@dataclass
class RunInfo:
    """What the table says about one run (``flops`` and ``predict_s`` are filled in later)."""

    path: Path
    name: str
    arch: str
    arch_params: dict[str, Any]
    pretrained: str | None
    input_size: list[int]
    folds: int
    protocol: str
    optimistic: bool
    n: int | None
    synthetic: bool
    training_data: str
    metrics: dict[str, dict[str, float | None]]
    parameters: int = 0
    flops: float | None = None
    predict_s: float | None = None
    predict_repeats_s: list[float] = field(default_factory=list)
    n_models: int = 1
    tta_views: int = 1
    pretraining: dict[str, Any] | None = None
    bundle: Any = field(default=None, repr=False)

    @property
    def gflops(self) -> float | None:
        return None if self.flops is None else self.flops / 1e9

    def arch_label(self) -> str:
        """``arch`` plus its non-default parameters, e.g. ``resnet10 (widths=8,16,32,64)``."""
        if not self.arch_params:
            return self.arch
        parts = [
            f"{k}={','.join(str(x) for x in v) if isinstance(v, list) else v}"
            for k, v in sorted(self.arch_params.items())
        ]
        return f"{self.arch} ({'; '.join(parts)})"

    def cv_label(self) -> str:
        return f"{self.folds}-fold {'paper*' if self.optimistic else self.protocol}"

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.name,
            "path": str(self.path),
            "arch": self.arch,
            "arch_params": self.arch_params,
            "pretrained": self.pretrained,
            "parameters": self.parameters,
            "flops": self.flops,
            "gflops": self.gflops,
            "input_size": self.input_size,
            "folds": self.folds,
            "protocol": self.protocol,
            "optimistic": self.optimistic,
            "n": self.n,
            "synthetic": self.synthetic,
            "training_data": self.training_data,
            "metrics": self.metrics,
            "predict_s": self.predict_s,
            "predict_repeats_s": self.predict_repeats_s,
            "n_models": self.n_models,
            "tta_views": self.tta_views,
            "pretraining": self.pretraining,
        }


def _read_json(path: Path, run_dir: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{run_dir}: cannot read {path.name} ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{run_dir}: {path.name} is not a JSON object")
    return doc


def read_run(run_dir: str | Path) -> RunInfo:
    """Read a finished training run (config.json, metrics.json, bundle/); raises :class:`InputError` with a
    one-line message naming the folder when it is not a run folder or is unfinished."""
    from .bundle import load_bundle
    from .models import count_parameters

    d = Path(run_dir)
    if not d.exists():
        raise InputError(f"{d}: not found")
    if not d.is_dir() or not (d / "config.json").is_file():
        raise InputError(f"{d}: not a training run folder (no config.json)")
    if not (d / "metrics.json").is_file() or not (d / "bundle" / "metadata.json").is_file():
        raise InputError(
            f"{d}: unfinished training run (no metrics.json or bundle/; finish it with `gloresnet train --resume {d}`)"
        )
    cfg = _read_json(d / "config.json", d)
    metrics = _read_json(d / "metrics.json", d)
    try:
        bundle = load_bundle(d / "bundle", device="cpu")
    except GloResNetError as exc:
        raise InputError(f"{d}: bundle/ cannot be loaded ({exc})") from None
    meta = bundle.metadata
    summary = metrics.get("summary")
    if not isinstance(summary, dict):
        raise InputError(f"{d}: metrics.json has no 'summary' (not written by gloresnet train?)")
    values = {}
    for key, _ in METRICS:
        s = summary.get(key) or {}
        values[key] = {"mean": s.get("mean"), "sd": s.get("sd")}
    td = bundle.training_data
    size = meta.get("preprocess", {}).get("size", cfg.get("size"))
    size = [int(v) for v in size] if isinstance(size, list) else [int(size)] * 3
    return RunInfo(
        path=d,
        name=bundle.name,
        arch=str(meta["arch"]),
        arch_params=dict(meta.get("arch_params") or {}),
        pretrained=_pretraining_source(cfg, meta),
        input_size=size,
        folds=int(metrics.get("k", cfg.get("folds", len(bundle.models)))),
        protocol=str(metrics.get("protocol", cfg.get("protocol", "?"))),
        optimistic=bool(metrics.get("optimistic", False)),
        n=metrics.get("n"),
        synthetic=bundle.is_synthetic,
        training_data=str(td.get("description", "")),
        metrics=values,
        parameters=count_parameters(bundle.models[0]),
        n_models=len(bundle.models),
        tta_views=2 ** len(bundle.tta_axes),
        bundle=bundle,
        pretraining=meta.get("pretrained") if isinstance(meta.get("pretrained"), dict) else None,
    )


def _pretraining_source(cfg: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """What the run started from: the bundle's ``pretrained`` record of GloResNet's own pretraining (e.g.
    ``gloresnet pretrain-age``: file name and task), else the file name of config.json's ``pretrained``."""
    own = meta.get("pretrained")
    if isinstance(own, dict) and (own.get("file") or own.get("task")):
        task = str(own.get("task") or "").split(" (")[0]
        name = str(own.get("file") or (Path(str(cfg["pretrained"])).name if cfg.get("pretrained") else ""))
        return f"{name} ({task})" if name and task else (name or task)
    if cfg.get("pretrained"):
        return Path(str(cfg["pretrained"])).name
    return None


# ------------------------------------------------------------------------------------------- formatting


def _num(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _mean_sd(m: dict[str, float | None]) -> str:
    if m.get("mean") is None:
        return "n/a"
    return f"{_num(m['mean'])} ± {_num(m.get('sd'))}"


def _gflops(gf: float | None) -> str:
    """GFLOPs with 3 significant digits at most (tiny test networks too), never in exponent notation."""
    if gf is None:
        return "n/a"
    if gf >= 10:
        return f"{gf:.1f}"
    if gf >= 0.01:
        return f"{gf:.3f}".rstrip("0").rstrip(".") if gf < 1 else f"{gf:.2f}"
    return f"{gf:.6f}".rstrip("0").rstrip(".") or "0"


COLUMNS = (
    "run",
    "architecture",
    "pretrained",
    "params",
    "GFLOPs",
    "input",
    "CV",
    *(title for _, title in METRICS),
    "predict s",
    "data",
)


def table_rows(runs: list[RunInfo]) -> list[list[str]]:
    """Display strings of every run, in :data:`COLUMNS` order."""
    rows = []
    for r in runs:
        gf = r.gflops
        rows.append(
            [
                r.name,
                r.arch_label(),
                r.pretrained or "-",
                f"{r.parameters:,}",
                _gflops(gf),
                "x".join(str(s) for s in r.input_size),
                r.cv_label(),
                *(_mean_sd(r.metrics[key]) for key, _ in METRICS),
                "-" if r.predict_s is None else f"{r.predict_s:.2f}",
                "synthetic" if r.synthetic else "-",
            ]
        )
    return rows


def footnotes(runs: list[RunInfo], timing: dict[str, Any] | None) -> list[str]:
    """Lines explaining the table's conventions (and synthetic / optimistic marks when present)."""
    notes = [
        f"params: trainable parameters of one fold model; {FLOP_CONVENTION}.",
        "accuracy, sensitivity, specificity, AUC: mean ± sd (ddof=1) over the cross-validation test "
        "folds (metrics.json).",
    ]
    if timing:
        shape = "x".join(str(s) for s in timing["volume_shape"])
        notes.append(
            f"predict s: CPU wall time of inference.predict with TTA and Grad-CAM (all fold models "
            f"x TTA views, the bundle's preprocessing), median of {timing['repeats']} after a warm-up, "
            f"{timing['threads']} thread(s), on a {shape} volume: {timing['source']}."
        )
    else:
        notes.append("predict s: not measured (--no-timing).")
    if any(r.synthetic for r in runs):
        notes.append(SYNTHETIC_NOTE + ".")
    if any(r.optimistic for r in runs):
        notes.append(OPTIMISTIC_NOTE + ".")
    return notes


def format_text(runs: list[RunInfo], timing: dict[str, Any] | None) -> str:
    """Aligned plain-text table with footnotes."""
    rows = [list(COLUMNS), *table_rows(runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    left = {0, 1, 2, 6, len(COLUMNS) - 1}

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    out = [line(rows[0]), "  ".join("-" * w for w in widths), *(line(r) for r in rows[1:])]
    return "\n".join([*(s.rstrip() for s in out), "", *footnotes(runs, timing)]) + "\n"


def format_markdown(runs: list[RunInfo], timing: dict[str, Any] | None) -> str:
    """GitHub Markdown table with footnotes."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    align = ["---" if i in (0, 1, 2, 6, len(COLUMNS) - 1) else "---:" for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table_rows(runs)]
    return "\n".join([*lines, "", *(f"- {n}" for n in footnotes(runs, timing))]) + "\n"


CSV_FIELDS = (
    "run",
    "path",
    "arch",
    "arch_params",
    "pretrained",
    "parameters",
    "gflops",
    "flops",
    "input_size",
    "folds",
    "protocol",
    "optimistic",
    "n",
    *(f"{key}_{s}" for key, _ in METRICS for s in ("mean", "sd")),
    "predict_s",
    "n_models",
    "tta_views",
    "synthetic",
    "training_data",
)


def format_csv(runs: list[RunInfo]) -> str:
    """One row per run; numbers unrounded (empty when not available)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_FIELDS), lineterminator="\n")
    w.writeheader()
    for r in runs:
        row: dict[str, Any] = {
            "run": r.name,
            "path": str(r.path),
            "arch": r.arch,
            "arch_params": json.dumps(r.arch_params),
            "pretrained": r.pretrained or "",
            "parameters": r.parameters,
            "gflops": "" if r.gflops is None else repr(r.gflops),
            "flops": "" if r.flops is None else int(r.flops),
            "input_size": "x".join(str(s) for s in r.input_size),
            "folds": r.folds,
            "protocol": r.protocol,
            "optimistic": r.optimistic,
            "n": "" if r.n is None else r.n,
            "predict_s": "" if r.predict_s is None else repr(r.predict_s),
            "n_models": r.n_models,
            "tta_views": r.tta_views,
            "synthetic": r.synthetic,
            "training_data": r.training_data,
        }
        for key, _ in METRICS:
            for s in ("mean", "sd"):
                v = r.metrics[key].get(s)
                row[f"{key}_{s}"] = "" if v is None else repr(float(v))
        w.writerow(row)
    return buf.getvalue()


def format_json(runs: list[RunInfo], timing: dict[str, Any] | None) -> str:
    doc = {
        "flop_convention": FLOP_CONVENTION,
        "timing": timing,
        "runs": [r.to_json() for r in runs],
        "notes": footnotes(runs, timing),
    }
    return json.dumps(doc, indent=1) + "\n"


# ------------------------------------------------------------------------------------------- command


def compare_runs(
    run_dirs: list[str],
    skip_bad: bool = False,
    timing: bool = True,
    repeats: int = 3,
    predict_input: str | None = None,
    warn: Any = None,
) -> tuple[list[RunInfo], dict[str, Any] | None]:
    """Read, count and time every run; returns ``(runs, timing info or None)``.

    A folder that is not a finished run raises :class:`InputError`, or with ``skip_bad`` is left out after
    ``warn(message)`` (default: a line on stderr).
    """
    import torch

    warn = warn or (lambda msg: print(f"gloresnet compare: warning: {msg}", file=sys.stderr))
    runs = []
    for d in run_dirs:
        try:
            runs.append(read_run(d))
        except GloResNetError as exc:
            if not skip_bad:
                raise
            warn(f"skipped: {exc}")
    if not runs:
        raise InputError("no finished training run to compare")
    for r in runs:
        in_ch = int(r.arch_params.get("in_channels", 1))
        r.flops = count_flops(r.bundle.models[0], r.input_size, in_ch)
    info = None
    if timing:
        if repeats < 1:
            raise InputError("--repeats must be at least 1")
        array, affine, source = predict_volume(predict_input)
        for r in runs:
            r.predict_repeats_s = time_predict(r.bundle, array, affine, repeats)
            r.predict_s = statistics.median(r.predict_repeats_s)
        info = {
            "source": source,
            "volume_shape": [int(s) for s in array.shape],
            "repeats": repeats,
            "threads": torch.get_num_threads(),
            "device": "cpu",
            "tta": True,
            "cam": True,
        }
    return runs, info


def run_compare(args: argparse.Namespace) -> int:
    """``gloresnet compare``: print the table; write it to ``--out`` (CSV, Markdown or JSON by suffix)."""
    from .io import write_text_atomic

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in OUT_SUFFIXES:
        raise InputError(f"{out}: --out must end in {', '.join(OUT_SUFFIXES)}")
    if args.predict_input and not Path(args.predict_input).is_file():
        raise InputError(f"{args.predict_input}: file not found")
    runs, timing = compare_runs(
        args.run_dirs,
        skip_bad=args.skip_bad,
        timing=not args.no_timing,
        repeats=args.repeats,
        predict_input=args.predict_input,
    )
    print(format_text(runs, timing), end="")
    if out is not None:
        suffix = out.suffix.lower()
        text = (
            format_csv(runs)
            if suffix == ".csv"
            else format_markdown(runs, timing)
            if suffix == ".md"
            else format_json(runs, timing)
        )
        write_text_atomic(out, text)
        print(f"written: {out}", file=sys.stderr)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``gloresnet compare``."""
    p = subparsers.add_parser(
        "compare",
        help="compare finished training runs in one table",
        epilog=DISCLAIMER,
        description="One table of finished cross-validated runs: architecture, parameters, forward GFLOPs at "
        "the run's input size, CV accuracy / sensitivity / specificity / AUC (mean ± sd over "
        "folds) and the CPU predict time of the run's bundle (TTA and Grad-CAM on).",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training run folders (gloresnet train --out)")
    p.add_argument("--out", metavar="FILE", help="also write the table: FILE.csv, FILE.md or FILE.json")
    p.add_argument(
        "--predict-input",
        metavar="VOLUME",
        help="time prediction on this volume (default: a synthetic volume, synth_volume seed 0)",
    )
    p.add_argument("--no-timing", action="store_true", help="do not measure the predict time")
    p.add_argument("--repeats", type=int, default=3, help="timed predictions per run (median; default 3)")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip folders that are not finished runs (with a warning) instead of failing",
    )
    p.set_defaults(func=run_compare)
    return p


__all__ = [
    "RunInfo",
    "compare_runs",
    "count_flops",
    "format_csv",
    "format_json",
    "format_markdown",
    "format_text",
    "read_run",
    "run_compare",
    "time_predict",
]
