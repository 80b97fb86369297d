"""Synthetic neonatal T2-weighted MRI cohort: demonstration and test data only, not for clinical use.

Generator 2.0 (one module per concern):

- :mod:`.anatomy`: tissue label templates with real human topology (MNI152 grey/white-matter maps shipped by
  nilearn, reshaped to neonatal folding and brain volume for 28-44 weeks post-menstrual age), cached on disk;
- :mod:`.contrast`: neonatal T2 tissue intensities by age, drawn per subject;
- :mod:`.lesions`: punctate white-matter lesions, germinal-matrix / intraventricular haemorrhage, cystic PVL,
  cerebellar haemorrhage (and PHVD as a deformation), each with its mask;
- :mod:`.geometry` / :mod:`.acquisition`: scan geometry, slice profile and MONAI's randomised artefacts,
  whole-head or brain-extracted;
- :mod:`.volume`: one scan (:func:`synth_volume`); :mod:`.plan` / :mod:`.cohort`: the cohort and its files;
- :mod:`.user_anatomy`: subjects rendered from the user's own label maps; :mod:`.command`: ``gloresnet synth``.
"""

from .anatomy import TISSUES, brain_volume_ml
from .cohort import MANIFEST_COLUMNS, CohortResult, generate_cohort, synth_session
from .command import add_parser, run_synth
from .common import DEFAULT_DIFFICULTY, DISCLAIMER, GENERATOR_VERSION
from .geometry import DEFAULT_MAX_DIM, ORIENTATIONS, orientation_matrix
from .lesions import INJURY_DESCRIPTIONS, INJURY_TYPES, LESION_SIZE
from .plan import DEFAULT_BI_FRACTION, DEFAULT_SECOND_SESSION_FRACTION, LABEL_RULE, SessionPlan, plan_cohort
from .volume import DIFFUSE_FRACTION, synth_volume

#: DRAW-EM 9-tissue numbering of the label maps in ``info["labels"]`` and in written ``*_dseg`` files.
LABELS = {k: TISSUES[k] for k in range(10)}
CSF, CORTEX, WM, NONBRAIN, VENTRICLE, CEREBELLUM, DGM, BRAINSTEM, HIPPO = range(1, 10)

__all__ = [
    "CSF",
    "CORTEX",
    "DEFAULT_BI_FRACTION",
    "DEFAULT_DIFFICULTY",
    "DEFAULT_MAX_DIM",
    "DEFAULT_SECOND_SESSION_FRACTION",
    "DGM",
    "DIFFUSE_FRACTION",
    "DISCLAIMER",
    "GENERATOR_VERSION",
    "INJURY_DESCRIPTIONS",
    "INJURY_TYPES",
    "LABELS",
    "LABEL_RULE",
    "LESION_SIZE",
    "MANIFEST_COLUMNS",
    "NONBRAIN",
    "ORIENTATIONS",
    "TISSUES",
    "VENTRICLE",
    "WM",
    "BRAINSTEM",
    "CEREBELLUM",
    "HIPPO",
    "CohortResult",
    "SessionPlan",
    "add_parser",
    "brain_volume_ml",
    "generate_cohort",
    "orientation_matrix",
    "plan_cohort",
    "run_synth",
    "synth_session",
    "synth_volume",
]
