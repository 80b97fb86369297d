"""2D slice encoder with slice-position embeddings (after Gupta et al., arXiv 2303.01491).

A 2D ResNet-18 (torchvision layout, so 2D ImageNet-style weights load from a file) encodes every slice along
``slice_axis``; each slice's feature vector (mean over its 2D map) gets a learned position embedding, then
LayerNorm, then a permutation-invariant pooling over slices: ``mean``, ``max`` or gated ``attention`` (Ilse
et al. 2018). The authors' code fixes the slice count (UK Biobank's); here the embedding is learned at
``positions`` normalised positions and linearly interpolated to any slice count.

For Grad-CAM, ``features`` returns the per-slice 2D maps stacked back into a 3D map (B, C, x, y, z) in the
input's axis order (full resolution along the slice axis, stride 32 in-plane), ``pool_features`` the
aggregation, and ``gradcam`` weights channels per slice (each slice's own gradient average).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .resnet2d import DEFAULT_WIDTHS, ResNetLayout, conv2d, load_2d_weights
from .weights import LoadReport

POOLINGS = ("mean", "max", "attention")


class SliceEncoder(nn.Module):
    """(B, C, X, Y, Z) -> logits through a per-slice 2D ResNet-18, position embedding and slice pooling."""

    def __init__(self, num_classes: int = 2, in_channels: int = 1, widths: Sequence[int] = DEFAULT_WIDTHS,
                 slice_axis: int = 2, pooling: str = "attention", positions: int = 64, attention_dim: int = 128,
                 dropout: float = 0.0, slice_batch: int = 256) -> None:
        super().__init__()
        if int(slice_axis) not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (got {slice_axis})")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} (got '{pooling}')")
        if int(positions) < 2:
            raise ValueError("positions must be >= 2")
        self.slice_axis, self.pooling, self.in_channels = int(slice_axis), pooling, in_channels
        self.slice_batch = int(slice_batch)
        self.encoder = ResNetLayout(conv2d, nn.BatchNorm2d, nn.MaxPool2d(3, 2, 1), (2, 2, 2, 2), in_channels,
                                    widths)
        c = self.encoder.out_channels
        self.position = nn.Parameter(torch.zeros(int(positions), c))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.norm = nn.LayerNorm(c)
        if pooling == "attention":
            self.attn_v = nn.Linear(c, attention_dim)
            self.attn_u = nn.Linear(c, attention_dim)
            self.attn_w = nn.Linear(attention_dim, 1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(c, num_classes)

    def _to_slices_last(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) with the slice axis moved last."""
        return t.movedim(2 + self.slice_axis, 4)

    def _from_slices_last(self, t: torch.Tensor) -> torch.Tensor:
        return t.movedim(4, 2 + self.slice_axis)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-slice 2D feature maps stacked into (B, C, x, y, z) in the input's axis order."""
        b, c = x.shape[:2]
        xs = self._to_slices_last(x)  # (B, C, H, W, S)
        s = xs.shape[-1]
        slices = xs.permute(0, 4, 1, 2, 3).reshape(b * s, c, *xs.shape[2:4])
        maps = torch.cat([self.encoder.features(chunk) for chunk in slices.split(self.slice_batch)])
        maps = maps.reshape(b, s, *maps.shape[1:]).permute(0, 2, 3, 4, 1)  # (B, F, h, w, S)
        return self._from_slices_last(maps)

    def position_embedding(self, n: int) -> torch.Tensor:
        """(n, C) embedding for n slices: the learned table linearly interpolated to n positions."""
        table = self.position.t()[None]  # (1, C, P)
        return F.interpolate(table, size=n, mode="linear", align_corners=True)[0].t()

    def pool_features(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, x, y, z) maps -> per-slice vectors + position -> LayerNorm -> pooled over slices (B, C)."""
        per_slice = self._to_slices_last(feats).mean(dim=(2, 3)).transpose(1, 2)  # (B, S, C)
        h = self.norm(per_slice + self.position_embedding(per_slice.shape[1]))
        if self.pooling == "mean":
            return h.mean(1)
        if self.pooling == "max":
            return h.amax(1)
        scores = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h)))  # (B, S, 1)
        return (torch.softmax(scores, dim=1) * h).sum(1)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits from the pooled slice representation (B, C)."""
        return self.fc(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool_features(self.features(x)))

    def gradcam(self, feats: torch.Tensor, class_idx: int) -> torch.Tensor:
        """Per-slice Grad-CAM (B, x, y, z): each slice's channels weighted by that slice's mean gradient."""
        with torch.enable_grad():
            a = feats.detach().clone().requires_grad_(True)
            score = self.head(self.pool_features(a))[:, class_idx].sum()
            (grad,) = torch.autograd.grad(score, a)
        a_l, g_l = self._to_slices_last(a.detach()), self._to_slices_last(grad)
        alpha = g_l.mean(dim=(2, 3))  # (B, C, S)
        cam = F.relu(torch.einsum("bcs,bchws->bhws", alpha, a_l))
        return cam.unsqueeze(1).movedim(4, 2 + self.slice_axis)[:, 0]

    def load_pretrained_file(self, path: str | os.PathLike) -> LoadReport:
        """Initialise the slice encoder from a torchvision 2D ResNet-18 state dict file."""
        return load_2d_weights(self, path, prefix="encoder.", in_channels=self.in_channels)


def slice_resnet18(num_classes: int = 2, in_channels: int = 1, widths: Sequence[int] = DEFAULT_WIDTHS,
                   slice_axis: int = 2, pooling: str = "attention", positions: int = 64,
                   dropout: float = 0.0) -> SliceEncoder:
    """2D ResNet-18 slice encoder with position embeddings and mean / max / attention slice pooling."""
    return SliceEncoder(num_classes, in_channels, widths, slice_axis, pooling, positions, dropout=dropout)
