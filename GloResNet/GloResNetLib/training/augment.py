"""Training augmentation: mixup (one lambda per batch, soft targets), left-right flip, optional small affine.

All random draws of one optimizer batch come from one numpy generator (:func:`plan_batch`) seeded by
(seed, fold, epoch, step), *per global batch position*: the same plan is drawn by every DDP rank and by a
resumed run, so a batch is augmented identically whatever the number of processes or interruptions.
Tensors are (B, 1, X, Y, Z) on the canonical RAS grid; the left-right flip is a flip of tensor dim 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class BatchPlan:
    """Random choices for one batch of ``n`` samples: mixup ``lam`` and partner ``perm``, flips, affines."""

    lam: float
    perm: np.ndarray  # partner position of each batch position (identity without mixup)
    flips: np.ndarray  # bool (n,)
    thetas: np.ndarray | None  # (n, 3, 4) affine_grid matrices, or None

    @property
    def mixing(self) -> bool:
        return self.lam < 1.0


def batch_count(n: int, batch_size: int, grad_accum: int = 1) -> tuple[int, str | None]:
    """Number of optimizer steps that cut ``n`` training samples into near-equal batches (``np.array_split``)
    of about ``batch_size``, never leaving a batch (or a micro-batch of ``grad_accum``) of one sample, which
    BatchNorm cannot train on: such a remainder is folded into the other batches (one step fewer).

    Returns:
        ``(steps, note)``: ``note`` says what was folded (None when nothing was).
    """
    steps = max(1, -(-n // batch_size))
    smallest = n // steps
    if steps > 1 and smallest < 2 * grad_accum:
        folded = max(1, n // batch_size)
        sizes = sorted({len(b) for b in np.array_split(np.arange(n), folded)}, reverse=True)
        note = (
            f"{n} training volumes in batches of {batch_size} would leave a batch of {smallest}"
            f"{f' ({grad_accum} micro-batches)' if grad_accum > 1 else ''}, which BatchNorm cannot train on; "
            f"it is folded into the other batches: {folded} step(s) per epoch of "
            f"{' or '.join(map(str, sizes))} volumes"
        )
        return folded, note
    return steps, None


def plan_batch(
    rng: np.random.Generator,
    n: int,
    mixup_alpha: float = 1.0,
    flip_prob: float = 0.5,
    affine_degrees: float = 0.0,
    affine_scale: float = 0.0,
) -> BatchPlan:
    """Draw the augmentation of one batch (fixed draw order, so it is reproducible)."""
    lam = float(rng.beta(mixup_alpha, mixup_alpha)) if mixup_alpha > 0 else 1.0
    perm = rng.permutation(n) if mixup_alpha > 0 else np.arange(n)
    flips = rng.random(n) < flip_prob
    thetas = None
    if affine_degrees > 0 or affine_scale > 0:
        angles = np.deg2rad(rng.uniform(-affine_degrees, affine_degrees, size=(n, 3)))
        scales = rng.uniform(1 - affine_scale, 1 + affine_scale, size=n)
        thetas = np.stack([affine_matrix(a, s) for a, s in zip(angles, scales)])
    return BatchPlan(lam, perm, flips, thetas)


def affine_matrix(angles: np.ndarray, scale: float) -> np.ndarray:
    """(3, 4) ``affine_grid`` matrix: rotations about the three axes and an isotropic zoom."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    out = np.zeros((3, 4))
    out[:, :3] = (rz @ ry @ rx) / scale
    return out


def one_hot(labels: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """(B,) integer labels -> (B, K) float one-hot targets."""
    return F.one_hot(labels.long(), num_classes).float()


def flip_lr(x: torch.Tensor, flips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Flip the samples marked in ``flips`` left-right (tensor dim 2 of (B, C, X, Y, Z))."""
    mask = torch.as_tensor(np.asarray(flips), dtype=torch.bool, device=x.device)
    if not bool(mask.any()):
        return x
    return torch.where(mask.view(-1, *([1] * (x.ndim - 1))), x.flip(2), x)


def random_affine(x: torch.Tensor, thetas: np.ndarray | None) -> torch.Tensor:
    """Resample each sample with its (3, 4) matrix (trilinear, border padding); None = identity."""
    if thetas is None:
        return x
    theta = torch.as_tensor(thetas, dtype=torch.float32, device=x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(x.dtype)


def augment(x: torch.Tensor, flips: np.ndarray, thetas: np.ndarray | None) -> torch.Tensor:
    """Per-sample augmentation (flip, then affine) of a (B, 1, X, Y, Z) batch."""
    return random_affine(flip_lr(x, flips), thetas)


def mixup(
    x: torch.Tensor, targets: torch.Tensor, lam: float, perm: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with a permutation of itself: ``lam * x + (1 - lam) * x[perm]``, targets too."""
    perm = torch.as_tensor(np.asarray(perm), dtype=torch.long, device=x.device)
    return lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm.to(targets.device)]


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample cross-entropy with soft targets: ``-sum_c w_c y_c log softmax(z)_c`` (B,)."""
    logp = torch.log_softmax(logits.float(), dim=1)
    if class_weights is not None:
        targets = targets * class_weights.to(targets)
    return -(targets * logp).sum(dim=1)
