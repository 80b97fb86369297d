"""One dependency installer for both modules: PyTorch through the PyTorch extension (PyTorchUtils picks the
build that suits the GPU), then the module's requirements file with the installed torch pinned.

Slicer 5.12+ has ``slicer.packaging.pip_ensure`` (checks, asks, installs, offers a restart); older ones only
``slicer.util.pip_install``. ``skip_packages`` is never used: Slicer documents it as a discouraged workaround
(it installs with ``--no-deps`` and rewrites other packages' metadata); the constraints file pins torch instead.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .command import python_executable
from .requirements import has_module, missing_requirements, pin_installed, read_requirements

#: Passed to PyTorchUtils when PyTorch must be installed.
TORCH_REQUIREMENT = ">=2.8"
#: Packages never installed from the requirements: they come from the PyTorch extension and are pinned.
PINNED = ("torch",)


@dataclass
class PipCall:
    """How to install ``requirements``: ``function`` ("pip_ensure" of slicer.packaging or "pip_install" of
    slicer.util), its positional ``args`` and keyword ``kwargs``."""

    function: str
    args: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)


def pip_call(
    requirements: Sequence[str], constraints: str | Path | None, requester: str, confirm: bool, has_pip_ensure: bool
) -> PipCall:
    """The installer call for this Slicer.

    Args:
        requirements: requirement strings (those missing, for ``pip_install``; all, for ``pip_ensure``,
            which checks them itself).
        constraints: pip constraints file pinning torch (:func:`.requirements.pin_installed`), or None.
        requester: name shown in Slicer's dialog.
        confirm: ask before installing (pip_ensure's own dialog; the caller's for pip_install).
        has_pip_ensure: ``slicer.packaging.pip_ensure`` exists (Slicer 5.12+).
    Returns:
        The :class:`PipCall`.
    """
    if has_pip_ensure:
        return PipCall(
            "pip_ensure",
            [list(requirements)],
            {
                "constraints": str(constraints) if constraints else None,
                "requester": requester,
                "prompt_install": confirm,
            },
        )
    return PipCall("pip_install", [list(requirements) + (["-c", str(constraints)] if constraints else [])])


def manual_install_help(requirements_file: str | Path) -> str:
    """What to do offline: download the wheels elsewhere, install them with Slicer's Python."""
    python = python_executable()
    return (
        "Offline or behind a proxy? On a computer with internet access download the wheels, then install "
        f'them with Slicer\'s Python:\n  "{python}" -m pip install <torch wheel>\n'
        f'  "{python}" -m pip install -r "{requirements_file}"\nThen restart Slicer.'
    )


def _install_torch(requester: str, confirm: bool, help_text: str) -> bool:
    import slicer

    try:
        import PyTorchUtils
    except ImportError:
        slicer.util.errorDisplay(
            f"{requester} needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager (it "
            "installs the build that suits your GPU), restart Slicer and try again.\n\n" + help_text
        )
        return False
    torch_logic = PyTorchUtils.PyTorchUtilsLogic()
    if torch_logic.torchInstalled():
        return True
    return torch_logic.installTorch(askConfirmation=confirm, torchVersionRequirement=TORCH_REQUIREMENT) is not None


def _install(requirements: list[str], requester: str, confirm: bool) -> None:
    import slicer

    try:
        import slicer.packaging as packaging
    except ImportError:  # Slicer < 5.12
        packaging = None
    has_pip_ensure = packaging is not None and hasattr(packaging, "pip_ensure")
    constraints = pin_installed(PINNED, Path(tempfile.gettempdir()) / f"{requester}-constraints.txt")
    missing = missing_requirements(requirements)
    call = pip_call(requirements if has_pip_ensure else missing, constraints, requester, confirm, has_pip_ensure)
    if call.function == "pip_ensure":
        packaging.pip_ensure(*call.args, **call.kwargs)
        return
    if confirm and not slicer.util.confirmOkCancelDisplay(
        f"{requester} needs these Python packages:\n" + "\n".join(missing) + "\n\nInstall them now?"
    ):
        raise RuntimeError("user declined package installation")
    slicer.util.pip_install(*call.args)


def ensure_dependencies(
    requirements_file: str | Path, requester: str, confirm: bool = True, extra: Sequence[str] = ()
) -> bool:
    """Install what is missing (PyTorch, then the file's requirements and ``extra``), after the user agrees.

    Args:
        requirements_file: the module's requirements file (never lists torch).
        requester: the module's name, shown in the dialogs.
        confirm: ask before installing.
        extra: more requirement strings.
    Returns:
        True when everything is installed; False (after a message, unless the user declined) otherwise.
    """
    import slicer

    help_text = manual_install_help(requirements_file)
    requirements = read_requirements(requirements_file) + [r for r in extra]
    try:
        if not has_module("torch") and not _install_torch(requester, confirm, help_text):
            return False
        if not missing_requirements(requirements):
            return True
        _install(requirements, requester, confirm)
        missing = missing_requirements(requirements)
        if missing:
            raise RuntimeError(f"still missing: {', '.join(missing)}")
        return True
    except Exception as exc:
        if "declined" in str(exc).lower():
            return False
        logging.exception("%s: dependency installation failed", requester)
        slicer.util.errorDisplay(f"Could not install {requester}'s Python packages ({exc}).\n\n{help_text}")
        return False


__all__ = ["PINNED", "TORCH_REQUIREMENT", "PipCall", "ensure_dependencies", "manual_install_help", "pip_call"]
