"""Network architectures selectable by name (``--arch``), and pretrained-weight loading.

What every architecture provides (``features``, optional ``pool_features``, ``head``, optional ``gradcam``)
is written down in :mod:`.contracts`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import BundleError
from .acs import acs_resnet18
from .contracts import Backbone, GradCamBackbone, PoolingBackbone, PretrainedLoader
from .lightweight import mrf_dsnet
from .resnet import ResNet3D
from .slice_encoder import slice_resnet18
from .weights import LoadReport, load_medicalnet_weights, load_state_dict_file

__all__ = [
    "ARCHITECTURES",
    "PRETRAINED_FORMAT",
    "TWO_D_WEIGHT_ARCHS",
    "Backbone",
    "GradCamBackbone",
    "LoadReport",
    "PoolingBackbone",
    "PretrainedLoader",
    "ResNet3D",
    "build_model",
    "count_parameters",
    "describe_pretrained",
    "load_medicalnet_weights",
    "load_pretrained_weights",
    "load_state_dict_file",
    "pretrained_metadata",
]

#: name -> (factory, description). Every model maps (B, 1, X, Y, Z) to logits (B, num_classes) and is a
#: :class:`~.contracts.Backbone` (``features``, ``head``), so that Grad-CAM comes from the prediction pass.
ARCHITECTURES: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "resnet10": (
        lambda **kw: ResNet3D((1, 1, 1, 1), **kw),
        "3D ResNet-10, MedicalNet layout, strided stages (GloResNet)",
    ),
    "resnet10_dilated": (
        lambda **kw: ResNet3D((1, 1, 1, 1), dilated=True, **kw),
        "3D ResNet-10, MedicalNet's dilated layer3/layer4 (finer saliency, 4x FLOPs)",
    ),
    "resnet18": (lambda **kw: ResNet3D((2, 2, 2, 2), **kw), "3D ResNet-18, MedicalNet layout, strided"),
    "mrf_dsnet": (
        mrf_dsnet,
        "lightweight depthwise-separable multi-receptive-field 3D net (~2.5% of ResNet-10's parameters)",
    ),
    "acs_resnet18": (acs_resnet18, "2D ResNet-18 run on 3D with ACS convolutions (loads 2D torchvision weights)"),
    "slice_resnet18": (
        slice_resnet18,
        "2D ResNet-18 per slice + slice-position embedding + mean/max/attention pooling (loads 2D torchvision weights)",
    ),
}


def build_model(arch: str = "resnet10", num_classes: int = 2, **params: Any) -> nn.Module:
    """Build an architecture by name.

    Args:
        arch: a key of :data:`ARCHITECTURES`.
        num_classes: outputs K (2 for the classifier, 1 for brain-age regression).
        **params: the architecture's parameters (``--arch-params``), e.g. ``widths``, ``dropout``.
    Returns:
        A :class:`~.contracts.Backbone`: (B, 1, X, Y, Z) -> (B, K), randomly initialised, in training mode.
    Raises:
        BundleError: an unknown name or parameter.
    """
    if arch not in ARCHITECTURES:
        raise BundleError(f"unknown architecture '{arch}' (known: {', '.join(sorted(ARCHITECTURES))})")
    try:
        return ARCHITECTURES[arch][0](num_classes=num_classes, **params)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"architecture '{arch}': bad parameters {params} ({exc})") from None


#: ``format`` entry in the safetensors metadata of weights written by GloResNet's own pretraining
#: (``gloresnet pretrain-age``); the full description is JSON under ``gloresnet_pretrained``.
PRETRAINED_FORMAT = "gloresnet-pretrained"


def pretrained_metadata(path: str) -> dict[str, Any] | None:
    """The description stored in a GloResNet-pretrained ``.safetensors`` file.

    Args:
        path: a weights file.
    Returns:
        The description (arch, data, cv, ...), or None for any other file.
    Raises:
        BundleError: the file claims the format but its description is corrupt.
    """
    if not str(path).endswith(".safetensors") or not os.path.isfile(path):
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - unreadable files are reported by load_state_dict_file
        return None
    if meta.get("format") != PRETRAINED_FORMAT:
        return None
    try:
        doc = json.loads(meta.get("gloresnet_pretrained", ""))
    except json.JSONDecodeError:
        raise BundleError(f"{path}: corrupt GloResNet pretraining metadata") from None
    return doc if isinstance(doc, dict) else None


#: Architectures initialised from 2D torchvision-layout ResNet weights (their ``load_pretrained_file``).
TWO_D_WEIGHT_ARCHS = ("acs_resnet18", "slice_resnet18")


def describe_pretrained(path: str, arch: str | None = None) -> str:
    """One phrase naming a run's initialisation weights (for provenance).

    Args:
        path: the weights file; arch: the architecture it initialises.
    Returns:
        E.g. "MedicalNet initialisation from resnet_10.pth".
    """
    name = os.path.basename(str(path))
    try:
        doc = pretrained_metadata(path)
    except BundleError:
        doc = None
    if doc is None:
        kind = "2D ResNet (torchvision layout)" if arch in TWO_D_WEIGHT_ARCHS else "MedicalNet"
        return f"{kind} initialisation from {name}"
    cv = doc.get("cv", {})
    mae, base = cv.get("mae_weeks", {}), cv.get("baseline_mae_weeks", {})
    figures = ""
    if mae.get("mean") is not None and base.get("mean") is not None:
        figures = (
            f", {cv.get('k')}-fold CV MAE {mae['mean']:.2f} +/- {mae['sd']:.2f} weeks vs "
            f"{base['mean']:.2f} for the mean-age baseline"
        )
    data = doc.get("data", {})
    return (
        f"brain-age pretrained backbone from {name} (gloresnet pretrain-age, {doc.get('arch')}, "
        f"{data.get('n', '?')} {'SYNTHETIC ' if doc.get('synthetic') else ''}volumes{figures})"
    )


def load_pretrained_weights(model: nn.Module, path: str, arch: str | None = None) -> LoadReport:
    """Initialise ``model`` from a weights file: the model's own ``load_pretrained_file(path)`` when it has
    one (e.g. 2D ImageNet-style weights for 2D-derived backbones), else MedicalNet / same-layout weights.

    Weights from GloResNet's own pretraining (:data:`PRETRAINED_FORMAT`, e.g. ``gloresnet pretrain-age``) name
    their architecture: ``arch`` (the model's architecture name) must match it, and every tensor must find
    its place in the model; otherwise :class:`BundleError`.

    Args:
        model: the model to initialise (in place).
        path: the weights file.
        arch: the model's architecture name (checked against GloResNet-pretrained weights).
    Returns:
        What was loaded, skipped and missing.
    Raises:
        BundleError: unreadable weights, or weights of another architecture.
    """
    doc = pretrained_metadata(path)
    if doc is not None:
        if arch is not None and doc.get("arch") != arch:
            raise BundleError(
                f"{path}: pretrained for architecture '{doc.get('arch')}', cannot initialise "
                f"'{arch}' (pretrain with --arch {arch}, or train with --arch {doc.get('arch')})"
            )
        report = load_medicalnet_weights(model, path)
        if report.unexpected:
            raise BundleError(
                f"{path}: {len(report.unexpected)} tensors of this '{doc.get('arch')}' backbone "
                f"have no place in the model (e.g. '{report.unexpected[0]}'): wrong architecture"
            )
        return report
    own = getattr(model, "load_pretrained_file", None)
    return own(path) if own is not None else load_medicalnet_weights(model, path)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters.

    Args:
        model: any module.
    Returns:
        The count of elements of parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
