"""What the modules' self-tests (Reload and Test, ctest) make: synthetic T2w-like volumes in the scene, a tiny
bundle with random weights, and a wait that keeps Slicer's event loop running. torch is imported only by
:func:`tiny_bundle`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import slicer

from .bundles import MODELS_FOLDER_SETTING
from .requirements import has_module, missing_requirements
from .training_params import WIDTH_PRESETS, TrainingParameters


def synthetic_head(name: str = "GloResNetTest T2w"):
    """A 40x44x36 noisy ellipsoid 'head' with an oblique, anisotropic geometry, added to the scene.

    Returns:
        The scalar volume node.
    """
    shape = (40, 44, 36)  # (i, j, k)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt(((grid / np.array([0.8, 0.85, 0.75])[:, None, None, None]) ** 2).sum(0))
    array = np.where(radius < 1, 600.0, 20.0) + np.random.default_rng(0).normal(0, 10, shape)
    theta = np.deg2rad(10)
    affine = np.eye(4)
    affine[:3, :3] = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    ) @ np.diag([0.9, 0.8, 1.6])
    affine[:3, 3] = [-18, -17, -28]
    return slicer.util.addVolumeFromArray(array.astype(np.float32).transpose(2, 1, 0).copy(), affine, name=name)


def labelled_head(rng: np.random.Generator, label: int, name: str):
    """A 20^3 noisy ellipsoid 'head' added to the scene; brain injury (label 1) adds a bright blob inside it.

    Args:
        rng: the random generator (intensity scale, blob position, noise).
        label: 0 (no BI) or 1 (BI).
        name: the node's name.
    Returns:
        The scalar volume node.
    """
    grid = np.stack(np.meshgrid(*[np.arange(20.0)] * 3, indexing="ij")) - 9.5
    array = np.where(np.sqrt((grid**2).sum(0)) < 8.4, 400.0, 30.0) * rng.uniform(0.8, 1.2)
    if label == 1:
        distance = np.sqrt(((grid - rng.uniform(-3.5, 3.5, size=3)[:, None, None, None]) ** 2).sum(0))
        array = array + 900.0 * np.exp(-((distance / 2.5) ** 2))
    array = (array + rng.normal(0, 25, array.shape)).astype(np.float32)
    return slicer.util.addVolumeFromArray(array.transpose(2, 1, 0).copy(), np.eye(4), name=name)


def labelled_heads(count: int, seed: int = 0) -> tuple[list, dict[str, int]]:
    """``count`` :func:`labelled_head` volumes named "selftest NN", alternately without (0) and with (1) BI.

    Returns:
        (the volume nodes, their labels by node name).
    """
    rng = np.random.default_rng(seed)
    volumes = [labelled_head(rng, k % 2, f"selftest {k:02d}") for k in range(count)]
    return volumes, {v.GetName(): k % 2 for k, v in enumerate(volumes)}


def dependencies_missing(requirement_lines: list[str]) -> bool:
    """PyTorch or one of ``requirement_lines`` is not installed in this Slicer (the self-test is then skipped)."""
    return not has_module("torch") or bool(missing_requirements(requirement_lines))


def tiny_training_parameters(output_folder: Path) -> TrainingParameters:
    """The training self-test's run: the scene dataset, 2 folds of a 16^3 eighth-width network, CPU, seed 0."""
    return TrainingParameters(
        source="scene",
        output_folder=str(output_folder),
        run_name="selftest",
        size=16,
        widths=WIDTH_PRESETS["eighth"],
        folds=2,
        epochs=20,
        batch_size=4,
        seed=0,
        device="cpu",
        synthetic=True,
    )


def tiny_bundle(folder: Path) -> Path:
    """A bundle of one random eighth-width ResNet-10 at 32^3, flagged synthetic and untrained.

    Args:
        folder: where ``selftest/`` is written.
    Returns:
        The bundle folder.
    """
    import torch

    from ..bundle import default_metadata, save_bundle
    from ..models import build_model
    from ..preprocessing import PreprocessConfig

    torch.manual_seed(0)
    widths = [8, 16, 32, 64]
    model = build_model("resnet10", widths=tuple(widths)).eval()
    meta = default_metadata(
        "selftest",
        arch_params={"widths": widths},
        preprocess=PreprocessConfig(size=(32, 32, 32)),
        training_data={"description": "none (random weights for the self-test)", "synthetic": True, "trained": False},
        provenance="GloResNetTest",
    )
    return save_bundle(Path(folder) / "selftest", [model.state_dict()], meta)


@contextlib.contextmanager
def models_folder_setting(folder: Path) -> Iterator[None]:
    """Point the application setting of the models folder (:data:`.bundles.MODELS_FOLDER_SETTING`) at
    ``folder`` for the duration of a test; the previous value (or none) is restored after."""
    import qt

    settings = qt.QSettings()
    previous = settings.value(MODELS_FOLDER_SETTING)
    settings.setValue(MODELS_FOLDER_SETTING, str(folder))
    try:
        yield
    finally:
        if previous is None:
            settings.remove(MODELS_FOLDER_SETTING)
        else:
            settings.setValue(MODELS_FOLDER_SETTING, previous)


def wait_for(condition: Callable[[], bool], timeout: float = 600) -> None:
    """Process Slicer's events until ``condition()`` holds.

    Raises:
        AssertionError: not within ``timeout`` seconds.
    """
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError("timed out")
        slicer.app.processEvents()
        time.sleep(0.05)


__all__ = ["labelled_head", "labelled_heads", "models_folder_setting", "synthetic_head", "tiny_bundle", "wait_for"]
