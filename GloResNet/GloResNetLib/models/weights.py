"""Loading weights files as data, never as code: safetensors, or ``torch.load(weights_only=True)``.

MedicalNet (Tencent) checkpoints are ``{'state_dict': {'module.conv1.weight': ...}}``; the ``module.`` prefix
(from DataParallel) is stripped and classifier / segmentation-head keys are dropped.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import BundleError

#: Key prefixes of heads that never transfer from a pretraining task to our classifier.
HEAD_PREFIXES = ("fc.", "conv_seg.", "classifier.", "head.")


@dataclass
class LoadReport:
    """What a non-strict weight load did: loaded, missing and unexpected keys."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs and provenance."""
        return (
            f"{len(self.loaded)} tensors loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.dropped_head)} head tensors dropped"
        )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a PyTorch file without executing pickled code.

    Accepts a plain ``{name: tensor}`` dict or a checkpoint holding one under ``state_dict`` / ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BundleError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise BundleError(
                f"{path}: refused, the file holds more than weights (Python objects that "
                "could run code); load only plain state dicts or safetensors"
            ) from None
        raise BundleError(f"{path}: not a PyTorch weights file (unreadable pickle data)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path}: not a PyTorch weights file ({exc.__class__.__name__})") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise BundleError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    return dict(obj)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a DataParallel-style prefix from every key that has it."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_pretrained(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "weights", drop_heads: bool = True
) -> LoadReport:
    """Load matching tensors into ``model`` (non-strict by name, strict on shapes); return the report."""
    state = strip_prefix(state)
    report = LoadReport()
    own = model.state_dict()
    kept: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if drop_heads and key.startswith(HEAD_PREFIXES):
            report.dropped_head.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            raise BundleError(
                f"{source}: tensor '{key}' has shape {tuple(value.shape)}, the model expects "
                f"{tuple(own[key].shape)} (wrong architecture for these weights?)"
            )
        else:
            kept[key] = value
    if not kept:
        raise BundleError(f"{source}: no tensor matches the model (wrong architecture for these weights?)")
    model.load_state_dict(kept, strict=False)
    report.loaded = sorted(kept)
    report.missing = sorted(k for k in own if k not in kept and not k.endswith("num_batches_tracked"))
    return report


def load_medicalnet_weights(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Initialise a backbone from a MedicalNet ``resnet_*.pth`` file; the classifier stays random."""
    return load_pretrained(model, load_state_dict_file(path), source=str(path))
