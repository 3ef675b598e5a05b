"""Speed target: the fleet ILP with 5 GPU types x 100 request buckets solves in < 2 s.

Options: 5 GPU types x TP {1, 2} x roles {aggregated, prefill, decode} = 30; throughputs are
synthetic but shaped like the serving model's (faster GPUs serve more, larger requests fewer;
seeded). Prints, per seed, the solve time reported by planners.solver, the wall time of
solve_fleet and the cost with the relative MIP gap it is proven within
(`python benchmarks/plan_fleet.py [SEED ...]`, default seeds 0-9), then the worst wall time.
"""
import time

import numpy as np

from planners.fleet import ROLES, FleetOption, solve_fleet

GPUS = {"l4": (0.71, 1.0), "a10g": (1.01, 1.3), "l40s": (1.86, 2.4), "a100-sxm-80gb": (5.07, 4.0),
        "h100-sxm": (3.29, 6.5)}   # $/GPU-h (cheapest instance in hardware_specs/systems), relative speed


def main(n_buckets: int = 100, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    options, cols = [], []
    size = rng.lognormal(0.0, 1.0, size=n_buckets)          # relative request size per bucket
    for g, (price, speed) in GPUS.items():
        for tp in (1, 2):
            for role in ROLES:
                options.append(FleetOption(g, tp, role, price))
                role_speed = {"aggregated": 1.0, "prefill": 2.2, "decode": 1.6}[role]
                noise = rng.uniform(0.8, 1.2, size=n_buckets)
                cols.append(speed * tp ** 0.85 * role_speed * noise / size)
    tput = np.array(cols).T
    rates = rng.dirichlet(np.ones(n_buckets)) * 200.0        # 200 req/s over the buckets
    t0 = time.perf_counter()
    plan = solve_fleet(options, tput, rates)
    wall = time.perf_counter() - t0
    print(f"plan_fleet ILP: {len(GPUS)} GPU types x {n_buckets} buckets, {len(options)} options: "
          f"{plan.report.solver} {plan.report.status} in {plan.report.time_s:.3f} s (solve_fleet wall {wall:.3f} s), "
          f"cost ${plan.cost_usd_per_h:.2f}/h (gap {plan.report.gap:g}); target < 2 s: {'PASS' if wall < 2 else 'FAIL'}")
    return wall


if __name__ == "__main__":
    import sys
    seeds = [int(a) for a in sys.argv[1:]] or list(range(10))
    walls = [main(seed=s) for s in seeds]
    print(f"seeds {seeds[0]}..{seeds[-1]}: max wall {max(walls):.3f} s, median {sorted(walls)[len(walls) // 2]:.3f} s; "
          f"target < 2 s: {'PASS' if max(walls) < 2 else 'FAIL'}")
