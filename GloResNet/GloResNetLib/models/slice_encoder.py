"""2D slice encoder with slice-position embeddings (after Gupta et al., arXiv 2303.01491).

A 2D ResNet-18 (torchvision layout, so 2D ImageNet-style weights load from a file) encodes every slice along
``slice_axis`` (default 2: axial slices of the RAS network grid; a slice's 2D (row, column) axes are the two
other volume axes in increasing order). Each slice's feature vector (mean over its 2D map) gets a learned
position embedding, then LayerNorm, then a permutation-invariant pooling over slices: ``mean``, ``max`` or gated
``attention`` (Ilse et al. 2018), and a linear head. The authors' code fixes the slice count (UK Biobank's);
here the embedding is learned at ``positions`` evenly spaced normalised positions (0 = first slice, 1 = last)
and linearly interpolated to any slice count.

For Grad-CAM, ``features`` returns the per-slice 2D maps stacked back into a 3D map (B, C, x, y, z) in the
input's axis order (full resolution along the slice axis, stride 32 in-plane; the 2D maps cover each whole
slice), ``pool_features`` reproduces the aggregation, and ``gradcam`` weights the channels per slice (each
slice's own gradient average over its 2D map), which the per-slice encoder calls for.

Cost: every slice is a 2D image, so the forward costs about ``S`` 2D ResNet-18 passes (S = slice count). In
eval mode ``features`` runs the slices in chunks of ``slice_batch`` images (less peak memory, same result); in
training all slices of a batch go through at once (BatchNorm statistics over the whole batch). With
``slices_per_step = k`` each training step encodes only k randomly chosen slices per batch (their true
positions keep their embeddings); evaluation always uses every slice. Off by default.
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

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        slice_axis: int = 2,
        pooling: str = "attention",
        positions: int = 64,
        attention_dim: int = 128,
        dropout: float = 0.0,
        slice_batch: int = 256,
        slices_per_step: int | None = None,
        stem_pool: bool = True,
    ) -> None:
        super().__init__()
        if int(slice_axis) not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (got {slice_axis})")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} (got '{pooling}')")
        if int(positions) < 2:
            raise ValueError("positions must be >= 2")
        if int(slice_batch) < 1 or int(attention_dim) < 1:
            raise ValueError("slice_batch and attention_dim must be positive")
        if slices_per_step is not None and int(slices_per_step) < 1:
            raise ValueError(f"slices_per_step must be a positive integer or null (got {slices_per_step})")
        self.slice_axis, self.pooling, self.in_channels = int(slice_axis), pooling, in_channels
        self.slice_batch = int(slice_batch)
        self.slices_per_step = None if slices_per_step is None else int(slices_per_step)
        pool = nn.MaxPool2d(3, 2, 1) if stem_pool else nn.Identity()
        self.encoder = ResNetLayout(conv2d, nn.BatchNorm2d, pool, (2, 2, 2, 2), in_channels, widths)
        c = self.encoder.out_channels
        self.position = nn.Parameter(torch.zeros(int(positions), c))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.norm = nn.LayerNorm(c)
        if pooling == "attention":
            self.attn_v = nn.Linear(c, int(attention_dim))
            self.attn_u = nn.Linear(c, int(attention_dim))
            self.attn_w = nn.Linear(int(attention_dim), 1)
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
        if self.training:  # one pass: BatchNorm statistics over every slice of the batch
            maps = self.encoder.features(slices)
        else:  # running statistics: chunks give the same result with less memory
            maps = torch.cat([self.encoder.features(chunk) for chunk in slices.split(self.slice_batch)])
        maps = maps.reshape(b, s, *maps.shape[1:]).permute(0, 2, 3, 4, 1)  # (B, F, h, w, S)
        return self._from_slices_last(maps)

    def position_embedding(self, n: int, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(n, C) embeddings of n slices: the learned table linearly interpolated at the slices' normalised
        positions (default: n evenly spaced slices from 0 to 1; one slice sits at 0.5)."""
        p = self.position.shape[0]
        if positions is None:
            t = (
                torch.arange(n, dtype=torch.float64) * (p - 1) / (n - 1)
                if n > 1
                else torch.full((n,), (p - 1) / 2, dtype=torch.float64)
            )
        else:
            t = positions.detach().to("cpu", torch.float64) * (p - 1)
        t = t.clamp(0, p - 1).to(self.position.device)
        lo = t.floor().long().clamp(max=p - 2)
        frac = (t - lo).to(self.position.dtype)[:, None]
        return self.position[lo] * (1 - frac) + self.position[lo + 1] * frac

    def pool_features(self, feats: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, x, y, z) maps -> per-slice vectors + position -> LayerNorm -> pooled over slices (B, C).

        ``positions``: the slices' normalised positions (S,) when ``feats`` holds a subset of the slices."""
        per_slice = self._to_slices_last(feats).mean(dim=(2, 3)).transpose(1, 2)  # (B, S, C)
        h = self.norm(per_slice + self.position_embedding(per_slice.shape[1], positions))
        if self.pooling == "mean":
            return h.mean(1)
        if self.pooling == "max":
            return h.amax(1)
        return (self.attention(h)[..., None] * h).sum(1)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """Gated attention weights (B, S) over slice vectors h (B, S, C), summing to 1 (``pooling='attention'``)."""
        scores = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h)))  # (B, S, 1)
        return torch.softmax(scores[..., 0], dim=1)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits from the pooled slice representation (B, C)."""
        return self.fc(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2 + self.slice_axis]
        k = self.slices_per_step
        if self.training and k is not None and k < n:  # random subset of slices, at their true positions
            idx = torch.randperm(n, device=x.device)[:k].sort().values
            pos = idx.to(torch.float64) / (n - 1)
            return self.head(self.pool_features(self.features(x.index_select(2 + self.slice_axis, idx)), pos))
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
        """Initialise the slice encoder from a torchvision 2D ResNet-18 state dict file (``.pth`` or
        ``.safetensors``; RGB stem summed to one channel, ``fc`` dropped)."""
        return load_2d_weights(self, path, prefix="encoder.", in_channels=self.in_channels)


def slice_resnet18(
    num_classes: int = 2,
    in_channels: int = 1,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    slice_axis: int = 2,
    pooling: str = "attention",
    positions: int = 64,
    attention_dim: int = 128,
    dropout: float = 0.0,
    slice_batch: int = 256,
    slices_per_step: int | None = None,
    stem_pool: bool = True,
) -> SliceEncoder:
    """2D ResNet-18 slice encoder with position embeddings and mean / max / attention slice pooling
    (registered as ``slice_resnet18``; every option is JSON-friendly for ``--arch-params``)."""
    return SliceEncoder(
        num_classes,
        in_channels,
        widths,
        slice_axis,
        pooling,
        positions,
        attention_dim,
        float(dropout),
        slice_batch,
        slices_per_step,
        bool(stem_pool),
    )
