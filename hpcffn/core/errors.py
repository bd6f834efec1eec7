"""User-facing errors.

Every problem caused by the user's input (spec, files, datasets, plan) is raised as
HpcffnError with a one-line message naming the file/field/dataset and the fix. The CLI
prints it as one line and exits non-zero, with no traceback.
"""


class HpcffnError(Exception):
    """A user-facing error: one line, says what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class SchedulerNotAnswering(HpcffnError):
    """A SLURM client tool gave no answer in time (controller down or overloaded).

    Read-only queries treat it as one failed source and go on with the others; callers tell it
    from other errors by type, never by the message's words."""


class SchedulerMissing(HpcffnError):
    """A SLURM client tool is not installed here (not a login node, module not loaded)."""


class DiskFull(HpcffnError):
    """No space left while writing an output (nothing was replaced).

    The CLI ends the process right after printing it: HDF5 keeps a file it could not flush
    open, and its exit-time clean-up then crashes (a segfault, exit 139).
    """
