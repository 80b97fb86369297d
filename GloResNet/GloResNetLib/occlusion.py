"""Occlusion sensitivity: how much P(BI) falls when each region of the network input is hidden.

The same computation as ``monai.visualize.OcclusionSensitivity`` with a constant fill (``mode=<float>`` or
``"mean_img"``): a box of ``mask_size`` voxels slides over the image with MONAI's sliding-window positions
(``dense_patch_slices`` with interval ``int(mask_size * (1 - overlap))``), each occluded copy is classified,
and every voxel gets the mean probability of the copies whose box covers it (MONAI's ``"constant"`` blending).
``Testing/test_occlusion.py`` checks that the maps are equal.

Written here instead of calling MONAI because MONAI runs the model's eager ``forward`` on every copy (15-65 s per
64^3 volume on 2 cores). Here:

- the copies go through :mod:`.fastnet`'s warm inference copy of the *whole* network (BatchNorm folded,
  oneDNN-packed weights), in batches;
- the stem convolution is linear, so for a copy it is the unoccluded image's stem output plus the convolution of
  the (box-shaped) difference, computed on the few stem outputs the box reaches: the stem, most of a small
  model's cost, runs once per volume instead of once per copy (exact up to float rounding);
- by default boxes are placed only over the bounding box of the head (Otsu foreground of the network input),
  like MONAI's ``b_box`` argument: hiding air changes nothing worth a forward pass.

The map returned is the *drop* ``P(BI | image) - P(BI | region hidden)``, in probability units: positive where
hiding the region lowers P(BI). Only the identity view is occluded (no TTA); an ensemble's copies are
classified by each model and the probabilities averaged (the ensemble's P(BI)).

Default box (see :func:`default_mask_size`): about 1/8 of the grid on each axis (8 voxels at 64^3, 16 at
128^3): on a neonatal head's field of view (about 130 mm) that is ~16 mm, three times a 5 mm punctate lesion,
so a box centred near the lesion hides all of it; overlap 0.5 puts the boxes 8 mm apart, so the map's peak
lands within about half that of the lesion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import fastnet
from .preprocessing import otsu_threshold

FILLS = ("brain_mean", "mean_img")

#: A callback ``progress(done, total)`` in occluded copies.
Progress = Callable[[int, int], None]


def default_mask_size(grid: Sequence[int]) -> int:
    """Occlusion box edge (voxels) for a network grid: 1/8 of its mean edge, at least 4 (8 at 64^3)."""
    return max(4, int(round(float(np.mean(grid)) / 8)))


@dataclass(frozen=True)
class OcclusionConfig:
    """Occlusion settings (network-grid voxels).

    Attributes:
        mask_size: box edge in voxels; None: :func:`default_mask_size`.
        overlap: overlap of neighbouring boxes in [0, 1) (MONAI's ``overlap``); the step is
            ``int(mask_size * (1 - overlap))``.
        fill: value of hidden voxels: ``"brain_mean"`` (mean intensity of the Otsu foreground, i.e. average
            tissue rather than a dark hole that could look like a lesion), ``"mean_img"`` (the whole image's
            mean, MONAI's ``mean_img``) or a number.
        head_box: place boxes only over the Otsu foreground's bounding box (plus half a box).
        batch: occluded copies per network pass.
    """

    mask_size: int | None = None
    overlap: float = 0.5
    fill: str | float = "brain_mean"
    head_box: bool = True
    batch: int = 8

    def __post_init__(self) -> None:
        if self.mask_size is not None and int(self.mask_size) < 1:
            raise ValueError(f"occlusion mask size must be >= 1 voxel (got {self.mask_size})")
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ValueError(f"occlusion overlap must be in [0, 1) (got {self.overlap})")
        if isinstance(self.fill, str) and self.fill not in FILLS:
            raise ValueError(f"occlusion fill must be a number or one of {FILLS} (got {self.fill!r})")
        if int(self.batch) < 1:
            raise ValueError(f"occlusion batch must be >= 1 (got {self.batch})")


@dataclass
class OcclusionMap:
    """Result of :func:`occlusion_sensitivity` on the network grid.

    Attributes:
        drop: (X, Y, Z) float32 ``base_probability - mean P(class | box over the voxel hidden)``; 0 where no box
            reached.
        occluded: (X, Y, Z) float32 the mean occluded probability (MONAI's map for the class); the base
            probability where no box reached.
        base_probability: P(class) of the unoccluded image (ensemble mean).
        windows: number of occluded copies per model.
    """

    drop: np.ndarray
    occluded: np.ndarray
    base_probability: float
    windows: int


def head_region(image: torch.Tensor, margin: int) -> tuple[tuple[int, int], ...]:
    """Bounding box (start, stop) per axis of the Otsu foreground of an (X, Y, Z) image, widened by ``margin``
    voxels and clipped to the image (the whole image when the foreground is empty)."""
    fg = image > otsu_threshold(image.reshape(-1))
    if not bool(fg.any()):
        return tuple((0, int(n)) for n in image.shape)
    box = []
    for axis, n in enumerate(image.shape):
        other = tuple(a for a in range(3) if a != axis)
        idx = torch.nonzero(fg.any(dim=other[1]).any(dim=other[0])).flatten()
        box.append((max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, int(n))))
    return tuple(box)


def window_slices(
    region: Sequence[tuple[int, int]], mask_size: Sequence[int], overlap: float
) -> list[tuple[slice, slice, slice]]:
    """MONAI's sliding-window boxes (``_get_scan_interval`` + ``dense_patch_slices``) over ``region``
    ((start, stop) per axis), as slices of the whole image. Boxes are clipped to the region's size."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    shape = [b - a for a, b in region]
    mask = [min(int(m), s) for m, s in zip(mask_size, shape)]
    interval = _get_scan_interval(shape, mask, 3, [overlap] * 3)
    return [
        tuple(slice(s.start + a, s.stop + a) for s, (a, _) in zip(sl, region))
        for sl in dense_patch_slices(shape, mask, interval)
    ]


class _Classifier:
    """P(class) of a batch of occluded copies of one image for one model.

    For a :class:`~.models.resnet.ResNet3D` the fast path: the stem output of the unoccluded image plus that of
    the (box-supported) difference, then :mod:`.fastnet`'s folded stages, global pooling and the head; with a
    ``"mil"`` lesion head (the demo's CPU model) the folded stages run up to ``layer1`` and the model's own
    lesion map and soft maximum do the rest. Any other model: its eager forward on the copies."""

    def __init__(self, model: nn.Module, image: torch.Tensor, class_idx: int) -> None:
        self.model, self.image, self.class_idx = model, image, class_idx
        dtype = fastnet.cuda_dtype() if image.device.type == "cuda" else torch.float32
        # a "mil" model's output is its lesion map's soft maximum, not global pooling of the last stage
        self.mil = getattr(model, "lesion_mode", "none") == "mil"
        self.fast = fastnet.prepared(model, image.device, dtype, all_stages=not self.mil)
        self.base_stem = None
        if self.fast is not None:
            with torch.inference_mode():
                self.base_stem = self.fast.stem_conv(image[None, None])  # (1, C, x, y, z)
            # channels_last_3d: ~15x faster than the plain layout for these 1-channel convolutions on CPU
            self.stem_weight = self.fast.stem.weight.contiguous(memory_format=fastnet.CL)
            self.kernel = tuple(int(k) for k in self.stem_weight.shape[2:])

    def _reach(self, box: tuple[slice, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[slice, ...]]:
        """For a box of the input: the first input voxel and the size of the patch that the stem outputs it
        reaches read, and those outputs' slices."""
        stem = self.fast.stem
        out_shape = self.base_stem.shape[2:]
        start, size, out = [], [], []
        for ax, sl in enumerate(box):
            k = (self.kernel[ax] - 1) * stem.dilation[ax] + 1  # extent of the (dilated) kernel
            s, p = stem.stride[ax], stem.padding[ax]
            # output o reads inputs s*o - p ... s*o - p + k - 1
            o_lo = max(-(-(sl.start + p - k + 1) // s), 0)
            o_hi = min((sl.stop - 1 + p) // s, out_shape[ax] - 1)
            start.append(s * o_lo - p)
            size.append(s * (o_hi - o_lo) + k)
            out.append(slice(o_lo, o_hi + 1))
        return tuple(start), tuple(size), tuple(out)

    def _stem_outputs(self, boxes: list[tuple[slice, ...]], fill: float) -> torch.Tensor:
        """Stem outputs (B, C, x, y, z) of the copies: the image's plus the stem convolution (no bias) of the
        box-shaped difference ``fill - image``, on the outputs it reaches (one convolution per patch size)."""
        stem = self.fast.stem
        stems = self.base_stem.repeat(len(boxes), 1, 1, 1, 1).contiguous(memory_format=fastnet.CL)
        groups: dict[tuple[int, ...], list[int]] = {}
        reach = [self._reach(box) for box in boxes]
        for b, (_, size, _) in enumerate(reach):
            groups.setdefault(size, []).append(b)
        for size, members in groups.items():
            local = self.image.new_zeros((len(members), 1, *size))
            for row, b in enumerate(members):
                box, (start, _, _) = boxes[b], reach[b]
                # the part of the box the reached outputs read (all of it unless the stride exceeds the kernel)
                keep = tuple(slice(max(sl.start, st), min(sl.stop, st + n)) for sl, st, n in zip(box, start, size))
                dst = tuple(slice(kp.start - st, kp.stop - st) for kp, st in zip(keep, start))
                local[(row, 0, *dst)] = fill - self.image[keep]
            local = local.to(self.stem_weight.dtype).contiguous(memory_format=fastnet.CL)
            y = F.conv3d(local, self.stem_weight, None, stem.stride, 0, stem.dilation).to(stems.dtype)
            for row, b in enumerate(members):
                stems[(b, slice(None), *reach[b][2])] += y[row]
        return stems

    def __call__(self, boxes: list[tuple[slice, ...]], fill: float) -> torch.Tensor:
        """P(class) (len(boxes),) of the image with each box set to ``fill``."""
        with torch.inference_mode():
            if self.fast is None:
                copies = self.image[None, None].repeat(len(boxes), 1, 1, 1, 1)
                for b, box in enumerate(boxes):
                    copies[(b, 0, *box)] = fill
                logits = self.model(copies)
            else:
                feats = self.fast.after_stem(self._stem_outputs(boxes, fill)).float()
                if self.mil:  # feats: layer1's activations (the cam_layer); the lesion map and its soft maximum
                    logits = self.model.head(self.model.pool_features(feats))
                else:
                    # every stage ran in the fast copy: only ResNet3D's global average pooling is left (its
                    # pool_features would also run the stages after cam_layer)
                    logits = self.model.head(torch.flatten(F.adaptive_avg_pool3d(feats, 1), 1))
            return torch.softmax(logits.float(), dim=1)[:, self.class_idx]


def fill_value(image: torch.Tensor, fill: str | float) -> float:
    """The intensity hidden voxels get: a number, the image mean (``"mean_img"``) or the Otsu foreground's mean
    (``"brain_mean"``)."""
    if not isinstance(fill, str):
        return float(fill)
    if fill == "mean_img":
        return float(image.mean())
    flat = image.reshape(-1)
    fg = flat[flat > otsu_threshold(flat)]
    return float((fg if fg.numel() else flat).mean())


def occlusion_sensitivity(
    models: Sequence[nn.Module],
    image: torch.Tensor,
    config: OcclusionConfig | None = None,
    class_idx: int = 1,
    progress: Progress | None = None,
) -> OcclusionMap:
    """Occlusion sensitivity of an ensemble's P(class) for one network input.

    Args:
        models: the ensemble's models (eval mode, on ``image``'s device); their probabilities are averaged.
        image: (X, Y, Z) float network input (after preprocessing).
        config: box size, overlap, fill, head box, batch size.
        class_idx: class whose probability is followed (1: brain injury).
        progress: called as ``progress(done, total)`` after each batch (copies over all models).

    Returns:
        :class:`OcclusionMap` with (X, Y, Z) ``drop`` and ``occluded`` maps on the network grid.
    """
    config = config or OcclusionConfig()
    image = image.float()
    shape = tuple(int(n) for n in image.shape)
    mask = int(config.mask_size or default_mask_size(shape))
    region = head_region(image, (mask - 1) // 2) if config.head_box else tuple((0, n) for n in shape)
    boxes = window_slices(region, [mask] * 3, float(config.overlap))
    fill = fill_value(image, config.fill)
    total, done = len(boxes) * len(models), 0
    probs = torch.zeros(len(boxes), dtype=torch.float64)
    base = 0.0
    for model in models:
        classify = _Classifier(model, image, class_idx)
        with torch.inference_mode():
            base += float(torch.softmax(model(image[None, None]).float(), dim=1)[0, class_idx])
        for start in range(0, len(boxes), int(config.batch)):
            chunk = boxes[start : start + int(config.batch)]
            probs[start : start + len(chunk)] += classify(chunk, fill).double().cpu()
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    probs /= len(models)
    base /= len(models)
    # MONAI's "constant" blending: each voxel gets the mean over the boxes that cover it
    acc = torch.zeros(shape, dtype=torch.float64)
    count = torch.zeros(shape, dtype=torch.float64)
    for box, p in zip(boxes, probs.tolist()):
        acc[box] += p
        count[box] += 1.0
    covered = count > 0
    occluded = torch.full(shape, base, dtype=torch.float64)
    occluded[covered] = acc[covered] / count[covered]
    drop = (base - occluded).float().numpy()
    return OcclusionMap(drop=drop, occluded=occluded.float().numpy(), base_probability=float(base), windows=len(boxes))
