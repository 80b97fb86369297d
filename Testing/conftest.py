"""Shared fixtures: small real NIfTI volumes and small real model bundles (no mocks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LIB_PARENT = REPO / "GloResNet"
if str(LIB_PARENT) not in sys.path:
    sys.path.insert(0, str(LIB_PARENT))

from GloResNetLib.bundle import default_metadata, save_bundle  # noqa: E402
from GloResNetLib.models import build_model  # noqa: E402
from GloResNetLib.preprocessing import PreprocessConfig  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

#: Tiny ResNet-10 widths and input size used throughout the tests (the defaults stay the paper's).
SMALL_WIDTHS = (8, 16, 32, 64)
SMALL_SIZE = (64, 64, 64)


def subprocess_env() -> dict[str, str]:
    """Environment for running ``python -m GloResNetLib`` in a real subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(LIB_PARENT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def make_head_volume(shape=(40, 48, 36), seed: int = 0, lesion: bool = True) -> np.ndarray:
    """A small head-like volume: ellipsoid 'brain' with a bright ventricle and an optional dark lesion."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    r = np.sqrt(((grid / np.array([0.8, 0.85, 0.75])[:, None, None, None]) ** 2).sum(0))
    vol = np.where(r < 1, 600.0, 20.0)
    vol[np.sqrt(((grid - np.array([0.15, 0, 0])[:, None, None, None]) ** 2).sum(0)) < 0.2] = 900.0
    if lesion:
        vol[np.sqrt(((grid - np.array([-0.4, 0.3, 0.1])[:, None, None, None]) ** 2).sum(0)) < 0.15] = 200.0
    return (vol + rng.normal(0, 10, shape)).astype(np.float32)


def example_affine() -> np.ndarray:
    """An anisotropic, slightly oblique voxel-to-RAS affine."""
    theta = np.deg2rad(7)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.9, 0.8, 1.3])
    aff[:3, 3] = [-18.0, -20.0, -22.0]
    return aff


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def make_small_model(seed: int = 0, arch: str = "resnet10", **params) -> torch.nn.Module:
    """A tiny model with non-trivial BatchNorm statistics (one train-mode pass), in eval mode."""
    torch.manual_seed(seed)
    model = build_model(arch, widths=params.pop("widths", SMALL_WIDTHS), **params)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, *SMALL_SIZE))
        # BI logit rises with the (non-negative) features, so the BI-class Grad-CAM is not all zero
        model.fc.weight[1].abs_()
        model.fc.weight[0] = -model.fc.weight[1] * 0.5
    return model.eval()


def make_bundle(
    path: Path,
    n_models: int = 1,
    seed: int = 0,
    synthetic: bool = True,
    models: list[torch.nn.Module] | None = None,
    arch_params: dict | None = None,
    **meta,
) -> Path:
    """Write a small real bundle (random weights, marked as synthetic test data) of ``models``, by default
    ``n_models`` small ResNet-10s; ``arch_params`` are added to the small widths (e.g. a ``cam_layer``)."""
    models = models if models is not None else [make_small_model(seed + k) for k in range(n_models)]
    metadata = default_metadata(
        path.name,
        arch="resnet10",
        arch_params={"widths": list(SMALL_WIDTHS), **(arch_params or {})},
        preprocess=PreprocessConfig(size=SMALL_SIZE),
        training_data={"description": "test fixture (random weights)", "synthetic": synthetic, "trained": True},
        provenance="pytest fixture",
        **meta,
    )
    return save_bundle(path, [m.state_dict() for m in models], metadata)


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def ensemble_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundles") / "tiny_ensemble", n_models=3, seed=10)


@pytest.fixture
def head_nifti(tmp_path) -> Path:
    return save_nifti(tmp_path / "case01.nii.gz", make_head_volume(), example_affine())
