"""3D ResNet-10 with MedicalNet's layout (Chen et al., Med3D) and a global-pooling + linear head.

Parameter names match MedicalNet's checkpoints (``conv1``, ``bn1``, ``layerN.0.conv1``, ``...downsample.0``)
so Tencent's ``resnet_10*.pth`` weights load directly. ``dilated=True`` is MedicalNet's segmentation layout
(layer3/layer4 dilated 2/4 with stride 1: 16^3 feature maps at 128^3 input, finer saliency, 4x the FLOPs).
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    """3x3x3 convolution with 'same' padding for the given dilation."""
    return nn.Conv3d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation,
                     dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with a residual connection (projection shortcut, MedicalNet's type B)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet3D(nn.Module):
    """MedicalNet-style 3D ResNet classifier: (B, in_channels, X, Y, Z) -> logits (B, num_classes).

    ``features`` returns the last convolutional stage (``layer4``), ``head`` maps pooled features to logits;
    Grad-CAM is exact from these two because the head after global average pooling is linear.
    """

    cam_layer = "layer4"

    def __init__(self, layers: tuple[int, int, int, int] = (1, 1, 1, 1), num_classes: int = 2,
                 in_channels: int = 1, dilated: bool = False, widths: tuple[int, ...] = (64, 128, 256, 512),
                 dropout: float = 0.0, stem_pool: bool = True) -> None:
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv3d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        # MedicalNet's stem max-pool; without it (stem_pool=False) every feature grid is twice as fine
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1) if stem_pool else nn.Identity()
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        if dilated:
            self.layer3 = self._make_layer(widths[2], layers[2], stride=1, dilation=2)
            self.layer4 = self._make_layer(widths[3], layers[3], stride=1, dilation=4)
        else:
            self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
            self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last convolutional stage activations (B, C, x, y, z)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits from globally pooled features (B, C)."""
        return self.fc(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.avgpool(self.features(x)), 1))
