"""The one exception type for user mistakes: the CLI prints its message on one line and exits 2."""


class PrunekitError(Exception):
    """A problem with what the user gave us (a path, a file, an option), with how to fix it."""


class ResumableError(PrunekitError):
    """A run that stopped in a way its message tells the user to continue with ``--resume`` (a full
    disk, a streak of NaN steps): its work dir is kept even when it holds no checkpoint yet."""
