"""Predict benchmark: GloResNet's ``predict`` against the straightforward MONAI pipeline, same run, same weights.

Run from the repository root (``python benchmarks/bench_predict.py --help``)::

    python benchmarks/bench_predict.py                 # CPU, synthetic dHCP-sized volume, ~2-3 min on 2 cores
    python benchmarks/bench_predict.py --device cuda   # the same on a GPU

Input: a dHCP-sized T2w-like volume (217 x 290 x 290 voxels, 0.5 mm, float32, RAS storage) from the project's
synthetic generator, written once as ``.nii.gz`` (or ``--input FILE``). Weights: a randomly initialised
ResNet-10 bundle (BatchNorm statistics from one train-mode pass over this volume, classifier rows set so the
brain-injury Grad-CAM is not empty and the probability is not saturated, which would make the probability
check vacuous), or ``--model BUNDLE``. Both sides use the same ``nn.Module`` objects.

Baseline (what one writes with MONAI): ``LoadImage`` (file) or a ``MetaTensor`` with the affine (in memory),
``Orientation("RAS")`` -> ``Resize((128,)*3)`` -> ``NormalizeIntensity()``, one eager fp32 forward per TTA view,
``monai.visualize.GradCAM(model, "layer4")`` on the identity view (forward + backward), the map brought back
onto the input grid with the transforms' ``inverse``, and ``nibabel.save`` of the CAM and the resampled input.
Ours: ``GloResNetLib.predict(bundle, array, affine, tta=True, cam=True)`` (in memory: the Slicer module) and
``predict_file`` + the CLI's writers (the ``gloresnet predict`` path).

Apples to apples: MONAI's ``Resize`` defaults to ``mode="area"`` while GloResNet resamples trilinearly
(``align_corners=False``), so the default baseline feeds the network a different input. The baseline here
uses ``Resize(mode="trilinear")``: then both sides compute the same network input (checked: max abs
difference printed), and the equivalence check compares the outputs of one and the same computation.
MONAI's GradCAM normaliser maps (min, max) to (1, 0), i.e. inverts the map: the baseline passes an identity
``postprocessing`` and both maps are divided by their maximum. Before any timing the script checks, for 2 and
8 views, that the probabilities agree (abs diff <= 1e-3) and that the CAMs correlate (>= 0.99) on the
128^3 grid and on the input grid; if not, it prints why and reports no speed-up (exit code 1). The time of
MONAI's default ``area`` resize is printed for information only.

Timing: ``--repeats`` rounds, baseline and ours interleaved within each round (the order alternates) so that
load from other processes hits both sides alike; medians per stage. The network's effective GFLOP/s uses
FLOPs counted once with ``torch.utils.flop_counter.FlopCounterMode``. The arithmetic ceiling, timed in the same
rounds, is the best of three: torch's fp32 matrix product, numpy's SGEMM (OpenBLAS, in a child process without
``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` overrides; CPU only) and a large 64-channel 3^3 convolution (oneDNN on
CPU, cuDNN on CUDA): on an AVX-512 EPYC torch's matmul reaches ~200 GFLOP/s while SGEMM reaches ~470 and the
convolution ~430, so the matmul alone is not a ceiling. The network's share of that best is reported. Both
sides run in one process, so process-wide settings apply to both:
importing GloResNetLib's inference turns on transparent huge pages for PyTorch's large CPU tensors
(``THP_MEM_ALLOC_ENABLE=1``, see ``GloResNetLib/fastnet.py``), which speeds up the baseline too; the ratio
is therefore conservative. The last printed line is the end-to-end ratio baseline/ours (in memory, the
bundle's TTA views, Grad-CAM on).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "GloResNet"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ceiling import ceiling_gflops  # noqa: E402
from GloResNetLib.bundle import default_metadata, load_bundle, save_bundle  # noqa: E402
from GloResNetLib.inference import predict, predict_file, tta_views  # noqa: E402
from GloResNetLib.io import read_volume, volume_stem, write_text_atomic, write_volume  # noqa: E402
from GloResNetLib.models import build_model  # noqa: E402
from GloResNetLib.preprocessing import preprocess  # noqa: E402
from monai_baseline import MonaiBaseline  # noqa: E402

STAGES = ("load", "preprocess", "network", "cam", "write")
PROB_TOL, CAM_MIN_CORR = 1e-3, 0.99


# ------------------------------------------------------------------------------------------------ set-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", help="T2w volume (.nii/.nii.gz/.nrrd); default: a synthetic dHCP-sized volume")
    p.add_argument("--model", help="model bundle; default: a random-init resnet10 bundle in a temp folder")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds with the bundle's TTA views (default 3)")
    p.add_argument(
        "--repeats8", type=int, default=2, help="timed rounds with all 8 views, in memory (default 2; 0 skips)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="synthetic volume seed")
    p.add_argument("--shape", type=int, nargs=3, default=(217, 290, 290), help="synthetic volume shape")
    p.add_argument("--size", type=int, default=128, help="network input size of the random bundle (default 128)")
    p.add_argument(
        "--widths",
        type=int,
        nargs=4,
        default=None,
        help="ResNet-10 widths of the random bundle (default the paper's 64 128 256 512)",
    )
    p.add_argument(
        "--ceiling-size",
        type=int,
        default=None,
        help="matrix size / convolution grid of the ceiling measurements (default: 2048 / 48 on CPU, "
        "8192 / 96 on CUDA)",
    )
    p.add_argument(
        "--half",
        action="store_true",
        help="with --device cuda: ours in float16 (GLORESNET_CUDA_HALF=1); still checked for equality",
    )
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one prediction")
    p.add_argument("--json", metavar="FILE", help="also write all medians as JSON")
    return p.parse_args(argv)


def make_volume(args: argparse.Namespace, tmp: Path) -> Path:
    if args.input:
        return Path(args.input)
    from GloResNetLib.synth import synth_volume

    array, affine, _, _ = synth_volume(
        args.seed, age_weeks=40, shape=tuple(args.shape), voxel_size=0.5, orientation="RAS", max_dim=None
    )
    return write_volume(tmp / "bench_T2w.nii.gz", np.asarray(array, dtype=np.float32), affine)


def make_bundle(
    tmp: Path, array: np.ndarray, affine: np.ndarray, size: int = 128, widths: list[int] | None = None
) -> Path:
    """Random-init resnet10 with BatchNorm statistics of this volume and a non-trivial, unsaturated head."""
    from GloResNetLib.preprocessing import PreprocessConfig

    arch_params = {"widths": list(widths)} if widths else {}
    pre = PreprocessConfig(size=(size,) * 3)
    model = calibrated_model(torch.from_numpy(preprocess(array, affine, pre).array)[None, None], **arch_params)
    meta = default_metadata(
        "bench-random-resnet10",
        arch_params=arch_params,
        preprocess=pre,
        provenance="random initialisation for benchmarking",
        training_data={"description": "none (benchmark)", "synthetic": True, "trained": False},
    )
    return save_bundle(tmp / "bundle", [model.state_dict()], meta)


def calibrated_model(x: torch.Tensor, seed: int = 0, arch: str = "resnet10", **params) -> torch.nn.Module:
    """A random-init model (eval mode) with BatchNorm statistics of the input x (1, 1, X, Y, Z) and classifier
    rows set so that the brain-injury Grad-CAM is not empty and P(BI) ~ 0.73 on x (not saturated); a ``"mil"``
    lesion-head model (the demo's) gets the offset that makes its lesion score 1 on x instead."""
    torch.manual_seed(seed)
    model = build_model(arch, **params)
    model.train()
    with torch.no_grad():
        model(x)
        model.eval()
        pooled = model.pool_features(model.features(x))[0]  # global average pool of the last stage
        if getattr(model, "lesion_mode", "none") == "mil":  # BI logit difference = lesion score + mil_bias
            model.mil_bias.fill_(1.0 - float(pooled[0]))
            return model
        w = model.fc.weight
        w[1] = w[1].abs()
        w[0] = -0.5 * w[1]
        model.fc.bias.zero_()
        margin = float((w[1] - w[0]) @ pooled)
        w *= 1.0 / max(margin, 1e-6)  # logit(BI) - logit(no BI) = 1 on this volume: P(BI) ~ 0.73
    return model


# ------------------------------------------------------------------------------------------------ ours


def ours_memory(bundle, array, affine, axes) -> tuple[dict, object]:
    r = predict(bundle, array, affine, tta=True, cam=True, tta_axes=axes)
    return dict(r.timings), r


def ours_file(bundle, path: Path, out_dir: Path, axes) -> tuple[dict, object]:
    """``predict_file`` and the outputs ``gloresnet predict`` writes (CAM, resampled input, JSON)."""
    r = predict_file(bundle, path, tta=True, cam=True, tta_axes=axes)
    t0 = time.perf_counter()
    stem = volume_stem(path)
    files = {
        "cam": str(write_volume(out_dir / f"{stem}_cam.nii.gz", r.cam, r.input_affine)),
        "resampled": str(write_volume(out_dir / f"{stem}_resampled.nii.gz", r.resampled, r.resampled_affine)),
    }
    r.timings["write"] = time.perf_counter() - t0
    write_text_atomic(out_dir / f"{stem}.json", json.dumps({**r.to_json_dict(), "outputs": files}) + "\n")
    r.timings["write"] = time.perf_counter() - t0
    return dict(r.timings), r


# ------------------------------------------------------------------------------------------------ checks


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])


def check(base: dict, ours, label: str) -> bool:
    d_in = float(np.abs(base["input"] - ours.resampled).max())
    d_p = abs(base["probability"] - ours.probability)
    d_views = float(np.abs(base["view_probabilities"] - np.array(list(ours.view_probabilities.values()))).max())
    c_net, c_in = corr(base["cam_network"], ours.cam_network), corr(base["cam"], ours.cam)
    ok = d_p <= PROB_TOL and d_views <= PROB_TOL and c_net >= CAM_MIN_CORR and c_in >= CAM_MIN_CORR
    ok = ok and float(ours.cam.max()) > 0
    print(
        f"  check {label}: network input max|diff| {d_in:.2e}; P(BI) {base['probability']:.6f} vs "
        f"{ours.probability:.6f} (|diff| {d_p:.1e}, views {d_views:.1e}); CAM corr {c_net:.5f} (network grid), "
        f"{c_in:.5f} (input grid) -> {'SAME' if ok else 'DIFFERENT'}"
    )
    return ok


# ------------------------------------------------------------------------------------------------ timing


def network_flops(model: torch.nn.Module, size, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 1, *size, device=device)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return float(fc.get_total_flops())


def med(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else None


def fmt(v: float | None) -> str:
    return f"{v:9.3f}" if v is not None else f"{'-':>9}"


def time_rounds(
    n, baseline, bundle, src_path, mem_img, array, affine, axes, out_dir, device, with_file=True, ceiling_size=None
):
    rows = {"base_mem": [], "ours_mem": [], "base_file": [], "ours_file": [], "ceiling": []}
    for i in range(n):

        def base_mem():
            t0 = time.perf_counter()
            t, _ = baseline.run(mem_img)
            rows["base_mem"].append({**t, "total": time.perf_counter() - t0})

        def our_mem():
            t0 = time.perf_counter()
            t, _ = ours_memory(bundle, array, affine, axes)
            rows["ours_mem"].append({**t, "total": time.perf_counter() - t0})

        def base_file():
            t0 = time.perf_counter()
            t, _ = baseline.run(src_path, out_dir)
            rows["base_file"].append({**t, "total": time.perf_counter() - t0})

        def our_file():
            t0 = time.perf_counter()
            t, _ = ours_file(bundle, src_path, out_dir, axes)
            rows["ours_file"].append({**t, "total": time.perf_counter() - t0})

        jobs = [base_mem, our_mem, base_file, our_file] if i % 2 == 0 else [our_mem, base_mem, our_file, base_file]
        for job in jobs if with_file else jobs[:2]:
            job()
        rows["ceiling"].append(ceiling_gflops(device, ceiling_size))
        line = (
            f"  round {i + 1}/{n}: baseline {rows['base_mem'][-1]['total']:.2f} s, ours "
            f"{rows['ours_mem'][-1]['total']:.2f} s in memory"
        )
        if with_file:
            line += f"; from file {rows['base_file'][-1]['total']:.2f} s vs {rows['ours_file'][-1]['total']:.2f} s"
        print(line, flush=True)
    return rows


def report(rows, flops_per_view: float, n_views: int, label: str) -> dict:
    print(f"\n== {label}: medians over {len(rows['ours_mem'])} rounds (seconds) ==")
    print(
        f"{'stage':<12}{'baseline':>10}{'ours':>10}{'ratio':>8}   (load/write from the file path; "
        "other stages in memory)"
    )
    summary = {}
    for s in STAGES:
        src_b, src_o = ("base_file", "ours_file") if s in ("load", "write") else ("base_mem", "ours_mem")
        b, o = med(rows[src_b], s), med(rows[src_o], s)
        ratio = f"{b / o:8.2f}" if b and o else f"{'':8}"
        print(f"{s:<12}{fmt(b)} {fmt(o)}{ratio}")
        summary[s] = {"baseline": b, "ours": o}
    out = {}
    for path, (kb, ko) in {"in memory": ("base_mem", "ours_mem"), "from file": ("base_file", "ours_file")}.items():
        b, o = med(rows[kb], "total"), med(rows[ko], "total")
        if b is None or o is None:
            continue
        out[path] = b / o
        print(f"{'end-to-end ' + path:<26}{fmt(b)} {fmt(o)}   ratio {b / o:.2f}x")
    ceiling = {k: med(rows["ceiling"], k) for k in rows["ceiling"][0]}
    best = ceiling["best"]
    best_name = max((k for k in ceiling if k != "best"), key=lambda k: ceiling[k])
    gflop = flops_per_view * n_views / 1e9
    nb, no = med(rows["base_mem"], "network"), med(rows["ours_mem"], "network")
    print(
        "ceiling (GFLOP/s, median over rounds): "
        + ", ".join(f"{k} {v:.1f}" for k, v in ceiling.items() if k != "best")
        + f" -> best: {best_name}"
    )
    print(
        f"network: {gflop:.1f} GFLOP ({n_views} views) -> baseline {gflop / nb:.1f} GFLOP/s "
        f"({100 * gflop / nb / best:.0f}%), ours {gflop / no:.1f} GFLOP/s ({100 * gflop / no / best:.0f}% of the "
        f"ceiling, {best_name} at {best:.1f} GFLOP/s)"
    )
    summary.update(
        end_to_end=out,
        network_gflops={"baseline": gflop / nb, "ours": gflop / no},
        ceiling_gflops=ceiling,
        ceiling_share={"baseline": gflop / nb / best, "ours": gflop / no / best},
    )
    return summary


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.half:
        os.environ["GLORESNET_CUDA_HALF"] = "1"
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here", file=sys.stderr)
        return 2
    tmp_ctx = tempfile.TemporaryDirectory(prefix="bench_predict_")
    tmp = Path(tmp_ctx.name)
    out_dir = tmp / "out"
    out_dir.mkdir()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        flush=True,
    )
    t0 = time.perf_counter()
    src = make_volume(args, tmp)
    array, affine = read_volume(src)
    print(
        f"input {src.name}: {array.shape} float32, voxel {np.abs(affine[:3, :3]).sum(0).round(3).tolist()} mm, "
        f"{src.stat().st_size / 1e6:.1f} MB on disk ({time.perf_counter() - t0:.1f} s to make)",
        flush=True,
    )
    bundle_path = Path(args.model) if args.model else make_bundle(tmp, array, affine, args.size, args.widths)
    bundle = load_bundle(bundle_path, device=device)
    model = bundle.models[0]
    if len(bundle.models) > 1:
        print("note: the baseline uses the bundle's first model only; ours averages all of them")
    size = bundle.preprocess_config.size
    views2 = tta_views(bundle.tta_axes)
    baseline = MonaiBaseline(model, device, views2, size=size)
    mem_img = (array, affine)
    flops = network_flops(model, size, device)
    print(
        f"model {bundle.name}; {flops / 1e9:.1f} GFLOP per view at {size}; views {len(views2)} (default) and 8",
        flush=True,
    )

    print("equivalence (untimed; also warms both sides up):", flush=True)
    ok = True
    base_out = baseline.run(mem_img)[1]
    ok &= check(base_out, ours_memory(bundle, array, affine, None)[1], f"{len(views2)} views, in memory")
    ok &= check(
        baseline.run(src, out_dir)[1], ours_file(bundle, src, out_dir, None)[1], f"{len(views2)} views, from file"
    )
    views8 = tta_views([0, 1, 2])
    baseline8 = MonaiBaseline(model, device, views8, size=size)
    if args.repeats8 > 0:
        ok &= check(baseline8.run(mem_img)[1], ours_memory(bundle, array, affine, [0, 1, 2])[1], "8 views")
    if not ok:
        print("RESULTS DIFFER: no speed-up is reported for different results.")
        print("ratio: n/a (results differ)")
        return 1

    area = MonaiBaseline(model, device, views2, mode="area", size=size)
    t_area = statistics.median(area.run(mem_img)[0]["preprocess"] for _ in range(2))

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            ours_memory(bundle, array, affine, None)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))

    print(f"\ntiming {args.repeats} rounds, {len(views2)} views + CAM:", flush=True)
    rows2 = time_rounds(
        args.repeats,
        baseline,
        bundle,
        src,
        mem_img,
        array,
        affine,
        None,
        out_dir,
        device,
        ceiling_size=args.ceiling_size,
    )
    results = {"views2": report(rows2, flops, len(views2), f"{len(views2)}-view TTA + Grad-CAM")}
    print(f"(MONAI's default Resize mode 'area' preprocess, untimed baseline variant: {t_area:.3f} s)")

    if args.repeats8 > 0:
        print(f"\ntiming {args.repeats8} rounds, 8 views + CAM:", flush=True)
        rows8 = time_rounds(
            args.repeats8,
            baseline8,
            bundle,
            src,
            mem_img,
            array,
            affine,
            [0, 1, 2],
            out_dir,
            device,
            with_file=False,
            ceiling_size=args.ceiling_size,
        )
        results["views8"] = report(rows8, flops, 8, "8-view TTA + Grad-CAM")

    # no TTA, load included (the goal: < 1 s per volume on CPU)
    no_tta = {"cam": [], "no_cam": []}
    for _ in range(max(1, args.repeats)):
        for key, cam in (("cam", True), ("no_cam", False)):
            t0 = time.perf_counter()
            predict_file(bundle, src, tta=False, cam=cam)
            no_tta[key].append(time.perf_counter() - t0)
    nt_cam, nt_plain = statistics.median(no_tta["cam"]), statistics.median(no_tta["no_cam"])
    print(f"\nours without TTA, load included (predict_file): {nt_cam:.3f} s with CAM, {nt_plain:.3f} s without")
    results["no_tta_with_load"] = {"cam": nt_cam, "no_cam": nt_plain}

    # the real command line once (model loading and process-level costs included)
    t0 = time.perf_counter()
    from GloResNetLib.cli import main as cli_main

    with contextlib.redirect_stdout(io.StringIO()):
        rc = cli_main(
            [
                "predict",
                str(src),
                "--model",
                str(bundle_path),
                "--out",
                str(out_dir / "cli"),
                "--device",
                str(device),
                "--json",
            ]
        )
    print(f"`gloresnet predict` once (bundle load included): {time.perf_counter() - t0:.3f} s, exit code {rc}")

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
    r = results["views2"]["end_to_end"]
    print(
        f"speed-up baseline/ours, {len(views2)}-view TTA + CAM: {r['in memory']:.2f}x in memory, "
        f"{r['from file']:.2f}x from file (load and write-back included)"
    )
    print(f"ratio: {r['in memory']:.2f}")
    tmp_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
