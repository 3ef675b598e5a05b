"""One strict schema layer for every file roofplan reads.

`read_yaml` parses text (UTF-8 only, bounded size, a key given twice refused, alias expansion
bounded); `check(Schema, data, path)` validates it against a pydantic model whose fields are the
file's fields: unknown fields refused with a did-you-mean, types strict (no "yes" for true, no
1.5 for a count), numbers finite, ranges where physical. Any failure is one `RoofplanError`
line naming the file, the field, what is wrong and the fix; values are quoted short, so a huge
or hostile value cannot flood the terminal.

Each reader declares its schema next to its dataclass (specs, profiles, workloads, step-time
files, end-to-end cases, sweep grids, plans) from the building blocks here.
"""
from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, AfterValidator

from simulator.core.errors import RoofplanError, clip, did_you_mean
from simulator.core.errors import one_line as printable

MAX_FILE_BYTES = 64 * 2**20       # a spec, profile or grid is kilobytes; traces have their own reader
MAX_NODES = 1_000_000             # YAML nodes after alias expansion (an alias bomb expands to 10^9)
SHOW_CHARS = 60                   # longest value quoted in an error


class Strict(BaseModel):
    """Base of every file schema: unknown fields refused, no coercion, finite numbers, frozen."""
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


Finite = Annotated[float, AfterValidator(_finite)]
Positive = Annotated[float, Field(gt=0), AfterValidator(_finite)]        # a bandwidth, a capacity, a peak
NonNegative = Annotated[float, Field(ge=0), AfterValidator(_finite)]     # a latency, an overhead
Fraction = Annotated[float, Field(gt=0, le=1)]                           # an efficiency
PosInt = Annotated[int, Field(gt=0)]                                     # a count
NonNegInt = Annotated[int, Field(ge=0)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Text = Annotated[str, Field(min_length=1)]

S = TypeVar("S", bound=BaseModel)


def short(v: Any) -> str:
    """repr(v) cut to SHOW_CHARS (an error must stay one readable line)."""
    r = repr(v).replace("\n", " ")
    return r if len(r) <= SHOW_CHARS else r[:SHOW_CHARS - 3] + "..."


def _key(part: Any) -> str:
    """A mapping key as it reads in a field path: plain when it is a short printable name, else
    quoted short (a key from a hostile file may hold a newline or run for kilobytes)."""
    return clip(printable(str(part)), SHOW_CHARS)


UNION_TAG = "<"     # tags of a discriminated union start with it: the loc has them, the field name not


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and part.startswith(UNION_TAG):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{_key(part)}" if out else _key(part))
    return out


MAX_LISTED = 250    # characters of field names an unknown-field error lists in full (with ~130 of text
                    # and a path of ~100, the line stays under the 500 a message may take)


def _allowed(name: str, allowed: list[str]) -> str:
    """The fields a schema allows, for an unknown-field error: all of them when they fit on a line,
    else how many there are and the closest to `name` (an executor profile has over thirty)."""
    names = ", ".join(sorted(allowed))
    if len(names) <= MAX_LISTED:
        return f"every field must be one of: {names}"
    closest = sorted(allowed, key=lambda a: -difflib.SequenceMatcher(None, name, a).ratio())[:6]
    return f"every field must be one of its {len(allowed)} fields (closest: {', '.join(closest)})"


def _fields_of(schema: type[BaseModel], loc: tuple) -> list[str]:
    """Field names (YAML spelling) allowed where `loc` points, for a did-you-mean."""
    model = schema
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        f = model.model_fields.get(part) or next((x for x in model.model_fields.values() if x.alias == part), None)
        ann = getattr(f, "annotation", None)
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


def one_line(e: ValidationError, schema: type[BaseModel], path: Path | str, fix: str = "") -> str:
    """The first error of a pydantic validation as `file: field 'x' <problem> (got ...); <fix>`."""
    errors = e.errors(include_url=False)
    err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])   # a typo explains a "missing"
    loc, kind = tuple(err["loc"]), err["type"]
    field = _where(loc) or "(top level)"
    if kind == "extra_forbidden":
        allowed = _fields_of(schema, loc)
        return (f"{path}: unknown field '{field}'{did_you_mean(str(loc[-1]), allowed)}; a typo would silently drop a "
                f"number, so {_allowed(str(loc[-1]), allowed)}")
    if kind == "missing":
        return f"{path}: field '{field}' is missing; add it" + (f" ({fix})" if fix else "")
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    msg = msg[0].lower() + msg[1:]
    for long, op in (("input should be", "must be"), ("value should be", "must be"), ("greater than or equal to", ">="),
                     ("less than or equal to", "<="), ("greater than", ">"), ("less than", "<")):
        msg = msg.replace(long, op)
    value = err.get("input")
    if kind in ("model_type", "model_attributes_type", "dict_type") and not loc:
        return f"{path}: expected a YAML mapping of fields, got {type(value).__name__}"
    got = "" if isinstance(value, (dict, list)) or value is None else f" (got {short(value)})"
    subject = "" if not loc else f"field '{field}': " if isinstance(value, dict) else f"field '{field}' "
    return f"{path}: {subject}{msg}{got}" + (f"; {fix}" if fix else "")


def to_si(value: float, scale: float, path: Path | str, field: str) -> float:
    """value x scale (a unit-suffixed field in SI units); a number the schema took as finite but
    that overflows once scaled (1e300 GiB) is one line naming the field."""
    out = value * scale
    if not math.isfinite(out):
        raise RoofplanError(f"{path}: field '{field}' is {value:g}, more than a float holds once converted to SI "
                            f"units (x {scale:g}); check the number and the unit in its name")
    return out


def check(schema: type[S], data: Any, path: Path | str, fix: str = "") -> S:
    """Validate `data` (parsed YAML/JSON) against `schema`; a failure is one RoofplanError line."""
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise RoofplanError(one_line(e, schema, path, fix)) from None


# --------------------------------------------------------------------------------------------
# parsing


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """libyaml's C parser when PyYAML was built with it (10x faster, same documents), refusing a
    key given twice in one mapping (YAML would keep the last one silently)."""

    def construct_object(self, node, deep=False):
        # PyYAML's scalar constructors raise plain Python errors on a value their tag cannot hold
        # (`!!int foo`, `2024-02-30`, `!!bool maybe`): make each a YAML error at its line
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as e:
            tag = str(node.tag).rsplit(":", 1)[-1]
            value = f"{short(node.value)} " if isinstance(node, yaml.ScalarNode) else ""
            why = f": {str(e)[:SHOW_CHARS]}" if tag == "timestamp" and type(e) is ValueError else ""   # "day is out of range"
            raise yaml.constructor.ConstructorError(None, None, f"{value}is not a valid {tag}{why}",
                                                    node.start_mark) from None

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):      # `!!map [1]`: the base class says what it is
            return super().construct_mapping(node, deep)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                new = key not in seen
            except TypeError:       # a list or mapping as a key: let the constructor say so
                break
            if not new:
                raise yaml.constructor.ConstructorError(None, None, f"key {short(str(key))} given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_nodes(node, memo: dict, limit: int) -> int:
    """Nodes a document would have with every alias expanded (each distinct node sized once)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1      # a cycle counts once
    n = 1
    if isinstance(node, yaml.SequenceNode):
        for c in node.value:
            n += _expanded_nodes(c, memo, limit)
            if n > limit:
                break
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            n += _expanded_nodes(k, memo, limit) + _expanded_nodes(v, memo, limit)
            if n > limit:
                break
    memo[id(node)] = n
    return n


def is_file(path: Path | str) -> bool:
    """Path.is_file(), except that a name the system cannot look up at all (too long, a NUL byte)
    is one line naming it rather than an OSError."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError) as e:
        raise RoofplanError(f"{short(str(path))}: not a usable file name ({getattr(e, 'strerror', None) or e}); "
                            f"check the path") from None


def read_text(path: Path | str, what: str = "file") -> str:
    """A text file as str: missing, unreadable, too large or not UTF-8 -> one line naming it."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise RoofplanError(f"{p}: is a folder; give the {what}'s path")
        if size > MAX_FILE_BYTES:
            raise RoofplanError(f"{p}: {size / 2**20:.0f} MiB is too large for a {what} "
                                f"(at most {MAX_FILE_BYTES // 2**20} MiB); check the path")
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RoofplanError(f"{p}: {what} not found; check the path") from None
    except OSError as e:
        raise RoofplanError(f"{p}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise RoofplanError(f"{p}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def read_yaml(path: Path | str, what: str = "file") -> Any:
    """Parse a YAML file; a syntax error, a duplicate key, an alias bomb or a file that is not
    UTF-8 text becomes one line naming the file (and the line)."""
    text = read_text(path, what)
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            if _expanded_nodes(node, {}, MAX_NODES) > MAX_NODES:
                raise RoofplanError(f"{path}: more than {MAX_NODES:,} values once YAML aliases are expanded; "
                                    f"write the values out (an alias bomb?)")
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RoofplanError(f"{path}:{where} malformed YAML ({problem}); fix the syntax") from None
    except RecursionError:
        raise RoofplanError(f"{path}: nested too deeply to be a roofplan file; check its contents") from None


def read_json(path: Path | str, what: str = "file") -> Any:
    """Parse a JSON file (HF config.json, a plan); bad JSON is one line with its position."""
    text = read_text(path, what)
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise RoofplanError(f"{path}: line {e.lineno} malformed JSON ({e.msg}); fix the syntax") from None
    except RecursionError:
        raise RoofplanError(f"{path}: nested too deeply to be a roofplan file; check its contents") from None


def _refuse_constant(name: str):
    raise json.JSONDecodeError(f"{name} is not a number", name, 0)
