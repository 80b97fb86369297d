"""The arithmetic ceiling of a device: the best of torch's fp32 matrix product, numpy's SGEMM and a large 3^3
convolution (GFLOP/s), against which ``bench_predict.py`` reports the network's share.

Why three: on an AVX-512 EPYC torch's fp32 matmul (MKL) reaches about 200 GFLOP/s while numpy's OpenBLAS SGEMM
reaches about 470 and a 64-channel 3^3 oneDNN convolution about 430, so any one of them alone can understate
what the hardware does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, device: torch.device, n: int = 3) -> float:
    best = float("inf")
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


#: numpy SGEMM in a child process: OpenBLAS reads OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE when it loads, and an
#: override (set on some machines for reproducibility) can halve its speed.
_SGEMM = """
import sys, time, numpy as np
n = int(sys.argv[1]); a = np.random.rand(n, n).astype(np.float32); b = np.random.rand(n, n).astype(np.float32)
a @ b
best = min((lambda t0: (a @ b, time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(3))
print(2 * n ** 3 / best / 1e9)
"""


def numpy_sgemm_gflops(n: int) -> float | None:
    """numpy's float32 matrix product (n x n) in a child process without OpenBLAS core-type overrides."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    if torch.get_num_threads() and "OPENBLAS_NUM_THREADS" not in env:
        env["OPENBLAS_NUM_THREADS"] = str(torch.get_num_threads())  # the same threads as the network
    try:
        out = subprocess.run(
            [sys.executable, "-c", _SGEMM, str(n)], env=env, capture_output=True, text=True, timeout=120, check=True
        )
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def ceiling_gflops(device: torch.device, size: int | None = None) -> dict[str, float]:
    """Arithmetic ceiling candidates in GFLOP/s (best of 3 each): torch fp32 matmul, numpy SGEMM (CPU only) and
    a 64-channel 3^3 convolution (oneDNN / cuDNN) on a ``grid``^3 input. ``best`` is the largest of them."""
    cpu = device.type == "cpu"
    n = size or (2048 if cpu else 8192)
    grid = max(8, n // 40) if size else (48 if cpu else 96)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    out = {"torch matmul": 2 * n**3 / _best_time(lambda: a @ b, device) / 1e9}
    if cpu:
        sgemm = numpy_sgemm_gflops(n)
        if sgemm is not None:
            out["numpy SGEMM"] = sgemm
    x, w = torch.randn(1, 64, grid, grid, grid, device=device), torch.randn(64, 64, 3, 3, 3, device=device)
    with torch.no_grad():
        F.conv3d(x, w, padding=1)
        out["conv 3^3"] = 2 * 64 * 64 * 27 * grid**3 / _best_time(lambda: F.conv3d(x, w, padding=1), device) / 1e9
    out["best"] = max(out.values())
    return out
