"""Constants and argument checks shared by the synthetic-cohort modules."""

from __future__ import annotations

import numpy as np

GENERATOR_VERSION = "2.0.0"
DISCLAIMER = "synthetic data, demonstration only, not for clinical use"
DEFAULT_DIFFICULTY = 0.3


def input_error(message: str) -> Exception:
    """The library's user-error exception (exit 2 on the command line)."""
    from ..errors import InputError

    return InputError(message)


def as_seed(seed) -> int:
    """A non-negative integer seed, or an input error."""
    try:
        value = int(seed)
    except (TypeError, ValueError):
        raise input_error(f"seed must be an integer (got {seed!r})") from None
    if value < 0:
        raise input_error(f"seed must be >= 0 (got {seed})")
    return value


def as_rng(rng_or_seed) -> np.random.Generator:
    """A numpy Generator from a Generator or a non-negative integer seed."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(as_seed(rng_or_seed))


def check_common(age_weeks: float, difficulty: float) -> None:
    """Refuse ages outside 20-50 weeks and difficulties outside [0, 1]."""
    if not (20.0 <= float(age_weeks) <= 50.0):
        raise input_error(f"age {age_weeks} weeks is outside 20-50 weeks post-menstrual age")
    if not (0.0 <= float(difficulty) <= 1.0):
        raise input_error(f"difficulty must be in [0, 1] (got {difficulty})")
