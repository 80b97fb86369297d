"""Command-line forms of the training options, built from their one definition in :mod:`.config`.

:func:`add_config_options` adds every option a command offers to an argparse parser (default ``SUPPRESS``,
so that the handler knows which options were given; the help shows the field's default);
:func:`given_options` reads them back; :func:`config_argv` (``TrainConfig.to_argv``) writes a configuration
as a command line and :func:`parse_config` parses one. Torch-free and shared by ``train``, ``folds`` and
``pretrain-age`` (:mod:`.cli`, :mod:`.age_cli`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .config import AGE, TRAIN, AgeConfig, OptionSpec, TrainConfig, list_options

__all__ = [
    "EPILOG",
    "add_config_options",
    "add_data_options",
    "config_argv",
    "config_class",
    "given_options",
    "json_dict",
    "parse_config",
    "widths",
]

EPILOG = "Research use only. Not a medical device; not for clinical decisions."
#: Options a command cannot do without.
REQUIRED = {AGE: frozenset({"out"})}


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


def config_class(command: str) -> type[TrainConfig]:
    """The configuration class of a command (``train``: TrainConfig, ``pretrain-age``: AgeConfig)."""
    return AgeConfig if command == AGE else TrainConfig


def _help(spec: OptionSpec) -> str:
    if spec.type is bool or spec.type is dict:
        return spec.help
    if spec.default is not None:
        shown = f"{spec.default:g}" if spec.type is float else spec.default
        return f"{spec.help} (default {shown})"
    return f"{spec.help} (default: {spec.default_text})" if spec.default_text else spec.help


def _add(p: argparse.ArgumentParser, spec: OptionSpec, groups: dict[str, Any], required: bool) -> None:
    target = p
    if spec.exclusive:
        if spec.exclusive not in groups:
            groups[spec.exclusive] = p.add_mutually_exclusive_group()
        target = groups[spec.exclusive]
    kw: dict[str, Any] = {"dest": spec.name, "default": argparse.SUPPRESS, "help": _help(spec)}
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


def add_data_options(p: argparse.ArgumentParser) -> None:
    """Add the dataset and split options (``--manifest`` / ``--dhcp``, ..., ``--folds``, ``--seed``).

    Args:
        p: the parser of ``gloresnet folds``.
    """
    groups: dict[str, Any] = {}
    for spec in list_options(TrainConfig, TRAIN):
        if spec.data:
            _add(p, spec, groups, False)


def add_config_options(p: argparse.ArgumentParser, command: str) -> None:
    """Add every option ``command`` offers, plus ``--widths`` (which sets ``arch_params['widths']``).

    Args:
        p: the command's parser.
        command: ``train`` or ``pretrain-age``.
    """
    groups: dict[str, Any] = {}
    for spec in list_options(config_class(command), command):
        _add(p, spec, groups, spec.name in REQUIRED.get(command, ()))
        if spec.name == "arch_params":
            p.add_argument("--widths", type=widths, default=argparse.SUPPRESS, metavar="W1,W2,W3,W4",
                           help="stage widths (default: the architecture's; MedicalNet weights need the "
                           "ResNet default 64,128,256,512)")


def given_options(args: argparse.Namespace, cls: type[TrainConfig] = TrainConfig) -> dict[str, Any]:
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


def parse_config(argv: list[str], command: str = TRAIN) -> TrainConfig:
    """Parse a command line of ``command`` (its options only, no command word) into a configuration.

    Args:
        argv: e.g. ``cfg.to_argv()``.
        command: ``train`` or ``pretrain-age``.
    Returns:
        A :class:`TrainConfig` (``AgeConfig`` for ``pretrain-age``), not validated.
    """
    p = argparse.ArgumentParser(prog=f"gloresnet {command}", exit_on_error=False)
    add_config_options(p, command)
    cls = config_class(command)
    return cls(**given_options(p.parse_args(argv), cls))


def config_argv(cfg: TrainConfig, command: str | None = None) -> list[str]:
    """The command line of a configuration (see :meth:`TrainConfig.to_argv`).

    Args:
        cfg: the configuration.
        command: ``train`` or ``pretrain-age``; default: ``pretrain-age`` for an :class:`AgeConfig`.
    Returns:
        Flags and values of the non-default options, in field order.
    Raises:
        ValueError: an option the command does not offer differs from its default (it cannot be written).
    """
    command = command or (AGE if isinstance(cfg, AgeConfig) else TRAIN)
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
            argv += [spec.flag, json.dumps(value)]
        elif spec.type is float:
            argv += [spec.flag, repr(float(value))]
        else:
            argv += [spec.flag, str(value)]
    return argv
