"""The cost measurements of ``gloresnet compare``: forward FLOPs of one fold model and the CPU time of one
``inference.predict`` of a bundle (conventions in :mod:`GloResNetLib.compare`)."""

from __future__ import annotations

import time
from typing import Any


def count_flops(model: Any, size: list[int], in_channels: int = 1) -> float:
    """Forward FLOPs of ``model`` on one (1, in_channels, *size) input, as FlopCounterMode counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, in_channels, *size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())


def time_predict(bundle: Any, array: Any, affine: Any, repeats: int = 3) -> list[float]:
    """Wall times (s) of ``repeats`` calls of ``inference.predict`` (TTA and CAM on, CPU) after a warm-up."""
    from .inference import predict

    predict(bundle, array, affine, tta=True, cam=True, device="cpu")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(bundle, array, affine, tta=True, cam=True, device="cpu")
        times.append(time.perf_counter() - t0)
    return times


def predict_volume(path: str | None) -> tuple[Any, Any, str]:
    """The volume the predict time is measured on: ``path`` or a synthetic one (``synth_volume`` seed 0)."""
    if path:
        from .io import read_volume

        array, affine = read_volume(path)
        return array, affine, str(path)
    from .synth import synth_volume

    array, affine, _, _ = synth_volume(0)
    return array, affine, "synthetic (GloResNetLib.synth.synth_volume, seed 0)"


__all__ = ["count_flops", "predict_volume", "time_predict"]
