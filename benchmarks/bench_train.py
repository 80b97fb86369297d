"""Training throughput: GloResNet's trainer against a straightforward MONAI loop, same data, same run.

Run from the repository root (``python benchmarks/bench_train.py --help``)::

    python benchmarks/bench_train.py                  # CPU, 64^3 and 128^3, a few minutes on 2 cores
    python benchmarks/bench_train.py --device cuda

Data: ``--volumes`` synthetic T2w volumes (the project's generator, half of them with injuries), written as
NIfTI with a CSV manifest. Both sides train the same architecture (ResNet-10, random init) with the same
recipe for ``--epochs`` epochs over ``n_train`` volumes, ``--batch-size`` volumes per step:

- Ours: ``GloResNetLib.training.train_cv`` (one fold of a 2-fold run; preprocessing cache filled before
  training). Its per-epoch ``train_s`` (optimizer steps) and ``data_s`` (time waiting for input batches)
  are read from the fold's ``result.json``; validation and test evaluation are not counted.
- Baseline: MONAI ``CacheDataset`` (``LoadImaged``, ``EnsureChannelFirstd``, ``Orientationd("RAS")``,
  ``Resized(mode="trilinear")``, ``NormalizeIntensityd`` cached; ``RandFlipd`` on axis 0 per sample) with a
  ``DataLoader`` (shuffle, ``num_workers=0`` as on this 2-core machine), eager fp32 model, mixup with one
  lambda per batch, class-weighted soft cross-entropy, ``torch.optim.AdamW(lr=2e-3, weight_decay=0.01)``.
  The cache is filled before timing; time spent getting each batch from the loader (and mixing it) is
  its data wait.

The first epoch of each side is a warm-up (kernel selection, first touches); medians over the other epochs
are reported: volumes/s = training volumes / seconds of optimizer steps, and the data-wait share of step time.
The last printed line is the volumes/s ratio ours/baseline at the largest size.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "GloResNet"))

from GloResNetLib.io import write_volume  # noqa: E402
from GloResNetLib.models import build_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="network input sizes (default 64 128)")
    p.add_argument("--volumes", type=int, default=24, help="synthetic volumes in the cohort (default 24)")
    p.add_argument(
        "--epochs",
        type=int,
        default=4,
        help="epochs per side; the first is a warm-up, medians over the rest (default 4)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="volumes per optimizer step (default 4)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_cohort(root: Path, n: int, seed: int) -> Path:
    """``n`` small synthetic volumes (labels alternate) and their manifest; returns the manifest path."""
    from GloResNetLib.synth import synth_volume

    rows = []
    for i in range(n):
        label = i % 2
        array, affine, _, _ = synth_volume(
            seed * 1000 + i, age_weeks=float(34 + i % 8), injuries=("pwml",) if label else (), max_dim=96
        )
        path = write_volume(root / f"sub-{i:03d}_T2w.nii.gz", np.asarray(array, np.float32), affine)
        rows.append({"path": path.name, "label": label, "subject": f"sub-{i:03d}"})
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "subject"])
        w.writeheader()
        w.writerows(rows)
    return manifest


# ------------------------------------------------------------------------------------------------ ours


def run_ours(manifest: Path, work: Path, size: int, args) -> dict:
    from GloResNetLib.training import TrainConfig, train_cv

    out = work / f"run_{size}"
    cfg = TrainConfig(
        manifest=str(manifest),
        out=str(out),
        size=size,
        epochs=args.epochs,
        folds=2,
        fold=0,
        batch_size=args.batch_size,
        device=args.device,
        tensorboard=False,
        cache_dir=str(work / "cache"),
        seed=args.seed,
        num_threads=args.threads,
    )
    t0 = time.perf_counter()
    train_cv(cfg, progress=lambda event: None)
    wall = time.perf_counter() - t0
    result = json.loads((out / "fold_0" / "result.json").read_text())
    epochs = [(h["train_s"], h["data_s"]) for h in result["history"]]
    return {"n_train": int(result["n_train"]), "wall_s": wall, **timed_summary(int(result["n_train"]), epochs)}


def timed_summary(n_train: int, epochs: list[tuple[float, float]]) -> dict:
    """Medians over the epochs after the warm-up: step seconds, data-wait seconds, volumes/s, wait share."""
    timed = epochs[1:]
    step_s = float(np.median([s for s, _ in timed]))
    data_s = float(np.median([d for _, d in timed]))
    return {
        "train_s": step_s,
        "data_s": data_s,
        "volumes_per_s": n_train / step_s,
        "data_share": float(np.median([d / s for s, d in timed])),
        "epochs": epochs,
    }


# ------------------------------------------------------------------------------------------------ baseline


def run_monai(manifest: Path, size: int, n_train: int, args) -> dict:
    """The straightforward loop on the first ``n_train`` volumes of the manifest."""
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        RandFlipd,
        Resized,
    )

    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))[:n_train]
    data = [{"image": str(manifest.parent / r["path"]), "label": int(r["label"])} for r in rows]
    transform = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Resized("image", (size,) * 3, mode="trilinear"),
            NormalizeIntensityd("image"),
            RandFlipd("image", prob=0.5, spatial_axis=0),
        ]
    )
    t0 = time.perf_counter()
    ds = CacheDataset(data, transform, cache_rate=1.0, num_workers=0, progress=False)
    cache_s = time.perf_counter() - t0
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=0)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = build_model("resnet10").to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    labels = np.array([d["label"] for d in data])
    weights = torch.tensor(
        [len(labels) / (2 * max(1, int((labels == c).sum()))) for c in (0, 1)], dtype=torch.float32, device=device
    )
    rng = np.random.default_rng(args.seed)
    epochs = []
    for _ in range(args.epochs):
        data_s = step_s = 0.0
        it = iter(loader)
        while True:
            t_step = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            x = batch["image"].as_tensor().to(device)
            y = torch.nn.functional.one_hot(batch["label"].long(), 2).float().to(device)
            lam, perm = float(rng.beta(1.0, 1.0)), torch.as_tensor(rng.permutation(len(x)), device=device)
            x, y = lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
            data_s += time.perf_counter() - t_step
            opt.zero_grad(set_to_none=True)
            logp = torch.log_softmax(model(x), dim=1)
            loss = -(y * weights * logp).sum(1).mean()
            loss.backward()
            opt.step()
            float(loss)  # synchronises on a GPU
            step_s += time.perf_counter() - t_step
        epochs.append((step_s, data_s))
    return {"n_train": n_train, "cache_s": cache_s, **timed_summary(n_train, epochs)}


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.epochs < 2:
        print("--epochs must be at least 2 (the first is a warm-up)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        manifest = make_cohort(work / "cohort", args.volumes, args.seed)
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
            f"{args.volumes} synthetic volumes ({time.perf_counter() - t0:.1f} s to make); batch "
            f"{args.batch_size}, {args.epochs} epochs per side (first = warm-up)",
            flush=True,
        )
        results = {}
        for size in args.sizes:
            ours = run_ours(manifest, work, size, args)
            base = run_monai(manifest, size, ours["n_train"], args)
            results[size] = (base, ours)
            steps = math.ceil(ours["n_train"] / args.batch_size)
            print(f"\n== {size}^3: {ours['n_train']} training volumes, {steps} steps per epoch ==")
            print(f"{'':<26}{'volumes/s':>10}{'epoch s':>9}{'data wait':>11}")
            for name, r in (("MONAI CacheDataset loop", base), ("GloResNet trainer", ours)):
                print(f"{name:<26}{r['volumes_per_s']:>10.3f}{r['train_s']:>9.2f}{100 * r['data_share']:>10.1f}%")
            print(
                f"ratio ours/baseline at {size}^3: {ours['volumes_per_s'] / base['volumes_per_s']:.2f}x "
                f"(medians of {args.epochs - 1} epochs after warm-up; warm-up epochs: baseline "
                f"{base['epochs'][0][0]:.1f} s, ours {ours['epochs'][0][0]:.1f} s; MONAI cache fill "
                f"{base['cache_s']:.1f} s)",
                flush=True,
            )
    size = max(results)
    base, ours = results[size]
    print(f"ratio: {ours['volumes_per_s'] / base['volumes_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
