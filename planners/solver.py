"""The one solver helper: every planner ILP goes through `solve` (HiGHS through PuLP/highspy,
falling back to CBC), with a time limit and a relative MIP gap, and reports what ran."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class SolveReport:
    solver: str       # HiGHS | CBC
    status: str       # PuLP status: Optimal, Not Solved, Infeasible, Unbounded, Undefined
    gap: float        # relative MIP gap the solver was asked to close (0 for an LP)
    time_s: float     # wall time of the solve


def solve(problem, time_limit_s: float = 10, gap: float = 1e-4) -> SolveReport:
    """Solve a pulp.LpProblem in place; HiGHS when available, else CBC."""
    import pulp
    is_mip = any(v.cat == pulp.LpInteger for v in problem.variables())
    available = pulp.listSolvers(onlyAvailable=True)
    if "HiGHS" in available:
        name, solver = "HiGHS", pulp.HiGHS(msg=False, timeLimit=time_limit_s, gapRel=gap)
    else:
        name, solver = "CBC", pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap)
    t0 = time.perf_counter()
    with _quiet_stdout():
        problem.solve(solver)
    return SolveReport(solver=name, status=pulp.LpStatus[problem.status],
                       gap=gap if is_mip else 0.0, time_s=time.perf_counter() - t0)


@contextmanager
def _quiet_stdout():
    """highspy prints a banner from C on creating a model, before PuLP can switch logging off;
    keep it out of our tables and json by muting file descriptor 1 for the solve."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):   # captured stdout (pytest): nothing to mute
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
