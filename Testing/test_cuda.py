"""CUDA path (marked ``cuda``; skipped without a GPU; ``benchmarks/device_check.sh`` runs them on a lent GPU).

Select them with ``python -m pytest Testing -m cuda``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import example_affine, make_head_volume
from GloResNetLib import load_bundle, predict
from training_fixtures import tiny_config, write_cohort

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64))[0, 1])


def test_predict_on_cuda_matches_cpu(small_bundle):
    vol, affine = make_head_volume(), example_affine()
    cpu = predict(load_bundle(small_bundle, device="cpu"), vol, affine)
    gpu = predict(load_bundle(small_bundle, device="cuda"), vol, affine)
    assert gpu.device.startswith("cuda") and gpu.cam.shape == vol.shape
    assert abs(cpu.probability - gpu.probability) <= 2e-3 and _corr(cpu.cam, gpu.cam) >= 0.99
    assert np.isfinite(gpu.cam).all() and float(gpu.cam.max()) > 0


def test_predict_in_half_precision_agrees(small_bundle, monkeypatch):
    vol, affine = make_head_volume(), example_affine()
    full = predict(load_bundle(small_bundle, device="cuda"), vol, affine)
    monkeypatch.setenv("GLORESNET_CUDA_HALF", "1")  # read at each prediction (fastnet.cuda_dtype)
    half = predict(load_bundle(small_bundle, device="cuda"), vol, affine)
    assert abs(full.probability - half.probability) <= 1e-2 and _corr(full.cam, half.cam) >= 0.98


def test_training_on_cuda_with_mixed_precision(tmp_path):
    from GloResNetLib.training import train_cv
    from GloResNetLib.training.amp import amp_dtype

    assert amp_dtype(torch.device("cuda"), True) in (torch.bfloat16, torch.float16)
    manifest = write_cohort(tmp_path / "cohort", n_subjects=12)
    run = train_cv(
        tiny_config(
            manifest, tmp_path / "run", tmp_path / "cache", device="cuda", amp=True, folds=2, epochs=2, batch_size=4
        )
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(np.isfinite(v) for v in metrics["pooled"].values() if isinstance(v, float))
    bundle = load_bundle(run / "bundle", device="cpu")  # trained on the GPU, usable on a CPU
    r = predict(bundle, make_head_volume(shape=(20, 20, 20)), np.eye(4))
    assert 0.0 <= r.probability <= 1.0 and np.isfinite(r.cam).all()
