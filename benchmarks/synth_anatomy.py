"""Synthetic anatomy against neonatal norms, and a montage across ages (whole head and brain-extracted).

Prints, per age (28-44 weeks), the brain volume (tissue + ventricles) and lateral ventricle volume measured on
rendered label maps of several subjects, beside the Imperial neonatal atlas norm (Serag et al. 2012) used to
scale the anatomy, and the ventricular index (Levene). Writes a PNG montage: one row per age, three planes
whole-head then three planes brain-extracted.

    python benchmarks/synth_anatomy.py --subjects 4 --out docs/synthetic-montage.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "GloResNet"))

from GloResNetLib.report import orthogonal_planes  # noqa: E402
from GloResNetLib.synth import anatomy as A  # noqa: E402
from GloResNetLib.synth import synth_volume  # noqa: E402

AGES = (28.0, 32.0, 36.0, 40.0, 44.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--voxel", type=float, default=1.0)
    ap.add_argument("--out", default="docs/synthetic-montage.png")
    args = ap.parse_args()
    kw = dict(orientation="RAS", rotation_deg=0.0, max_dim=None, voxel_size=args.voxel)
    print(f"{'age':>4} {'norm ml':>8} {'brain ml (mean, min-max)':>26} {'lat. ventricles ml':>20} {'VI mm':>10}")
    rows = []
    for age in AGES:
        brain, vent, vi = [], [], []
        for s in range(args.subjects):
            _, _, _, info = synth_volume(
                1000 + s, age, (), noise=False, bias=False, artefact_strength=0.0, brain_extracted=False, **kw
            )
            lab = info["labels_full"]
            brain.append(np.isin(lab, A.BRAIN_LABELS).sum() * args.voxel**3 / 1000)
            vent.append((lab == A.VENTRICLE).sum() * args.voxel**3 / 1000)
            vi.append(max(info["ventricular_index_mm"]))
        print(
            f"{age:4.0f} {A.brain_volume_ml(age):8.0f} {np.mean(brain):10.0f} ({min(brain):.0f}-{max(brain):.0f})"
            f"{'':8} {np.mean(vent):8.1f} ({min(vent):.1f}-{max(vent):.1f}) {np.mean(vi):8.1f}"
        )
        head = synth_volume(7, age, (), brain_extracted=False, **kw)[0]
        bet = synth_volume(7, age, (), brain_extracted=True, **kw)[0]
        rows.append((age, orthogonal_planes(head), orthogonal_planes(bet)))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 6, figsize=(15, 2.7 * len(rows)))
    for r, (age, head, bet) in enumerate(rows):
        for c, plane in enumerate(head + bet):
            ax = axes[r, c]
            ax.imshow(plane, cmap="gray", origin="lower", vmin=0, vmax=np.percentile(plane, 99.5))
            ax.set_axis_off()
            if c in (0, 3):
                ax.set_title(f"{age:.0f} w, {'whole head' if c == 0 else 'brain-extracted'}", fontsize=9)
    fig.suptitle("SYNTHETIC neonatal T2w (GloResNet generator 2.0) - demonstration only", fontsize=11)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=70)
    print(f"montage: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
