"""The one solver helper: every planner ILP goes through `solve` (HiGHS through PuLP/highspy,
falling back to CBC), with a time limit and a relative MIP gap, and reports what ran."""
from __future__ import annotations

import time
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
    problem.solve(solver)
    return SolveReport(solver=name, status=pulp.LpStatus[problem.status],
                       gap=gap if is_mip else 0.0, time_s=time.perf_counter() - t0)
