"""Bounded, validated reads (issue 16, items 6 and 9): decompression bombs in NIfTI and NRRD files are refused
from their header before the data are expanded (checked in a real child process by its peak memory), and a
qform with a zero voxel size is refused instead of silently becoming 1 mm."""

from __future__ import annotations

import functools
import gzip
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import subprocess_env
from GloResNetLib.errors import InputError
from GloResNetLib.io import read_volume

#: Zeros are compressed in blocks of this size (64 MiB -> about 64 kB each), repeated to build a bomb.
_CHUNK = 64 << 20


@functools.lru_cache(maxsize=1)
def _zero_block() -> bytes:
    """Raw deflate of one chunk of zeros after a full flush: identical whatever came before, so it repeats."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    c.compress(b"x")
    c.flush(zlib.Z_FULL_FLUSH)
    return c.compress(bytes(_CHUNK)) + c.flush(zlib.Z_FULL_FLUSH)


def _gzip_bomb(head: bytes, zero_bytes: int) -> bytes:
    """One valid gzip member: ``head`` followed by ``zero_bytes`` zeros (a multiple of 64 MiB), built in about a
    second although it expands to gigabytes (CRC and length trailer correct, as a real bomb has them)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    n = zero_bytes // _CHUNK
    crc, zeros = zlib.crc32(head), bytes(_CHUNK)
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    trailer = struct.pack("<II", crc, (len(head) + n * _CHUNK) & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + first + _zero_block() * n + c.flush() + trailer


def _nifti_header(shape, dtype, slope: float = 1.0) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_data_offset(352)
    hdr["scl_slope"], hdr["scl_inter"] = slope, 0.0
    return hdr.binaryblock + b"\0" * 4


def _read_in_child(path: Path) -> dict:
    """Read ``path`` with ``read_volume`` in a real child process; its error line and peak memory (MiB).

    The peak is the child's own VmHWM (/proc/self/status): ``ru_maxrss`` survives execve on Linux, so in a large
    parent (the whole test suite) it would report the parent's size at fork time.
    """
    code = textwrap.dedent(f"""
        import json

        def peak_mb():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        from GloResNetLib.io import read_volume
        try:
            read_volume({str(path)!r})
            error = None
        except Exception as exc:
            error = type(exc).__name__ + ": " + str(exc)
        print(json.dumps({{"error": error, "peak_mb": peak_mb()}}))
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["declared_too_large", "hidden_after_data"])
def test_nifti_gzip_bomb_refused_before_decompressing(tmp_path, kind):
    # intensity scaling (scl_slope != 1) used to send the file through a full decompression first
    if kind == "declared_too_large":  # 300M voxels pass the voxel limit, but as float64 they are 2.4 GB
        head, message = _nifti_header((1000, 1000, 300), np.float64, slope=2.0), "bytes per voxel is too large"
    else:  # a small declared image followed by 1 GiB of zeros
        head, message = _nifti_header((8, 8, 8), np.float32, slope=2.0) + bytes(8 * 8 * 8 * 4), "beyond the voxels"
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(_gzip_bomb(head, 1 << 30))
    assert path.stat().st_size < 2 << 20
    got = _read_in_child(path)
    assert got["error"] and got["error"].startswith("InputError") and message in got["error"], got
    assert got["peak_mb"] < 600, got  # the bomb expands to 1 GiB; nothing near that may be held


def test_nrrd_gzip_bomb_refused_before_decompressing(tmp_path):
    header = (
        b"NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 8 8 8\n"
        b"space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\nendian: little\n"
        b"encoding: gzip\n\n"
    )
    path = tmp_path / "bomb.nrrd"
    path.write_bytes(header + _gzip_bomb(b"", 1 << 30))
    got = _read_in_child(path)
    assert got["error"] and "more data than its header declares" in got["error"], got
    assert got["peak_mb"] < 600, got


def test_nrrd_declared_size_checked_with_its_voxel_type(tmp_path):
    header = (
        b"NRRD0004\ntype: double\ndimension: 3\nsizes: 1000 1000 300\nspace: left-posterior-superior\n"
        b"space directions: (1,0,0) (0,1,0) (0,0,1)\nendian: little\nencoding: gzip\n\n"
    )
    (tmp_path / "big.nrrd").write_bytes(header + gzip.compress(bytes(1024)))
    with pytest.raises(InputError, match="8 bytes per voxel is too large"):
        read_volume(tmp_path / "big.nrrd")


def test_scaled_nifti_still_reads_exactly_as_nibabel(tmp_path):
    data = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)
    img = nib.Nifti1Image(data, np.diag([1.5, 1, 2, 1]))
    img.header.set_slope_inter(0.5, 3.0)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    got, affine = read_volume(tmp_path / "s.nii.gz")
    ref = nib.load(str(tmp_path / "s.nii.gz"))
    np.testing.assert_array_equal(got, ref.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(affine, ref.affine)


def _zero_pixdim_nifti(path: Path, qform_code: int, sform_code: int) -> Path:
    """A NIfTI whose header says pixdim[1] = 0 (written byte by byte: nibabel would repair it on save)."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    data = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    hdr = img.header.copy()
    hdr.set_data_offset(352)
    block = bytearray(hdr.binaryblock)
    block[80:84] = np.float32(0).tobytes()  # pixdim[1] (pixdim starts at byte 76)
    payload = bytes(block) + b"\0" * 4 + data.tobytes(order="F")
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize("name", ["zero.nii.gz", "zero.nii"])
def test_qform_with_zero_voxel_size_is_refused(tmp_path, name):
    path = _zero_pixdim_nifti(tmp_path / name, qform_code=1, sform_code=0)
    with pytest.raises(InputError, match=r"pixdim.*\[0\.0, 2\.0, 2\.0\].*1 mm"):
        read_volume(path)


def test_zero_pixdim_is_harmless_when_the_sform_gives_the_geometry(tmp_path):
    path = _zero_pixdim_nifti(tmp_path / "sform.nii.gz", qform_code=0, sform_code=1)
    _, affine = read_volume(path)
    np.testing.assert_allclose(affine, np.diag([2.0, 2.0, 2.0, 1.0]))
