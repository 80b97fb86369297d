"""Reading and writing MRI volumes (NIfTI, NRRD) with their voxel-to-RAS affine, and atomic file output.

Arrays are returned indexed as stored in the file (i, j, k); the affine maps voxel indices to RAS millimetres
(nibabel's convention). For NIfTI files whose qform and sform disagree we trust the qform, as 3D Slicer and
ITK do, so that the command line and the Slicer module see the same geometry.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES

#: Refuse volumes larger than this many voxels before reading their data (about 1.6 GB as float32).
MAX_VOXELS = 400_000_000
#: Refuse any axis longer than this.
MAX_AXIS = 4096

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def volume_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``sub-1_T2w.nii.gz`` -> ``sub-1_T2w``)."""
    name = Path(path).name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _suffix_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(NRRD_SUFFIXES):
        return "nrrd"
    raise InputError(f"{path}: unsupported file type (expected one of {', '.join(VOLUME_SUFFIXES)})")


def _check_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Squeeze a single-volume 4D shape to 3D and refuse 2D, multi-volume and absurdly large images."""
    shape = tuple(int(s) for s in shape)
    if len(shape) > 3:
        extra = shape[3:]
        if int(np.prod(extra)) != 1:
            raise InputError(f"{path}: {len(shape)}D image with {int(np.prod(extra))} volumes; "
                             "expected one scalar 3D volume")
        shape = shape[:3]
    if len(shape) < 3 or min(shape) < 2:
        raise InputError(f"{path}: image of shape {shape} is not a 3D volume")
    if max(shape) > MAX_AXIS or int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise InputError(f"{path}: image of shape {shape} is too large (limit {MAX_VOXELS:,} voxels)")
    return shape


def _nifti_affine(img) -> np.ndarray:
    """Voxel-to-RAS affine of a NIfTI image: qform if set (as Slicer/ITK), else sform, else the base affine."""
    header = img.header
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    if qcode and qcode > 0:
        if scode and scode > 0 and not np.allclose(qform, sform, atol=1e-4):
            log.warning("qform and sform differ; using the qform as 3D Slicer does")
        return np.asarray(qform, dtype=np.float64)
    if scode and scode > 0:
        return np.asarray(sform, dtype=np.float64)
    return np.asarray(header.get_base_affine(), dtype=np.float64)


def _load_nifti(path: Path):
    import nibabel as nib

    if path.name.lower().endswith(".gz"):
        raw = path.read_bytes()
        try:
            try:
                from isal import igzip  # fast gzip decoder, same bytes as zlib

                data = igzip.decompress(raw)
            except ImportError:
                data = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path}: corrupt or truncated gzip data ({exc})") from None
        sizeof_hdr = {int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")}
        image_class = nib.Nifti2Image if 540 in sizeof_hdr else nib.Nifti1Image
        return image_class.from_bytes(data)
    return nib.load(str(path))


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        img = _load_nifti(path)
        shape = _check_shape(path, img.shape)
        affine = _nifti_affine(img)
        if not np.issubdtype(img.get_data_dtype(), np.number) or np.iscomplexobj(np.empty(0, img.get_data_dtype())):
            raise InputError(f"{path}: unsupported voxel type {img.get_data_dtype()}; expected real scalars")
        data = img.get_fdata(dtype=np.float32)
    except InputError:
        raise
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, ValueError,
            OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: not a readable NIfTI image ({exc.__class__.__name__}: {exc})") from None
    return data.reshape(shape), affine


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nrrd

    try:
        header = nrrd.read_header(str(path))
        _check_shape(path, tuple(header.get("sizes", ())))
        data, header = nrrd.read(str(path))
    except InputError:
        raise
    except (nrrd.NRRDError, ValueError, OSError, EOFError, zlib.error, KeyError) as exc:
        raise InputError(f"{path}: not a readable NRRD image ({exc.__class__.__name__}: {exc})") from None
    directions = header.get("space directions")
    if directions is None:
        raise InputError(f"{path}: NRRD file has no 'space directions'; its geometry is unknown")
    rows = [np.asarray(d, dtype=np.float64) for d in directions]
    spatial = [i for i, d in enumerate(rows) if d.size and np.all(np.isfinite(d))]
    if len(spatial) != 3:
        raise InputError(f"{path}: NRRD with {len(spatial)} spatial axes; expected a scalar 3D volume")
    nonspatial = [i for i in range(data.ndim) if i not in spatial]
    if any(data.shape[i] != 1 for i in nonspatial):
        raise InputError(f"{path}: NRRD with non-scalar voxels (shape {data.shape}); expected one 3D volume")
    data = data.reshape([data.shape[i] for i in spatial])
    affine = np.eye(4)
    affine[:3, :3] = np.stack([rows[i] for i in spatial], axis=1)
    affine[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    space = str(header.get("space", "right-anterior-superior")).lower()
    if space in ("left-posterior-superior", "lps"):
        affine = _LPS_TO_RAS @ affine
    elif space in ("left-anterior-superior", "las"):
        affine = np.diag([-1.0, 1.0, 1.0, 1.0]) @ affine
    elif space not in ("right-anterior-superior", "ras"):
        raise InputError(f"{path}: unsupported NRRD space '{space}'")
    return np.asarray(data, dtype=np.float32), affine


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a scalar 3D MRI volume; returns ``(array float32 (I, J, K), affine (4, 4) voxel-to-RAS)``.

    Accepts NIfTI (``.nii``, ``.nii.gz``) and NRRD (``.nrrd``, ``.nhdr``); a 4D file holding one volume is
    accepted. Raises :class:`InputError` with a one-line message for anything else.
    """
    path = Path(path)
    kind = _suffix_kind(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    data, affine = _read_nifti(path) if kind == "nifti" else _read_nrrd(path)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: invalid voxel-to-world matrix")
    return data, affine


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success, delete it on failure.

    The temporary name keeps the final suffix so that format-by-extension writers (nibabel) work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_volume(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a 3D array as NIfTI (qform = sform = ``affine``), atomically."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
