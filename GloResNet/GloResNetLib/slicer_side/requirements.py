"""Python requirements of the modules in Slicer's Python, checked without importing them (no torch needed)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path


def has_module(name: str) -> bool:
    """True if ``import name`` would find the module (nothing is imported)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def read_requirements(path: str | os.PathLike) -> list[str]:
    """Requirement lines of a requirements file (comments, blank lines and pip options dropped)."""
    reqs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            reqs.append(line)
    return reqs


def missing_requirements(requirements: Iterable[str]) -> list[str]:
    """The requirements not satisfied by the installed distributions (version specifiers honoured when the
    ``packaging`` library is available, names only otherwise)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging ships with pip/Slicer
        Requirement = None
    missing = []
    for text in requirements:
        if Requirement is not None:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate():
                continue
            name, spec = req.name, req.specifier
        else:
            name, spec = text.split(";")[0].split("[")[0].strip(" <>=!~"), None
            for sep in "<>=!~":
                name = name.split(sep)[0]
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if spec is not None and not spec.contains(version, prereleases=True):
            missing.append(text)
    return missing


def pin_installed(packages: Iterable[str], path: str | os.PathLike) -> Path | None:
    """Write a pip constraints file pinning the installed version of ``packages`` (e.g. the CUDA build of
    torch chosen by PyTorchUtils, so that no requirement can replace it by a CPU build). None if none is
    installed."""
    lines = []
    for name in packages:
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    if not lines:
        return None
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


__all__ = ["has_module", "missing_requirements", "pin_installed", "read_requirements"]
