"""Files of a run folder: JSON documents, the stored configuration, finished folds, a new folder's check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import write_text_atomic
from ..preprocessing import PreprocessConfig
from .config import TrainConfig
from .lock import is_lock_file

__all__ = ["check_new_run_dir", "fold_done", "preprocess_config", "read_json", "read_run_config", "write_json"]


def preprocess_config(cfg: TrainConfig) -> PreprocessConfig:
    """The preprocessing a run trains with (stored in its bundle)."""
    return PreprocessConfig(
        size=(int(cfg.size),) * 3,
        reorient=cfg.reorient,
        antialias=cfg.antialias,
        normalization=cfg.normalization,
    )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of a run folder.

    Raises:
        InputError: one line: the file is missing or not valid JSON.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: not found (not a training run folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: invalid JSON ({exc})") from None


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The run-level configuration stored in ``RUN_DIR/config.json``."""
    doc = read_json(Path(run_dir) / "config.json")
    doc = {k: v for k, v in doc.items() if not k.startswith("_")}
    return TrainConfig.from_dict(doc)


def fold_done(run_dir: Path, k: int) -> bool:
    """True when fold ``k`` of a run is finished (its ``result.json`` exists)."""
    return (run_dir / f"fold_{k}" / "result.json").is_file()


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse an ``--out`` that exists and holds anything but a log of a failed start (or lock files)."""
    if run_dir.exists() and (
        not run_dir.is_dir() or any(p.name != "train.log" and not is_lock_file(p.name) for p in run_dir.iterdir())
    ):
        raise InputError(f"{run_dir}: exists and is not an empty folder; choose another --out")
