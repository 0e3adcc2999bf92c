"""The one exception type for bad user input."""


class HftkError(Exception):
    """Bad input from the user (recipe, data, paths, arguments).

    The CLI prints the message as one line and exits with status 2, without a traceback, so the
    message must say what is wrong, where, and what is expected.
    """


def did_you_mean(value: object, choices: list[str], cutoff: float = 0.6) -> str:
    """``"did you mean 'x'?"`` for the choice closest to ``value`` (difflib), or ``""`` when none is close."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f"did you mean '{close[0]}'?" if close else ""


def error_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
