"""3D ResNet-10 with MedicalNet's layout (Chen et al., Med3D) and a global-pooling + linear head.

Parameter names match MedicalNet's checkpoints (``conv1``, ``bn1``, ``layerN.0.conv1``, ``...downsample.0``)
so Tencent's ``resnet_10*.pth`` weights load directly. ``dilated=True`` is MedicalNet's segmentation layout
(layer3/layer4 dilated 2/4 with stride 1: 16^3 feature maps at 128^3 input, finer saliency, 4x the FLOPs).
``cam_layer`` picks the stage whose activations Grad-CAM weights (``layer4`` as in the paper; ``layer3``,
``layer2`` or ``layer1`` give 2x, 4x or 8x finer maps from less abstract features, as with
``monai.visualize.GradCAM``'s ``target_layers``); it does not change the network's output.
"""

from __future__ import annotations

import torch
from torch import nn

from .lesion_head import LESION_HEADS, LESION_LEVELS, LesionHead, mil_score

__all__ = ["CAM_LAYERS", "BasicBlock", "ResNet3D", "conv3x3x3", "init_weights"]

#: Stages whose activations Grad-CAM can weight (``cam_layer``).
CAM_LAYERS = ("layer1", "layer2", "layer3", "layer4")


def init_weights(model: nn.Module) -> None:
    """He (fan-out) initialisation of every 3D convolution, BatchNorm3d to the identity, in
    module order (the random draws of a seeded model do not change)."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def conv3x3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    """3x3x3 convolution with 'same' padding for the given dilation."""
    return nn.Conv3d(
        in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with a residual connection (projection shortcut, MedicalNet's type B)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ) -> None:
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

    Args:
        layers: residual blocks per stage ((1, 1, 1, 1): ResNet-10; (2, 2, 2, 2): ResNet-18).
        num_classes: outputs K.
        in_channels: input channels C_in.
        dilated: MedicalNet's dilated layer3/layer4 (stride 1) instead of strided stages.
        widths: channels of the four stages (MedicalNet weights need 64, 128, 256, 512).
        dropout: dropout before the linear head (0: none).
        stem_pool: MedicalNet's stem max-pool (False: every feature grid twice as fine).
        cam_layer: the stage ``features`` returns (Grad-CAM's layer).
        lesion_head: a :class:`~.lesion_head.LesionHead` lesion map (trained on lesion masks with
            ``train --lesion-weight``): ``"none"`` (False), ``"aux"`` (True: an auxiliary output; the
            classification is unchanged) or ``"mil"`` (multiple-instance: the BI logit *is* a soft maximum of the
            lesion map, :func:`~.lesion_head.mil_score`; needs ``cam_layer="layer1"`` and 2 classes; ``layer4``
            and the linear head are not built).
        lesion_levels: stages feeding the lesion map: 3 (``layer1``-``layer3``, a feature pyramid), 2 or 1
            (``layer1`` only: a local detector; with ``"mil"`` the stages it does not read are not built).

    ``features`` returns the activations of ``cam_layer`` (default the last stage, ``layer4``),
    ``pool_features`` runs the stages after it and global average pooling, ``head`` maps the pooled vector to
    logits; Grad-CAM is taken on ``features`` from the prediction pass.
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int] = (1, 1, 1, 1),
        num_classes: int = 2,
        in_channels: int = 1,
        dilated: bool = False,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        dropout: float = 0.0,
        stem_pool: bool = True,
        cam_layer: str = "layer4",
        lesion_head: bool | str = False,
        lesion_levels: int = 3,
    ) -> None:
        super().__init__()
        if cam_layer not in CAM_LAYERS:
            raise ValueError(f"cam_layer must be one of {', '.join(CAM_LAYERS)} (got {cam_layer!r})")
        mode = (
            {False: "none", True: "aux"}.get(lesion_head, lesion_head) if isinstance(lesion_head, bool) else lesion_head
        )
        if mode not in LESION_HEADS:
            raise ValueError(f"lesion_head must be one of {', '.join(LESION_HEADS)} (got {lesion_head!r})")
        if mode == "mil" and (cam_layer != "layer1" or num_classes != 2):
            raise ValueError("lesion_head 'mil' needs cam_layer 'layer1' and 2 classes")
        if lesion_levels not in LESION_LEVELS:
            raise ValueError(f"lesion_levels must be one of {LESION_LEVELS} (got {lesion_levels!r})")
        self.lesion_mode = mode
        self.cam_layer = cam_layer
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
        init_weights(self)  # before the lesion head: a seed gives the same backbone with or without it
        self.lesion_head = None
        if mode != "none":
            self.lesion_head = LesionHead(widths, levels=lesion_levels)
            init_weights(self.lesion_head)
        if mode == "mil":  # the lesion map is the classifier: no layer4, no linear head, no stage it does not read
            del self.layer4, self.fc
            self.layer4 = self.fc = None
            if lesion_levels < 3:
                del self.layer3
                self.layer3 = None
            if lesion_levels < 2:
                del self.layer2
                self.layer2 = None
            self.mil_bias = nn.Parameter(torch.zeros(1))

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm3d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self) -> tuple[tuple[nn.Module, ...], tuple[nn.Module, ...]]:
        """The residual stages up to and including ``cam_layer``, and those after it."""
        all_stages = tuple(s for s in (self.layer1, self.layer2, self.layer3, self.layer4) if s is not None)
        k = CAM_LAYERS.index(self.cam_layer) + 1
        return all_stages[:k], all_stages[k:]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Activations of ``cam_layer`` (B, C, x, y, z); ``layer4``, the last stage, by default."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages()[0]:
            x = stage(x)
        return x

    def pool_features(self, feats: torch.Tensor) -> torch.Tensor:
        """The stages after ``cam_layer``, then global average pooling: (B, C, x, y, z) -> (B, C_last); with a
        ``"mil"`` lesion head: the lesion map of ``layer1``'s ``feats`` and its soft maximum (B, 1)."""
        if self.lesion_mode == "mil":
            return mil_score(self.lesion_map(feats))
        for stage in self.stages()[1]:
            feats = stage(feats)
        return torch.flatten(self.avgpool(feats), 1)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) from globally pooled features (B, widths[3]); with a ``"mil"`` lesion head
        from the lesion score s (B, 1): (-s/2, s/2) plus a learnt offset, so that the BI logit difference is s."""
        if self.lesion_mode == "mil":
            s = pooled + self.mil_bias
            return torch.cat([-s / 2, s / 2], dim=1)
        return self.fc(self.dropout(pooled))

    def lesion_map(self, f1: torch.Tensor) -> torch.Tensor:
        """Lesion logits (B, 1, x, y, z) from ``layer1``'s activations ``f1`` (B, C1, x, y, z) (and the stages
        after it that the head reads)."""
        levels = self.lesion_head.levels
        f2 = self.layer2(f1) if levels >= 2 else None
        f3 = self.layer3(f2) if levels >= 3 else None
        return self.lesion_head(f1, f2, f3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of volumes x (B, in_channels, X, Y, Z)."""
        return self.head(self.pool_features(self.features(x)))

    def forward_with_lesion_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, num_classes) and lesion logits (B, 1, x, y, z) on ``layer1``'s grid, in one pass.

        Raises:
            ValueError: the model was built without ``lesion_head``.
        """
        if self.lesion_head is None:
            raise ValueError("this model has no lesion head (build it with lesion_head='aux' or 'mil')")
        f1 = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        if self.lesion_mode == "mil":
            lesion = self.lesion_map(f1)
            return self.head(mil_score(lesion)), lesion
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        lesion = self.lesion_head(f1, f2, f3)
        return self.head(torch.flatten(self.avgpool(self.layer4(f3)), 1)), lesion
