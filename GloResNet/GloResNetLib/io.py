"""Reading and writing MRI volumes (NIfTI, NRRD) with their voxel-to-RAS affine, and atomic file output.

Arrays are returned indexed as stored in the file (i, j, k); the affine maps voxel indices to RAS millimetres
(nibabel's convention). For NIfTI files whose qform and sform disagree we trust the qform, as 3D Slicer and
ITK do, so that the command line and the Slicer module see the same geometry.
"""

from __future__ import annotations

import contextlib
import gzip
import io
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
#: Refuse volumes whose stored voxel data (voxels x bytes per voxel) is larger than this, before reading it.
MAX_DATA_BYTES = 4 * MAX_VOXELS
#: Decompressed bytes tolerated after a compressed file's declared voxel data (a gzip bomb hides gigabytes
#: there); they are read and discarded in small blocks, never held.
MAX_TRAILING_BYTES = 64 << 20
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


def _check_shape(path: Path, shape: tuple[int, ...], itemsize: int = 1) -> tuple[int, ...]:
    """Squeeze a single-volume 4D shape to 3D and refuse 2D, multi-volume and absurdly large images: more than
    :data:`MAX_VOXELS` voxels, or more than :data:`MAX_DATA_BYTES` of stored data at ``itemsize`` bytes each.
    Called with the header's shape before any voxel data is read or decompressed."""
    shape = tuple(int(s) for s in shape)
    if len(shape) > 3:
        extra = shape[3:]
        if int(np.prod(extra)) != 1:
            raise InputError(
                f"{path}: {len(shape)}D image with {int(np.prod(extra))} volumes; expected one scalar 3D volume"
            )
        shape = shape[:3]
    if len(shape) < 3 or min(shape) < 2:
        raise InputError(f"{path}: image of shape {shape} is not a 3D volume")
    voxels = int(np.prod(shape, dtype=np.int64))
    if max(shape) > MAX_AXIS or voxels > MAX_VOXELS:
        raise InputError(f"{path}: image of shape {shape} is too large (limit {MAX_VOXELS:,} voxels)")
    if voxels * int(itemsize) > MAX_DATA_BYTES:
        raise InputError(
            f"{path}: image of shape {shape} at {itemsize} bytes per voxel is too large "
            f"(limit {MAX_DATA_BYTES / 1e9:.1f} GB of voxel data)"
        )
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


def _open_compressed(path: Path):
    """Binary reader of a possibly gzipped file; gzip through ``isal`` (same bytes as zlib, faster) if present."""
    if not path.name.lower().endswith(".gz"):
        return open(path, "rb")
    try:
        from isal import igzip

        return igzip.open(path, "rb")
    except ImportError:
        return gzip.open(path, "rb")


def _read_exact(f, buf: memoryview) -> int:
    """Fill ``buf`` from ``f`` (readinto may return short counts); returns the number of bytes read."""
    done = 0
    while done < len(buf):
        n = f.readinto(buf[done:])
        if not n:
            break
        done += n
    return done


def _nifti_header_image(head: bytes):
    import nibabel as nib

    sizeof_hdr = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    image_class = nib.Nifti2Image if 540 in sizeof_hdr else nib.Nifti1Image
    return image_class.from_bytes(head)


def _check_voxel_size(head: bytes, path: Path) -> None:
    """Refuse a header whose geometry comes from zero voxel sizes (``pixdim``): the qform, or with neither
    qform nor sform the base affine. nibabel would silently replace a 0 by 1 mm when it reads the header.

    Args:
        head: the raw header bytes (at least 348 for NIfTI-1, 540 for NIfTI-2).
        path: the file, named in the error.
    """
    import nibabel as nib

    layout = _nifti_layout(head[:348]) if len(head) >= 348 else None
    two = layout is not None and layout[0] == 540
    if layout is None or len(head) < layout[0]:
        return  # not a NIfTI header: nibabel refuses it
    hdr = (nib.Nifti2Header if two else nib.Nifti1Header)(binaryblock=head[: 540 if two else 348], check=False)
    pixdim = [float(v) for v in hdr["pixdim"][1:4]]
    if all(np.isfinite(pixdim)) and min(abs(v) for v in pixdim) > 0:
        return
    if int(hdr["qform_code"]) > 0 or int(hdr["sform_code"]) <= 0:
        raise InputError(
            f"{path}: voxel sizes (pixdim) {pixdim} include zero or non-finite values; the image "
            "geometry is undefined (it would silently become 1 mm voxels); fix the header"
        )


def _nifti_layout(head: bytes) -> tuple[int, int] | None:
    """(header size, data offset) from the first 348 bytes of a NIfTI-1/2 file, or None if not NIfTI."""
    for order in ("<", ">"):
        size = int(np.frombuffer(head, f"{order}i4", 1)[0])
        if size == 348:
            return 348, int(np.frombuffer(head, f"{order}f4", 1, 108)[0])
        if size == 540:
            return 540, -1  # NIfTI-2: the int64 offset lies beyond 348 bytes; read by the caller
    return None


def _drain(f, path: Path) -> None:
    """Read a stream to its end (gzip verifies its CRC and length there), refusing more than
    :data:`MAX_TRAILING_BYTES` after the voxel data."""
    extra = 0
    while block := f.read(1 << 20):
        extra += len(block)
        if extra > MAX_TRAILING_BYTES:
            raise InputError(
                f"{path}: holds more than {MAX_TRAILING_BYTES >> 20} MiB beyond the voxels its "
                "header declares; refusing it (corrupt file or decompression bomb)"
            )


def _read_nifti_stream(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Decompress a single-file NIfTI-1/2 straight into the float32 array nibabel would return.

    The header is read first and its shape and data size (voxels x bytes per voxel) are checked before any
    voxel data is read, so a small compressed file cannot expand into gigabytes; exactly the declared bytes
    are then read (one allocation) and the rest of the stream is drained, bounded. Without intensity scaling
    the stored values are cast to float32 here; with scaling nibabel applies it to the bytes read. Returns
    None only for an uncompressed file with an unusual layout, which nibabel then reads (memory-mapped).
    """
    compressed = path.name.lower().endswith(".gz")
    with _open_compressed(path) as f:
        head = f.read(348)
        layout = _nifti_layout(head) if len(head) == 348 else None
        if layout is None:
            if compressed:
                raise InputError(f"{path}: not a NIfTI image (no NIfTI-1/2 header)")
            return None
        size, offset = layout
        if size == 540:
            head += f.read(540 - 348)
            if len(head) < 540:
                raise InputError(f"{path}: truncated NIfTI header")
            order = "<" if int(np.frombuffer(head, "<i4", 1)[0]) == 540 else ">"
            offset = int(np.frombuffer(head, f"{order}i8", 1, 168)[0])
        if not size + 4 <= offset <= size + (1 << 24):
            if compressed:
                raise InputError(f"{path}: invalid NIfTI data offset {offset} for a single-file image")
            return None
        head += f.read(offset - len(head))  # extension flag and extensions
        if len(head) < offset:
            raise InputError(f"{path}: truncated NIfTI header")
        _check_voxel_size(head, path)
        img = _nifti_header_image(head)
        proxy = img.dataobj  # holds the file's scaling (nibabel resets the image header's)
        if int(proxy.offset) != offset:
            if compressed:
                raise InputError(f"{path}: inconsistent NIfTI data offset")
            return None
        stored = np.dtype(proxy.dtype)
        if not np.issubdtype(stored, np.number) or np.iscomplexobj(np.empty(0, stored)):
            raise InputError(f"{path}: unsupported voxel type {stored}; expected real scalars")
        shape = _check_shape(path, img.shape, stored.itemsize)
        affine = _nifti_affine(img)
        raw = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=stored)
        if _read_exact(f, memoryview(raw.view(np.uint8))) != raw.nbytes:
            raise InputError(f"{path}: truncated NIfTI file (fewer voxels than its header declares)")
        if compressed:
            _drain(f, path)
    if (float(proxy.slope), float(proxy.inter)) != (1.0, 0.0):
        scaled = _nifti_header_image(head + raw.tobytes())  # nibabel applies its own scaling rules
        del raw
        return scaled.get_fdata(dtype=np.float32).reshape(shape), affine
    data = raw if raw.dtype == np.float32 else raw.astype(np.float32)  # also converts byte order
    return data.reshape(shape, order="F"), affine


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        fast = _read_nifti_stream(path)
        if fast is not None:
            return fast
        with open(path, "rb") as f:
            _check_voxel_size(f.read(540), path)
        img = nib.load(str(path))  # uncompressed: memory-mapped, nothing read beyond the file
        stored = np.dtype(img.get_data_dtype())
        if not np.issubdtype(stored, np.number) or np.iscomplexobj(np.empty(0, stored)):
            raise InputError(f"{path}: unsupported voxel type {stored}; expected real scalars")
        shape = _check_shape(path, img.shape, stored.itemsize)
        affine = _nifti_affine(img)
        data = img.get_fdata(dtype=np.float32)
    except InputError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        if path.name.lower().endswith(".gz") and not isinstance(exc, FileNotFoundError):
            raise InputError(f"{path}: corrupt or truncated gzip data ({exc})") from None
        raise InputError(f"{path}: not a readable NIfTI image ({exc.__class__.__name__}: {exc})") from None
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, ValueError) as exc:
        raise InputError(f"{path}: not a readable NIfTI image ({exc.__class__.__name__}: {exc})") from None
    return data.reshape(shape), affine


def _read_nrrd_bounded(path: Path) -> tuple[np.ndarray, dict]:
    """``nrrd.read`` with the header's shape and data size checked first and compressed data decompressed
    only up to the size the header declares (pynrrd alone decompresses everything before comparing sizes).

    Returns:
        (array as pynrrd gives it, Fortran index order; the header dict).
    """
    import bz2

    import nrrd
    from nrrd.reader import _determine_datatype

    with open(path, "rb") as fh:
        header = nrrd.read_header(fh)
        dtype = _determine_datatype(header)
        _check_shape(path, tuple(header.get("sizes", ())), dtype.itemsize)
        encoding = str(header.get("encoding", "raw")).lower()
        if encoding not in ("gzip", "gz", "bzip2", "bz2"):
            return nrrd.reader.read_data(header, fh, str(path)), header  # raw / text: bounded by the file size
        detached = header.get("datafile", header.get("data file"))
        with contextlib.ExitStack() as stack:
            src = stack.enter_context(open(path.parent / detached, "rb")) if detached else fh
            for _ in range(int(header.get("lineskip", header.get("line skip", 0)))):
                src.readline()
            stream = gzip.GzipFile(fileobj=src) if encoding.startswith("gz") else bz2.BZ2File(src)
            skip = int(header.get("byteskip", header.get("byte skip", 0)))
            # byte skip -1: the data are the last bytes; leading bytes are tolerated up to MAX_TRAILING_BYTES
            limit = int(np.prod(header["sizes"], dtype=np.int64)) * dtype.itemsize
            limit += skip if skip >= 0 else MAX_TRAILING_BYTES
            raw = stream.read(limit + 1)
            if len(raw) > limit:
                raise InputError(
                    f"{path}: holds more data than its header declares; refusing it "
                    "(corrupt file or decompression bomb)"
                )
    plain = {k: v for k, v in header.items() if k not in ("datafile", "data file", "lineskip", "line skip")}
    plain["encoding"] = "raw"  # already decompressed, within bounds
    return nrrd.reader.read_data(plain, io.BytesIO(raw), str(path)), header


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nrrd

    try:
        data, header = _read_nrrd_bounded(path)
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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs get ordinary permissions
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


#: gzip level of written ``.nii.gz`` files (nibabel's default is 1 too).
GZIP_LEVEL = 1


def _gzip_writer(path: Path):
    """Binary gzip writer: ``isal`` (several threads for large files) if installed, else the standard one."""
    try:
        from isal import igzip_threaded

        threads = max(1, min(4, os.cpu_count() or 1))
        return igzip_threaded.open(path, "wb", compresslevel=GZIP_LEVEL, threads=threads)
    except ImportError:
        return gzip.open(path, "wb", compresslevel=GZIP_LEVEL)


class _ForwardWriter(io.RawIOBase):
    """A stream writer that reports its position and accepts seeks to it (nibabel seeks before writing)."""

    def __init__(self, raw) -> None:
        super().__init__()
        self._raw, self._pos = raw, 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = self._raw.write(b)
        n = len(memoryview(b).cast("B")) if n is None else n
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        target = {0: offset, 1: self._pos + offset}.get(whence)
        if target is None or target < self._pos:
            raise io.UnsupportedOperation("backward seek on a compressed stream")
        if target > self._pos:
            self.write(b"\0" * (target - self._pos))
        return self._pos


def write_volume(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a 3D array as NIfTI (qform = sform = ``affine``), atomically.

    ``.nii.gz`` is compressed with ``isal`` when installed (same file content once decompressed, several
    times faster than zlib).
    """
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        if tmp.name.lower().endswith(".gz"):
            with _gzip_writer(tmp) as f:
                img.to_stream(_ForwardWriter(f))
        else:
            nib.save(img, str(tmp))
    return Path(path)
