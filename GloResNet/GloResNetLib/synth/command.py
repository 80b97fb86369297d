"""``gloresnet synth``: the command line of the synthetic cohort generator."""

from __future__ import annotations

import argparse

from .cohort import generate_cohort
from .common import DEFAULT_DIFFICULTY, DISCLAIMER
from .geometry import DEFAULT_MAX_DIM
from .plan import DEFAULT_BI_FRACTION, DEFAULT_SECOND_SESSION_FRACTION


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``gloresnet synth``."""
    p = subparsers.add_parser(
        "synth",
        help="generate a synthetic neonatal T2w cohort (demonstration data, not for clinical use)",
        description="Generate synthetic neonatal T2-weighted volumes with and without preterm brain injury, "
        "lesion masks, manifest.csv and cohort.json (optionally the dHCP BIDS layout). "
        + DISCLAIMER.capitalize()
        + ".",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--n", type=int, default=60, help="number of scans in the manifest (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--difficulty",
        type=float,
        default=DEFAULT_DIFFICULTY,
        help=f"lesion subtlety in [0, 1]; 0 = large, obvious (default {DEFAULT_DIFFICULTY})",
    )
    p.add_argument("--bids", action="store_true", help="write the dHCP BIDS-like layout under OUT/dhcp")
    p.add_argument(
        "--max-dim", type=int, default=DEFAULT_MAX_DIM, help=f"largest matrix size per axis (default {DEFAULT_MAX_DIM})"
    )
    p.add_argument(
        "--bi-fraction",
        type=float,
        default=DEFAULT_BI_FRACTION,
        help=f"fraction of scans with brain injury (default {DEFAULT_BI_FRACTION})",
    )
    p.add_argument(
        "--second-session-fraction",
        type=float,
        default=DEFAULT_SECOND_SESSION_FRACTION,
        help=f"fraction of subjects scanned twice (default {DEFAULT_SECOND_SESSION_FRACTION})",
    )
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument(
        "--artefacts",
        type=float,
        default=1.0,
        metavar="STRENGTH",
        help="strength of the random acquisition artefacts (bias field, gamma, Gibbs ringing, motion "
        "ghosts): 0 = none but noise, 1 = default",
    )
    p.add_argument(
        "--anatomy",
        nargs="+",
        metavar="LABELMAP",
        help="render subjects from these tissue label maps (NIfTI/NRRD; DRAW-EM 9-tissue numbering, "
        "e.g. dHCP *_desc-drawem9_dseg.nii.gz) instead of the built-in anatomy; subject i uses "
        "map i mod n",
    )
    p.add_argument(
        "--anatomy-labels",
        metavar="JSON",
        help='mapping of the label maps\' labels to tissues ({"their label": "tissue"}) when they '
        "are not DRAW-EM 9-tissue maps",
    )
    p.set_defaults(func=run_synth)
    return p


def run_synth(args: argparse.Namespace) -> int:
    """Handler of ``gloresnet synth``: generate the cohort and print a one-line summary."""
    anatomy = None
    if getattr(args, "anatomy", None):
        from .user_anatomy import UserAnatomy, read_mapping

        anatomy = UserAnatomy(args.anatomy, read_mapping(getattr(args, "anatomy_labels", None)))
    elif getattr(args, "anatomy_labels", None):
        from .common import input_error

        raise input_error("--anatomy-labels needs --anatomy")
    result = generate_cohort(
        args.out,
        n=args.n,
        seed=args.seed,
        difficulty=args.difficulty,
        bids=args.bids,
        max_dim=args.max_dim,
        bi_fraction=getattr(args, "bi_fraction", DEFAULT_BI_FRACTION),
        second_session_fraction=getattr(args, "second_session_fraction", DEFAULT_SECOND_SESSION_FRACTION),
        workers=getattr(args, "workers", 1),
        anatomy=anatomy,
        artefact_strength=getattr(args, "artefacts", 1.0),
    )
    print(result.summary())
    return 0
