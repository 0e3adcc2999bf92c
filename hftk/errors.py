"""The one exception type for bad user input."""


class HftkError(Exception):
    """Bad input from the user (recipe, data, paths, arguments).

    The CLI prints the message as one line and exits with status 2, without a traceback, so the
    message must say what is wrong, where, and what is expected.
    """
