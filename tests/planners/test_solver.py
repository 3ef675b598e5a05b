import pytest
import pulp

from planners.solver import SolveReport, solve


def test_solve_lp_reports_solver_status_and_time():
    p = pulp.LpProblem("t", pulp.LpMinimize)
    x, y = p.add_variable("x", 0), p.add_variable("y", 0)
    p += x + 2 * y
    p += x + y >= 3
    rep = solve(p, time_limit_s=5, gap=1e-4)
    assert isinstance(rep, SolveReport)
    assert rep.solver in ("HiGHS", "HiGHS_CMD", "PULP_CBC_CMD") and rep.status == "Optimal"
    assert rep.gap == 0.0 and rep.time_s >= 0
    assert x.value() == 3 and y.value() == 0


def test_solve_mip_reports_gap_and_infeasible():
    p = pulp.LpProblem("m", pulp.LpMaximize)
    n = p.add_variable("n", 0, 10, cat=pulp.LpInteger)
    p += n
    p += 2 * n <= 7
    rep = solve(p, gap=1e-3)
    assert rep.status == "Optimal" and rep.gap <= 1e-3 and n.value() == 3
    q = pulp.LpProblem("i", pulp.LpMinimize)
    z = q.add_variable("z", 0, 1)
    q += z
    q += z >= 2
    assert solve(q).status in ("Infeasible", "Unbounded", "Not Solved", "Undefined")
    assert solve(q).status != "Optimal"


def test_a_time_limited_mip_is_not_reported_optimal():
    """The report says what HiGHS says (PuLP maps a time-limited incumbent to Optimal and cannot see
    the gap reached): a hard MIP stopped after 20 ms is Feasible with the gap it reached."""
    import random
    from planners.solver import _available
    if "HiGHS" not in _available():
        pytest.skip("in-process HiGHS (highspy) not installed")
    rng = random.Random(0)
    p = pulp.LpProblem("k", pulp.LpMaximize)
    xs = [p.add_variable(f"x{i}", cat=pulp.LpBinary) for i in range(400)]
    p += pulp.lpSum((rng.randint(1, 1000) + rng.randint(-5, 5)) * x for x in xs)
    for _ in range(30):
        p += pulp.lpSum(rng.randint(1, 1000) * x for x in xs) <= 50000
    rep = solve(p, time_limit_s=0.02, gap=1e-9)
    import highspy
    truth = p.solverModel.getModelStatus()
    assert (rep.status == "Optimal") == (truth == highspy.HighsModelStatus.kOptimal)
    if rep.status == "Feasible":
        assert rep.gap > 1e-9 and rep.has_solution
