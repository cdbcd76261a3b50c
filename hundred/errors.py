"""The one exception type a user sees: bad input, with a message that says what to fix."""


class HundredError(Exception):
    """A user-facing error (bad config, path, data file). The CLI prints it without a traceback."""
