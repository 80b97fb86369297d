"""The default demo over several seeds: CV AUC, held-out accuracy and each saliency method's pointing game.

Runs ``gloresnet demo --seed S --out OUT/seed-S`` for each seed (one after the other, so timings are comparable),
then recomputes every saliency method's pointing game *independently* from the files the demo wrote (the maps in
``predictions/`` and the lesion masks kept in ``heldout/``), checks it against the figure in that run's
``demo_summary.json``, and prints per-method mean, sd and min over the seeds with the CPU that ran them.

    python benchmarks/demo_seeds.py --out /tmp/demo-seeds            # seeds 0 1 2, the default demo
    python benchmarks/demo_seeds.py --out /tmp/demo-seeds --reuse    # only recompute from finished runs
    python benchmarks/demo_seeds.py --out /tmp/q --seeds 0 --quick   # a smoke test (figures mean nothing)

Synthetic data only; research software, not a medical device.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "GloResNet"))

from GloResNetLib.demo import SALIENCY_MAPS  # noqa: E402

#: Saliency method -> suffix of its map in the demo's predictions folder (occlusion, should the demo write it).
MAP_SUFFIXES = {**{m: suffix for m, (_, suffix) in SALIENCY_MAPS.items()}, "occlusion": "_occlusion.nii.gz"}


def cpu_name() -> str:
    """CPU model name and core count of this machine."""
    name = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def run_demo(out: Path, seed: int, quick: bool) -> float:
    """Run one demo in a child process; returns its wall time in seconds."""
    cmd = [sys.executable, "-m", "GloResNetLib", "demo", "--seed", str(seed), "--out", str(out), "--keep-data"]
    if quick:
        cmd.append("--quick")
    env = {**os.environ, "PYTHONPATH": str(REPO / "GloResNet")}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def recompute_pointing(run: Path) -> dict[str, dict[str, float]]:
    """Pointing game of every saliency map the demo wrote, from the map and mask files alone.

    Args:
        run: one demo's output folder.
    Returns:
        method -> {"hits", "n", "pointing_game"} over the injured held-out scans that have that map.
    """
    from GloResNetLib.io import read_volume, volume_stem
    from GloResNetLib.saliency import score_saliency

    heldout = run / "heldout"
    with open(heldout / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, dict[str, float]] = {}
    for method, suffix in MAP_SUFFIXES.items():
        hits = n = 0
        for row in rows:
            if not row.get("mask_path"):
                continue
            path = run / "predictions" / (volume_stem(heldout / row["path"]) + suffix)
            if not path.exists():
                continue
            saliency, affine = read_volume(path)
            mask, _ = read_volume(heldout / row["mask_path"])
            if not mask.any():
                continue
            hits += int(score_saliency(saliency, mask, affine).hit)
            n += 1
        if n:
            out[method] = {"hits": hits, "n": n, "pointing_game": hits / n}
    return out


def describe(values: list[float]) -> str:
    """``mean sd min max`` of a list of figures."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"mean {statistics.mean(values):.3f}  sd {sd:.3f}  min {min(values):.3f}  max {max(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the runs (OUT/seed-S)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="the demo's --quick settings (a smoke test)")
    p.add_argument("--reuse", action="store_true", help="do not run; recompute from the finished runs in OUT")
    args = p.parse_args(argv)
    print(f"CPU: {cpu_name()}; torch threads from OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    per_seed = []
    for seed in args.seeds:
        run = args.out / f"seed-{seed}"
        seconds = None if args.reuse else run_demo(run, seed, args.quick)
        summary = json.loads((run / "demo_summary.json").read_text())
        pointing = recompute_pointing(run)
        stated = {m: s["pointing_game"] for m, s in summary.get("saliency", {}).items()}
        for method, figure in pointing.items():
            if method in stated and abs(stated[method] - figure["pointing_game"]) > 1e-9:
                raise SystemExit(
                    f"seed {seed}: {method} pointing game {figure['pointing_game']:.3f} recomputed "
                    f"from the files differs from demo_summary.json ({stated[method]:.3f})"
                )
        auc = summary["cv"]["auc"]["mean"]
        per_seed.append(
            {
                "seed": seed,
                "seconds": seconds or summary["seconds"]["total"],
                "cv_auc": auc,
                "heldout_accuracy": summary["heldout_accuracy"],
                "pointing": pointing,
            }
        )
        figures = "  ".join(f"{m} {s['pointing_game']:.2f} ({s['hits']}/{s['n']})" for m, s in pointing.items())
        print(
            f"seed {seed}: {per_seed[-1]['seconds']:.0f} s  CV AUC {auc:.3f}  held-out accuracy "
            f"{summary['heldout_accuracy']:.3f}  pointing game: {figures}"
        )
    print(f"over seeds {args.seeds}:")
    print(f"  CV AUC             {describe([r['cv_auc'] for r in per_seed])}")
    print(f"  held-out accuracy  {describe([r['heldout_accuracy'] for r in per_seed])}")
    print(f"  wall time (s)      {describe([r['seconds'] for r in per_seed])}")
    for method in MAP_SUFFIXES:
        values = [r["pointing"][method]["pointing_game"] for r in per_seed if method in r["pointing"]]
        if values:
            print(f"  pointing {method:<9} {describe(values)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
