"""The demo's training settings with some options changed, on chosen folds of a demo cohort: per-fold test AUC.

How the CPU demo's settings were chosen (``GloResNetLib/demo.py``, CHANGELOG.md): each variant trains the folds
named by ``--folds`` of the default demo's synthetic cohort (seed ``--seed``, generated into ``OUT/cohort`` or
reused from there) with ``SETTINGS["cpu"]``'s options overridden by ``--set`` (JSON), and prints each fold's test
ROC AUC, their mean and the training seconds. Deterministic on one machine; the CPU's arithmetic can move it.

    python benchmarks/demo_folds.py --out /tmp/folds --folds 0 2 --set '{}' '{"mixup_alpha": 0.2, "epochs": 12}'

Synthetic data only; research software, not a medical device.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "GloResNet"))

from GloResNetLib.demo import SETTINGS, demo_cohort  # noqa: E402
from GloResNetLib.training import train_cv  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="working folder (OUT/cohort, OUT/runs/VARIANT)")
    p.add_argument("--seed", type=int, default=0, help="demo seed: cohort and folds (default 0)")
    p.add_argument("--folds", type=int, nargs="+", default=[0, 2], help="folds to train (default 0 2)")
    p.add_argument(
        "--set",
        nargs="+",
        default=["{}"],
        metavar="JSON",
        help="one variant per JSON object of TrainConfig options (default '{}': the demo's own settings)",
    )
    return p.parse_args(argv)


def run_variant(out: Path, manifest: Path, seed: int, folds: list[int], changes: dict) -> list[float]:
    """Train ``folds`` of the demo with ``changes``; returns their test AUCs."""
    s = SETTINGS["cpu"]
    arch_params = {**s.training.arch_params, **changes.pop("arch_params", {})}
    shutil.rmtree(out, ignore_errors=True)
    aucs = []
    for k in folds:
        cfg = s.training.replace(
            manifest=str(manifest), out=str(out), synthetic=True, arch_params=arch_params, seed=seed, fold=k, **changes
        )
        train_cv(cfg)
        result = json.loads((out / f"fold_{k}" / "result.json").read_text())
        aucs.append(float(result["test"]["auc"]))
    return aucs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = demo_cohort(args.out / "cohort", SETTINGS["cpu"].n, args.seed, SETTINGS["cpu"])
    for i, text in enumerate(args.set):
        changes = json.loads(text)
        t0 = time.perf_counter()
        aucs = run_variant(args.out / "runs" / f"variant-{i}", manifest, args.seed, args.folds, dict(changes))
        per_fold = ", ".join(f"fold {k} {a:.3f}" for k, a in zip(args.folds, aucs))
        print(f"{text}: {per_fold}; mean {statistics.mean(aucs):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
