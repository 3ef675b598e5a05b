"""User-facing errors: one line that names the input, the field and the fix."""
import difflib


class RoofplanError(Exception):
    """Bad input from the user. The CLI prints the message on one line and exits with code 2."""


def did_you_mean(name: str, choices) -> str:
    """' (did you mean: a, b?)' for the closest known names, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""
