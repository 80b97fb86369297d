"""Cohort plan of the synthetic data set: subjects, sessions, ages, labels, injuries and radiology scores.

Everything about subject ``i`` comes from generators seeded by ``(seed, i, stream)``, so a scan never depends on
the other subjects and the same seed gives the same plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .common import as_seed
from .common import input_error as _input_error
from .lesions import INJURY_TYPES

DEFAULT_BI_FRACTION = 0.42
DEFAULT_SECOND_SESSION_FRACTION = 0.2
#: Probability of each injury type in an injured subject (at least one is drawn; PHVD usually follows an IVH).
INJURY_PROBABILITIES = {"pwml": 0.5, "ivh": 0.4, "phvd": 0.2, "cpvl": 0.2, "cbh": 0.15}
LABEL_RULE = (
    "label 1 (BI) if the synthetic subject was given at least one focal injury ("
    + ", ".join(INJURY_TYPES)
    + "), else 0 (no BI); every session of an injured subject is injured. Diffuse excessive high signal in the "
    "white matter (about 35% of subjects of either class) does not count. In the dHCP-style layout "
    "radiology_score is 1-2 for no BI, 3-5 for BI, and 'Q' for sessions that failed quality control "
    "(motion artefacts; not in manifest.csv)."
)


@dataclass(frozen=True)
class SessionPlan:
    """One planned scan of the cohort (everything except the image itself)."""

    subject: str
    session: str
    subject_index: int
    session_index: int
    label: int
    age_weeks: float
    ga_weeks: float
    injury_types: tuple[str, ...]
    radiology_score: str
    sex: str
    birth_weight: float
    singleton: bool
    sedation: int
    quality_fail: bool = False


def subject_rng(seed: int, index: int, stream: int, session: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream), int(session)]))


def _subject_sessions(seed: int, index: int, second_session_fraction: float) -> int:
    return 2 if subject_rng(seed, index, 0).random() < second_session_fraction else 1


def _injury_types(rng: np.random.Generator) -> tuple[str, ...]:
    p = INJURY_PROBABILITIES
    chosen = {k for k, pk in p.items() if rng.random() < pk}
    if not chosen:
        keys = list(p)
        w = np.array([p[k] for k in keys])
        chosen = {keys[int(rng.choice(len(keys), p=w / w.sum()))]}
    if "phvd" in chosen and rng.random() < 0.7:
        chosen.add("ivh")
    return tuple(k for k in INJURY_TYPES if k in chosen)


def _radiology_score(rng: np.random.Generator, injuries: tuple[str, ...]) -> str:
    u = rng.random()
    if not injuries:
        return "1" if u < 0.75 else "2"
    if "phvd" in injuries or "cpvl" in injuries or "cbh" in injuries:
        return "5" if u < 0.9 else "4"
    if "ivh" in injuries:
        return "3" if u < 0.6 else ("5" if u < 0.9 else "4")
    return "3" if u < 0.9 else "4"


def _plan_subject(seed: int, index: int, n_sessions: int, label: int, quality_fail: bool = False) -> list[SessionPlan]:
    rng = subject_rng(seed, index, 1)
    u_ga, early_u, a1, a2, a_term, sex_u, bw_z, single_u = rng.random(8)
    ga = 24.0 + 12.0 * u_ga ** (1.15 if label else 0.9)
    injuries = _injury_types(subject_rng(seed, index, 2)) if label else ()
    if n_sessions == 2:
        first = min(max(28.0, ga + 0.3 + 2.7 * a1), 36.0)
        ages = [first, max(38.0 + 6.0 * a2, first + 2.0)]
    elif early_u < 0.3:
        ages = [max(28.0, ga + 0.3 + 2.7 * a1)]
    else:
        ages = [max(37.0 + 7.0 * a_term, ga + 0.5)]
    ages = [min(a, 44.0) for a in ages]
    subject = f"CC{index + 1:05d}XX{index % 19 + 1:02d}"
    birth_weight = (0.65 + 0.16 * (ga - 24.0)) * math.exp(0.12 * (2 * bw_z - 1))
    plans = []
    for k, age in enumerate(ages):
        srng = subject_rng(seed, index, 3, k)
        score = "Q" if quality_fail else _radiology_score(srng, injuries)
        plans.append(
            SessionPlan(
                subject=subject,
                session=str(1001 + 2 * index + k),
                subject_index=index,
                session_index=k,
                label=int(label),
                age_weeks=round(float(age), 2),
                ga_weeks=round(float(ga), 2),
                injury_types=injuries,
                radiology_score=score,
                sex="female" if sex_u < 0.48 else "male",
                birth_weight=round(birth_weight, 3),
                singleton=bool(single_u < 0.8),
                sedation=int(srng.random() < 0.05),
                quality_fail=quality_fail,
            )
        )
    return plans


def plan_cohort(
    n: int = 60,
    seed: int = 0,
    *,
    bi_fraction: float = DEFAULT_BI_FRACTION,
    second_session_fraction: float = DEFAULT_SECOND_SESSION_FRACTION,
    n_quality_fail: int = 0,
) -> list[SessionPlan]:
    """Plan ``n`` scans (plus ``n_quality_fail`` extra failed-QC scans) without rendering any image.

    Some subjects (``second_session_fraction``) get a preterm and a term-equivalent scan; labels are given
    per subject so that about ``bi_fraction`` of the ``n`` scans show brain injury.
    """
    n = check_n(n)
    seed = int(as_seed(seed))
    if not 0.0 <= float(bi_fraction) <= 1.0:
        raise _input_error(f"bi_fraction must be in [0, 1] (got {bi_fraction})")
    if not 0.0 <= float(second_session_fraction) <= 1.0:
        raise _input_error(f"second_session_fraction must be in [0, 1] (got {second_session_fraction})")
    if int(n_quality_fail) < 0:
        raise _input_error(f"n_quality_fail must be >= 0 (got {n_quality_fail})")
    counts: list[int] = []
    while sum(counts) < n:
        counts.append(min(_subject_sessions(seed, len(counts), second_session_fraction), n - sum(counts)))
    target = int(round(float(bi_fraction) * n))
    order = np.random.default_rng(np.random.SeedSequence([seed, 2**31 - 1])).permutation(len(counts))
    labels = [0] * len(counts)
    injured = 0
    for i in order:
        if injured + counts[i] <= target:
            labels[i] = 1
            injured += counts[i]
    plans = [p for i, c in enumerate(counts) for p in _plan_subject(seed, i, c, labels[i])]
    for q in range(int(n_quality_fail)):
        plans += _plan_subject(seed, len(counts) + q, 1, 0, quality_fail=True)
    return plans


def check_n(n) -> int:
    try:
        value = int(n)
    except (TypeError, ValueError):
        raise _input_error(f"n must be an integer (got {n!r})") from None
    if value != n or value < 2:
        raise _input_error(f"n must be an integer of at least 2 (got {n!r})")
    return value
