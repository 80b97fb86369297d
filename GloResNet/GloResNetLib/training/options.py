"""The command-line options of ``train``, ``folds`` and ``pretrain-age``, built from their one definition in
:mod:`.config` (generic machinery: :mod:`.optionspec`).

:func:`add_config_options` adds every option a command offers to its parser (default ``SUPPRESS``, so that the
handler knows which options were given; the help shows the field's default); :func:`given_options` reads them
back; :func:`parse_config` parses a command line and ``TrainConfig.to_argv`` writes one. Torch-free.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..disclaimer import DISCLAIMER as EPILOG
from .config import AgeConfig, TrainConfig
from .optionspec import AGE, TRAIN, add_option, given_options, list_options, widths

__all__ = [
    "EPILOG",
    "add_config_options",
    "add_data_options",
    "config_class",
    "given_options",
    "parse_config",
]

#: Options a command cannot do without.
REQUIRED = {AGE: frozenset({"out"})}


def config_class(command: str) -> type[TrainConfig]:
    """The configuration class of a command (``train``: TrainConfig, ``pretrain-age``: AgeConfig)."""
    return AgeConfig if command == AGE else TrainConfig


def add_data_options(p: argparse.ArgumentParser) -> None:
    """Add the dataset and split options (``--manifest`` / ``--dhcp``, ..., ``--folds``, ``--seed``).

    Args:
        p: the parser of ``gloresnet folds``.
    """
    groups: dict[str, Any] = {}
    for spec in list_options(TrainConfig, TRAIN):
        if spec.data:
            add_option(p, spec, groups)


def add_config_options(p: argparse.ArgumentParser, command: str) -> None:
    """Add every option ``command`` offers, plus ``--widths`` (which sets ``arch_params['widths']``).

    Args:
        p: the command's parser.
        command: ``train`` or ``pretrain-age``.
    """
    groups: dict[str, Any] = {}
    for spec in list_options(config_class(command), command):
        add_option(p, spec, groups, spec.name in REQUIRED.get(command, ()))
        if spec.name == "arch_params":
            p.add_argument(
                "--widths",
                type=widths,
                default=argparse.SUPPRESS,
                metavar="W1,W2,W3,W4",
                help="stage widths (default: the architecture's; MedicalNet weights need the "
                "ResNet default 64,128,256,512)",
            )


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
