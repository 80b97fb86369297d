"""Output folders: checked writable before any work, and a prediction's files written as one set or not at all.

Each file is already written atomically (:func:`~.io.atomic_path`); :class:`OutputSet` makes a *set* of files
(``NAME.json``, ``NAME_cam.nii.gz``, ``NAME_resampled.nii.gz``) atomic in the sense that matters to a reader:
all files are first written into a hidden staging folder inside the output folder (same file system), and only
when every one is complete are the old members of the set moved aside and the new ones renamed into place,
the JSON (which names the others) last. A failure while writing (disk full, read-only folder, a folder in the
way) leaves the previous set untouched; a failure while renaming puts the previous set back. A member the new
set does not have (``_cam`` after ``--no-cam``) is removed, so no stale file sits beside a new JSON.

:func:`staged_folder` does the same for a whole folder (a model bundle): it is built in a hidden staging folder
beside its final place and renamed into place in one step.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from .errors import InputError

__all__ = ["OutputSet", "check_writable_folder", "os_error_text", "staged_folder"]


def os_error_text(exc: OSError) -> str:
    """``strerror`` of an OSError (e.g. 'No space left on device'), else its text."""
    return exc.strerror or str(exc)


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a folder atomically: ``with staged_folder(target) as stage:`` fill ``stage``; on a clean exit it
    is renamed to ``target`` (``os.replace``); on an error it is removed and ``target`` is left as it was.

    Args:
        target: the folder to create (its parent is created if needed).
        replace: remove an existing ``target`` just before the rename (otherwise an existing, non-empty
            ``target`` makes the rename fail).
    Yields:
        The staging folder ``.NAME.partial`` beside ``target`` (same file system), empty.
    Raises:
        OSError: the staging folder cannot be made, or the rename fails.
    """
    target = Path(target)
    stage = target.parent / f".{target.name}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
        if replace and (target.exists() or target.is_symlink()):
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        os.replace(stage, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_writable_folder(folder: str | os.PathLike, option: str = "--out") -> Path:
    """Create ``folder`` (with parents) if needed and prove it writable by creating and deleting a file in it.

    Args:
        folder: the output folder.
        option: the command-line option named in the error.
    Returns:
        The folder as a Path.
    Raises:
        InputError: one line: a file is in the way, or the folder cannot be created or written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: {option} must be a folder, but a file of that name exists")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".gloresnet-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{folder}: cannot write to the {option} folder ({os_error_text(exc)})") from None
    return folder


class OutputSet:
    """Write a set of files into ``folder`` together: ``with OutputSet(folder, members) as stage:`` write each
    file as ``stage / name`` (``name`` among ``members``); on a clean exit they replace the old set.

    Args:
        folder: the output folder (must exist).
        members: every file name the set can have, in the order they are put in place (put the file that
            refers to the others last); old files of these names that the new set lacks are removed.
    """

    def __init__(self, folder: str | os.PathLike, members: list[str]) -> None:
        self.folder = Path(folder)
        self.members = list(members)
        self.stage: Path | None = None

    def __enter__(self) -> Path:
        for name in self.members:
            target = self.folder / name
            if target.is_dir() and not target.is_symlink():
                raise InputError(f"{target}: a folder is in the way of this output file")
        try:
            self.stage = Path(tempfile.mkdtemp(prefix=".gloresnet-partial-", dir=self.folder))
        except OSError as exc:
            raise InputError(f"{self.folder}: cannot write there ({os_error_text(exc)})") from None
        return self.stage

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self.stage is not None
        try:
            if kind is None:
                self._commit()
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)
        if isinstance(exc, OSError):  # disk full, quota, file too large...: nothing of the new set was kept
            raise InputError(
                f"{self.folder}: could not write the output files ({os_error_text(exc)}); the previous files were kept"
            ) from None

    def _commit(self) -> None:
        assert self.stage is not None
        old = self.stage / ".previous"
        old.mkdir()
        moved, placed = [], []
        try:
            for name in self.members:  # the previous set moves aside as a whole
                target = self.folder / name
                if target.is_symlink() or target.exists():
                    os.replace(target, old / name)
                    moved.append(name)
            for name in self.members:  # in the members' order: the JSON, which names the others, last
                if (self.stage / name).exists():
                    os.replace(self.stage / name, self.folder / name)
                    placed.append(name)
        except OSError as exc:
            for name in placed:  # best effort: put the previous set back
                with contextlib.suppress(OSError):
                    os.replace(self.folder / name, self.stage / name)
            for name in moved:
                with contextlib.suppress(OSError):
                    os.replace(old / name, self.folder / name)
            raise InputError(
                f"{self.folder}: could not put the output files in place "
                f"({os_error_text(exc)}); the previous files were kept"
            ) from None
