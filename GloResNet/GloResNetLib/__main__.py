"""``python -m GloResNetLib`` runs the ``gloresnet`` command (used by the Slicer modules' processes)."""

import sys

from .cli import main

sys.exit(main())
