"""The schema of a bundle's ``metadata.json``, checked before anything is built from it (no torch needed).

One function, :func:`validate_metadata`, is used through :func:`~.bundle_meta.read_bundle_metadata` by loading
(``predict``, ``bundle info``, the Slicer module) and by the Slicer models list, so a bundle that one accepts the
other accepts too. It checks types and ranges of every field that is used, bounds everything that sizes an
allocation (network widths, input size, number of models) and refuses deep nesting; unknown top-level keys are
kept (forward compatible) but must be plain, shallow JSON.

A hand-written checker rather than the ``jsonschema`` package: that package is not a dependency of the Slicer
extension, and several checks (name sets shared with the code, widths x depths bounds, readable one-line
messages naming the field) are simpler here.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .errors import BundleError

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
#: Largest ``metadata.json`` read (bytes); real ones are a few kB.
MAX_METADATA_BYTES = 4 << 20
#: Deepest nesting of JSON arrays / objects accepted anywhere in the metadata.
MAX_DEPTH = 16
#: What a bundle predicts: ``classification`` (brain injury, the default) or ``age_regression`` (brain age).
TASKS = ("classification", "age_regression")
#: Architecture names (kept equal to ``models.ARCHITECTURES``, which needs torch; a test checks they agree).
ARCH_NAMES = ("resnet10", "resnet10_dilated", "resnet18", "mrf_dsnet", "acs_resnet18", "slice_resnet18")
#: Network input size per axis (also enforced by ``PreprocessConfig``).
SIZE_RANGE = (8, 512)
NORMALIZATIONS = ("zscore", "zscore_foreground")
PREPROCESS_KEYS = ("size", "reorient", "antialias", "normalization")
MAX_MODELS = 64
MAX_CLASSES = 64
#: Channel width bound per stage: 1024 keeps a ResNet-18's largest stage under ~1 GB of float32 weights.
MAX_WIDTH = 1024
#: arch_params: name -> (kind, bounds). Kinds: int, float, bool, str (choices), ints (list of int in bounds).
ARCH_PARAMS: dict[str, tuple[str, Any]] = {
    "widths": ("ints", (1, MAX_WIDTH, 4, 4)),  # (min value, max value, min length, max length): 4 stages
    "depths": ("ints", (0, 16, 4, 4)),
    "strides": ("ints", (1, 2, 4, 4)),
    "dilations": ("ints", (1, 16, 1, 8)),
    "in_channels": ("int", (1, 16)),
    "dropout": ("float", (0.0, 1.0)),
    "stem_pool": ("bool", None),
    "dilated": ("bool", None),
    "cam_layer": ("str", ("layer1", "layer2", "layer3", "layer4")),
    "lesion_head": ("str", ("none", "aux", "mil")),  # models.lesion_head.LESION_HEADS (torch-free copy)
    "lesion_levels": ("int", (1, 3)),  # models.lesion_head.LESION_LEVELS
    "act": ("str", ("relu", "hardswish")),
    "slice_axis": ("int", (0, 2)),
    "pooling": ("str", ("mean", "max", "attention")),
    "positions": ("int", (1, 4096)),
    "attention_dim": ("int", (1, 4096)),
    "slice_batch": ("int", (1, 4096)),
    "slices_per_step": ("int?", (1, 4096)),
}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._+-]{1,200}")


def _fail(field: str, problem: str) -> BundleError:
    return BundleError(f"metadata '{field}' {problem}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _int(meta: dict, key: str, lo: int, hi: int, where: str | None = None) -> int:
    v = meta.get(key)
    if not _is_int(v) or not lo <= v <= hi:
        raise _fail(where or key, f"must be an integer from {lo} to {hi} (got {_show(v)})")
    return v


def _str(meta: dict, key: str, max_len: int = 200, optional: bool = False, where: str | None = None) -> None:
    v = meta.get(key)
    if optional and v is None:
        return
    if not isinstance(v, str) or len(v) > max_len:
        raise _fail(where or key, f"must be a text of at most {max_len} characters (got {_show(v)})")


def _show(v: Any) -> str:
    try:
        text = json.dumps(v)
    except (TypeError, ValueError, RecursionError):
        text = type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit`` (iterative: a deep document cannot exhaust the stack)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth >= limit:
                raise BundleError(f"metadata is nested more than {limit} levels deep")
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))


def parse_metadata_text(text: str) -> Any:
    """``json.loads`` with one-line errors for invalid or absurdly nested documents."""
    try:
        return json.loads(text)
    except RecursionError:
        raise BundleError(f"metadata is nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"invalid JSON ({exc})") from None


def _check_preprocess(pre: Any) -> None:
    if not isinstance(pre, dict):
        raise _fail("preprocess", "must be an object")
    unknown = sorted(set(pre) - set(PREPROCESS_KEYS))
    if unknown:
        raise _fail("preprocess", f"has unknown settings {unknown}")
    lo, hi = SIZE_RANGE
    size = pre.get("size", [128, 128, 128])
    sizes = [size] * 3 if _is_int(size) else size
    if not isinstance(sizes, list) or len(sizes) != 3 or not all(_is_int(s) and lo <= s <= hi for s in sizes):
        raise _fail("preprocess.size", f"must be 3 integers from {lo} to {hi} (got {_show(size)})")
    for key in ("reorient", "antialias"):
        if key in pre and not isinstance(pre[key], bool):
            raise _fail(f"preprocess.{key}", f"must be true or false (got {_show(pre[key])})")
    if pre.get("normalization", "zscore") not in NORMALIZATIONS:
        raise _fail(
            "preprocess.normalization",
            f"must be one of {', '.join(NORMALIZATIONS)} (got {_show(pre.get('normalization'))})",
        )


def check_arch_params(params: Any) -> None:
    """Check ``arch_params`` (names and bounded values); training can call it before a run starts, so that a
    run whose bundle would be refused is refused at once.

    Raises:
        BundleError: one line naming the bad parameter.
    """
    if not isinstance(params, dict):
        raise _fail("arch_params", f"must be an object (got {_show(params)})")
    for key, value in params.items():
        where = f"arch_params.{key}"
        if key not in ARCH_PARAMS:
            raise _fail(where, f"is not a known architecture parameter ({', '.join(sorted(ARCH_PARAMS))})")
        kind, bounds = ARCH_PARAMS[key]
        if kind == "ints":
            lo, hi, n_lo, n_hi = bounds
            if (
                not isinstance(value, list)
                or not n_lo <= len(value) <= n_hi
                or not all(_is_int(v) and lo <= v <= hi for v in value)
            ):
                raise _fail(where, f"must be a list of {n_lo}-{n_hi} integers from {lo} to {hi} (got {_show(value)})")
        elif kind in ("int", "int?"):
            if not (kind == "int?" and value is None):
                _int(params, key, *bounds, where=where)
        elif kind == "float":
            if not _is_number(value) or not bounds[0] <= value < bounds[1]:
                raise _fail(where, f"must be a number in [{bounds[0]}, {bounds[1]}) (got {_show(value)})")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise _fail(where, f"must be true or false (got {_show(value)})")
        elif value not in bounds:
            raise _fail(where, f"must be one of {', '.join(bounds)} (got {_show(value)})")


def _check_weights(weights: Any) -> None:
    if not isinstance(weights, list) or not 1 <= len(weights) <= MAX_MODELS:
        raise _fail("weights", f"must list 1 to {MAX_MODELS} weights files")
    seen = set()
    for k, entry in enumerate(weights):
        where = f"weights[{k}]"
        if not isinstance(entry, dict):
            raise _fail(where, "must be an object with 'file' and 'sha256'")
        name = entry.get("file")
        if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
            raise _fail(f"{where}.file", f"must be a plain file name inside the bundle folder (got {_show(name)})")
        if name in seen:
            raise _fail(f"{where}.file", f"lists {name!r} twice")
        seen.add(name)
        if not isinstance(entry.get("sha256"), str) or not _HEX64.fullmatch(entry["sha256"]):
            raise _fail(f"{where}.sha256", "must be 64 lowercase hex digits (a SHA-256)")


def _check_target(target: Any) -> None:
    """The regression target of an ``age_regression`` bundle: an object of short texts, finite numbers and lists
    of at most 64 finite numbers (per-weights-file scaling; :mod:`.age_target` checks their meaning)."""
    if not isinstance(target, dict):
        raise _fail("target", "must be an object (e.g. name, unit, scaling)")
    for key, value in target.items():
        if isinstance(value, str):
            _str(target, key, where=f"target.{key}")
        elif isinstance(value, list) and 0 < len(value) <= 64 and all(_is_number(v) for v in value):
            continue
        elif not (value is None or isinstance(value, bool) or _is_number(value)):
            raise _fail(
                f"target.{key}",
                "must be a text, a finite number, a list of at most 64 finite numbers, "
                f"true/false or null (got {_show(value)})",
            )


def validate_metadata(meta: Any) -> dict[str, Any]:
    """Check a parsed ``metadata.json`` against the bundle schema; returns it unchanged.

    Args:
        meta: the parsed JSON document.
    Returns:
        ``meta`` (a dict) when every check passes.
    Raises:
        BundleError: one line naming the first bad field.
    """
    check_depth(meta)
    if not isinstance(meta, dict):
        raise BundleError("metadata must be a JSON object")
    task = meta.get("task", "classification")
    if task not in TASKS:
        raise _fail("task", f"must be one of {', '.join(TASKS)} (got {_show(task)})")
    required = ["format_version", "name", "arch", "num_classes", "preprocess", "training_data", "provenance", "weights"]
    required += ["class_names", "threshold"] if task == "classification" else []
    missing = [k for k in required if k not in meta]
    if missing:
        raise BundleError(f"metadata lacks {', '.join(missing)}")
    version = meta["format_version"]
    if not _is_int(version) or version < 1:
        raise _fail("format_version", f"must be a positive integer (got {_show(version)})")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"bundle format {version} is newer than this library supports ({FORMAT_VERSION}); update gloresnet"
        )
    _str(meta, "name")
    if not meta["name"].strip():
        raise _fail("name", "must not be empty")
    if meta["arch"] not in ARCH_NAMES:
        raise _fail("arch", f"names an unknown architecture {_show(meta['arch'])} (known: {', '.join(ARCH_NAMES)})")
    n_classes = _int(meta, "num_classes", 2 if task == "classification" else 1, MAX_CLASSES)
    if "class_names" in meta:
        names = meta["class_names"]
        if (
            not isinstance(names, list)
            or len(names) != n_classes
            or not all(isinstance(n, str) and 0 < len(n.strip()) <= 64 for n in names)
            or len(set(names)) != len(names)
        ):
            raise _fail("class_names", f"must be {n_classes} different non-empty texts (num_classes)")
    if "threshold" in meta:
        t = meta["threshold"]
        if not _is_number(t) or not 0.0 < t < 1.0:
            raise _fail("threshold", f"must be a number strictly between 0 and 1 (got {_show(t)})")
    axes = meta.get("tta_axes", [0])
    if (
        not isinstance(axes, list)
        or len(axes) > 3
        or not all(_is_int(a) and 0 <= a <= 2 for a in axes)
        or len(set(axes)) != len(axes)
    ):
        raise _fail("tta_axes", f"must be a list of different axes among 0, 1, 2 (got {_show(axes)})")
    _check_preprocess(meta["preprocess"])
    check_arch_params(meta.get("arch_params") if meta.get("arch_params") is not None else {})
    td = meta["training_data"]
    if not isinstance(td, dict):
        raise _fail("training_data", "must be an object")
    for key in ("synthetic", "trained"):
        if key in td and not isinstance(td[key], bool):
            raise _fail(f"training_data.{key}", f"must be true or false (got {_show(td[key])})")
    _str(td, "description", 10_000, optional=True, where="training_data.description")
    _str(meta, "provenance", 100_000)
    for key in ("library_version", "created"):
        _str(meta, key, optional=True)
    for key in ("cv_metrics", "pretrained"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise _fail(key, "must be an object or null")
    if "target" in meta:
        _check_target(meta["target"])
    _check_weights(meta["weights"])
    return meta


def read_metadata_file(folder: str | Path) -> dict[str, Any]:
    """Read, parse and validate ``folder/metadata.json`` (bounded size, no weights read).

    Args:
        folder: the bundle folder.
    Returns:
        The validated metadata dict.
    Raises:
        BundleError: one line: the folder or file is missing, unreadable, too large, or fails the schema.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder}: model bundle folder not found")
    path = folder / METADATA_FILE
    if not path.is_file():
        raise BundleError(f"{folder}: not a model bundle (no {METADATA_FILE})")
    inside(folder, path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_METADATA_BYTES + 1)
        if len(raw) > MAX_METADATA_BYTES:
            raise BundleError(f"{path}: larger than {MAX_METADATA_BYTES >> 20} MiB; not bundle metadata")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: unreadable ({exc})") from None
    try:
        return validate_metadata(parse_metadata_text(text))
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None


def inside(folder: str | Path, path: str | Path) -> Path:
    """``path`` resolved (symlinks followed), refused unless it lies directly in ``folder`` (also resolved).

    Raises:
        BundleError: the file resolves outside the bundle folder (e.g. a symlink to a file elsewhere).
    """
    real, base = Path(path).resolve(), Path(folder).resolve()
    if real.parent != base:
        raise BundleError(f"{path}: resolves outside the bundle folder ({real}); refusing to read it")
    return real


__all__ = [
    "ARCH_NAMES",
    "ARCH_PARAMS",
    "FORMAT_VERSION",
    "MAX_DEPTH",
    "METADATA_FILE",
    "TASKS",
    "check_arch_params",
    "check_depth",
    "inside",
    "parse_metadata_text",
    "read_metadata_file",
    "validate_metadata",
]
