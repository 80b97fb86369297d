"""Reading volumes (NIfTI, NRRD), their geometry, bad files, and atomic output."""

from __future__ import annotations

import gzip

import nibabel as nib
import nrrd
import numpy as np
import pytest
from conftest import example_affine, make_head_volume, save_nifti
from GloResNetLib.errors import InputError
from GloResNetLib.io import atomic_path, read_volume, volume_stem, write_volume


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_read_nifti_keeps_data_and_affine(tmp_path, suffix):
    vol, aff = make_head_volume(), example_affine()
    path = save_nifti(tmp_path / f"a{suffix}", vol, aff)
    data, affine = read_volume(path)
    assert data.dtype == np.float32 and data.shape == vol.shape
    np.testing.assert_array_equal(data, vol)
    np.testing.assert_allclose(affine, aff, atol=1e-5)


def test_read_nifti_int16_with_scaling(tmp_path):
    vol = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 50).astype(np.int16)
    img = nib.Nifti1Image(vol, np.eye(4))
    img.header.set_slope_inter(0.5, 10)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    data, _ = read_volume(tmp_path / "s.nii.gz")
    np.testing.assert_allclose(data, vol * 0.5 + 10)


def test_read_nrrd_lps_matches_nifti(tmp_path):
    vol, aff = make_head_volume(), example_affine()
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
    header = {
        "space": "left-posterior-superior",
        "space directions": lps[:3, :3].T,
        "space origin": lps[:3, 3],
        "kinds": ["domain"] * 3,
    }
    nrrd.write(str(tmp_path / "a.nrrd"), vol, header)
    data, affine = read_volume(tmp_path / "a.nrrd")
    np.testing.assert_array_equal(data, vol)
    np.testing.assert_allclose(affine, aff, atol=1e-9)
    nrrd.write(str(tmp_path / "b.nhdr"), vol, header, detached_header=True)
    data2, affine2 = read_volume(tmp_path / "b.nhdr")
    np.testing.assert_array_equal(data2, vol)
    np.testing.assert_allclose(affine2, aff, atol=1e-9)


def test_qform_preferred_over_sform_like_slicer(tmp_path):
    vol = make_head_volume((10, 12, 14))
    qform, sform = example_affine(), np.diag([2.0, 2.0, 2.0, 1.0])
    img = nib.Nifti1Image(vol, sform)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    nib.save(img, str(tmp_path / "qs.nii.gz"))
    assert not np.allclose(nib.load(str(tmp_path / "qs.nii.gz")).affine, qform, atol=1e-4)  # nibabel: sform
    _, affine = read_volume(tmp_path / "qs.nii.gz")
    np.testing.assert_allclose(affine, qform, atol=1e-5)


def test_single_volume_4d_accepted_multi_volume_refused(tmp_path):
    vol = make_head_volume((10, 12, 14))
    save_nifti(tmp_path / "one.nii.gz", vol[..., None], np.eye(4))
    data, _ = read_volume(tmp_path / "one.nii.gz")
    assert data.shape == (10, 12, 14)
    save_nifti(tmp_path / "many.nii.gz", np.stack([vol, vol], -1), np.eye(4))
    with pytest.raises(InputError, match="2 volumes"):
        read_volume(tmp_path / "many.nii.gz")


def test_2d_image_refused(tmp_path):
    save_nifti(tmp_path / "flat.nii.gz", np.ones((20, 20), np.float32), np.eye(4))
    with pytest.raises(InputError, match="not a 3D volume"):
        read_volume(tmp_path / "flat.nii.gz")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_volume(tmp_path / "nope.nii.gz")


def test_truncated_gzip(tmp_path):
    path = save_nifti(tmp_path / "t.nii.gz", make_head_volume(), np.eye(4))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="t.nii.gz"):
        read_volume(path)


def test_non_image_with_image_extension(tmp_path):
    (tmp_path / "notes.nii.gz").write_bytes(gzip.compress(b"hello, I am not an image" * 20))
    (tmp_path / "plain.nii").write_text("plain text")
    (tmp_path / "bad.nrrd").write_text("not a nrrd\n")
    for name in ("notes.nii.gz", "plain.nii", "bad.nrrd"):
        with pytest.raises(InputError, match=name):
            read_volume(tmp_path / name)


def test_unsupported_extension(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match="unsupported file type"):
        read_volume(tmp_path / "x.png")


def test_absurd_size_refused_before_reading(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((3000, 3000, 3000))
    hdr.set_data_dtype(np.float32)
    path = tmp_path / "huge.nii"
    # header only, with a few data bytes: the claim alone must be refused, nothing allocated
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 64)
    with pytest.raises(InputError, match="too large"):
        read_volume(path)


def test_write_volume_roundtrip_and_atomic_failure(tmp_path):
    vol, aff = make_head_volume((8, 9, 10)), example_affine()
    out = write_volume(tmp_path / "o.nii.gz", vol, aff)
    data, affine = read_volume(out)
    np.testing.assert_array_equal(data, vol)
    np.testing.assert_allclose(affine, aff, atol=1e-5)
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "fail.nii.gz") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.nii.gz"]


def test_volume_stem():
    assert volume_stem("/a/sub-1_T2w.nii.gz") == "sub-1_T2w"
    assert volume_stem("x.NRRD") == "x"
    assert volume_stem("y.nhdr") == "y"


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        out = write_volume(tmp_path / "p.nii.gz", make_head_volume((6, 7, 8)), np.eye(4))
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o644
