"""Fuzz every parser roofplan has and its CLI: N cases each (default 10,000), zero tracebacks.

    python benchmarks/fuzz.py                       # 10,000 cases per parser
    python benchmarks/fuzz.py --cases 500 --seed 7 --only spec,cli

Each case is a mutation of one of the project's own files (a key dropped, renamed or duplicated; a
value retyped, negated, scaled, made nan/inf; the YAML text edited) or a random structure; the
strategies and the property live in tests/fuzz/fuzz_targets.py (CI runs a few hundred of the same
cases in tests/fuzz/test_fuzz.py). A parser must return a finite object or refuse with one
RoofplanError line; the CLI must exit 0, or 2 with one "roofplan: error:" line.

The table: cases run, accepted, refused (one line; "usage" counts argparse's own two-line exit,
which roofplan's parser turns into one line, so it should stay 0), failures by kind (tracebacks,
bad messages, non-finite objects accepted, hangs) and the time. Each distinct failure follows with
one input that reproduces it. Exit 1 if anything failed.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "fuzz")]

from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings  # noqa: E402

import fuzz_targets as ft  # noqa: E402
from simulator.report.tables import table  # noqa: E402


def run_target(target: ft.Target, cases: int, seed: int) -> tuple[Counter, dict, float]:
    """Run `cases` generated cases (no shrinking: a failure is recorded, not minimised)."""
    counts: Counter = Counter()
    failures: dict[tuple, tuple[str, str]] = {}

    @hypothesis_seed(seed)
    @settings(max_examples=cases, database=None, deadline=None, phases=[Phase.generate], derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(target.strategy)
    def body(case):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = target.run(case)
        counts[out.kind] += 1
        if out.failed and (out.kind, out.where) not in failures:
            failures[(out.kind, out.where)] = (target.describe(case), out.detail)

    t0 = time.perf_counter()
    body()
    return counts, failures, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000, help="cases per parser (default 10,000)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same cases)")
    ap.add_argument("--only", default="", help="comma-separated target names or prefixes (default: all)")
    args = ap.parse_args(argv)
    targets = ft.all_targets()
    if args.only:
        want = [w.strip() for w in args.only.split(",") if w.strip()]
        targets = [t for t in targets if any(t.name.startswith(w) for w in want)]
    rows, found = [], []
    total_failed = 0
    with ft._quiet_stdout():                      # the CLI's tables and HiGHS's banner
        for t in targets:
            counts, failures, dt = run_target(t, args.cases, args.seed)
            n = sum(counts.values())
            failed = sum(counts[k] for k in ft.FAILURES)
            total_failed += failed
            rows.append([t.name, t.owner, f"{n:,}", f"{counts[ft.ACCEPTED]:,}", f"{counts[ft.REFUSED]:,}",
                         counts[ft.USAGE], counts[ft.TRACEBACK], counts[ft.BAD_MESSAGE], counts[ft.BAD_OBJECT],
                         counts[ft.HANG], f"{dt:.1f} s"])
            found += [(t.name, kind, where, case, detail) for (kind, where), (case, detail) in failures.items()]
            print(f"{t.name}: {n} cases, {failed} failed, {dt:.1f} s", file=sys.stderr)
    print(f"fuzz: {args.cases:,} cases per parser, seed {args.seed}\n")
    print(table(rows, ["parser", "owner", "cases", "accepted", "refused", "usage", "tracebacks", "bad msg",
                       "bad object", "hangs", "time"]))
    for name, kind, where, case, detail in found:
        print(f"\n[{name}] {kind}: {where}\n  input: {case[:600]}\n  " + detail.strip().replace("\n", "\n  "))
    print(f"\n{total_failed} failing cases" if total_failed else "\nno failures")
    return 1 if total_failed else 0


if __name__ == "__main__":
    sys.exit(main())
