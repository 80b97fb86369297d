"""Global manifold mapping: whole-volume resampling, z-score, exact geometry, orientation invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import example_affine, make_head_volume
from GloResNetLib.errors import InputError
from GloResNetLib.preprocessing import (
    PreprocessConfig,
    otsu_threshold,
    preprocess,
    resize_affine,
    to_input_grid,
)

CFG = PreprocessConfig(size=(24, 24, 24))


def flip_axis(array, affine, axis):
    """Same anatomy stored with one axis reversed (the affine compensates)."""
    t = np.eye(4)
    t[axis, axis] = -1
    t[axis, 3] = array.shape[axis] - 1
    return np.flip(array, axis).copy(), affine @ t


def test_defaults_are_the_papers():
    cfg = PreprocessConfig()
    assert cfg.size == (128, 128, 128) and cfg.normalization == "zscore" and cfg.reorient


def test_output_shape_and_zscore_over_whole_volume():
    pre = preprocess(make_head_volume(), example_affine(), CFG)
    assert pre.array.shape == (24, 24, 24) and pre.array.dtype == np.float32
    assert abs(pre.array.mean()) < 1e-4
    assert abs(pre.array.std() - 1) < 1e-2


def test_foreground_zscore_option():
    vol = make_head_volume()
    pre = preprocess(vol, np.eye(4), PreprocessConfig(size=(24, 24, 24), normalization="zscore_foreground"))
    # z-scoring is affine, so Otsu picks the same foreground on the output: its statistics are (0, 1)
    fg = pre.array[pre.array > otsu_threshold(torch.from_numpy(pre.array).reshape(-1))]
    assert fg.size > 0.2 * pre.array.size
    assert abs(fg.mean()) < 0.02 and abs(fg.std() - 1) < 0.02
    assert pre.array.min() < -3  # background far below the brain's mean


@pytest.mark.parametrize("storage", ["lps", "permuted", "flip_z", "las_permuted"])
def test_same_anatomy_other_orientation_gives_same_network_input(storage):
    vol, aff = make_head_volume(), example_affine()
    ref = preprocess(vol, aff, CFG)
    if storage == "lps":
        v, a = flip_axis(*flip_axis(vol, aff, 0), 1)
    elif storage == "permuted":
        v, a = vol.transpose(2, 0, 1).copy(), aff[:, [2, 0, 1, 3]]
    elif storage == "flip_z":
        v, a = flip_axis(vol, aff, 2)
    else:
        v, a = flip_axis(vol.transpose(1, 2, 0).copy(), aff[:, [1, 2, 0, 3]], 0)
    other = preprocess(v, a, CFG)
    np.testing.assert_allclose(other.array, ref.array, atol=1e-5)
    np.testing.assert_allclose(other.affine, ref.affine, atol=1e-9)


def test_resampled_affine_maps_anatomy_to_the_same_world_point():
    vol = np.zeros((60, 50, 40), np.float32)
    vol[41:44, 11:14, 29:32] = 1000.0  # bright cube centred at voxel (42, 12, 30)
    aff = example_affine()
    pre = preprocess(vol, aff, PreprocessConfig(size=(30, 25, 20)))
    peak = np.array(np.unravel_index(np.argmax(pre.array), pre.array.shape), float)
    world_net = (pre.affine @ np.r_[peak, 1])[:3]
    world_in = (aff @ np.r_[42.0, 12.0, 30.0, 1])[:3]
    voxel_mm = np.linalg.norm(pre.affine[:3, :3], axis=0).max()
    assert np.linalg.norm(world_net - world_in) <= voxel_mm


def test_resize_affine_keeps_field_of_view_centre():
    aff = example_affine()
    shape, out = (60, 50, 40), (128, 128, 128)
    new = resize_affine(aff, shape, out)
    centre_in = aff @ np.r_[(np.array(shape) - 1) / 2, 1]
    centre_out = new @ np.r_[(np.array(out) - 1) / 2, 1]
    np.testing.assert_allclose(centre_in, centre_out, atol=1e-9)


def test_antialias_reduces_aliasing_when_shrinking():
    checker = np.indices((64, 64, 64)).sum(0) % 2 * 100.0 + np.linspace(0, 50, 64)[:, None, None]
    plain = preprocess(checker.astype(np.float32), np.eye(4), PreprocessConfig(size=(20, 20, 20)))
    smooth = preprocess(checker.astype(np.float32), np.eye(4), PreprocessConfig(size=(20, 20, 20), antialias=True))
    rough = lambda a: np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
    assert rough(smooth.array) < 0.5 * rough(plain.array)


def test_network_grid_maps_back_onto_input_grid():
    vol, aff = make_head_volume(), example_affine()
    v, a = vol.transpose(2, 0, 1).copy(), aff[:, [2, 0, 1, 3]]
    pre = preprocess(v, a, CFG)
    back = to_input_grid(torch.from_numpy(pre.array), pre)
    assert back.shape == v.shape
    # the z-scored volume brought back correlates with the stored input (same storage order)
    assert np.corrcoef(back.ravel(), v.ravel())[0, 1] > 0.9


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((10, 10, 10), 7.0, np.float32), "constant"),
        (np.zeros((10, 10, 0), np.float32), "empty"),
        (np.ones((10, 10), np.float32), "3D"),
        (np.ones((4, 4, 4, 2), np.float32), "3D"),
        (np.ones((10, 10, 10), bool), "voxel type"),
    ],
)
def test_bad_arrays_refused(bad, message):
    with pytest.raises(InputError, match=message):
        preprocess(bad, np.eye(4), CFG)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_and_inf_refused(value):
    vol = make_head_volume((10, 10, 10))
    vol[3, 4, 5] = value
    with pytest.raises(InputError, match="NaN or infinite"):
        preprocess(vol, np.eye(4), CFG)


def test_singular_affine_refused():
    with pytest.raises(InputError, match="affine"):
        preprocess(make_head_volume((10, 10, 10)), np.zeros((4, 4)), CFG)


def test_config_roundtrip_and_validation():
    cfg = PreprocessConfig(size=(64, 64, 48), antialias=True, normalization="zscore_foreground")
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert PreprocessConfig(size=96).size == (96, 96, 96)
    with pytest.raises(InputError):
        PreprocessConfig(size=(4, 4, 4))
    with pytest.raises(InputError):
        PreprocessConfig(normalization="minmax")
    with pytest.raises(InputError):
        PreprocessConfig.from_dict({"size": [8, 8, 8], "crop": True})
