"""One helper that solves a PuLP problem: HiGHS (via highspy) first, CBC as the fallback.

Every plan reports the solver that produced it, its status, the relative MIP gap it was solved
to and the wall time, so a user can tell an optimum from a time-limited incumbent.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from dataclasses import dataclass

import pulp


@dataclass(frozen=True)
class SolveReport:
    solver: str        # "HiGHS" | "HiGHS_CMD" | "PULP_CBC_CMD"
    status: str        # Optimal | Feasible (a limit stopped it with a solution, not proven) |
                       # Infeasible | Unbounded | Not Solved | Undefined
    gap: float         # relative MIP gap: the one HiGHS reached; for the command-line solvers, which
                       # do not report it, the one requested (0 for a pure LP solved to optimality)
    time_s: float      # wall time of the solve call

    @property
    def has_solution(self) -> bool:
        return self.status in ("Optimal", "Feasible")


@functools.lru_cache(maxsize=1)
def _available() -> frozenset[str]:
    """Installed solvers (a fact about the environment; probing costs ~5 ms, so once)."""
    return frozenset(pulp.listSolvers(onlyAvailable=True))


def _solvers(time_limit_s: float, gap: float, highs_options: dict):
    available = _available()
    if "HiGHS" in available:
        yield "HiGHS", pulp.HiGHS(msg=False, timeLimit=time_limit_s, gapRel=gap, **highs_options)
    if "HiGHS_CMD" in available:
        yield "HiGHS_CMD", pulp.HiGHS_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap)
    yield "PULP_CBC_CMD", pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap)


@contextlib.contextmanager
def _quiet_stdout():
    """HiGHS prints a copyright banner from C on its first use, msg=False or not: keep it out of
    stdout, where it would corrupt `--format json`."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):   # stdout replaced by a non-file (capture)
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def solve(problem: pulp.LpProblem, time_limit_s=10, gap=1e-4, highs_options: dict | None = None) -> SolveReport:
    """Solve `problem` in place with the first solver that runs; the variables hold the answer.
    `highs_options`: HiGHS option names and values (e.g. presolve="off"), used by the in-process
    HiGHS only."""
    last_error: Exception | None = None
    for name, solver in _solvers(time_limit_s, gap, highs_options or {}):
        t0 = time.perf_counter()
        try:
            with _quiet_stdout():
                problem.solve(solver)
        except pulp.PulpSolverError as e:   # solver missing or crashed: try the next one
            last_error = e
            continue
        is_mip = any(v.cat == pulp.LpInteger for v in problem.variables())
        status, reached = pulp.LpStatus[problem.status], (gap if is_mip else 0.0)
        highs = getattr(problem, "solverModel", None) if name == "HiGHS" else None
        if highs is not None:   # what HiGHS says happened, not PuLP's mapping of it
            status, reached = _highs_outcome(highs, status, is_mip)
        return SolveReport(solver=name, status=status, gap=reached, time_s=time.perf_counter() - t0)
    raise RuntimeError(f"no LP solver could solve {problem.name}: {last_error}")


def _highs_outcome(highs, pulp_status: str, is_mip: bool) -> tuple[str, float]:
    """(status, reached relative gap) from the HiGHS instance PuLP solved with: PuLP reports a
    time-limited incumbent as Optimal and cannot see the gap reached."""
    import highspy
    ms = highs.getModelStatus()
    info = highs.getInfo()
    has_solution = info.primal_solution_status == 2   # kSolutionStatusFeasible
    if ms == highspy.HighsModelStatus.kOptimal:
        return "Optimal", float(info.mip_gap) if is_mip else 0.0
    if ms in (highspy.HighsModelStatus.kInfeasible,):
        return "Infeasible", 0.0
    if ms in (highspy.HighsModelStatus.kUnbounded, highspy.HighsModelStatus.kUnboundedOrInfeasible):
        return "Unbounded" if ms == highspy.HighsModelStatus.kUnbounded else "Infeasible", 0.0
    if has_solution:   # time or iteration limit with an incumbent
        return "Feasible", float(info.mip_gap) if is_mip else float("nan")
    return ("Not Solved" if pulp_status == "Optimal" else pulp_status), float("nan")
