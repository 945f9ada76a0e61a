"""The one exception type for problems a user can fix (input, labels, config, files)."""


class HbrError(Exception):
    """A user-fixable problem; the command line prints it as one line, never a traceback."""
