"""Options defined as dataclass fields, and their command-line forms (generic; the options: :mod:`.config`).

:func:`option` makes a field that carries its default and, in the field's metadata, its help text, range or
choices, flag and the commands that offer it; :func:`list_options` lists them as :class:`OptionSpec`;
:func:`add_option` adds one to an argparse parser, :func:`given_options` reads the given ones back and
:func:`config_argv` writes a configuration as a command line. Torch-free.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AGE",
    "BOTH",
    "TRAIN",
    "OptionSpec",
    "Range",
    "add_option",
    "change_option",
    "config_argv",
    "given_options",
    "help_text",
    "json_dict",
    "list_options",
    "option",
    "widths",
]

TRAIN = "train"
AGE = "pretrain-age"
BOTH = frozenset({TRAIN, AGE})


@dataclass(frozen=True)
class Range:
    """Allowed numeric values: ``low`` / ``high`` bounds (None: unbounded), each open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def text(self) -> str:
        """The range in words, e.g. 'at least 1', 'positive', 'in [0, 1]', 'in (0, 0.5)'."""
        if self.high is None:
            if self.low_open:
                return "positive" if self.low == 0 else f"above {self.low:g}"
            return f"at least {self.low:g}"
        if self.low is None:
            return f"{'below' if self.high_open else 'at most'} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


def option(
    default: Any = None,
    help: str = "",  # noqa: A002 - argparse's word
    *,
    flag: str | None = None,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    range: Range | None = None,  # noqa: A002
    commands: frozenset[str] = BOTH,
    job: bool = False,
    data: bool = False,
    exclusive: str | None = None,
    default_text: str | None = None,
    cli: bool = True,
    default_factory: Any = None,
) -> Any:
    """A :class:`TrainConfig` field: its default plus what the parsers and the GUI need to know.

    Args:
        default: the default value (the only place it is written).
        help: help text, without the default (appended from ``default`` or ``default_text``).
        flag: the command-line flag (default ``--name-with-dashes``; ``--no-NAME`` for a boolean that
            defaults to True).
        metavar: argparse metavar.
        choices: allowed string values.
        range: allowed numeric values (checked by :meth:`TrainConfig.validate`).
        commands: the commands that offer the option (``train``, ``pretrain-age``).
        job: a job-level option (:data:`JOB_FIELDS`), free to differ between jobs of one run.
        data: a dataset option, also offered by ``gloresnet folds``.
        exclusive: name of a mutually exclusive group of options.
        default_text: how the help names a None default (e.g. "torch's choice").
        cli: False for a field that is set by the program, not on the command line.
        default_factory: a factory instead of ``default`` (mutable defaults).
    Returns:
        A ``dataclasses.field``.
    """
    meta = {
        "help": help,
        "flag": flag,
        "metavar": metavar,
        "choices": choices,
        "range": range,
        "commands": commands if cli else frozenset(),
        "job": job,
        "data": data,
        "exclusive": exclusive,
        "default_text": default_text,
    }
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def change_option(cls: type, name: str, default: Any, **changes: Any) -> Any:
    """A field of ``cls`` with another default (and other metadata), for a subclass.

    Args:
        cls: the configuration class that defines the field.
        name: the field.
        default: the new default.
        **changes: metadata to change (e.g. ``help``).
    Returns:
        A ``dataclasses.field``.
    """
    base = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field(default=default, metadata={**base.metadata, **changes})


@dataclass(frozen=True)
class OptionSpec:
    """One option as the GUI and the parsers see it.

    Attributes:
        name: the field name (``batch_size``).
        flag: the command-line flag (``--batch-size``; ``--no-tta`` for a boolean defaulting to True).
        type: ``int``, ``float``, ``str``, ``bool`` or ``dict``.
        optional: None is allowed (off / unset).
        default: the default value.
        range: allowed numeric values, or None.
        choices: allowed string values, or None.
        help: help text (without the default).
        default_text: how a None default reads, or None.
        commands: the commands that offer it (empty: set by the program).
        job: job-level (may differ between jobs of one run).
        data: a dataset option (also offered by ``gloresnet folds``).
        exclusive: name of its mutually exclusive group, or None.
        metavar: argparse metavar, or None.
    """

    name: str
    flag: str
    type: type
    optional: bool
    default: Any
    range: Range | None
    choices: tuple[str, ...] | None
    help: str
    default_text: str | None
    commands: frozenset[str]
    job: bool
    data: bool
    exclusive: str | None
    metavar: str | None


def list_options(cls: type, command: str | None = None) -> list[OptionSpec]:
    """The options of a configuration class, in field order.

    Args:
        cls: a configuration dataclass whose fields are made by :func:`option` (``TrainConfig``, ``AgeConfig``).
        command: only the options this command offers (``train``, ``pretrain-age``); None: every field.
    Returns:
        One :class:`OptionSpec` per field (name, flag, type, default, range, choices, help, ...).
    """
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        m = f.metadata
        if command is not None and command not in m["commands"]:
            continue
        args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
        kind = typing.get_origin(hints[f.name]) or hints[f.name]
        optional = type(None) in typing.get_args(hints[f.name])
        if optional:
            kind = args[0]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flag = m["flag"] or ("--no-" if kind is bool and default is True else "--") + f.name.replace("_", "-")
        out.append(
            OptionSpec(
                f.name,
                flag,
                kind,
                optional,
                default,
                m["range"],
                m["choices"],
                m["help"],
                m["default_text"],
                m["commands"],
                m["job"],
                m["data"],
                m["exclusive"],
                m["metavar"],
            )
        )
    return out


def widths(text: str) -> list[int]:
    """argparse type of ``--widths``: four positive integers separated by commas.

    Args:
        text: e.g. ``"16,32,64,128"``.
    Returns:
        The four integers.
    Raises:
        argparse.ArgumentTypeError: not four positive integers.
    """
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--widths needs 4 positive integers (got '{text}')")
    return values


def json_dict(text: str) -> dict:
    """argparse type of a JSON-object option (``--arch-params``).

    Args:
        text: JSON text.
    Returns:
        The object as a dict.
    Raises:
        argparse.ArgumentTypeError: not valid JSON, or not an object.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"dropout\": 0.2}'")
    return value


def help_text(spec: OptionSpec) -> str:
    """An option's help with its default, as ``--help`` and a GUI tooltip show it.

    Args:
        spec: the option.
    Returns:
        E.g. "AdamW learning rate (default 0.002)".
    """
    if spec.type is bool or spec.type is dict:
        return spec.help
    if spec.default is not None:
        shown = f"{spec.default:g}" if spec.type is float else spec.default
        return f"{spec.help} (default {shown})"
    return f"{spec.help} (default: {spec.default_text})" if spec.default_text else spec.help


def add_option(p: argparse.ArgumentParser, spec: OptionSpec, groups: dict[str, Any], required: bool = False) -> None:
    """Add one option to a parser (default ``SUPPRESS``; the help shows the field's default).

    Args:
        p: the parser.
        spec: the option.
        groups: the mutually exclusive groups made so far, by name (filled in).
        required: the command cannot do without it.
    """
    target = p
    if spec.exclusive:
        if spec.exclusive not in groups:
            groups[spec.exclusive] = p.add_mutually_exclusive_group()
        target = groups[spec.exclusive]
    kw: dict[str, Any] = {"dest": spec.name, "default": argparse.SUPPRESS, "help": help_text(spec)}
    if spec.type is bool:
        kw["action"] = "store_false" if spec.default else "store_true"
    else:
        kw["type"] = json_dict if spec.type is dict else spec.type
        if spec.choices:
            kw["choices"] = list(spec.choices)
        if spec.metavar:
            kw["metavar"] = spec.metavar
        if required:
            kw["required"] = True
    target.add_argument(spec.flag, **kw)


def given_options(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options given on a command line, as keyword arguments of ``cls``.

    Args:
        args: parsed arguments (options not given are absent: default ``SUPPRESS``).
        cls: the configuration class.
    Returns:
        ``{field: value}`` of the given options; ``--widths`` goes into ``arch_params``.
    """
    names = {s.name for s in list_options(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    params = dict(given.pop("arch_params", {}) or {})
    if "widths" in vars(args):
        params["widths"] = args.widths
    if params:
        given["arch_params"] = params
    return given


def _split_widths(params: dict) -> tuple[dict, list[str]]:
    """``arch_params`` without valid ``widths``, and those widths as ``--widths W1,W2,W3,W4`` (read back into
    ``arch_params`` by :func:`given_options`)."""
    w = params.get("widths")
    if not (isinstance(w, (list, tuple)) and len(w) == 4 and all(type(v) is int and v >= 1 for v in w)):
        return params, []
    return {k: v for k, v in params.items() if k != "widths"}, ["--widths", ",".join(str(v) for v in w)]


def config_argv(cfg: Any, command: str | None = None) -> list[str]:
    """The command line of a configuration (see :meth:`TrainConfig.to_argv`).

    Args:
        cfg: the configuration.
        command: ``train`` or ``pretrain-age``; default: the configuration class's ``COMMAND``.
    Returns:
        Flags and values of the non-default options, in field order (``arch_params['widths']`` as
        ``--widths``).
    Raises:
        ValueError: an option the command does not offer differs from its default (it cannot be written).
    """
    command = command or type(cfg).COMMAND
    argv: list[str] = []
    for spec in list_options(type(cfg)):
        value = getattr(cfg, spec.name)
        if value == spec.default:
            continue
        if command not in spec.commands:
            if spec.job and not spec.commands:  # set by the handler (progress bar, log on stderr)
                continue
            raise ValueError(f"'{spec.name}' = {value!r} cannot be given to `gloresnet {command}`")
        if spec.type is bool:
            argv.append(spec.flag)
        elif value is None:
            raise ValueError(f"'{spec.name}' cannot be set back to None on the command line")
        elif spec.type is dict:
            value, shown = _split_widths(value) if spec.name == "arch_params" else (value, [])
            argv += ([spec.flag, json.dumps(value)] if value else []) + shown
        elif spec.type is float:
            argv += [spec.flag, repr(float(value))]
        else:
            argv += [spec.flag, str(value)]
    return argv
