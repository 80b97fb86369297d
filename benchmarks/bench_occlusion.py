"""Occlusion-sensitivity benchmark: ``monai.visualize.OcclusionSensitivity`` against GloResNet's, same run.

Run from the repository root (``python benchmarks/bench_occlusion.py --help``)::

    python benchmarks/bench_occlusion.py                  # CPU: demo model, then full-width ResNet-10 at 128^3
    python benchmarks/bench_occlusion.py --config demo    # only the demo's CPU model
    python benchmarks/bench_occlusion.py --device cuda    # the same on a GPU

Input: one synthetic neonatal T2w volume with a punctate lesion from the project's generator (seed
``--seed``), preprocessed as a bundle would (64^3 anti-aliased for the demo model, 128^3 for the full one).

Models: random initialisation with BatchNorm statistics of this volume and an unsaturated head (P(BI) ~ 0.73,
``bench_predict.calibrated_model``), so the maps are not flat:

- ``demo``: the demo's CPU model (``GloResNetLib.demo.SETTINGS["cpu"]``: ResNet-10, widths 16-128, strided,
  64^3), one model and the demo's ensemble of ``--ensemble`` (default 5) fold models;
- ``full``: the paper's full-width ResNet-10 (64-512) at 128^3, one model.

Both sides use the same settings: the box edge of ``GloResNetLib.occlusion.default_mask_size`` (8 voxels at
64^3, 16 at 128^3), overlap 0.5, hidden voxels set to the head's mean intensity, boxes over the head's bounding
box (MONAI: ``b_box``), softmax P(BI) (MONAI's default activation is a sigmoid for a one-channel *input*: the
baseline passes the softmax). Before timing, the maps are checked to be equal (max abs difference <= 1e-4 and
correlation >= 0.99 inside the box); if not, the script says so and exits 1.

Timing: medians of ``--repeats`` rounds, baseline and ours alternating. MONAI on the full model at 128^3
would take many minutes, so it runs on ``--baseline-windows`` boxes (a sub-box of the head) and its time is
extrapolated per box (printed as such). The machine's load matters: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "GloResNet"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_predict import calibrated_model  # noqa: E402
from GloResNetLib import occlusion as occ  # noqa: E402
from GloResNetLib.demo import SETTINGS  # noqa: E402
from GloResNetLib.preprocessing import PreprocessConfig, preprocess  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=["demo", "full", "both"], default="both", help="which model(s) (default both)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--ensemble", type=int, default=5, help="demo ensemble size (default 5, the demo's folds)")
    p.add_argument(
        "--baseline-windows",
        type=int,
        default=24,
        help="full model: MONAI runs on about this many boxes, its time extrapolated (default 24)",
    )
    p.add_argument(
        "--mask",
        type=int,
        nargs=2,
        default=None,
        metavar=("DEMO", "FULL"),
        help="box edges (voxels) for the demo and full models (default: the library's, 8 and 16)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="synthetic volume seed")
    p.add_argument("--json", metavar="FILE", help="also write the medians as JSON")
    return p.parse_args(argv)


def network_input(seed: int, size: int, antialias: bool, device: torch.device) -> torch.Tensor:
    from GloResNetLib.synth import synth_volume

    array, affine, _, _ = synth_volume(seed, age_weeks=40, injuries=["pwml"], difficulty=0.0)
    pre = preprocess(
        array, affine, PreprocessConfig(size=(size,) * 3, antialias=antialias), device=device, keep_tensor=True
    )
    return pre.tensor[0, 0]


def monai_map(model, image: torch.Tensor, mask: int, fill: float, b_box: list[int]) -> np.ndarray:
    from monai.visualize import OcclusionSensitivity

    sens = OcclusionSensitivity(
        model, mask_size=mask, n_batch=8, verbose=False, mode=fill, overlap=0.5, activate=lambda out: out.softmax(1)
    )
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        out, _ = sens(image[None, None], b_box=b_box)
    return out[0, 1].float().cpu().numpy()


def timed(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def check_equal(ours: np.ndarray, ref: np.ndarray, inner) -> bool:
    crop = tuple(slice(a, b) for a, b in inner)
    a, b = ours[crop], ref[tuple(slice(0, hi - lo) for lo, hi in inner)]
    diff, corr = float(np.abs(a - b).max()), float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    ok = diff <= 1e-4 and corr >= 0.99
    print(f"  equal to MONAI's map: max abs diff {diff:.2e}, correlation {corr:.6f} -> {'OK' if ok else 'FAILED'}")
    return ok


def bench_demo(args, device: torch.device) -> dict:
    s = SETTINGS["cpu"].training
    image = network_input(args.seed, s.size, s.antialias, device)
    x = image[None, None]
    models = [calibrated_model(x.cpu(), seed=k, arch=s.arch, **s.arch_params).to(device) for k in range(args.ensemble)]
    mask = args.mask[0] if args.mask else occ.default_mask_size(image.shape)
    cfg = occ.OcclusionConfig(mask_size=mask, overlap=0.5)
    inner = occ.head_region(image, 0)
    b_box = [v for lo, hi in inner for v in (lo, hi)]
    fill = occ.fill_value(image, cfg.fill)
    n = len(occ.window_slices(occ.head_region(image, (mask - 1) // 2), [mask] * 3, 0.5))
    print(
        f"demo model ({s.arch} {s.arch_params}, {s.size}^3): box {mask} voxels, overlap 0.5, {n} boxes "
        f"per model, head box {inner}"
    )
    ours1 = occ.occlusion_sensitivity(models[:1], image, cfg)  # warm-up (prepared copies) and check
    ref = monai_map(models[0], image, mask, fill, b_box)
    if not check_equal(ours1.occluded, ref, inner):
        sys.exit(1)
    t_monai, t_ours, t_ens = [], [], []
    for r in range(args.repeats):
        pair = [
            ("monai", lambda: monai_map(models[0], image, mask, fill, b_box)),
            ("ours", lambda: occ.occlusion_sensitivity(models[:1], image, cfg)),
        ]
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            (t_monai if name == "monai" else t_ours).append(timed(fn, device)[0])
        t_ens.append(timed(lambda: occ.occlusion_sensitivity(models, image, cfg), device)[0])
    res = {
        "boxes": n,
        "mask": mask,
        "monai_s": statistics.median(t_monai),
        "ours_s": statistics.median(t_ours),
        "ours_ensemble_s": statistics.median(t_ens),
        "ensemble": len(models),
    }
    print(f"  MONAI OcclusionSensitivity, 1 model: {res['monai_s']:.2f} s (median of {args.repeats})")
    print(f"  GloResNet occlusion, 1 model:        {res['ours_s']:.2f} s")
    print(f"  GloResNet occlusion, {len(models)}-model ensemble: {res['ours_ensemble_s']:.2f} s")
    print(f"  ratio MONAI / ours (1 model): {res['monai_s'] / res['ours_s']:.1f}x")
    return res


def bench_full(args, device: torch.device) -> dict:
    image = network_input(args.seed, 128, False, device)
    x = image[None, None]
    model = calibrated_model(x.cpu()).to(device)
    mask = args.mask[1] if args.mask else occ.default_mask_size(image.shape)
    cfg = occ.OcclusionConfig(mask_size=mask, overlap=0.5)
    inner = occ.head_region(image, 0)
    n = len(occ.window_slices(occ.head_region(image, (mask - 1) // 2), [mask] * 3, 0.5))
    print(f"full-width ResNet-10 (64-512, 128^3): box {mask} voxels, overlap 0.5, {n} boxes, head box {inner}")
    timed(lambda: occ.occlusion_sensitivity([model], image, cfg), device)  # warm-up (prepared copy)
    t_ours = [timed(lambda: occ.occlusion_sensitivity([model], image, cfg), device)[0] for _ in range(args.repeats)]
    # MONAI on a sub-box of the head with about --baseline-windows boxes, extrapolated per box
    step = mask // 2
    per_axis = max(1, round(args.baseline_windows ** (1 / 3)))
    centre = [(lo + hi) // 2 for lo, hi in inner]
    sub = [
        (c - (per_axis - 1) * step // 2 - mask // 2, c + (per_axis - 1) * step // 2 + (mask + 1) // 2) for c in centre
    ]
    b_box = [v for lo, hi in sub for v in (lo + (mask - 1) // 2, hi - (mask - 1) // 2)]
    sub_boxes = len(
        occ.window_slices(
            [(max(b_box[2 * i] - (mask - 1) // 2, 0), min(b_box[2 * i + 1] + (mask - 1) // 2, 128)) for i in range(3)],
            [mask] * 3,
            0.5,
        )
    )
    fill = occ.fill_value(image, cfg.fill)
    t_sub = timed(lambda: monai_map(model, image, mask, fill, b_box), device)[0]
    monai_est = t_sub / sub_boxes * n
    res = {
        "boxes": n,
        "mask": mask,
        "ours_s": statistics.median(t_ours),
        "monai_sub_boxes": sub_boxes,
        "monai_sub_s": t_sub,
        "monai_extrapolated_s": monai_est,
    }
    print(f"  GloResNet occlusion: {res['ours_s']:.1f} s (median of {args.repeats})")
    print(
        f"  MONAI OcclusionSensitivity: {t_sub:.1f} s for {sub_boxes} boxes -> {monai_est:.0f} s for {n} (extrapolated)"
    )
    print(f"  ratio MONAI / ours: {monai_est / res['ours_s']:.1f}x (MONAI extrapolated)")
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    results = {}
    if args.config in ("demo", "both"):
        results["demo"] = bench_demo(args, device)
    if args.config in ("full", "both"):
        results["full"] = bench_full(args, device)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
