"""Faithfulness of a saliency map: the deletion test.

Hide the top 1%, 2%, 5% most salient voxels of the brain (set them to the brain's mean intensity) and record how
much the model's P(BI) falls; do the same with random regions of the same size. A map that shows what the model
uses makes P(BI) fall more than random regions do (Petsiuk et al., RISE, 2018, "deletion"; here a few fractions
rather than the whole curve, to keep the number of network passes small).

Random regions are blobs, not scattered voxels: the top voxels (within the brain) of white noise smoothed with a
Gaussian of ``sigma`` voxels, so that they have the same voxel count *and* a similar compactness as the salient
region (scattered single voxels would barely change a convolutional network's output, which would make any map
look faithful).

Everything here is on the network grid (the preprocessed input the model sees), so no resampling blurs the
hidden regions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .inference import network_pass
from .preprocessing import otsu_threshold

#: ``prob_fn(batch)``: P(class) (B,) of a batch (B, 1, X, Y, Z) of network inputs.
ProbabilityFn = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_FRACTIONS = (0.01, 0.02, 0.05)


def ensemble_probability(models: Sequence[nn.Module], class_idx: int = 1) -> ProbabilityFn:
    """A :data:`ProbabilityFn` for an ensemble: the mean over ``models`` of softmax P(``class_idx``), each model
    through :func:`.inference.network_pass` (the fast inference path)."""

    def prob(batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([network_pass(m, batch, cam_class=None)[0][:, class_idx] for m in models]).mean(0)

    return prob


@dataclass
class DeletionResult:
    """Outcome of :func:`deletion_test`.

    Attributes:
        fractions: fractions of the brain's voxels hidden.
        base_probability: P(class) of the unaltered input.
        saliency_drops: per fraction, ``base - P(class | top salient voxels hidden)``.
        random_drops: per fraction, the drops for each random region (``n_random`` values).
        voxels: per fraction, the number of voxels hidden.
    """

    fractions: list[float]
    base_probability: float
    saliency_drops: list[float]
    random_drops: list[list[float]] = field(default_factory=list)
    voxels: list[int] = field(default_factory=list)

    @property
    def random_mean(self) -> list[float]:
        """Mean drop over the random regions, per fraction."""
        return [float(np.mean(r)) for r in self.random_drops]

    @property
    def score(self) -> float:
        """Mean over fractions of (saliency drop - mean random drop): > 0 when the map beats chance."""
        return float(np.mean(np.subtract(self.saliency_drops, self.random_mean)))

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "fractions": self.fractions,
            "base_probability": round(self.base_probability, 6),
            "saliency_drops": [round(d, 6) for d in self.saliency_drops],
            "random_drops": [[round(d, 6) for d in r] for r in self.random_drops],
            "random_mean": [round(d, 6) for d in self.random_mean],
            "voxels": self.voxels,
            "score": round(self.score, 6),
        }


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Otsu foreground of a network input (X, Y, Z): the voxels a deletion may hide."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    return (t > otsu_threshold(t.reshape(-1))).numpy()


def top_voxels(values: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """Boolean (X, Y, Z) mask of the ``k`` voxels of ``mask`` with the largest ``values`` (ties: lowest index)."""
    idx = np.flatnonzero(mask)
    order = np.argsort(-values.reshape(-1)[idx], kind="stable")[:k]
    out = np.zeros(mask.size, dtype=bool)
    out[idx[order]] = True
    return out.reshape(mask.shape)


def random_regions(mask: np.ndarray, k: int, n: int, seed: int = 0, sigma: float = 2.0) -> list[np.ndarray]:
    """``n`` random blob-shaped regions of ``k`` voxels each inside ``mask`` (top voxels of smoothed noise)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    return [top_voxels(gaussian_filter(rng.standard_normal(mask.shape), sigma), mask, k) for _ in range(n)]


def deletion_test(
    prob_fn: ProbabilityFn,
    image: np.ndarray,
    saliency: np.ndarray,
    brain: np.ndarray | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    n_random: int = 5,
    seed: int = 0,
    sigma: float = 2.0,
    batch: int = 8,
    device: str | torch.device = "cpu",
) -> DeletionResult:
    """Deletion test of a saliency map against random regions of the same size.

    Args:
        prob_fn: P(class) of a batch (B, 1, X, Y, Z), e.g. :func:`ensemble_probability`.
        image: (X, Y, Z) network input (``PredictionResult.resampled``).
        saliency: (X, Y, Z) map on the same grid (``cam_network``, ``occlusion_network``, or a lesion mask).
        brain: (X, Y, Z) boolean mask of the voxels that may be hidden; default :func:`brain_mask`.
        fractions: fractions of the brain's voxels to hide (each in (0, 1]).
        n_random: random regions per fraction.
        seed: seed of the random regions.
        sigma: smoothing (voxels) of the noise whose top voxels form a random region.
        batch: copies per call of ``prob_fn``.
        device: where the copies are built.

    Returns:
        :class:`DeletionResult` with the drops of P(class) per fraction for the map and for the random regions.
    """
    image = np.asarray(image, dtype=np.float32)
    saliency = np.asarray(saliency, dtype=np.float64)
    if saliency.shape != image.shape:
        raise ValueError(f"saliency shape {saliency.shape} differs from image shape {image.shape}")
    if not np.isfinite(saliency).all():
        raise ValueError("saliency map has NaN or infinite values")
    brain = brain_mask(image) if brain is None else np.asarray(brain, dtype=bool)
    if brain.shape != image.shape or not brain.any():
        raise ValueError("brain mask is empty or has another shape than the image")
    if not fractions or any(not 0.0 < float(f) <= 1.0 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1] (got {list(fractions)})")
    fill = float(image[brain].mean())
    n_brain = int(brain.sum())
    masks, voxels = [], []
    for j, f in enumerate(fractions):
        k = max(1, int(round(float(f) * n_brain)))
        voxels.append(k)
        masks.append(top_voxels(saliency, brain, k))
        masks += random_regions(brain, k, n_random, seed=seed + 1000 * j, sigma=sigma)
    x = torch.from_numpy(image).to(device)
    with torch.inference_mode():
        base = float(prob_fn(x[None, None])[0])
        probs = []
        for start in range(0, len(masks), batch):
            chunk = masks[start : start + batch]
            copies = x[None, None].repeat(len(chunk), 1, 1, 1, 1)
            for b, m in enumerate(chunk):
                copies[b, 0][torch.from_numpy(m).to(device)] = fill
            probs += [float(p) for p in prob_fn(copies)]
    per = 1 + n_random
    drops = [base - p for p in probs]
    return DeletionResult(
        fractions=[float(f) for f in fractions],
        base_probability=base,
        saliency_drops=[drops[j * per] for j in range(len(fractions))],
        random_drops=[drops[j * per + 1 : (j + 1) * per] for j in range(len(fractions))],
        voxels=voxels,
    )
