"""User-facing errors: one line that names the input, the field and the fix.

The library speaks in its own terms: a `FieldError` names the field of a Job, plan or spec
(`tp`, `micro_batch`, ...) and its value. Only the CLI knows flags: `simulator.cli.main`
renders a FieldError with the flag that sets the field (`--tp`, `--micro-batch`).
"""
import difflib


SHOW_CHARS = 60     # longest value an error quotes: a name or flag value may be kilobytes long


def clip(value, n: int = SHOW_CHARS) -> str:
    """str(value) cut to `n` characters ("..." marks the cut), for quoting a user's value in an error."""
    s = str(value)
    return s if len(s) <= n else s[:n - 3] + "..."


def one_line(text: str) -> str:
    """`text` with line breaks and other unprintable characters escaped (a file name or value from
    the user may hold a newline or a right-to-left mark), so an error prints as one line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class RoofplanError(Exception):
    """Bad input from the user. The CLI prints the message on one line and exits with code 2."""

    def __init__(self, *args):
        super().__init__(*(one_line(a) if isinstance(a, str) else a for a in args))


class FieldError(RoofplanError):
    """A field of a Job, plan or spec has a value the model cannot use.

    str(e) reads "tp = 3: does not divide the 32 heads; use a divisor"; `for_flags(flag_of)`
    spells the field as the caller's flag ("--tp 3: ...").
    """

    def __init__(self, field: str, value, problem: str, fix: str = ""):
        self.field, self.value, self.problem, self.fix = field, value, problem, fix
        super().__init__(self.render(f"{field} ="))

    def render(self, name: str) -> str:
        return one_line(f"{name} {clip(self.value)}: {self.problem}" + (f"; {self.fix}" if self.fix else ""))

    def for_flags(self, flag_of) -> str:
        """The message with the field spelled by `flag_of(field)` (e.g. "--micro-batch")."""
        return self.render(flag_of(self.field))


class FixError(RoofplanError):
    """An error whose fix names several fields: `template` names each in braces, bound to a field name
    or a (field, value) pair. str(e) spells them as fields ("micro_batch", "offload_weights=cpu");
    `for_flags(flag_of)` as flags ("--micro-batch", "--offload weights=cpu")."""

    def __init__(self, template: str, **fields):
        self.template, self.fields = template, fields
        super().__init__(self.render(lambda f: f))

    def render(self, name_of) -> str:
        def spell(v):
            field, value = v if isinstance(v, tuple) else (v, None)
            name = name_of(field)
            if value is None:
                return name
            return f"{name}{value}" if name.endswith("=") else f"{name}{'=' if name == field else ' '}{value}"
        return one_line(self.template.format(**{k: spell(v) for k, v in self.fields.items()}))

    def for_flags(self, flag_of) -> str:
        return self.render(flag_of)


def did_you_mean(name: str, choices) -> str:
    """' (did you mean: a, b?)' for the closest known names, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""
