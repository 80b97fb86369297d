"""Small file helpers of the Slicer side: a safe file name for a node, a JSON object read leniently."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


def safe_name(text: str) -> str:
    """A file-name part made of ``text`` (a node's name): letters, digits, ``_.-`` only, at most 60 characters.

    Returns:
        The name; "volume" when nothing is left.
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:60] or "volume"


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} when the file is missing, unreadable or not an object (never raises)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
