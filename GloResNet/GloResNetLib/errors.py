"""User-facing error types: raised for bad input, shown as one line, exit code 2 from the CLI."""

from __future__ import annotations


class GloResNetError(Exception):
    """A problem the user can fix (bad file, bad option, bad model); never a bug in the library."""


class InputError(GloResNetError):
    """An input image or option is unusable (missing, corrupt, wrong shape, NaN, constant...)."""


class BundleError(GloResNetError):
    """A model bundle or weights file is unusable (checksum, metadata, architecture, shapes)."""


class DatasetError(GloResNetError):
    """A training dataset has problems (missing files, labels, duplicates...)."""
