"""Fuzz targets: a hypothesis strategy for every file roofplan reads and for the CLI, and the
property each must keep (issue 13, "trustworthy inputs and outputs").

A parser, given anything, either returns a valid object (every number in it finite) or raises
`RoofplanError` with one line (no newline, under MAX_MESSAGE characters). Anything else -- a
traceback, a multi-line or flooding message, an accepted object holding inf or nan, a case that
runs past CASE_TIMEOUT_S -- is a failure. The CLI, given any argv, returns 0, or 2 with exactly
one stderr line starting "roofplan: error:".

Inputs are (a) mutations of the project's own valid files (a key dropped, renamed, duplicated or
added; a value retyped, negated, scaled by 10^k, made nan/inf/huge/empty, replaced by nested
garbage; the YAML text itself edited: lines duplicated, dropped, truncated, bytes flipped, tags and
aliases inserted) and (b) random structures. `TARGETS` names each parser with its strategy and
the call that runs one case; tests/fuzz/test_fuzz.py runs a few hundred cases in CI and
benchmarks/fuzz.py runs 10,000 per parser.

Parsers in files other people own (sweep grids, step-time and end-to-end files) are fuzzed
through their public functions too; a failure there is reported, not fixed here.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import re
import shutil
import signal
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

import numpy as np
import yaml
from hypothesis import strategies as st

from simulator.core.errors import RoofplanError
from simulator.core.paths import REPO_ROOT

MAX_MESSAGE = 500                 # characters of a one-line error
CASE_TIMEOUT_S = 10               # a case slower than this is a hang, not an answer
HW = REPO_ROOT / "hardware_specs"
END_TO_END = REPO_ROOT.parent / "shared" / "measurements" / "h100-sxm" / "end_to_end.yaml"

# --------------------------------------------------------------------------------------------
# outcomes

ACCEPTED, REFUSED, USAGE, TRACEBACK, BAD_MESSAGE, BAD_OBJECT, HANG = (
    "accepted", "refused", "usage", "traceback", "bad message", "bad object", "hang")
FAILURES = (TRACEBACK, BAD_MESSAGE, BAD_OBJECT, HANG)


@dataclass
class Outcome:
    kind: str
    detail: str = ""              # the message, traceback tail or offending value
    where: str = ""               # dedup key of a failure: exception type and innermost frame

    @property
    def failed(self) -> bool:
        return self.kind in FAILURES


class _Timeout(BaseException):
    """Raised by the alarm inside a case that runs too long (a BaseException, so no parser's
    `except Exception` swallows it)."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def _alarm(signum, frame):
        raise _Timeout()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _traceback_outcome(e: BaseException) -> Outcome:
    """A failure keyed by the exception type and the innermost frame in roofplan's own code."""
    tb = traceback.extract_tb(e.__traceback__)
    ours = [f for f in tb if f.filename.startswith(str(REPO_ROOT)) and "/tests/fuzz/" not in f.filename
            and "/.venv/" not in f.filename]
    frame = (ours or tb)[-1] if tb else None
    if frame is None:
        where = "?"
    elif frame.filename.startswith(str(REPO_ROOT)):
        where = f"{Path(frame.filename).relative_to(REPO_ROOT)}:{frame.lineno}"
    else:
        where = f"{frame.filename}:{frame.lineno}"
    tail = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-4:])
    return Outcome(TRACEBACK, tail[-1500:], f"{type(e).__name__} at {where}")


def _message_outcome(msg: str) -> Outcome:
    if not msg or "\n" in msg or len(msg) >= MAX_MESSAGE:
        return Outcome(BAD_MESSAGE, msg[:2000], f"{'multi-line' if chr(10) in msg else 'empty' if not msg else 'long'} message")
    return Outcome(REFUSED, msg)


def non_finite(obj: Any, path: str = "") -> str | None:
    """The dotted path of the first inf or nan inside a parsed object (dataclasses, mappings,
    sequences, numpy arrays), or None when every number is finite."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, bytes, int)):
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else f"{path or '(value)'} = {obj}"
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "fc" and not np.isfinite(obj).all():
            return f"{path} holds {obj[~np.isfinite(obj)][:3]}"
        return None
    if isinstance(obj, np.generic):
        return non_finite(obj.item(), path)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            bad = non_finite(getattr(obj, f.name), f"{path}.{f.name}" if path else f.name)
            if bad:
                return bad
        return None
    if isinstance(obj, (dict, MappingProxyType)):
        for k, v in obj.items():
            bad = non_finite(v, f"{path}.{k}" if path else str(k))
            if bad:
                return bad
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad = non_finite(v, f"{path}[{i}]")
            if bad:
                return bad
    return None


def run_parser(call: Callable[[], Any], finite: bool = True) -> Outcome:
    """Run one parser case: its result must be finite (unless `finite` is False: raw YAML may
    hold .inf, the schema refuses it), its refusal one RoofplanError line."""
    try:
        with _time_limit(CASE_TIMEOUT_S):
            result = call()
    except _Timeout:
        return Outcome(HANG, f"> {CASE_TIMEOUT_S} s", "hang")
    except RoofplanError as e:
        return _message_outcome(str(e))
    except Exception as e:          # noqa: BLE001 -- any other exception is the bug we look for
        return _traceback_outcome(e)
    bad = non_finite(result) if finite else None
    if bad:
        return Outcome(BAD_OBJECT, bad, "non-finite value accepted")
    return Outcome(ACCEPTED)


_NON_FINITE_WORD = re.compile(r"(?<![\w.-])-?(nan|inf)(?![\w-])")


def _refuse_constant(name: str):
    raise ValueError(f"{name} (not a number)")


def _non_finite_output(text: str, argv: list[str]) -> str | None:
    """An answer printed with inf or nan in it: strict JSON refuses them under --format json; a
    table or CSV shows them as the words nan / inf."""
    fmt = next((argv[i + 1] for i in range(len(argv) - 2, -1, -1) if argv[i] == "--format"), None)
    if fmt == "json" and text.strip():
        try:
            json.loads(text, parse_constant=_refuse_constant)
        except ValueError as e:
            return f"--format json printed {e}: {text[:300]!r}"
        return None
    m = _NON_FINITE_WORD.search(text)
    return f"printed {m.group(0)!r}: ...{text[max(0, m.start() - 200):m.end() + 100]!r}" if m else None


def run_cli(argv: list[str]) -> Outcome:
    """Run `roofplan argv` in process: exit 0, or 2 with one stderr line "roofplan: error: ..."
    (an argparse usage + error pair from a SystemExit is recorded as USAGE)."""
    from simulator.cli.main import main
    out, err = io.StringIO(), io.StringIO()
    exited = False
    try:
        with _time_limit(CASE_TIMEOUT_S), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:
                exited, rc = True, e.code
    except _Timeout:
        return Outcome(HANG, f"> {CASE_TIMEOUT_S} s", "hang")
    except Exception as e:          # noqa: BLE001
        return _traceback_outcome(e)
    lines = err.getvalue().splitlines()
    if rc in (0, None):
        bad = None if exited else _non_finite_output(out.getvalue(), argv)     # --help prints no answer
        return Outcome(BAD_OBJECT, bad, "non-finite number printed") if bad else Outcome(ACCEPTED)
    if rc == 2 and len(lines) == 1 and lines[0].startswith("roofplan: error: "):
        return _message_outcome(lines[0][len("roofplan: error: "):])
    if rc == 2 and exited and len(lines) == 2 and lines[0].startswith("usage:") and ": error: " in lines[1]:
        return Outcome(USAGE, lines[1])
    detail = f"exit {rc!r}, stderr {err.getvalue()[-600:]!r}, stdout {out.getvalue()[:200]!r}"
    return Outcome(BAD_MESSAGE, detail, f"exit {rc!r} with {len(lines)} stderr lines")


# --------------------------------------------------------------------------------------------
# values: what a YAML or JSON file can hold

SPECIAL_NUMBERS = [0, -1, 1, 0.0, -0.0, 0.5, 1.5, 1e-320, 5e-324, 1e-300, 1e300, 1e308, -1e308, 2**31, 2**53 + 1,
                   2**63, 2**64, -2**63, 10**30, 10**400, float("nan"), float("inf"), float("-inf"), True, False]
SPECIAL_STRINGS = ["", " ", "\t", "0", "1", "-1", "1e3", "nan", "inf", ".inf", "yes", "no", "true", "null", "~",
                   "0x10", "1_000", "١٢", "é", "\u202e", "\x00", "a" * 300, "x\ny", "{", "[", "*", "&a", "!!int",
                   "bf16", "h100-sxm", "llama-3.1-8b", "decode", "../../etc/passwd", "💥" * 10]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(SPECIAL_NUMBERS), st.sampled_from(SPECIAL_STRINGS))
# YAML's safe loader also makes dates, timestamps, bytes (!!binary) and sets (!!set)
yaml_scalars = st.one_of(
    json_scalars, st.dates(), st.datetimes(), st.binary(max_size=8),
    st.frozensets(st.integers(0, 9), max_size=3).map(set))
json_keys = st.one_of(st.text(max_size=12), st.sampled_from(SPECIAL_STRINGS))
yaml_keys = st.one_of(json_keys, st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False))


_GARBAGE: dict[bool, st.SearchStrategy] = {}


def garbage(yaml_like: bool = True) -> st.SearchStrategy:
    """A random nested structure (lists and mappings of scalars, a few levels deep)."""
    if yaml_like not in _GARBAGE:
        scalars, keys = (yaml_scalars, yaml_keys) if yaml_like else (json_scalars, json_keys)

        def nest(children):
            return st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4)
        _GARBAGE[yaml_like] = st.recursive(scalars, nest, max_leaves=12)
    return _GARBAGE[yaml_like]


# --------------------------------------------------------------------------------------------
# mutations of a valid document


def _nodes(doc, path=()):
    yield path
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _nodes(v, path + (i,))


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def _set(doc, path, value):
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def _typo(draw, key: str) -> str:
    """A plausible misspelling: a letter dropped, doubled, swapped or changed, a case change, a
    unit suffix changed (memory_GiB -> memory_GB), or a random name."""
    s = str(key)
    how = draw(st.sampled_from(["drop", "double", "swap", "case", "unit", "dash", "random"]))
    i = draw(st.integers(0, max(0, len(s) - 1)))
    if how == "drop" and s:
        return s[:i] + s[i + 1:]
    if how == "double" and s:
        return s[:i] + s[i] + s[i:]
    if how == "swap" and len(s) > 1:
        i = min(i, len(s) - 2)
        return s[:i] + s[i + 1] + s[i] + s[i + 2:]
    if how == "case":
        return s.upper() if s != s.upper() else s.lower() + "X"
    if how == "unit":
        for a, b in (("_GiB", "_GB"), ("_GB", "_GiB"), ("_GBps", "_Bps"), ("_us", "_s"), ("_s", "_ms"), ("_MiB", "_MB")):
            if s.endswith(a):
                return s[:-len(a)] + b
        return s + "_s"
    if how == "dash":
        return s.replace("_", "-") if "_" in s else s + "-"
    return draw(json_keys)


def _retyped(draw, v):
    """`v` as another type: a number as a string, a scalar wrapped in a list or mapping, ..."""
    choices = [str(v), [v], {"value": v}, None, not bool(v) if isinstance(v, bool) else True, []]
    if isinstance(v, bool):
        choices += [int(v), "true" if v else "false"]
    elif isinstance(v, int):
        choices += [float(v) if abs(v) < 2**1000 else math.inf, v + 0.5 if abs(v) < 2**1000 else v, str(v) + ".0"]
    elif isinstance(v, float):
        choices += [int(v) if math.isfinite(v) else 0, round(v) if math.isfinite(v) else 0, repr(v)]
    elif isinstance(v, str):
        try:
            choices.append(float(v))
        except ValueError:
            choices.append(len(v))
    elif isinstance(v, list):
        choices += [v[0] if v else 0, dict(enumerate(v)), v + v]
    elif isinstance(v, dict):
        choices += [list(v.values()), [list(p) for p in v.items()], list(v)]
    return draw(st.sampled_from(choices))


def _scaled(draw, v):
    k = draw(st.integers(-330, 330))
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return draw(st.sampled_from(SPECIAL_NUMBERS))
    if isinstance(v, int) and k >= 0:
        return v * 10**k
    try:
        return float(v) * 10.0**k
    except OverflowError:
        return float("inf")


MUTATIONS = ("drop", "rename", "dup", "add", "retype", "negate", "scale", "special", "string", "garbage", "empty",
             "perturb", "perturb")


@st.composite
def mutated(draw, doc, yaml_like: bool = True, max_edits: int = 3):
    """`doc` with 0..max_edits random edits (perturb keeps most numbers valid, so some cases are
    accepted and the parser's happy path is exercised too)."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(0, max_edits))):
        paths = list(_nodes(doc))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(MUTATIONS))
        node = _get(doc, path)
        parent = _get(doc, path[:-1]) if path else None
        if op == "drop" and path:
            del parent[path[-1]]
        elif op == "rename" and path and isinstance(parent, dict):
            new = _typo(draw, path[-1])
            parent[new] = parent.pop(path[-1])
        elif op == "dup" and path and isinstance(parent, list):
            parent.insert(path[-1], copy.deepcopy(node))
        elif op == "dup" and path and isinstance(parent, dict):
            parent[_typo(draw, path[-1])] = copy.deepcopy(node)
        elif op == "add" and isinstance(node, dict):
            key = _typo(draw, draw(st.sampled_from(list(node) or ["x"])))
            node[key] = draw(garbage(yaml_like))
        elif op == "retype":
            doc = _set(doc, path, _retyped(draw, node))
        elif op == "negate" and isinstance(node, (int, float)) and not isinstance(node, bool):
            doc = _set(doc, path, -node)
        elif op == "scale":
            doc = _set(doc, path, _scaled(draw, node))
        elif op == "special":
            doc = _set(doc, path, draw(st.sampled_from(SPECIAL_NUMBERS + SPECIAL_STRINGS)))
        elif op == "string":
            doc = _set(doc, path, draw(st.text(max_size=40) | st.sampled_from(SPECIAL_STRINGS)))
        elif op == "garbage":
            doc = _set(doc, path, draw(garbage(yaml_like)))
        elif op == "empty":
            doc = _set(doc, path, type(node)() if isinstance(node, (dict, list, str)) else None)
        elif op == "perturb" and isinstance(node, (int, float)) and not isinstance(node, bool):
            doc = _set(doc, path, type(node)(node * draw(st.sampled_from([1, 2, 3])) if isinstance(node, int)
                                             else node * draw(st.floats(0.5, 2.0))))
        elif op == "perturb" and isinstance(node, str):
            doc = _set(doc, path, node + draw(st.sampled_from(["", "x", " ", "-1"])))
    return doc


@st.composite
def random_structure(draw, doc, yaml_like: bool = True):
    """A structure with the valid document's top-level keys (some) and random values, or plain
    garbage: what a wrong file handed to the parser looks like."""
    if isinstance(doc, dict) and draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(list(doc)), unique=True, max_size=len(doc))) if doc else []
        return {k: (copy.deepcopy(doc[k]) if draw(st.booleans()) else draw(garbage(yaml_like))) for k in keys}
    return draw(garbage(yaml_like))


def documents(docs: list, yaml_like: bool = True) -> st.SearchStrategy:
    """(index of the valid file, document): mutations of one of `docs`, or random structures."""
    idx = st.integers(0, len(docs) - 1)
    return idx.flatmap(lambda i: st.tuples(st.just(i), st.one_of(
        mutated(docs[i], yaml_like), mutated(docs[i], yaml_like, max_edits=8), random_structure(docs[i], yaml_like))))


# --------------------------------------------------------------------------------------------
# text: YAML and JSON files as bytes

ALIAS_BOMB = ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")))
TAGGED = ["!!int foo", "!!int ''", "!!int 0b2", "!!float foo", "!!bool maybe", "!!timestamp foo", "2024-02-30",
          "2001-12-14t21:59:43.10-99:99", "9999-12-31 23:59:60", "!!timestamp 0000-01-01", "!!binary '!!!'",
          "!!map [1]", "!!seq {a: 1}", "!!str [1]", "!!set {1, 2}", "!!omap [1]", "!!omap [{a: 1}]", "!!pairs [[1]]",
          "!!null x", "!!python/object:os.system x", "!!python/name:os.system", "!<tag:yaml.org,2002:int> 1x",
          "*undefined", "&anchor 1", "<<: 1", "!!merge x", "!custom 1", "!!float .nan", "!!float 1e999",
          "!!int 99999999999999999999999999999999", "? [1]", "{? {a: 1} : 2}", "'unterminated", '"\\x"', "|\n  text",
          ">-\n  folded", "- - - -", "{a: 1, a: 2}", "[" * 60, "{" * 60, "\t1", "%YAML 1.1", "---", "...", "0o17", "0x1F",
          "+.inf", "-.inf", "1_000", "60:00", "'a'\n'b'"]


@st.composite
def text_mutation(draw, text: str) -> bytes:
    """The text of a valid file with 1..3 edits at the line or byte level."""
    lines = text.splitlines(keepends=True) or ["\n"]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["dup", "drop", "swap", "indent", "dedent", "tab", "value", "tagged", "chars",
                                   "truncate", "doc", "bom", "crlf"]))
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        if op == "dup":
            lines.insert(i, line)
        elif op == "drop" and len(lines) > 1:
            del lines[i]
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "indent":
            lines[i] = "  " + line
        elif op == "dedent":
            lines[i] = line.lstrip(" ")
        elif op == "tab":
            lines[i] = "\t" + line
        elif op in ("value", "tagged"):
            head, sep, _ = line.partition(": ")
            value = draw(st.sampled_from(TAGGED)) if op == "tagged" else draw(st.text(max_size=20))
            lines[i] = (head + sep if sep else "x: ") + value + "\n"
        elif op == "chars":
            j = draw(st.integers(0, len(line)))
            lines[i] = line[:j] + draw(st.text(max_size=5) | st.sampled_from([":", "-", "&", "*", "!", "|", ">", "#",
                                                                                "'", '"', "{", "[", "%", "@", "`"])) + line[j:]
        elif op == "truncate":
            lines = lines[:i] + [line[:draw(st.integers(0, len(line)))]]
        elif op == "doc":
            lines.append(draw(st.sampled_from(["---\nx: 1\n", "...\n", "--- |\n  text\n", "%YAML 1.2\n"])))
        elif op == "bom":
            lines.insert(0, "\ufeff")
        elif op == "crlf":
            lines[i] = line.replace("\n", "\r\n")
    data = "".join(lines).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:                       # a byte that breaks UTF-8
        j = draw(st.integers(0, max(0, len(data) - 1)))
        data = data[:j] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\x00"])) + data[j + 1:]
    return data


def raw_bytes(structured: st.SearchStrategy) -> st.SearchStrategy:
    """Random bytes, deep nesting, alias bombs, non-UTF-8 encodings and random documents."""
    return st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1, 5000).map(lambda n: b"a:\n" + b"".join(b" " * (i + 1) + b"a:\n" for i in range(min(n, 400)))),
        st.integers(1, 5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.just(ALIAS_BOMB.encode()),
        st.sampled_from(TAGGED).map(lambda t: f"a: {t}\n".encode()),
        st.tuples(structured, st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252"])).map(
            lambda t: yaml.safe_dump(t[0], allow_unicode=True).encode(t[1], "replace")),
        structured.map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
    )


# --------------------------------------------------------------------------------------------
# the project's own files: the seeds of every mutation


def _load_yaml(p: Path):
    return yaml.safe_load(p.read_text(encoding="utf-8"))


def seed_files(folder: Path, pattern: str = "*.yaml") -> list[Path]:
    return sorted(folder.glob(pattern))


class Workdir:
    """A scratch folder for the files a case writes (one per process, reused across cases)."""
    _dir: Path | None = None

    @classmethod
    def path(cls, *parts: str) -> Path:
        if cls._dir is None:
            cls._dir = Path(tempfile.mkdtemp(prefix="roofplan-fuzz-"))
            atexit.register(shutil.rmtree, cls._dir, ignore_errors=True)
        p = cls._dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def write(data: bytes | str, *parts: str) -> Path:
    p = Workdir.path(*parts)
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return p


def dump_yaml(doc) -> bytes:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode("utf-8", "surrogatepass")


def dump_json(doc) -> bytes:
    return json.dumps(doc, default=str).encode("utf-8", "surrogatepass")


def file_cases(docs: list, texts: list[str], yaml_like: bool = True) -> st.SearchStrategy:
    """("dump", (i, document)): a mutated document to be written out; ("file", (i, bytes)): the
    text of a valid file edited line by line, or raw bytes."""
    idx = st.integers(0, len(docs) - 1)
    return idx.flatmap(lambda i: st.one_of(
        mutated(docs[i], yaml_like).map(lambda d: ("dump", (i, d))),
        text_mutation(texts[i]).map(lambda b: ("file", (i, b))),
        raw_bytes(random_structure(docs[i], yaml_like)).map(lambda b: ("file", (i, b)))))


def _short(v, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[:n - 3] + "..."


def diff(a, b, path: str = "", out: list | None = None) -> list[str]:
    """The edits that turn document `a` into `b`, one short string each (a failing case is
    reported as its seed file plus these, not as the whole document)."""
    out = [] if out is None else out
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            if k not in b:
                out.append(f"drop {path}{'.' if path else ''}{k}")
        for k in b:
            sub = f"{path}{'.' if path else ''}{k}"
            if k not in a:
                out.append(f"add {sub!r} = {_short(b[k])}")
            else:
                diff(a[k], b[k], sub, out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", out)
    elif type(a) is not type(b) or a != b:
        out.append(f"{path or '(whole file)'}: {_short(a, 40)} -> {_short(b)}")
    return out


def describe_case(names: list[str], docs: list) -> Callable[[Any], str]:
    """("doc", (i, document)) as `seed: edits`; ("file", (i, bytes)) as `seed as bytes: ...`."""
    def describe(c) -> str:
        how, (i, x) = c
        if how in ("doc", "dump"):
            return f"{names[i]}{' written' if how == 'dump' else ''} with " + "; ".join(diff(docs[i], x)[:8])
        return f"{names[i]} written as {x[:400]!r}"
    return describe


# --------------------------------------------------------------------------------------------
# targets


@dataclass
class Target:
    name: str
    strategy: st.SearchStrategy
    run: Callable[[Any], Outcome]
    owner: str = "core"             # "core": fixed in our files; else the file it is reported against
    describe: Callable[[Any], str] = repr     # a failing case as a line a reader can reproduce


def file_target(name: str, files: list[Path], docs: list, parse_path: Callable[[Path], Any],
                parse_data: Callable[[Any, Path], Any] | None = None, folder: str = "", yaml_like: bool = True,
                texts: list[str] | None = None, owner: str = "core") -> Target:
    """A parser of files like `files` (parsed as `docs`): mutated documents handed to `parse_data`
    (when the parser takes parsed data) or written out and read by `parse_path`, edited texts and
    raw bytes written out under the seed's own name (a spec's name must match its file)."""
    dump = dump_yaml if yaml_like else dump_json
    texts = texts or [f.read_text(encoding="utf-8") for f in files]

    def run(c):
        how, (i, x) = c
        if how == "doc" and parse_data is not None:
            return run_parser(lambda: parse_data(x, files[i]))
        p = write(dump(x) if how in ("doc", "dump") else x, folder or files[i].parent.name, files[i].name)
        return run_parser(lambda: parse_path(p))

    strategy = st.one_of(documents(docs, yaml_like).map(lambda c: ("doc", c)), file_cases(docs, texts, yaml_like))
    return Target(name, strategy, run, owner, describe_case([f.name for f in files], docs))


def _spec_targets() -> list[Target]:
    from simulator.core.schema import read_yaml
    from simulator.core.specs import CPU, GPU, NVMe, Link, parse_spec
    out = []
    for kind, folder in (("gpu", "gpus"), ("cpu", "cpus"), ("link", "links"), ("nvme", "nvme"), ("system", "systems")):
        files = seed_files(HW / folder)
        cls = {"gpu": GPU, "cpu": CPU, "link": Link, "nvme": NVMe}.get(kind)

        def build(kw, cls=cls):
            return cls(**kw) if cls else kw     # a system's references are resolved by load_system
        out.append(file_target(f"spec {kind}", files, [_load_yaml(f) for f in files],
                               lambda p, kind=kind, build=build: build(parse_spec(kind, read_yaml(p), p)),
                               lambda d, f, kind=kind, build=build: build(parse_spec(kind, d, f)), folder))
    return out


def _profile_targets() -> list[Target]:
    from simulator.core.profiles import parse_executor_profile, parse_kernel_profile
    from simulator.core.schema import read_yaml
    out = []
    for name, folder, parse in (("kernel profile", "kernels", parse_kernel_profile),
                                ("executor profile", "executors", parse_executor_profile)):
        files = seed_files(HW / "profiles" / folder)
        out.append(file_target(name, files, [_load_yaml(f) for f in files],
                               lambda p, parse=parse: parse(read_yaml(p), p), parse, f"profiles/{folder}"))
    return out


def _hf_target() -> Target:
    from simulator.core.models import parse_hf_config
    from simulator.core.schema import read_json
    files = seed_files(REPO_ROOT / "workloads" / "models", "*.json")

    def checked(m):
        # what every caller asks of a model next: parameter counts, the KV cache, the attention kind
        m.params_total(), m.params_active(), m.kv_cache_bytes_per_token(2), m.attention_kind
        return m
    return file_target("hf config", files, [json.loads(f.read_text()) for f in files],
                       lambda p: checked(parse_hf_config(read_json(p), p.stem, p)),
                       lambda d, f: checked(parse_hf_config(d, f.stem, f)), "models", yaml_like=False)


def _serving_target() -> Target:
    from simulator.core.schema import read_yaml
    from simulator.serving.workload import parse_workload
    files = seed_files(REPO_ROOT / "workloads" / "serving")

    def checked(w):
        return w, w.mix(), w.bucket_rates_rps()
    return file_target("serving workload", files, [_load_yaml(f) for f in files],
                       lambda p: checked(parse_workload(read_yaml(p), p)),
                       lambda d, f: checked(parse_workload(d, f)), "serving")


_PLANS: list | None = None


def valid_plans() -> list[dict]:
    """An inference and a training offload plan (roofplan.offload-plan/1) and a run result of the
    first (roofplan.plan-run/1), made by the planner itself."""
    global _PLANS
    if _PLANS is None:
        from planners.offload import OffloadRequest, plan_offload
        from simulator.core.models import load_model
        from simulator.core.profiles import load_executor_profile, load_kernel_profile
        from simulator.core.specs import load_hardware
        plans = []
        with _quiet_stdout():
            for model, hw, phase in (("opt-30b", "flexgen-t4", "decode"), ("llama-3.1-8b", "fuyou-rtx-4090", "train")):
                system = load_hardware(hw)
                plan = plan_offload(load_model(model), system, OffloadRequest(phase=phase, dtype="fp16"),
                                    load_executor_profile("default"), load_kernel_profile(system.gpu.name))
                plans.append(json.loads(json.dumps(plan.as_dict())))
        p = plans[0]
        run = {"schema": "roofplan.plan-run/1", "model": p["model"], "phase": p["phase"], "schedule": p["schedule"],
               "time_s": 12.5, "prefill_s": 2.5, "decode_s": 10.0, "tokens_per_s": 30.7, "times_s": [12.4, 12.6],
               "device_name": "Tesla T4"}
        _PLANS = plans + [run]
    return _PLANS


@contextlib.contextmanager
def _quiet_stdout():
    """Silence fd 1 too (HiGHS prints its banner from C, past sys.stdout)."""
    import sys
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _plan_target() -> Target:
    from planners.offload_check import PLAN_SCHEMA, RUN_SCHEMA, load_json
    docs = valid_plans()
    files = [Path("plan-decode.json"), Path("plan-train.json"), Path("result.json")]

    def parse(p):
        run = p.name == "result.json"
        return load_json(str(p), "--result" if run else "--plan", RUN_SCHEMA if run else PLAN_SCHEMA)
    return file_target("offload plan", files, docs, parse, folder="plans", yaml_like=False,
                       texts=[json.dumps(d, indent=2) for d in docs], owner="planners/offload_check.py")


def _grid_target() -> Target:
    from simulator.sweep import count_rows, load_grids, parse_grid
    files = seed_files(REPO_ROOT / "workloads" / "sweeps")

    def expand(p):
        # a mutated list can make a grid of 10^12 rows: count first, expand only the small ones
        return [parse_grid(g) if count_rows(g) <= 100_000 else count_rows(g) for g in load_grids(p)]
    return file_target("sweep grid", files, [_load_yaml(f) for f in files], expand, folder="sweeps",
                       owner="simulator/sweep.py")


def _step_times_target() -> Target:
    from simulator.calibration.step_fit import read_step_times
    seed = REPO_ROOT / "benchmarks" / "data" / "distserve" / "a100-step-times.yaml"
    full = _load_yaml(seed)
    # two measurements per engine keep the mutation paths few and the cases fast
    doc = {**full, "engines": {k: {**v, "measurements": v["measurements"][:2]} for k, v in full["engines"].items()}}
    describe = describe_case([seed.name], [doc])

    def run(c):
        (how, (_, x)), engine = c
        p = write(dump_yaml(x) if how in ("doc", "dump") else x, "calibration", seed.name)
        return run_parser(lambda: read_step_times(p, engine))
    cases = st.one_of(documents([doc]).map(lambda c: ("doc", c)), file_cases([doc], [dump_yaml(doc).decode()]))
    return Target("step times", st.tuples(cases, st.sampled_from(list(doc["engines"])) | st.text(max_size=8)), run,
                  "simulator/calibration/step_fit.py", lambda c: f"engine {c[1]!r}, " + describe(c[0]))


def _end_to_end_target() -> Target:
    from simulator.calibration.accuracy import job_from_case, load_cases
    if END_TO_END.is_file():
        full = _load_yaml(END_TO_END)
        doc = {**full, "cases": full["cases"][:3]}
    else:
        doc = {"hardware": "h100-sxm", "dtype": "bf16", "cases": [
            {"id": "decode-b1", "group": "graph", "model": "llama-3.1-8b", "phase": "decode", "batch": 1,
             "context": 512, "executor": "default", "time_s": 0.008, "peak_memory_bytes": 16463836160}]}

    def parse(p):
        hw, cases = load_cases(p)
        return hw, cases, [job_from_case(c) for c in cases]    # how validate and calibrate read each case
    return file_target("end to end", [Path("end_to_end.yaml")], [doc], parse, folder="calibration",
                       texts=[dump_yaml(doc).decode()], owner="simulator/calibration/accuracy.py")


def _text_targets() -> list[Target]:
    from simulator.core.schema import read_json, read_yaml
    seeds = [p for folder in ("gpus", "systems", "links", "profiles/kernels", "profiles/executors")
             for p in seed_files(HW / folder)[:3]] + seed_files(REPO_ROOT / "workloads" / "serving")
    texts = [p.read_text() for p in seeds]
    jtexts = [p.read_text() for p in seed_files(REPO_ROOT / "workloads" / "models", "*.json")[:6]]
    yaml_bytes = st.one_of(raw_bytes(garbage()), st.sampled_from(texts).flatmap(text_mutation))
    json_bytes = st.one_of(raw_bytes(garbage(False)), garbage(False).map(dump_json),
                           st.sampled_from(jtexts).flatmap(text_mutation),
                           st.sampled_from(["NaN", "Infinity", "-Infinity", '{"a": 1, "a": 2}', "1e999", "[1,]", "{'a': 1}",
                                            '"\\ud800"', "\ufeff{}", "", "null", '{"a": 1} x']).map(str.encode))

    def run(reader, name):
        def go(data):
            p = write(data, "text", name)
            return run_parser(lambda: reader(p), finite=False)
        return go
    return [Target("yaml text", yaml_bytes, run(read_yaml, "file.yaml"), describe=lambda b: repr(b[:300])),
            Target("json text", json_bytes, run(read_json, "file.json"), describe=lambda b: repr(b[:300]))]


# --------------------------------------------------------------------------------------------
# the CLI


def _names(folder: Path, pattern="*.yaml") -> list[str]:
    return sorted(p.stem for p in folder.glob(pattern))


EXTREME_INTS = [0, -1, -8, 3, 7, 1000, 65536, 10**6, 2**31, 2**31 - 1, 2**53, 2**62, 2**63, 2**64, 2**70, 10**30, -2**63]


def _weighted(*pairs) -> st.SearchStrategy:
    """one_of with integer weights: (3, a), (1, b) draws a three times as often as b."""
    return st.one_of(*[s for w, s in pairs for _ in range(w)])


def _cli_values(hostile: bool):
    """Value strategies for flags: parsable ones (valid, or extreme: 0, negative, 2^70, 1e308) so
    the case reaches the library; with `hostile`, also strings no flag takes."""
    weird = st.one_of(st.sampled_from(SPECIAL_STRINGS), st.text(max_size=12),
                      st.sampled_from(["-5", "0", "-0", "nan", "inf", "-inf", "1e309", "1e-320", "1.5", "99999999999999999999",
                                       str(2**63), str(2**31), "0x10", "1_000", "١", "+3", " 4 ", "3.0", "--help", "x\ny",
                                       "a" * 5000]))
    hostile_part = [(1, weird)] if hostile else []
    ints = _weighted((4, st.sampled_from(["1", "2", "4", "8", "16", "32", "64", "128", "512", "1024", "2048", "4096"])),
                     (2, st.integers(0, 64).map(str)), (3, st.sampled_from(EXTREME_INTS).map(str)),
                     (1, st.integers(-2**80, 2**80).map(str)), *hostile_part)
    floats = _weighted((3, st.sampled_from(["0.5", "1", "4", "16", "80", "200", "1e3", "1e12"])),
                       (2, st.sampled_from(["0", "-1", "1e-300", "5e-324", "1e300", "1.7e308", "1e308", "2e-9"])),
                       (1, st.floats(allow_nan=True, allow_infinity=True).map(repr)), *hostile_part)

    def pick(xs):
        return _weighted((6, st.sampled_from(xs)), *hostile_part)
    return dict(weird=weird, ints=ints, floats=floats, pick=pick)


@st.composite
def _flags(draw, spec: dict, required: tuple = (), hostile: bool = False):
    """argv for one command: required flags nearly always, each optional one now and then; with
    `hostile`, now and then an unknown flag, a flag given twice or a stray positional."""
    out = []
    for flag, values in spec.items():
        if draw(st.integers(0, 19)) > 0 if flag in required else draw(st.integers(0, 3)) == 0:
            if values is None:
                out.append(flag)
            else:
                out += [flag, draw(values)]
    extra = draw(st.integers(0, 9)) if hostile else -1
    if extra == 0:
        out += [draw(st.sampled_from(["--tpp", "--batchsize", "--model-name", "-x", "--", "-", "--format=xml",
                                      "--help=1", "--batch=", "--b", "--ba"]))]
    elif extra == 1 and out:
        i = draw(st.integers(0, len(out) - 1))
        out.insert(i, draw(st.sampled_from(list(spec))))
    elif extra == 2:
        out.append(draw(st.text(max_size=8)))
    return out


def _cli_commands(hostile: bool) -> list[st.SearchStrategy]:
    """argv strategies for predict (three times), whatif, plan parallel, plan offload, hw show and serve."""
    v = _cli_values(hostile)
    gpus, systems = _names(HW / "gpus"), _names(HW / "systems")
    hardware = v["pick"](gpus + systems + ["2xh100-sxm", "8xa100-sxm-80gb", "9xh100-sxm", "0xh100-sxm",
                                           "h100-sxm,a100-sxm-80gb", "x"])
    model = v["pick"](["llama-3.1-8b", "llama-3.2-1b", "llama-3.1-70b", "mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3",
                       "opt-30b", "gpt2", "qwen2.5-0.5b", "olmoe-1b-7b", "tests/data/tiny-llama.json"])
    dtype = v["pick"](["bf16", "fp16", "fp8", "fp32", "int8", "int4", "tf32"])
    execs = v["pick"](_names(HW / "profiles" / "executors"))
    fmt = st.sampled_from(["json", "csv", "table"])
    job = {"--model": model, "--hardware": hardware, "--phase": v["pick"](["prefill", "decode", "train"]),
           "--batch": v["ints"], "--seq": v["ints"], "--context": v["ints"], "--dtype": dtype, "--kv-dtype": dtype,
           "--executor": execs, "--kernel-profile": v["pick"](["datasheet", "/nonexistent.yaml", str(HW)]),
           "--offload": v["pick"](["weights=cpu", "weights=gpu", "weights", "weights=nvme", "=cpu"]),
           "--host-memory": v["pick"](["pinned", "pageable"]), "--no-overlap": None,
           "--recompute": v["pick"](["none", "selective", "full"]), "--lora-rank": v["ints"],
           "--lora-targets": v["pick"](["all-linear", "q,v", "q_proj,v_proj", "q", "gate", "fc1,fc2", "x", "q,,v", ""]),
           "--tp": v["ints"],
           "--pp": v["ints"], "--dp": v["ints"], "--micro-batch": v["ints"], "--zero": v["ints"],
           "--global-batch": v["ints"], "--sp": None, "--ep": v["ints"], "--cp": v["ints"], "--vpp": v["ints"],
           "--weight-dtype": dtype, "--spec-tokens": v["ints"], "--spec-acceptance": v["floats"],
           "--draft-model": v["pick"](["llama-3.2-1b", "qwen2.5-0.5b", "llama-3.1-70b", "x"]), "--prefix-hit": v["floats"],
           "--chunk-tokens": v["ints"], "--chunk-context": v["ints"], "--power-cap": v["floats"], "--format": fmt}
    whatif = {"--model": model, "--hardware": hardware, "--gpus": v["pick"](["1,2,4,8", "1", "8", "0", "1,,2", "a,b", "-1",
                                                                             str(2**70), "1," * 40]),
              "--phase": job["--phase"], "--batch": v["ints"], "--seq": v["ints"], "--context": v["ints"],
              "--dtype": dtype, "--executor": execs, "--format": fmt}
    parallel = {"--model": model, "--hardware": v["pick"](systems + ["h100-sxm"]),
                "--gpus": _weighted((3, st.sampled_from(["1", "8", "16", "32", "64", "3"])), (1, v["ints"])),
                "--global-batch": _weighted((3, st.sampled_from(["1", "16", "64", "512", "7"])), (1, v["ints"])),
                "--seq": _weighted((3, st.sampled_from(["512", "2048", "4096"])), (1, v["ints"])),
                "--objective": v["pick"](["throughput", "cost"]), "--top": v["ints"],
                "--zero": v["pick"](["0,1,2,3", "0", "3", "4", "1,,2", "-1"]), "--executor": execs, "--format": fmt}
    offload = {"--model": v["pick"](["opt-30b", "llama-3.1-8b", "llama-3.1-70b", "opt-175b"]),
               "--hardware": v["pick"](["flexgen-t4", "fuyou-rtx-4090", "h100-sxm-1x-128g", "h100-sxm", "dgx-a100"]),
               "--phase": v["pick"](["decode", "prefill", "train"]), "--prompt-len": v["ints"], "--gen-len": v["ints"],
               "--seq": v["ints"], "--batch": v["ints"], "--gpu-memory": v["floats"], "--host-memory": v["floats"],
               "--nvme": v["floats"], "--objective": v["pick"](["throughput", "latency"]),
               "--attention": v["pick"](["auto", "gpu", "cpu"]), "--serial-optimizer": None, "--dtype": dtype,
               "--executor": execs, "--kernel-profile": v["pick"](["datasheet", "/nonexistent.yaml"]), "--format": fmt}
    serve = {"--model": model, "--hardware": hardware, "--workload": v["pick"](["chat", "mixed", "long-document", "x"]),
             "--rate": v["floats"], "--engine": execs, "--tp": v["ints"], "--dtype": dtype, "--weight-dtype": dtype,
             "--kv-dtype": dtype, "--prefix-hit": v["floats"], "--spec-tokens": v["ints"],
             "--spec-acceptance": v["floats"], "--draft-model": job["--draft-model"],
             "--max-num-batched-tokens": v["ints"], "--simulate": v["pick"](["0", "20", "-1"]),
             "--slo-ttft-ms": v["floats"], "--slo-tpot-ms": v["floats"], "--format": fmt}
    hw_names = v["pick"](gpus + systems + _names(HW / "links") + _names(HW / "cpus") + _names(HW / "nvme"))
    predict = _flags(job, ("--model", "--hardware", "--phase"), hostile).map(lambda a: ["predict"] + a)
    return [predict, predict, predict,
            _flags(whatif, ("--model", "--hardware"), hostile).map(lambda a: ["whatif"] + a),
            _flags(parallel, ("--model", "--hardware", "--gpus", "--global-batch", "--seq"), hostile).map(
                lambda a: ["plan", "parallel"] + a),
            _flags(offload, ("--model", "--hardware", "--phase"), hostile).map(lambda a: ["plan", "offload"] + a),
            st.tuples(hw_names, st.sampled_from([[], ["--format", "json"]])).map(lambda t: ["hw", "show", t[0]] + t[1]),
            _flags(serve, ("--model", "--hardware", "--workload"), hostile).map(lambda a: ["serve"] + a)]


def _cli_strategy() -> st.SearchStrategy:
    """Commands with parsable flag values (two in three cases: they reach the library), with
    hostile ones, and the listing commands and bare command groups."""
    deep, hostile = _cli_commands(False), _cli_commands(True)
    return st.one_of(*deep, *deep, *hostile, st.sampled_from([
        ["hw", "list"], ["hw", "list", "--kind", "gpu"], ["hw", "list", "--kind", "gpus"], ["hw", "check"], ["models"],
        ["models", "--format", "csv"], ["hw"], ["plan"], [], ["predicts"], ["hw", "lsit"], ["--help"],
        ["predict", "--help"], ["plan", "offload", "--help"]]))


CLI_FILE_SEEDS: dict[str, list[Path]] = {}


def _cli_file_strategy() -> st.SearchStrategy:
    """predict with --model, --executor or --kernel-profile pointing at a mutated user file."""
    seeds = CLI_FILE_SEEDS
    seeds["model"] = seed_files(REPO_ROOT / "workloads" / "models", "*.json")[:8]
    seeds["executor"] = seed_files(HW / "profiles" / "executors")
    seeds["kernel"] = seed_files(HW / "profiles" / "kernels")

    def cases(which):
        files = seeds[which]
        if which == "model":
            docs = [json.loads(f.read_text()) for f in files]
        else:
            docs = [_load_yaml(f) for f in files]
        return file_cases(docs, [f.read_text() for f in files], yaml_like=which != "model")
    jobs = st.sampled_from([["--phase", "decode", "--batch", "8", "--context", "1024"], ["--phase", "prefill", "--seq", "512"],
                            ["--phase", "train", "--batch", "2", "--seq", "256"]])
    return st.sampled_from(list(seeds)).flatmap(lambda w: st.tuples(st.just(w), cases(w), jobs))


def _cli_file_argv(c) -> list[str]:
    which, (how, (i, x)), job = c
    data = (dump_json(x) if which == "model" else dump_yaml(x)) if how == "dump" else x
    argv = ["predict", "--model", "llama-3.2-1b", "--hardware", "h100-sxm", "--format", "json", *job]
    if which == "model":
        argv[2] = str(write(data, "cli", "config.json"))
    elif which == "executor":
        argv += ["--executor", str(write(data, "cli", "exec.yaml"))]
    else:
        argv += ["--kernel-profile", str(write(data, "cli", "kernels.yaml"))]
    return argv


def _describe_cli_file(c) -> str:
    which, (how, (i, x)), job = c
    seed = CLI_FILE_SEEDS[which][i]
    docs = json.loads(seed.read_text()) if which == "model" else _load_yaml(seed)
    what = f"{seed.name} with " + "; ".join(diff(docs, x)[:8]) if how == "dump" else f"{seed.name} written as {x[:300]!r}"
    return f"roofplan {' '.join(_cli_file_argv(c))}  # the --{which} file: {what}"


def describe_argv(argv: list[str]) -> str:
    """A command line to paste into a shell (a long argument shown as Python makes it)."""
    import shlex
    return "roofplan " + " ".join(shlex.quote(a) if len(a) <= 80 and a.isprintable() else
                                  f"$(python3 -c 'print({a[:20]!r} * {len(a) // max(1, len(a[:20]))})')" if len(a) > 80 else
                                  f"$'{a.encode('unicode_escape').decode()}'" for a in argv)


def _cli_targets() -> list[Target]:
    return [Target("cli", _cli_strategy(), run_cli, describe=describe_argv),
            Target("cli files", _cli_file_strategy(), lambda c: run_cli(_cli_file_argv(c)), describe=_describe_cli_file)]


def all_targets() -> list[Target]:
    """Every fuzz target: ours first, then the ones in files other people own."""
    return (_spec_targets() + _profile_targets() + [_hf_target(), _serving_target(), _plan_target()] + _text_targets()
            + _cli_targets() + [_grid_target(), _step_times_target(), _end_to_end_target()])
