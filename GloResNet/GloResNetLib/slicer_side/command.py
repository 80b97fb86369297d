"""The ``gloresnet`` command line run with Slicer's Python: which Python, its environment, the arguments of
``gloresnet predict``, and :func:`start_gloresnet` (a :class:`.background.BackgroundProcess`)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from .background import BackgroundProcess

#: The folder that holds the ``GloResNetLib`` package (put on the child's ``PYTHONPATH``).
LIB_PARENT = Path(__file__).resolve().parents[2]
_IS_WINDOWS = os.name == "nt"


def _inside_slicer_app() -> bool:
    """True when running inside the 3D Slicer application (``slicer.app`` exists); never imports slicer."""
    module = sys.modules.get("slicer")
    return module is not None and getattr(module, "app", None) is not None


def python_executable(prefer_slicer: bool | None = None) -> str:
    """The Python that runs the child: Slicer's ``PythonSlicer`` inside Slicer, else ``sys.executable``.

    ``PythonSlicer`` is Slicer's own interpreter with Slicer's environment (the packages installed with
    ``pip_install``); it is found on ``PATH`` (Slicer puts it there) or next to ``sys.executable``.
    """
    if prefer_slicer is None:
        prefer_slicer = _inside_slicer_app()
    if prefer_slicer:
        name = "PythonSlicer.exe" if _IS_WINDOWS else "PythonSlicer"
        found = shutil.which("PythonSlicer")
        if found:
            return found
        beside = Path(sys.executable).with_name(name)
        if beside.is_file():
            return str(beside)
    return sys.executable


def child_env(extra: dict[str, str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child: ``base`` (default ``os.environ``) with ``GloResNetLib`` first on
    ``PYTHONPATH``, unbuffered UTF-8 output, and ``extra`` on top."""
    env = dict(os.environ if base is None else base)
    paths = [str(LIB_PARENT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p) != LIB_PARENT]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


def gloresnet_command(args: Sequence[str | os.PathLike], python: str | None = None) -> list[str]:
    """``[python, "-m", "GloResNetLib", *args]`` (the ``gloresnet`` command with Slicer's Python)."""
    return [python or python_executable(), "-m", "GloResNetLib", *(str(a) for a in args)]


def predict_args(
    inputs: Sequence[str | os.PathLike],
    model: str | os.PathLike,
    out: str | os.PathLike,
    device: str = "auto",
    tta: bool = True,
    cam: bool = True,
    tta_axes: Sequence[int] | None = None,
    saliency: str = "gradcam",
    occlusion_mask: int | None = None,
) -> list[str]:
    """Arguments of ``gloresnet predict`` with its JSON results and progress events
    (:mod:`GloResNetLib.progress_events`) on stdout.

    Args:
        inputs: volume files. model: bundle folder. out: output folder. device: auto, cpu or cuda.
        tta: test-time augmentation (over ``tta_axes`` if given). cam: a saliency map, by ``saliency``
            (gradcam, gradient, occlusion, both = gradcam and occlusion, all, or a comma list; passed on as
            ``--saliency``). occlusion_mask: the occlusion box edge, in network voxels (with occlusion only).
    Returns:
        The arguments after ``gloresnet``.
    """
    args = [
        "predict",
        *(str(p) for p in inputs),
        "--model",
        str(model),
        "--out",
        str(out),
        "--device",
        device or "auto",
        "--json",
        "--progress-json",
    ]
    if not tta:
        args.append("--no-tta")
    elif tta_axes:
        args += ["--tta-axes", ",".join(str(int(a)) for a in tta_axes)]
    if not cam:
        args.append("--no-cam")
    elif saliency != "gradcam":
        args += ["--saliency", saliency]
        if occlusion_mask is not None:
            args += ["--occlusion-mask", str(int(occlusion_mask))]
    return args


def start_gloresnet(
    args: Sequence[str | os.PathLike],
    python: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    name: str | None = None,
    log_lines: int = 500,
) -> BackgroundProcess:
    """Start ``python -m GloResNetLib ARGS`` in the background with :func:`child_env`."""
    cmd = gloresnet_command(args, python)
    return BackgroundProcess(
        cmd,
        env=child_env(env),
        cwd=cwd,
        log_lines=log_lines,
        name=name or f"gloresnet {args[0] if args else ''}".strip(),
    ).start()


__all__ = ["LIB_PARENT", "child_env", "gloresnet_command", "predict_args", "python_executable", "start_gloresnet"]
