"""Training a classifier with an auxiliary lesion map (``train --lesion-weight``; :mod:`..models.lesion_head`).

The loss of a sample is the classifier's (class-weighted soft cross-entropy, as :class:`~.trainer.FoldTrainer`)
plus ``lesion_weight`` times the mean over the lesion map of a binary cross-entropy against the lesion mask
max-pooled onto the map's grid (a map voxel is lesion when any input voxel it covers is; positive voxels weighted
:data:`POS_WEIGHT`, since lesions fill a few percent of the map). Masks go through the same flip, affine and
mixup as their scans; a mixed pair's lesion loss counts only when both masks are known
(:class:`~.lesion_masks.MaskStore`). Checkpoint choice, evaluation and the saved model are the classifier's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import augment, flip_lr
from .lesion_masks import MaskStore
from .trainer import FoldTrainer

__all__ = ["POS_WEIGHT", "LesionFoldTrainer", "WithLesionMap"]

#: Weight of lesion voxels in the lesion-map loss.
POS_WEIGHT = 10.0


class WithLesionMap(nn.Module):
    """A model with a lesion head whose forward returns ``(logits (B, 2), lesion logits (B, 1, x, y, z))``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_lesion_map(x)


class LesionFoldTrainer(FoldTrainer):
    """:class:`~.trainer.FoldTrainer` whose loss adds the lesion-map term; ``masks`` aligned with the scans."""

    def __init__(self, *args: Any, masks: MaskStore, **kw: Any) -> None:
        super().__init__(*args, **kw)
        if self.cfg.model_params.get("lesion_head") in (None, False, "none"):  # pragma: no cover - model_params
            raise ValueError("LesionFoldTrainer needs a model with a lesion head")
        self.masks = masks
        self.pos_weight = torch.tensor(POS_WEIGHT, device=self.device)

    def _network(self) -> nn.Module:
        return WithLesionMap(self.model)

    def _masks(self, rows: np.ndarray, positions: np.ndarray, plan) -> torch.Tensor:
        """Masks (B, 1, X, Y, Z) of samples ``rows`` augmented as batch ``positions``; with a random affine, on a
        grid half as fine, (B, 1, X/2, Y/2, Z/2) max-pooled first (the loss max-pools them onto the lesion map's
        grid, ``layer1``'s, at most half as fine as the input's, anyway): resampling the masks at full size cost
        as much as resampling the scans."""
        m = torch.from_numpy(self.masks.batch(rows)).unsqueeze(1).to(self.device)
        if plan.thetas is None:
            return flip_lr(m, plan.flips[positions])
        if min(m.shape[2:]) >= 4:
            m = F.max_pool3d(m, 2, ceil_mode=True)
        return augment(m, plan.flips[positions], plan.thetas[positions])

    def _inputs(self, bidx: np.ndarray, pos: np.ndarray, plan) -> tuple[torch.Tensor, Any]:
        """Inputs and soft targets as the classifier's, plus the masks (mixed alike) and whose are known."""
        x, y = super()._inputs(bidx, pos, plan)
        m = self._masks(bidx[pos], pos, plan)
        known = self.masks.known[bidx[pos]]
        if plan.mixing:
            partners = plan.perm[pos]
            m = plan.lam * m + (1.0 - plan.lam) * self._masks(bidx[partners], partners, plan)
            known = known & self.masks.known[bidx[partners]]
        return x, (y, m, torch.from_numpy(known.astype(np.float32)).to(self.device))

    def _per_sample_loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """Classification loss plus ``lesion_weight`` x the lesion-map loss, per sample (B,)."""
        logits, lesion = outputs
        y, m, known = targets
        target = F.adaptive_max_pool3d(m, lesion.shape[2:])
        dense = F.binary_cross_entropy_with_logits(
            lesion.float(), target, pos_weight=self.pos_weight, reduction="none"
        ).flatten(1)
        return super()._per_sample_loss(logits, y) + self.cfg.lesion_weight * known * dense.mean(1)
