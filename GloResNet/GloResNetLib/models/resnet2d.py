"""ResNet-18 with torchvision's layout and parameter names, for 2D and 2D-derived 3D backbones.

:class:`ResNetLayout` builds the torchvision ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer4.1.downsample.0/1``) from given convolution, normalisation and pooling factories, so that a 2D network
(:func:`resnet18_2d`), its ACS 3D counterpart (:mod:`.acs`) and the per-slice encoder (:mod:`.slice_encoder`)
all take a torchvision ``resnet18`` state dict (e.g. ImageNet weights saved to a file elsewhere) tensor for
tensor. torchvision itself is not needed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import BundleError
from .weights import HEAD_PREFIXES, LoadReport, load_pretrained, load_state_dict_file, strip_prefix

DEFAULT_WIDTHS = (64, 128, 256, 512)
#: conv(in_channels, out_channels, kernel, stride, padding) -> module without bias
ConvFactory = Callable[[int, int, int, int, int], nn.Module]


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv-bn-relu-conv-bn + (downsampled) identity, relu."""

    def __init__(
        self, conv: ConvFactory, norm: Callable[[int], nn.Module], inplanes: int, planes: int, stride: int = 1
    ) -> None:
        super().__init__()
        self.conv1 = conv(inplanes, planes, 3, stride, 1)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(planes, planes, 3, 1, 1)
        self.bn2 = norm(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(conv(inplanes, planes, 1, stride, 0), norm(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNetLayout(nn.Module):
    """torchvision ResNet trunk (stem + 4 stages) from factories; ``features`` is the last stage."""

    def __init__(
        self,
        conv: ConvFactory,
        norm: Callable[[int], nn.Module],
        pool: nn.Module,
        layers: Sequence[int] = (2, 2, 2, 2),
        in_channels: int = 3,
        widths: Sequence[int] = DEFAULT_WIDTHS,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be 4 positive integers (got {widths})")
        self.conv1 = conv(in_channels, widths[0], 7, 2, 3)
        self.bn1 = norm(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = pool
        inplanes, stages = widths[0], []
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(conv, norm, inplanes, planes, stride)]
            stage += [BasicBlock(conv, norm, planes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = widths[3]
        for m in self.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage activations (stride 32 of the input)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def conv2d(cin: int, cout: int, k: int, stride: int, padding: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class ResNet2d(ResNetLayout):
    """2D ResNet-18 classifier with torchvision's parameter names (``fc`` head)."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        layers: Sequence[int] = (2, 2, 2, 2),
    ) -> None:
        super().__init__(conv2d, nn.BatchNorm2d, nn.MaxPool2d(3, 2, 1), layers, in_channels, widths)
        self.fc = nn.Linear(self.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def resnet18_2d(num_classes: int = 1000, in_channels: int = 3, widths: Sequence[int] = DEFAULT_WIDTHS) -> ResNet2d:
    """torchvision-compatible 2D ResNet-18 (for making or checking weight files)."""
    return ResNet2d(num_classes, in_channels, widths)


def read_torchvision_resnet(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A torchvision-layout 2D ResNet state dict from a file (safetensors or weights-only torch.load).

    Raises :class:`BundleError` naming the file when it is not one (e.g. a MedicalNet 3D checkpoint).
    """
    state = strip_prefix(load_state_dict_file(path))
    stem, block = state.get("conv1.weight"), state.get("layer1.0.conv1.weight")
    if stem is None or block is None:
        raise BundleError(
            f"{path}: not a torchvision-style ResNet state dict (no conv1.weight / layer1.0.conv1.weight)"
        )
    if stem.dim() != 4 or block.dim() != 4:
        raise BundleError(
            f"{path}: conv1.weight has {stem.dim()} dimensions; 2D ResNet weights have 4 "
            "(a 3D checkpoint such as MedicalNet's belongs to --arch resnet10/resnet18)"
        )
    return state


def adapt_stem_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-convolution kernel (C_out, C_file, k, k) of a weights file for a model with ``in_channels`` inputs.

    For one channel the RGB kernel is **summed** over its colour axis: a grey image x then gives exactly the
    stem response of the RGB image (x, x, x). Equal counts are kept; any other count gets the colour-mean kernel
    repeated and scaled by C_file / in_channels (same response to an image that is constant over channels).
    """
    have = weight.shape[1]
    if have == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (have / in_channels)


def load_2d_weights(trunk: nn.Module, path: str | os.PathLike, prefix: str = "", in_channels: int = 1) -> LoadReport:
    """Load torchvision 2D ResNet weights into a :class:`ResNetLayout` (under ``prefix`` in the model).

    The stem kernel is adapted by :func:`adapt_stem_weight` (RGB summed for a one-channel MRI input); ``fc.*``
    is dropped. Strict otherwise: every trunk tensor must be in the file with the trunk's shape and the file may
    hold no other (``num_batches_tracked`` may be absent, as in old torchvision files), else
    :class:`BundleError` naming the file (e.g. a ResNet-34/50 file, or other widths).
    """
    state = read_torchvision_resnet(path)
    state["conv1.weight"] = adapt_stem_weight(state["conv1.weight"], in_channels)
    head = sorted(k for k in state if k.startswith(HEAD_PREFIXES))
    state = {k: v for k, v in state.items() if k not in head}
    wanted = {k[len(prefix) :] for k in trunk.state_dict() if k.startswith(prefix)}
    wanted -= {k for k in wanted if k.startswith(HEAD_PREFIXES)}
    extra = sorted(set(state) - wanted)
    missing = sorted(k for k in wanted - set(state) if not k.endswith("num_batches_tracked"))
    if extra or missing:
        what = (
            f"has {len(extra)} tensors a ResNet-18 does not (e.g. '{extra[0]}')"
            if extra
            else f"lacks {len(missing)} ResNet-18 tensors (e.g. '{missing[0]}')"
        )
        raise BundleError(f"{path}: {what}: not a torchvision resnet18 state dict (wrong architecture?)")
    report = load_pretrained(trunk, {prefix + k: v for k, v in state.items()}, source=str(path))
    report.dropped_head = head
    return report
