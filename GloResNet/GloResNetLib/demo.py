"""``gloresnet demo``: the whole pipeline on built-in synthetic data, ending in ``report.html``.

Synthetic cohort -> subject-grouped 5-fold CV with mixup and class weighting -> ensemble bundle -> held-out
cases predicted with TTA and Grad-CAM -> pointing game against the known lesion masks -> report.

Everything it makes is synthetic and for demonstration only; every page, image and bundle says so.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from .training.config import TrainConfig

MARKER = ".gloresnet-demo"
#: The saliency method whose pointing game heads demo_summary.json (the one that pointed at lesions most often over
#: seeds; README "The demo"); every method's figures are under "saliency".
PRIMARY_SALIENCY = "gradient"
BANNER = "SYNTHETIC DATA - demonstration only - not for clinical use. Research software, not a medical device."


@dataclass(frozen=True)
class DemoSettings:
    """One demo flavour: its cohort, and the training options where it departs from ``TrainConfig``'s defaults
    (the paper's); every other option is ``TrainConfig``'s own default."""

    n: int
    n_heldout: int
    difficulty: float
    max_dim: int
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def training(self) -> TrainConfig:
        """The training options of this flavour (``TrainConfig`` defaults overridden by ``train``)."""
        from .training.config import TrainConfig

        return TrainConfig(**self.train)


_QUARTER_WIDTH = {"widths": [16, 32, 64, 128], "cam_layer": "layer1"}
#: The CPU demo's network: quarter width, its BI logit a soft maximum of a lesion map (models.lesion_head) read
#: from ``layer1`` alone (``lesion_levels`` 1: a local detector; ``layer2`` and ``layer3`` are not built).
_LESION_MIL = {**_QUARTER_WIDTH, "lesion_head": "mil", "lesion_levels": 1}

#: CPU settings: smaller input (64^3), ResNet-10 (the paper's strided layout, stem max-pool) at a quarter of the
#: width (16-128) whose BI logit is a soft maximum of a lesion map learnt from the cohort's lesion masks
#: (``lesion_head="mil"``, lesion-map loss weight 10; the paper: global pooling and a linear head), Grad-CAM on
#: ``layer1``, 240 scans, 20 epochs (the first 2 a linear warm-up), each fold's last epoch kept, batch 4, learning rate
#: 1e-3, no mixup (the paper: 128^3, full width, 150 epochs, batch 32, 2e-3, mixup alpha 1.0), anti-aliased
#: resampling, the generator's most conspicuous lesions (difficulty 0), and 80 held-out scans (about 34 injured).
#: No mixup: a mixed pair dims each lesion to a fraction of its contrast, which the lesion map must then learn to
#: find at every strength; without it, 12 epochs on folds 0 and 2 of the seed-0 demo cohort gave a test AUC of
#: 0.909 / 0.804 against 0.852 / 0.661 with alpha 0.2 (AMD EPYC AVX-512, 2 cores, 2026-12-07). 16 epochs: 0.929 /
#: 0.856; 20 gave no more (0.911 / 0.874). Lesion map from ``layer1`` only: with the pyramid over ``layer1``-``layer3``
#: some folds learnt a map that fires over the whole central brain of some healthy scans and misses plain IVH (seed-2
#: cohort, fold 1: test AUC 0.434, training AUC 0.82); from ``layer1`` alone folds 1 / 0 of that cohort gave 0.905 /
#: 0.736 (pyramid: 0.434 / 0.727) and folds 1 / 4 of the seed-0 cohort 0.895 / 0.874 (0.802 / 0.764), each epoch
#: about 20% faster. Validation split 5% instead of 20% (``select_metric`` last: it chooses nothing and only draws
#: the learning curves), so each fold trains on ~182 scans instead of 153: 0.902 / 0.837 and 0.898 / 0.918 on those
#: folds. Then 20 epochs instead of 16 (the time the faster epochs saved): seed-1 cohort folds 0 / 3 / 4: 0.930 / 0.837
#: / 0.842 against 0.848 / 0.830 / 0.827; the whole demo over seeds 0-2: CV AUC 0.954 / 0.870 / 0.927 against 0.933 /
#: 0.854 / 0.890. Why the rest: see the README ("The demo") and CHANGELOG.md.
SETTINGS = {
    "cpu": DemoSettings(
        n=240,
        n_heldout=80,
        difficulty=0.0,
        max_dim=80,
        train={
            "size": 64,
            "epochs": 20,
            "warmup_epochs": 2,
            "select_metric": "last",
            "val_fraction": 0.05,
            "batch_size": 4,
            "arch_params": _LESION_MIL,
            "lr": 1e-3,
            "antialias": True,
            "mixup_alpha": 0.0,
            "lesion_weight": 10.0,
        },
    ),
    "quick": DemoSettings(
        n=40,
        n_heldout=6,
        difficulty=0.0,
        max_dim=64,
        train={
            "size": 48,
            "epochs": 6,
            "batch_size": 4,
            "arch_params": _QUARTER_WIDTH,
            "lr": 3e-3,
            "antialias": True,
            "mixup_alpha": 0.2,
        },
    ),
    "gpu": DemoSettings(
        n=120, n_heldout=24, difficulty=0.3, max_dim=160, train={"arch": "resnet10_dilated", "antialias": True}
    ),
}


def _log(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def _prepare_out(out: Path) -> None:
    """Create the output folder; a previous demo's folder (marked) is cleared, anything else is refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise InputError(f"{out}: folder exists and was not made by 'gloresnet demo'; choose another --out")
        for child in ("run", "predictions", "report.html", "demo_summary.json"):
            path = out / child
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(BANNER + "\n")


def demo_cohort(folder: Path, n: int, seed: int, s: DemoSettings) -> Path:
    """Generate (or reuse, when identical settings made it) a synthetic cohort; returns its manifest."""
    from .synth import GENERATOR_VERSION, generate_cohort

    manifest, info = folder / "manifest.csv", folder / "cohort.json"
    if manifest.exists() and info.exists():
        meta = json.loads(info.read_text())
        if (
            meta.get("n"),
            meta.get("seed"),
            meta.get("difficulty"),
            meta.get("max_dim"),
            meta.get("generator_version"),
        ) == (n, seed, s.difficulty, s.max_dim, GENERATOR_VERSION):
            _log(f"reusing synthetic cohort {folder}")
            return manifest
    if folder.exists():  # other settings, or volumes removed at the end of a run without --keep-data
        shutil.rmtree(folder)
    t0 = time.perf_counter()
    generate_cohort(folder, n=n, seed=seed, difficulty=s.difficulty, max_dim=s.max_dim, workers=2)
    _log(f"generated {n} synthetic scans in {folder} ({time.perf_counter() - t0:.0f} s)")
    return manifest


def _read_rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


#: Saliency method shown in the report -> the PredictionResult attribute holding its map (``X`` on the input
#: grid, ``X_network`` on the network grid) and the suffix of its file in DIR/predictions.
SALIENCY_MAPS = {"Grad-CAM": ("cam", "_cam.nii.gz"), "gradient": ("gradient", "_gradient.nii.gz")}


def _predict_heldout(bundle, manifest: Path, out: Path) -> list[dict[str, Any]]:
    """Predict every held-out scan with TTA, Grad-CAM and gradient saliency; score both maps against the injured
    cases' lesion masks."""
    from .inference import predict_file
    from .io import read_volume, volume_stem, write_volume
    from .preprocessing import to_network_grid
    from .saliency import score_saliency

    rows = []
    for row in _read_rows(manifest):
        image = manifest.parent / row["path"]
        result = predict_file(bundle, image, saliency="gradcam,gradient")
        stem = volume_stem(image)
        # saliency method -> map on the input grid (written, scored) and on the network grid (drawn); the report
        # shows every method listed here side by side
        maps = {m: (getattr(result, a), getattr(result, f"{a}_network")) for m, (a, _) in SALIENCY_MAPS.items()}
        for method, (grid, _) in maps.items():
            write_volume(out / f"{stem}{SALIENCY_MAPS[method][1]}", grid, result.input_affine)
        record: dict[str, Any] = {
            "case": stem,
            "true_label": int(row["label"]),
            "result": result,
            "injuries": row.get("injury_types", ""),
            "lesion_network": None,
            "maps": {m: net for m, (_, net) in maps.items()},
            "scores": {},
        }
        if row.get("mask_path"):
            mask, _ = read_volume(manifest.parent / row["mask_path"])
            if mask.any():
                record["scores"] = {m: score_saliency(grid, mask, result.input_affine) for m, (grid, _) in maps.items()}
                record["lesion_network"] = to_network_grid(mask, result.input_affine, bundle.preprocess_config)
        rows.append(record)
    return rows


def _column_means(rows: list[list[float]]) -> list[float]:
    return [round(float(v), 4) for v in np.mean(np.asarray(rows, dtype=np.float64), axis=0)]


def _faithfulness(bundle, heldout: list[dict[str, Any]], device: str, max_cases: int) -> dict[str, dict[str, Any]]:
    """Deletion test of each saliency method on injured held-out scans the ensemble calls BI (at most
    ``max_cases``): mean drop of P(BI) when the top 1/2/5% most salient brain voxels are hidden, beside the mean
    drop for random blobs of the same size (:mod:`.faithfulness`)."""
    from .faithfulness import DEFAULT_FRACTIONS, deletion_test, ensemble_probability

    cases = [h for h in heldout if h["true_label"] == 1 and h["result"].label == 1][:max_cases]
    if not cases:
        return {}
    prob = ensemble_probability(bundle.models)
    out: dict[str, dict[str, Any]] = {}
    for method in cases[0]["maps"]:
        results = [
            deletion_test(prob, h["result"].resampled, h["maps"][method], n_random=3, seed=k, device=device)
            for k, h in enumerate(cases)
        ]
        out[method] = {
            "fractions": list(DEFAULT_FRACTIONS),
            "n_cases": len(results),
            "saliency_drop": _column_means([r.saliency_drops for r in results]),
            "random_drop": _column_means([r.random_mean for r in results]),
            "score": round(float(np.mean([r.score for r in results])), 4),
        }
    return out


def _examples(seed: int, quick: bool) -> list:
    """Synthetic examples for the report's montage (ages, brain-extracted, each lesion type and its twin)."""
    from .synth.examples import montage_examples

    return montage_examples(seed, voxel_mm=2.0 if quick else 1.4, max_dim=64 if quick else 96, twins=not quick)


def _remove_data(out: Path) -> None:
    """Delete the synthetic volumes (training cohort and held-out scans); keep the held-out manifest and lesion
    masks (small) so that the pointing game can be recomputed from the written saliency maps."""
    shutil.rmtree(out / "cohort", ignore_errors=True)
    heldout = out / "heldout"
    manifest = heldout / "manifest.csv"
    if not manifest.exists():
        return
    keep = {manifest.resolve()} | {
        (heldout / r["mask_path"]).resolve() for r in _read_rows(manifest) if r.get("mask_path")
    }
    for path in sorted(heldout.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if path.is_dir():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.resolve() not in keep:
            path.unlink()


def run_demo(
    out: str | Path = "gloresnet-demo",
    quick: bool = False,
    device: str = "auto",
    seed: int = 0,
    epochs: int | None = None,
    keep_data: bool = False,
) -> dict[str, Any]:
    """Run the demo end to end; returns the summary written to ``demo_summary.json``.

    Without ``keep_data`` the synthetic volumes (cohort and held-out scans) are deleted at the end; the report,
    summary, run folder (bundle, metrics, curves), saliency maps and the held-out lesion masks stay.
    """
    from .bundle import load_bundle, resolve_device
    from .demo_report import QUICK_WARNING, saliency_summary, write_demo_report
    from .saliency import pointing_game, pointing_game_interval
    from .training import train_cv

    t_start = time.perf_counter()
    dev = resolve_device(device)
    flavour = "quick" if quick else ("gpu" if dev.type == "cuda" else "cpu")
    s = SETTINGS[flavour]
    if quick:
        _log(QUICK_WARNING)
    out = Path(out)
    _prepare_out(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    manifest = demo_cohort(out / "cohort", s.n, seed, s)
    heldout_manifest = demo_cohort(out / "heldout", s.n_heldout, seed + 1000, s)
    timings["synthetic data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run_dir = out / "run"
    done: dict[str, Any] = {}

    def progress(event: dict[str, Any]) -> None:
        if event.get("event") == "done":
            done.update(event)

    cfg = s.training.replace(
        manifest=str(manifest),
        out=str(run_dir),
        synthetic=True,
        arch_params=dict(s.training.arch_params),
        seed=seed,
        device=str(dev),
        progress_bar=True,
        name=f"gloresnet-demo-{flavour}-SYNTHETIC",
        **({"epochs": epochs} if epochs else {}),
    )
    train_cv(cfg, progress=progress)
    timings["cross-validated training"] = time.perf_counter() - t0
    bundle_path = Path(done.get("bundle") or run_dir / "bundle")
    metrics = json.loads((run_dir / "metrics.json").read_text())

    t0 = time.perf_counter()
    predictions = out / "predictions"
    bundle = load_bundle(bundle_path, device=str(dev))  # checked once, used for prediction and deletion test
    heldout = _predict_heldout(bundle, heldout_manifest, predictions)
    timings["held-out prediction"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    faithfulness = _faithfulness(bundle, heldout, str(dev), max_cases=4 if quick else 24)
    timings["deletion test"] = time.perf_counter() - t0
    bundle_name = bundle.name
    t0 = time.perf_counter()
    examples = _examples(seed, quick)
    timings["example montage"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    path = write_demo_report(
        out,
        s,
        flavour,
        seed,
        run_dir,
        metrics,
        heldout,
        timings,
        bundle_name,
        BANNER,
        examples=examples,
        faithfulness=faithfulness,
    )

    scores = [h["scores"][PRIMARY_SALIENCY] for h in heldout if PRIMARY_SALIENCY in h["scores"]]
    held_acc = float(np.mean([h["result"].label == h["true_label"] for h in heldout]))
    summary = {
        "report": str(path),
        "bundle": str(bundle_path),
        "settings": flavour,
        "seed": seed,
        "cv": {k: v for k, v in metrics.get("summary", {}).items()},
        "heldout_accuracy": held_acc,
        "pointing_game_method": PRIMARY_SALIENCY,
        "pointing_game": pointing_game(scores),
        "pointing_game_95ci": pointing_game_interval(scores),
        "n_injured_heldout": len(scores),
        "saliency": saliency_summary(heldout),
        "faithfulness": faithfulness,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "disclaimer": BANNER,
        "kept_data": keep_data,
        **({"warning": QUICK_WARNING} if quick else {}),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if not keep_data:
        _remove_data(out)
        _log("deleted the synthetic volumes (cohort/, heldout/ images); --keep-data keeps them")
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    cv = summary["cv"]

    def line(name: str) -> str:
        m = cv.get(name) or {}
        if m.get("mean") is None:
            return f"  {name:<18} n/a"
        return f"  {name:<18} {m['mean']:.3f} +/- {m.get('sd') or 0:.3f}   (best fold {m.get('best', 0):.3f})"

    print("\n" + "=" * 78)
    print("GloResNet demo - " + BANNER)
    if summary.get("warning"):
        print(summary["warning"])
    print(f"settings: {summary['settings']}   total time: {summary['seconds']['total']:.0f} s")
    print("cross-validation (test folds, mean +/- sd):")
    for name in ("accuracy", "sensitivity", "specificity", "auc"):
        print(line(name))
    print(
        f"held-out synthetic cases: accuracy {summary['heldout_accuracy']:.3f} ({summary['n_injured_heldout']} "
        "injured); pointing game (saliency peak within 5 mm of the lesion):"
    )
    for method, figures in summary.get("saliency", {}).items():
        lo, hi = figures["pointing_game_95ci"]
        print(f"  {method:<18} {figures['pointing_game']:.2f} (95% interval {lo:.2f}-{hi:.2f})")
    for method, d in summary.get("faithfulness", {}).items():
        pairs = ", ".join(
            f"{100 * f:g}%: {a:.3f} vs {b:.3f}"
            for f, a, b in zip(d["fractions"], d["saliency_drop"], d["random_drop"], strict=True)
        )
        print(f"  deletion test {method}: drop of P(BI), salient vs random ({d['n_cases']} scans called BI): {pairs}")
    print(f"ensemble bundle: {summary['bundle']}")
    print(f"report: {summary['report']}")
    if summary.get("warning"):
        print("(quick settings: the figures above mean nothing)")
    print("=" * 78)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``gloresnet demo``."""
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on built-in synthetic data and write report.html",
        description="Synthetic cohort -> 5-fold CV training -> ensemble bundle -> held-out predictions with "
        "TTA, Grad-CAM and gradient saliency -> deletion test -> report.html. Time: the default (CPU) settings "
        "took 417-436 s on a 2-core CPU (AMD EPYC, AVX-512; warm anatomy cache, about 40 s more for the first "
        "template build); expect 7-10 minutes on slower machines of this kind, more with another job on the cores; "
        "--quick about 50 s. With CUDA the paper's input size and epochs "
        "are used. Disk: DIR (see --out) holds the report, demo_summary.json, the run with its bundle "
        "and the saliency maps (about 220 MB for the default demo); the synthetic volumes are deleted at the end "
        "unless --keep-data (with them 537 MB; --quick 71 MB with them, 40 MB without); the "
        "caches in ~/.cache/gloresnet (about 370 MB for the default demo, 18 MB for --quick) "
        "speed up a rerun. "
        "Remove everything with: rm -r DIR ~/.cache/gloresnet",
        epilog=BANNER,
    )
    p.add_argument("--out", default="gloresnet-demo", metavar="DIR", help="output folder (default gloresnet-demo)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny settings, a smoke test (about 45 s on CPU; used by CI): its figures mean nothing",
    )
    p.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the synthetic cohort and held-out volumes (DIR/cohort, DIR/heldout); by default "
        "they are deleted at the end (the held-out manifest and lesion masks stay)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic cohort and the folds")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``gloresnet demo``."""
    summary = run_demo(
        args.out, quick=args.quick, device=args.device, seed=args.seed, epochs=args.epochs, keep_data=args.keep_data
    )
    _print_summary(summary)
    return 0
