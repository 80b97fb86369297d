"""Network architectures selectable by name (``--arch``), and pretrained-weight loading."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import BundleError
from .resnet import ResNet3D
from .weights import LoadReport, load_medicalnet_weights, load_state_dict_file

#: name -> (factory, description). Every model maps (B, 1, X, Y, Z) to logits (B, num_classes) and exposes
#: ``features(x)`` (last conv stage) and ``head(pooled)`` so that Grad-CAM comes from the prediction pass.
ARCHITECTURES: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "resnet10": (lambda **kw: ResNet3D((1, 1, 1, 1), **kw),
                 "3D ResNet-10, MedicalNet layout, strided stages (GloResNet)"),
    "resnet10_dilated": (lambda **kw: ResNet3D((1, 1, 1, 1), dilated=True, **kw),
                         "3D ResNet-10, MedicalNet's dilated layer3/layer4 (finer saliency, 4x FLOPs)"),
    "resnet18": (lambda **kw: ResNet3D((2, 2, 2, 2), **kw), "3D ResNet-18, MedicalNet layout, strided"),
}


def build_model(arch: str = "resnet10", num_classes: int = 2, **params: Any) -> nn.Module:
    """Build an architecture by name; raises :class:`BundleError` for an unknown name or parameter."""
    if arch not in ARCHITECTURES:
        raise BundleError(f"unknown architecture '{arch}' (known: {', '.join(sorted(ARCHITECTURES))})")
    try:
        return ARCHITECTURES[arch][0](num_classes=num_classes, **params)
    except TypeError as exc:
        raise BundleError(f"architecture '{arch}': bad parameters {params} ({exc})") from None


def load_pretrained_weights(model: nn.Module, path: str) -> LoadReport:
    """Initialise ``model`` from a weights file: the model's own ``load_pretrained_file(path)`` when it has
    one (e.g. 2D ImageNet-style weights for 2D-derived backbones), else MedicalNet / same-layout weights."""
    own = getattr(model, "load_pretrained_file", None)
    return own(path) if own is not None else load_medicalnet_weights(model, path)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["ARCHITECTURES", "LoadReport", "ResNet3D", "build_model", "count_parameters",
           "load_medicalnet_weights", "load_pretrained_weights",
           "load_state_dict_file"]
