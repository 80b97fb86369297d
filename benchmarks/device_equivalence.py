"""CPU-vs-device equivalence of ``predict``: the same bundle and volume on the CPU and on ``--device``.

Run from the repository root::

    python benchmarks/device_equivalence.py --device cuda            # ResNet-10 at 128^3, dHCP-sized volume
    python benchmarks/device_equivalence.py --device cpu --tiny      # the script's pieces, in seconds

Compares P(BI) (and each TTA view's) within ``--prob-tol`` and every saliency map the result carries (Grad-CAM
today) by correlation (>= ``--min-corr``) on the input grid and by the distance between the two peaks (mm).
GPU convolutions use TF32 by default (cuDNN), so small differences are expected; large ones mean a wrong
device path. Last line: ``equivalence: SAME`` or ``equivalence: DIFFERENT`` (exit code 1).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_predict as bp  # noqa: E402  (the benchmark's random bundle and synthetic volume)
from GloResNetLib.bundle import load_bundle  # noqa: E402
from GloResNetLib.inference import predict  # noqa: E402
from GloResNetLib.io import read_volume  # noqa: E402

#: PredictionResult fields holding a saliency map on the input grid (a new method adds its field here).
SALIENCY_FIELDS = ("cam", "occlusion")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="device compared with the CPU (default cuda)")
    p.add_argument("--tiny", action="store_true", help="tiny volume and network (a dry run of the pieces)")
    p.add_argument("--prob-tol", type=float, default=2e-3, help="largest |P(BI) difference| (default 2e-3)")
    p.add_argument("--min-corr", type=float, default=0.99, help="smallest saliency correlation (default 0.99)")
    return p.parse_args(argv)


def peak_mm(a: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.array(np.unravel_index(int(np.argmax(a)), a.shape), dtype=float)
    return (affine @ np.append(ijk, 1.0))[:3]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="device_equiv_") as tmp_name:
        tmp = Path(tmp_name)
        shape = ["40", "48", "40"] if args.tiny else ["217", "290", "290"]
        src = bp.make_volume(bp.parse_args(["--shape", *shape]), tmp)
        array, affine = read_volume(src)
        size, widths = (64, [8, 16, 32, 64]) if args.tiny else (128, None)
        bundle_path = bp.make_bundle(tmp, array, affine, size, widths)
        results = {}
        for dev in ("cpu", str(device)):
            bundle = load_bundle(bundle_path, device=dev)
            predict(bundle, array, affine)  # warm-up (kernel selection, fast-path preparation)
            t0 = time.perf_counter()
            results[dev] = predict(bundle, array, affine)
            print(f"{dev}: P(BI) {results[dev].probability:.6f} in {time.perf_counter() - t0:.3f} s", flush=True)
    cpu, other = results["cpu"], results[str(device)]
    d_p = abs(cpu.probability - other.probability)
    d_views = max(abs(cpu.view_probabilities[k] - other.view_probabilities[k]) for k in cpu.view_probabilities)
    ok = d_p <= args.prob_tol and d_views <= args.prob_tol
    print(f"P(BI) |diff| {d_p:.2e}, views {d_views:.2e} (tolerance {args.prob_tol:g})")
    for name in SALIENCY_FIELDS:
        a, b = getattr(cpu, name, None), getattr(other, name, None)
        if a is None or b is None:
            continue
        c = bp.corr(a, b)
        dist = float(np.linalg.norm(peak_mm(a, cpu.input_affine) - peak_mm(b, other.input_affine)))
        finite = bool(np.isfinite(b).all())
        ok = ok and c >= args.min_corr and finite
        print(f"{name}: correlation {c:.5f} (minimum {args.min_corr:g}), peaks {dist:.1f} mm apart, finite {finite}")
    print(
        f"equivalence: {'SAME' if ok else 'DIFFERENT'} (cpu vs {device}"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
        + ")"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
