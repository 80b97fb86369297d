"""ACS convolutions (Yang et al., "Reinventing 2D Convolutions for 3D Images", IEEE JBHI 2021) and an ACS
ResNet-18 that runs a 2D ResNet-18, and its 2D (ImageNet-style) weights, on 3D volumes.

An ACS convolution keeps a 2D kernel ``(out, in, k, k)``. Its output channels are split in three groups; each
group's 2D kernels are applied as 3D kernels that are flat along one axis: group 0 as ``(1, k, k)`` (planes
orthogonal to the first spatial axis), group 1 as ``(k, 1, k)``, group 2 as ``(k, k, 1)``. In GloResNet's RAS
network grid (x = right, y = anterior, z = superior) these are the sagittal, coronal and axial views; a 2D
kernel's (row, column) axes go to the two remaining volume axes in increasing order. This is the order and
split of ``acsconv`` 0.1.1's ``ACSConv`` (Apache-2.0; not a dependency: its model converter fails on current
PyTorch, and the operator below is written from the paper). An ACS convolution equals a full ``k^3``
convolution whose kernel is zero outside the central plane of its view, at a third of its cost.

The ACS ResNet-18 swaps every ``Conv2d`` for an ACS convolution, ``BatchNorm2d`` for ``BatchNorm3d`` and the
stem's 2D max-pool for a 3D one. Parameters and their shapes are those of the 2D network, so torchvision
weights load tensor for tensor; only the RGB stem kernel is summed over its colour axis for the one-channel
MRI input (:func:`~.resnet2d.adapt_stem_weight`). The ImageNet classifier ``fc`` is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .resnet2d import DEFAULT_WIDTHS, ResNetLayout, load_2d_weights
from .weights import LoadReport


def acs_split(out_channels: int) -> tuple[int, int, int]:
    """Output channels per view (axis 0, 1, 2): as equal as possible, the remainder to the first groups."""
    base, rest = divmod(out_channels, 3)
    return tuple(base + (1 if i < rest else 0) for i in range(3))


class ACSConv3d(nn.Module):
    """3D convolution with a 2D kernel ``weight`` (out, in, k, k) split over the three orthogonal views."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ACS convolutions need an odd kernel size (got {kernel_size})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # along its flat axis a view's kernel is the central tap of a k-tap kernel: shift the input so that
        # this tap sits where the k-tap kernel's centre would (padding - dilation * (k // 2) more padding,
        # a crop when negative); sizes and sampling positions then equal those of the full 3D convolution
        shift = self.padding - self.dilation * (self.kernel_size // 2)
        outs, start = [], 0
        for axis, n in enumerate(acs_split(self.out_channels)):
            if n == 0:
                continue
            w = self.weight[start : start + n].unsqueeze(2 + axis)  # flat (size 1) along this spatial axis
            pad = [self.padding] * 3
            pad[axis] = max(shift, 0)
            xin = x if shift >= 0 else x.narrow(2 + axis, -shift, x.shape[2 + axis] + 2 * shift)
            bias = None if self.bias is None else self.bias[start : start + n]
            outs.append(F.conv3d(xin, w, bias, self.stride, tuple(pad), self.dilation))
            start += n
        return torch.cat(outs, dim=1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, split={acs_split(self.out_channels)}"
        )


def acs_conv(cin: int, cout: int, k: int, stride: int, padding: int) -> ACSConv3d:
    return ACSConv3d(cin, cout, k, stride=stride, padding=padding)


class ACSResNet(ResNetLayout):
    """ResNet-18 with ACS convolutions, BatchNorm3d and 3D max-pooling: (B, C, X, Y, Z) -> logits.

    ``features`` is ``layer4`` (stride 32; 16 with ``stem_pool=False``, a finer Grad-CAM grid at 8x the cost),
    ``head`` maps globally pooled features to logits; the state dict has torchvision's names and shapes except
    the one-channel stem (see :meth:`load_pretrained_file`).
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        layers: Sequence[int] = (2, 2, 2, 2),
        dropout: float = 0.0,
        stem_pool: bool = True,
    ) -> None:
        pool = nn.MaxPool3d(3, 2, 1) if stem_pool else nn.Identity()
        super().__init__(acs_conv, nn.BatchNorm3d, pool, layers, in_channels, widths)
        self.in_channels = in_channels
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(self.out_channels, num_classes)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits from globally pooled features (B, C)."""
        return self.fc(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool3d(self.features(x), 1), 1))

    def load_pretrained_file(self, path: str | os.PathLike) -> LoadReport:
        """Initialise from a torchvision 2D ResNet-18 state dict file (``.pth`` or ``.safetensors``): every 2D
        kernel becomes the ACS kernel of the same name, the RGB stem is summed to one channel, ``fc`` dropped."""
        return load_2d_weights(self, path, in_channels=self.in_channels)


def acs_resnet18(
    num_classes: int = 2,
    in_channels: int = 1,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    dropout: float = 0.0,
    stem_pool: bool = True,
) -> ACSResNet:
    """ACS ResNet-18 (2D ResNet-18 converted to 3D with ACS convolutions); registered as ``acs_resnet18``."""
    return ACSResNet(num_classes, in_channels, widths, dropout=float(dropout), stem_pool=bool(stem_pool))
