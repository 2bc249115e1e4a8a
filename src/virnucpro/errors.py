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
    """The output folder holds another run's state: a checkpoint store of a different input,
    parameters or models, or the results of a different input."""

    exit_code = 5


class WorkerFailed(VirnucproError):
    """A device worker failed in a way that retrying will not fix."""

    exit_code = 6


EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # SIGTERM

# Every exit code of the command, for --help and the README.
EXIT_CODES = (
    (0, "success"),
    (InputError.exit_code, "bad input or command line"),
    (OutputError.exit_code, "output folder or file not writable"),
    (ModelError.exit_code, "a model missing or invalid"),
    (CheckpointMismatch.exit_code, "the output folder holds a checkpoint or results of another input or run"),
    (WorkerFailed.exit_code, "a device worker failed"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C); finished shards are kept"),
    (EXIT_TERMINATED, "terminated (SIGTERM); finished shards are kept"),
)
