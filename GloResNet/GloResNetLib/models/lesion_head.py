"""Lesion map of a 3D ResNet: where the network finds focal lesions, learnt from lesion masks.

Why: on the synthetic cohort the plain classifier, trained from one label per scan, memorised its ~200 training
scans (training AUC 0.985 against 0.76 on fresh ones) and its saliency pointed at the lesion in about half the
injured scans. Measured with single demo-sized models (quarter-width ResNet-10, 64^3; trained on 154-192
generator-2.0 scans, tested on 80 fresh ones; seed 0; Intel Xeon AVX-512, 2 cores; CHANGELOG.md 2026-11-27):

- ``aux`` (the lesion map as a second output, trained with ``train --lesion-weight``; classifier unchanged):
  test AUC 0.84-0.92; the gradient saliency's peak on the lesion in 0.51 of injured scans;
- ``mil`` (the BI logit is a soft maximum of the lesion map, :func:`mil_score`, trained with the same masks):
  test AUC 0.88-0.92, gradient saliency on the lesion in 0.91 - the classification rests on the map, so its
  evidence is where the lesions are.

The head is a small feature pyramid over the first three stages: ``layer1`` through a 3x3x3 convolution,
``layer2`` and ``layer3`` through 1x1x1 convolutions upsampled (trilinear) to ``layer1``'s grid, summed, then
one more 3x3x3 convolution and a 1x1x1 convolution to one logit per ``layer1`` voxel (a quarter of the input
grid per axis with MedicalNet's stem); ``levels=1`` keeps ``layer1``'s branch only. Why that option: with the
pyramid, some demo folds learnt a map that fires over the whole central brain of some healthy scans (an answer
from global appearance, presumably through the coarse branches) and misses plain IVH (test AUC 0.43 against a
training AUC of 0.82); from ``layer1`` alone (receptive field about 60 input voxels) four demo folds gave test AUC
0.905 / 0.736 / 0.895 / 0.874 against 0.434 / 0.727 / 0.802 / 0.764 (AMD EPYC AVX-512, 2 cores, 2026-12-07;
``demo.py``). 16 channels: no less accurate than 32 on two demo folds (12 epochs; test
AUC 0.87 / 0.86 against 0.62 / 0.81, the 0.62 from an epoch-2 checkpoint chosen on validation loss) at about a
quarter less training time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LESION_HEADS", "LESION_LEVELS", "MIL_SHARPNESS", "LesionHead", "mil_score"]

#: ``ResNet3D(lesion_head=...)``: none; an auxiliary output; the classifier itself (multiple-instance).
LESION_HEADS = ("none", "aux", "mil")
#: ``ResNet3D(lesion_levels=...)``: how many stages feed the lesion map (1: ``layer1`` only; 3: the pyramid).
LESION_LEVELS = (1, 2, 3)
#: Sharpness r of the log-sum-exp pooling in :func:`mil_score` (r -> infinity: the maximum; r -> 0: the mean).
MIL_SHARPNESS = 5.0


def mil_score(lesion: torch.Tensor, sharpness: float = MIL_SHARPNESS) -> torch.Tensor:
    """Multiple-instance score of a lesion map: ``(logsumexp(r * l) - log(N)) / r`` over its N voxels.

    A smooth maximum: it follows the most lesion-like voxels, so the gradient of the BI logit falls on them.

    Args:
        lesion: (B, 1, x, y, z) lesion logits.
        sharpness: r.
    Returns:
        (B, 1) scores.
    """
    flat = lesion.flatten(1).float()
    return ((torch.logsumexp(sharpness * flat, dim=1) - math.log(flat.shape[1])) / sharpness).unsqueeze(1)


class LesionHead(nn.Module):
    """Lesion logits on ``layer1``'s grid from the activations of ``layer1`` and, with ``levels`` 2 or 3, of
    ``layer2`` and ``layer3``.

    Args:
        widths: channels of the backbone's four stages.
        channels: channels of the pyramid.
        levels: stages feeding the map (:data:`LESION_LEVELS`).
    """

    def __init__(self, widths: tuple[int, ...], channels: int = 16, levels: int = 3) -> None:
        super().__init__()
        if levels not in LESION_LEVELS:
            raise ValueError(f"lesion_levels must be one of {LESION_LEVELS} (got {levels!r})")
        self.levels = levels
        self.lateral1 = nn.Sequential(
            nn.Conv3d(widths[0], channels, 3, padding=1, bias=False), nn.BatchNorm3d(channels), nn.ReLU(inplace=True)
        )
        self.lateral2 = nn.Conv3d(widths[1], channels, 1) if levels >= 2 else None
        self.lateral3 = nn.Conv3d(widths[2], channels, 1) if levels >= 3 else None
        self.out = nn.Sequential(
            nn.ReLU(),
            nn.Conv3d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm3d(channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, 1, 1),
        )

    def forward(self, f1: torch.Tensor, f2: torch.Tensor | None = None, f3: torch.Tensor | None = None) -> torch.Tensor:
        """Lesion logits.

        Args:
            f1, f2, f3: activations of ``layer1`` (B, C1, x, y, z), ``layer2`` and ``layer3`` (coarser grids;
                needed only up to ``levels``).
        Returns:
            (B, 1, x, y, z) logits on ``layer1``'s grid.
        """
        size = f1.shape[2:]
        h = self.lateral1(f1)
        for lateral, f in ((self.lateral2, f2), (self.lateral3, f3)):
            if lateral is not None:
                h = h + F.interpolate(lateral(f), size=size, mode="trilinear", align_corners=False)
        return self.out(h)
