"""The one exception type for user mistakes: the CLI prints its message on one line and exits 2."""


class PrunekitError(Exception):
    """A problem with what the user gave us (a path, a file, an option), with how to fix it."""
