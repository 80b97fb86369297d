"""Lesion masks for ``train --lesion-weight``: each scan's mask brought onto the network grid, checked, cached.

A mask comes from the manifest's ``mask_path`` column (``gloresnet synth`` writes it) and must lie on its
scan's own grid (same shape and voxel-to-world matrix, 0.01 mm tolerance); nonzero voxels are lesion. It is
resampled exactly as the scan (:func:`~GloResNetLib.preprocessing.to_network_grid`: reorientation, resize,
anti-aliasing; no z-score), so values lie in [0, 1] (partial volume), and cached like the network inputs (its
key holds the SHA-256 of the mask *and* of its scan, so a mask is re-checked against a changed scan).

Whose mask is known: a scan with a mask, and a scan labelled 0 (no brain injury: no focal lesion, an empty
mask). A BI scan without a mask has an unknown lesion map: the lesion-map loss leaves it out (its
classification loss stays).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..bundle import sha256_file
from ..errors import DatasetError, InputError
from ..io import read_volume
from ..preprocessing import PreprocessConfig, to_network_grid
from .cache import PreprocessCache, cache_key
from .dataset_report import DatasetReport

__all__ = ["MaskCache", "MaskStore", "prepare_masks"]

#: Largest difference (mm) between a mask's and its scan's voxel-to-world matrices.
AFFINE_TOLERANCE_MM = 0.01


class MaskCache(PreprocessCache):
    """Cached lesion masks on the network grid (float32 in [0, 1]), keyed by mask and scan content.

    Args:
        root: cache folder (None: the default preprocessing cache).
        config: the scans' preprocessing.
        scan_of: mask path -> the scan it belongs to.
        scan_hashes: scan path -> SHA-256 of its bytes (from the scans' :class:`PreprocessCache`).
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        config: PreprocessConfig,
        scan_of: dict[str, Path],
        scan_hashes: dict[str, str],
    ) -> None:
        super().__init__(root, config)
        self.scan_of = scan_of
        self.scan_hashes = scan_hashes

    def key_for(self, path: str | os.PathLike) -> str:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: file not found")
        scan = self.scan_of[str(path)]
        digest = sha256_file(path)
        self.file_hashes[str(path)] = digest
        scan_digest = self.scan_hashes.get(str(scan)) or sha256_file(scan)
        return cache_key(f"lesion-mask {digest} of scan {scan_digest}", self.config)

    def compute(self, path: Path) -> np.ndarray:
        """The mask of ``path`` on the network grid, after checking that it lies on its scan's grid."""
        mask, affine = read_volume(path)
        scan = self.scan_of[str(path)]
        image, scan_affine = read_volume(scan)  # decoded again only on a cache miss
        if mask.shape != image.shape:
            raise InputError(f"{path}: lesion mask of shape {mask.shape} is not on the grid of {scan} {image.shape}")
        if not np.allclose(affine, scan_affine, atol=AFFINE_TOLERANCE_MM):
            raise InputError(f"{path}: lesion mask's voxel-to-world matrix differs from that of {scan}")
        grid = to_network_grid((mask > 0).astype(np.float32), affine, self.config)
        return np.clip(grid, 0.0, 1.0)


class MaskStore:
    """The lesion masks of a dataset's samples (same order as its scans).

    Args:
        cache: where the masks are cached.
        keys: cache key of each sample's mask, None for a sample without one.
        known: bool (N,), whose lesion map is known (a mask, or label 0).
    """

    def __init__(self, cache: MaskCache, keys: list[str | None], known: np.ndarray) -> None:
        self.cache = cache
        self.keys = list(keys)
        self.known = np.asarray(known, dtype=bool)
        self.empty = np.zeros(cache.config.size, np.float32)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> np.ndarray:
        key = self.keys[i]
        if key is None:
            return self.empty
        arr = self.cache.load(key)
        if arr is None:
            raise InputError(f"lesion-mask cache entry {key} vanished or is corrupt; rerun to rebuild it")
        return arr

    def batch(self, indices) -> np.ndarray:
        """Stack masks into a new (B, X, Y, Z) float32 array (zeros for samples without a mask)."""
        return np.stack([self[int(i)] for i in indices])


def prepare_masks(report: DatasetReport, keys: list[str], cache: PreprocessCache) -> tuple[list[str], MaskStore]:
    """Check and cache the lesion masks of ``report.samples``; a bad mask is a problem of its sample.

    Args:
        report: the dataset (its samples aligned with ``keys``); problems are added to it.
        keys: the scans' cache keys.
        cache: the scans' cache (its folder, preprocessing and the scans' hashes).
    Returns:
        ``(keys, masks)`` of the samples kept.
    Raises:
        DatasetError: no sample has a mask.
    """
    samples = list(report.samples)
    with_mask = [i for i, s in enumerate(samples) if s.mask_path is not None]
    if not with_mask:
        raise DatasetError(
            f"{report.source}: --lesion-weight needs lesion masks, but no scan has one (give a mask_path column "
            "in the manifest, as gloresnet synth writes it)"
        )
    first: dict[Path, str] = {}
    for i in list(with_mask):  # a mask belongs to one scan (it is checked against and keyed by that scan)
        where = first.setdefault(samples[i].mask_path, samples[i].where)
        if where != samples[i].where:
            report.add_problem(samples[i], "bad lesion mask", f"{samples[i].mask_path} is also the mask of {where}")
            with_mask.remove(i)
    paths = [s.mask_path for s in samples]
    scan_of = {str(samples[i].mask_path): samples[i].path for i in with_mask}
    masks = MaskCache(cache.root, cache.config, scan_of, cache.file_hashes)
    mask_keys, problems = masks.prepare(paths, with_mask)
    for i in sorted(problems):
        report.add_problem(samples[i], "bad lesion mask", problems[i])
    gone = {id(s) for s in report.bad_samples}
    kept = [i for i in range(len(samples)) if i not in problems and id(samples[i]) not in gone]
    known = np.array([samples[i].mask_path is not None or samples[i].label == 0 for i in kept], dtype=bool)
    unknown = int((~known).sum())
    if unknown:
        report.notes.append(f"{unknown} BI scan(s) have no lesion mask: the lesion-map loss leaves them out")
    return [keys[i] for i in kept], MaskStore(masks, [mask_keys.get(i) for i in kept], known)
