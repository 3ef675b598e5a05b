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
    assert rep.status == "Optimal" and rep.gap == 1e-3 and n.value() == 3
    q = pulp.LpProblem("i", pulp.LpMinimize)
    z = q.add_variable("z", 0, 1)
    q += z
    q += z >= 2
    assert solve(q).status in ("Infeasible", "Unbounded", "Not Solved", "Undefined")
    assert solve(q).status != "Optimal"
