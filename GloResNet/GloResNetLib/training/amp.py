"""Mixed precision (AMP) on CUDA and the evaluation forward pass (with the left-right flip TTA)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .cache import VolumeStore

__all__ = ["amp_dtype", "autocast", "predict_outputs"]


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype of a device.

    Args:
        device: the training device.
        enabled: the ``amp`` option.
    Returns:
        bfloat16 where supported, else float16, on CUDA only; None = full precision.
    """
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_outputs(
    model: nn.Module,
    store: VolumeStore,
    indices: np.ndarray,
    device: torch.device,
    tta: bool = True,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
    per_sample: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """One value per sample, in eval mode.

    Args:
        model: the network.
        store: the preprocessed volumes.
        indices: samples to predict, shape (N,).
        device: where to run; dtype: autocast dtype (None: full precision).
        tta: average over the identity and the left-right flip.
        batch_size: volumes per forward pass.
        per_sample: outputs (B, K) -> values (B,); default softmax P(class 1).
    Returns:
        Shape (N,).
    """
    per_sample = per_sample or (lambda y: torch.softmax(y, dim=1)[:, 1])
    model.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        x = torch.from_numpy(store.batch(idx)).unsqueeze(1).to(device)
        views = [x, x.flip(2)] if tta else [x]
        with autocast(device, dtype):
            y = model(torch.cat(views))
        out.append(per_sample(y.float()).reshape(len(views), len(idx)).mean(0).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
