"""Printing: tables on a terminal, json/csv for scripts. The only place units are converted for display."""
from __future__ import annotations

import csv
import io
import json
import re
import sys
from typing import Any, Sequence

import numpy as np


def default_format() -> str:
    """`table` on a terminal, `json` when piped (scripts get machine-readable output)."""
    return "table" if sys.stdout.isatty() else "json"


def _jsonable(x: Any):
    """Plain JSON values: numpy scalars and arrays unwrapped; NaN and infinities (which JSON does
    not have) become null."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return x


def to_json(obj: Any) -> str:
    return json.dumps(_jsonable(obj), indent=2, allow_nan=False)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], align: str | None = None) -> str:
    """Plain fixed-width table; numbers right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    if align is None:
        def numeric(i):
            vals = [r[i] for r in rows if str(r[i]) not in ("-", "")]
            return bool(vals) and all(isinstance(v, (int, float, np.number)) or _numlike(str(v)) for v in vals)
        align = "".join("r" if numeric(i) else "l" for i in range(len(header)))
    out = []
    for j, r in enumerate(cells):
        out.append("  ".join(c.rjust(w) if align[i] == "r" else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


_NUMBER = re.compile(r"^[+-]?[\d,]*\.?\d+(e[+-]?\d+)?%?( [A-Za-z/]+)?$")


def _numlike(s: str) -> bool:
    """A number, optionally with % or one unit word ('8.02 ms', '1,810', '+2.9%')."""
    return bool(_NUMBER.match(s.strip()))


def to_csv(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def flat_record(obj: dict, prefix: str = "") -> dict:
    """One CSV record of a JSON result: scalars as they are, nested mappings as "a.b" columns
    (lists are left out: they are tables of their own)."""
    out = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            out.update(flat_record(v, f"{prefix}{k}."))
        elif not isinstance(v, (list, tuple)):
            out[f"{prefix}{k}"] = v
    return out


def emit(fmt: str, *, json_obj: Any, rows: Sequence[Sequence[Any]], header: Sequence[str], title: str = "",
         footer: str = "", csv_record: bool = False) -> None:
    """Print one result in the chosen format (`table`, `json`, `csv`). With `csv_record` the CSV is
    the JSON result as one record of raw numbers (SI units), not the table's formatted rows."""
    if fmt == "json":
        print(to_json(json_obj))
    elif fmt == "csv" and csv_record:
        rec = flat_record(json.loads(to_json(json_obj)))
        sys.stdout.write(to_csv([list(rec.values())], list(rec)))
    elif fmt == "csv":
        sys.stdout.write(to_csv(rows, header))
    else:
        if title:
            print(title)
        print(table(rows, header))
        if footer:
            print(footer)


def add_format_arg(p) -> None:
    p.add_argument("--format", choices=("table", "json", "csv"), default=None,
                   help="output format (default: table on a terminal, json otherwise)")


def fmt_of(args) -> str:
    return args.format or default_format()
