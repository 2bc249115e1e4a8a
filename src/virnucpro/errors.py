"""Typed errors raised at the package's boundaries.

Each one carries a message meant for the user: it names the file or device at fault and,
where there is one, the fix. The CLI prints it on one line and exits with `exit_code`.
"""


class VirnucproError(Exception):
    """Base class: an expected failure that the user can act on."""

    exit_code = 1


class InputError(VirnucproError):
    """The input FASTA/FASTQ is missing, unreadable, malformed or inconsistent."""

    exit_code = 2


class OutputError(VirnucproError):
    """The output location cannot be created or written."""

    exit_code = 3


class ModelError(VirnucproError):
    """A model file is missing, corrupt, of the wrong kind, or unsafe to load."""

    exit_code = 4


class CheckpointMismatch(VirnucproError):
    """An existing checkpoint store belongs to a different input, parameters or models."""

    exit_code = 5


class WorkerFailed(VirnucproError):
    """A device worker failed in a way that retrying will not fix."""

    exit_code = 6
