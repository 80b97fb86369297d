"""Preprocessing cache: each volume is decoded and preprocessed once per preprocessing setting.

An entry is the network input (float32, ``size``^3, canonical RAS grid) saved as ``.npy`` and opened
memory-mapped, so epochs and folds read it from the page cache without decoding anything. Its key is
``sha256(sha256(file bytes), PreprocessConfig dict, CACHE_VERSION, sha256 of io.py + preprocessing.py)``: a
changed file (whatever its name or time stamp), a changed preprocessing setting or changed reading /
preprocessing code gives a new key, so nothing stale is ever served. Entries are written atomically
(temporary file + rename), so a killed process never leaves a half-written entry, and concurrent processes
(DDP ranks, parallel fold jobs) may fill the same cache. Each entry ``KEY.npy`` has a ``KEY.sha256`` beside
it (the SHA-256 of the ``.npy`` bytes), verified whenever the entry is read by :meth:`PreprocessCache.get`:
an entry that fails it (overwritten, truncated, NaN-filled by anything else) is rebuilt with a warning, an
entry without it (older versions) silently. A cache folder that cannot be written (read-only, full, a file
in the way) is used for reading only: new volumes are kept in memory for this job, with one warning.
Location: ``--cache-dir``, else ``$GLORESNET_CACHE``, else ``$XDG_CACHE_HOME/gloresnet/preprocessed``
(``~/.cache/...``). Deleting the folder is always safe.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..bundle import sha256_file
from ..errors import GloResNetError, InputError
from ..io import atomic_path, read_volume, write_text_atomic
from ..preprocessing import PreprocessConfig, preprocess

log = logging.getLogger("GloResNetLib.training")

#: Bump when preprocessing changes its output for the same settings (invalidates every entry).
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$GLORESNET_CACHE``, else ``$XDG_CACHE_HOME/gloresnet/preprocessed``, else ``~/.cache/...``."""
    if os.environ.get("GLORESNET_CACHE"):
        return Path(os.environ["GLORESNET_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gloresnet" / "preprocessed"


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 of the code that decodes and preprocesses (``io.py``, ``preprocessing.py``).

    Any edit of that code gives new cache keys, so a changed reader or preprocessing never serves old
    entries (falls back to the library version where the sources cannot be read).
    """
    from .. import __version__, io, preprocessing

    h = hashlib.sha256()
    for module in (io, preprocessing):
        try:
            h.update(Path(module.__file__).read_bytes())
        except (OSError, TypeError):
            h.update(f"{module.__name__} {__version__}".encode())
    return h.hexdigest()


def cache_key(file_hash: str, config: PreprocessConfig) -> str:
    """Key of one (file content, preprocessing setting, preprocessing code) triple."""
    payload = json.dumps(
        {
            "file_sha256": file_hash,
            "preprocess": config.to_dict(),
            "version": CACHE_VERSION,
            "code": code_fingerprint(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class PreprocessCache:
    """Get preprocessed volumes by source path; counts ``hits`` and ``misses`` (decodes)."""

    def __init__(self, root: str | os.PathLike | None = None, config: PreprocessConfig | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.config = config or PreprocessConfig()
        self.hits = 0
        self.misses = 0
        self.rebuilt = 0  # entries that failed their checksum
        self.file_hashes: dict[str, str] = {}  # source path -> SHA-256 of its bytes, as last hashed
        self.writable = True  # False after a failed write: new entries then stay in ``memory``
        self.memory: dict[str, np.ndarray] = {}

    def key_for(self, path: str | os.PathLike) -> str:
        """Cache key of a source file (hashes its bytes)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: file not found")
        digest = sha256_file(path)
        self.file_hashes[str(path)] = digest
        return cache_key(digest, self.config)

    def entry_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def _open(self, entry: Path) -> np.ndarray | None:
        try:
            arr = np.load(entry, mmap_mode="r")
        except (OSError, ValueError, EOFError):
            return None
        if arr.shape != tuple(self.config.size) or arr.dtype != np.float32:
            return None
        return arr

    def load(self, key: str) -> np.ndarray | None:
        """The entry of ``key`` (from memory, else memory-mapped; not re-verified), None when absent."""
        if key in self.memory:
            return self.memory[key]
        return self._open(self.entry_path(key))

    def _verified(self, entry: Path) -> tuple[np.ndarray | None, str]:
        """``(array, "")`` for a good entry, else ``(None, why)``; why is "" for an entry without checksum."""
        try:
            expected = entry.with_suffix(".sha256").read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None, ""
        if sha256_file(entry) != expected:
            return None, "its content does not match its checksum"
        arr = self._open(entry)
        return (arr, "") if arr is not None else (None, "unreadable")

    def get(self, path: str | os.PathLike, key: str | None = None) -> np.ndarray:
        """Preprocessed volume of ``path`` (read-only memory map, or an in-memory array where the cache
        cannot be written); decodes and stores it on a miss or when the entry fails its checksum."""
        key = key or self.key_for(path)
        if key in self.memory:
            self.hits += 1
            return self.memory[key]
        entry = self.entry_path(key)
        if entry.is_file():
            arr, why = self._verified(entry)
            if arr is not None:
                self.hits += 1
                return arr
            if why:
                self.rebuilt += 1
                log.warning("WARNING: cache entry %s of %s is corrupt (%s); rebuilding it", entry, path, why)
        self.misses += 1
        data = np.ascontiguousarray(self.compute(Path(path)), dtype=np.float32)
        if not np.isfinite(data).all():
            raise InputError(f"{path}: preprocessing gave non-finite values")
        return self._store(key, data)

    def compute(self, path: Path) -> np.ndarray:
        """The entry of a source file: its network input (``config.size`` float32); subclasses store other
        arrays on the same grid (:class:`~.lesion_masks.MaskCache`)."""
        array, affine = read_volume(path)
        try:
            return preprocess(array, affine, self.config).array
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None

    def _store(self, key: str, data: np.ndarray) -> np.ndarray:
        """Write an entry and its checksum (atomically); where that fails, keep ``data`` in memory."""
        if self.writable:
            entry = self.entry_path(key)
            buf = io.BytesIO()
            np.save(buf, data)
            try:
                with atomic_path(entry) as tmp:
                    tmp.write_bytes(buf.getbuffer())
                write_text_atomic(entry.with_suffix(".sha256"), hashlib.sha256(buf.getbuffer()).hexdigest() + "\n")
            except OSError as exc:
                self.writable = False
                log.warning(
                    "WARNING: preprocessing cache %s cannot be written (%s); working without a cache: new "
                    "volumes are decoded for this job and kept in memory",
                    self.root,
                    exc.strerror or exc,
                )
            else:
                arr = self._open(entry)
                if arr is None:  # pragma: no cover - only on a broken file system
                    raise InputError(f"{entry}: cache entry unreadable right after writing it")
                return arr
        self.memory[key] = data
        data.setflags(write=False)
        return data

    def prepare(
        self, paths: list[Path], indices: Iterable[int], on_progress: Callable[[int, int], None] | None = None
    ) -> tuple[dict[int, str], dict[int, str]]:
        """Make sure the entries of ``paths[i]`` for ``i in indices`` exist.

        Returns ``({i: cache key}, {i: problem message})``; an unreadable image is a problem, not an error.
        """
        indices = list(indices)
        keys: dict[int, str] = {}
        problems: dict[int, str] = {}
        for n, i in enumerate(indices):
            try:
                key = self.key_for(paths[i])
                self.get(paths[i], key)
                keys[i] = key
            except GloResNetError as exc:
                problems[i] = str(exc)
            except (OSError, MemoryError) as exc:
                problems[i] = f"{paths[i]}: {exc.__class__.__name__}: {exc}"
            if on_progress:
                on_progress(n + 1, len(indices))
        return keys, problems


class VolumeStore:
    """Indexable view of the cached network inputs of a dataset.

    Each access opens the entry memory-mapped and copies it out, so no file handle stays open (datasets of
    thousands of volumes stay below the open-file limit) and the data come from the page cache once warm.
    """

    def __init__(self, cache: PreprocessCache, keys: list[str]) -> None:
        self.cache = cache
        self.keys = list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> np.ndarray:
        arr = self.cache.load(self.keys[i])
        if arr is None:
            raise InputError(f"cache entry {self.keys[i]} vanished or is corrupt; rerun to rebuild it")
        return arr

    def batch(self, indices: Iterable[int]) -> np.ndarray:
        """Stack volumes into a new (B, X, Y, Z) float32 array."""
        return np.stack([self[int(i)] for i in indices])
