"""Fold checkpoints (``last.pt``, ``best.pt``): written atomically, read as data only."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..io import atomic_path

__all__ = ["CHECKPOINT_VERSION", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` atomically (a kill never leaves a corrupt file).

    Args:
        path: the checkpoint file (``last.pt``, ``best.pt``).
        state: tensors and plain data.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint as data (``weights_only=True``).

    Args:
        path: the checkpoint file.
    Returns:
        The saved state.
    Raises:
        InputError: an unreadable checkpoint.
    """
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
        raise InputError(f"{path}: unreadable checkpoint ({exc.__class__.__name__}: {exc})") from None
