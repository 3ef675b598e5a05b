"""README examples are real: every `$ roofplan ...` (and `$ python benchmarks/...`) line of a
```console block of README.md that is followed by expected output is re-run in-process, and every
expected line (except `...` elisions) must appear in what it prints. Only wall-clock figures that
report how long a run took (solve and search times) are masked; every modelled number must match.

Commands that need a GPU (`--device cuda`), use a shell redirect or pipe, or show no output are
not run. Each command runs in a fresh temporary directory, so `-o out.csv` writes there; relative
paths of files in the repository become absolute.
"""
from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulator.cli.main import build_parser, main
from simulator.core.paths import REPO_ROOT

README = REPO_ROOT / "README.md"
OUTPUT_FLAGS = {"-o", "--output", "--out", "--result", "--trace", "--plot", "--chrome-trace", "--spec-out"}

# Wall-clock run times printed next to results; each pattern keeps its context and masks the time.
TIME = r"\d+(?:\.\d+)? (?:s|ms|us)"
VOLATILE = [
    re.compile(rf"(configurations \([^)]*\) in ){TIME}"),          # sweep: "96 configurations (...) in 0.57 s"
    re.compile(rf"(plans scored, [^;]*, ){TIME}(?=;)"),             # plan parallel: "334 fit in 80 GiB, 0.34 s;"
    re.compile(rf"(LPs in ){TIME}"),                                # plan offload: "82 LPs in 241 ms"
    re.compile(rf"^(solver [^,]*, gap [^,]*, ){TIME}$"),            # plan fleet: "solver HiGHS Optimal, gap 0.005, 0.20 s"
]


def mask(line: str) -> str:
    line = line.rstrip()
    for pat in VOLATILE:
        line = pat.sub(r"\1<time>", line)
    return line


@dataclass
class Example:
    command: str
    expected: list[str]
    line: int          # 1-based line of the command in README.md

    @property
    def id(self) -> str:
        return f"L{self.line}:{self.command[:70]}"


def examples(text: str) -> list[Example]:
    """Commands and the output lines shown under them, from every ```console block."""
    out: list[Example] = []
    in_block = False
    current: Example | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not in_block:
            in_block = line.strip() == "```console"
            continue
        if line.strip() == "```":
            in_block, current = False, None
            continue
        if current is not None and current.command.endswith("\\") and not current.expected:
            current.command = current.command[:-1].rstrip() + " " + line.strip()   # continuation line
            continue
        if line.startswith("$ "):
            current = Example(line[2:].strip(), [], n)
            out.append(current)
        elif current is not None:
            current.expected.append(line)
    return out


def _runnable(ex: Example) -> str | None:
    """Why the example is not run, or None."""
    argv = shlex.split(ex.command, comments=True)
    if not argv or argv[0] not in ("roofplan", "python"):
        return "not a roofplan command"
    if argv[0] == "python" and not (len(argv) >= 2 and argv[1].startswith("benchmarks/")):
        return "not a benchmark script"
    if not any(e.strip() and e.strip() != "..." for e in ex.expected):
        return "no expected output shown"
    if any(tok in (">", ">>", "|", "<") for tok in shlex.split(ex.command, comments=True, posix=False)):
        return "shell redirect or pipe"
    if "--device" in argv and argv[argv.index("--device") + 1] == "cuda":
        return "needs a GPU"
    return None


EXAMPLES = examples(README.read_text())
RUNNABLE = [e for e in EXAMPLES if _runnable(e) is None]


def _subparser(argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser that handles argv (`plan offload ...` -> the `plan offload` parser)."""
    parser = build_parser()
    for tok in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or tok not in subs[0].choices:
            break
        parser = subs[0].choices[tok]
    return parser


def _argv(tokens: list[str], tmp: Path) -> list[str]:
    """Relative paths of repository files made absolute; outputs left relative (they go to tmp)."""
    out = []
    for i, tok in enumerate(tokens):
        is_output = i > 0 and tokens[i - 1] in OUTPUT_FLAGS
        if is_output:
            (tmp / tok).parent.mkdir(parents=True, exist_ok=True)
        elif "/" in tok and not tok.startswith(("-", "/")) and (REPO_ROOT / tok).exists():
            tok = str(REPO_ROOT / tok)
        out.append(tok)
    return out


def test_readme_has_examples():
    assert len(RUNNABLE) >= 10, [e.command for e in EXAMPLES]
    assert any(e.expected and e.expected[0].startswith("roofplan: error:") for e in RUNNABLE)


@pytest.mark.parametrize("ex", RUNNABLE, ids=[e.id for e in RUNNABLE])
def test_readme_example(ex: Example, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tokens = shlex.split(ex.command, comments=True)
    if tokens[0] == "python":
        script = REPO_ROOT / tokens[1]
        monkeypatch.setattr(sys, "argv", [str(script), *_argv(tokens[2:], tmp_path)])
        try:
            runpy.run_path(str(script), run_name="__main__")
            rc = 0
        except SystemExit as e:
            rc = e.code or 0
    else:
        argv = _argv(tokens[1:], tmp_path)
        if "--format" not in argv and "--format" in _subparser(argv)._option_string_actions:
            argv += ["--format", "table"]      # the README shows the terminal's table; piped output is JSON
        rc = main(argv)
    cap = capsys.readouterr()
    if "no measurements at" in cap.out:
        pytest.skip("shared H100 measurements not found beside the repo")
    out_lines = {mask(l) for l in cap.out.splitlines()}
    err_lines = {mask(l) for l in cap.err.splitlines()}
    expected = [mask(l) for l in ex.expected if l.strip() and l.strip() != "..."]
    errors = [l for l in expected if l.startswith("roofplan: error:")]
    assert rc == (2 if errors else 0), f"exit code {rc}\n{cap.out}\n{cap.err}"
    missing = [l for l in expected if l not in (err_lines if l in errors else out_lines)]
    assert not missing, (f"README.md line {ex.line}: `{ex.command}` no longer prints these lines:\n"
                         + "\n".join(missing) + "\n--- actual stdout ---\n" + cap.out + "--- stderr ---\n" + cap.err)


def test_mask_only_run_times():
    assert mask("96 configurations (56 fit, 0 invalid) in 0.57 s -> quick.csv") == \
        "96 configurations (56 fit, 0 invalid) in <time> -> quick.csv"
    assert mask("1,332 plans scored, 334 fit in 80 GiB, 0.34 s; ranked by throughput") == \
        "1,332 plans scored, 334 fit in 80 GiB, <time>; ranked by throughput"
    assert mask("solver: HiGHS Optimal, gap 0, 82 LPs in 241 ms") == "solver: HiGHS Optimal, gap 0, 82 LPs in <time>"
    assert mask("solver HiGHS Optimal, gap 0.005, 0.20 s") == "solver HiGHS Optimal, gap 0.005, <time>"
    # modelled times stay
    for line in ("step time 11.5 ms  |  1,395 tokens/s  |  bound: memory",
                 "host->GPU weight transfer 254 ms per step (pinned, overlap on)",
                 "predicted: 0.78 tokens/s, latency 2.09e+04 s (prefill 4.48e+03 s, decode 1.64e+04 s)"):
        assert mask(line) == line
