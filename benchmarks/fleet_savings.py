"""Where mixing GPU types saves money: the fleet ILP vs the best single-GPU-type fleet for the
shipped serving workloads, two TPOT SLOs (Melange's 40 and 120 ms) and several request rates.
Prints a markdown table (docs/serving.md carries its output)."""
import math
import sys
from dataclasses import replace

from planners.fleet import candidate_options, restrict, solve_fleet, throughput_matrix
from simulator.core.models import load_model
from simulator.serving.workload import load_serving_workload

GPUS = ["l4", "a10g", "l40s", "a100-sxm-80gb", "h100-sxm"]


def main(model_name: str = "llama-3.1-8b") -> None:
    model = load_model(model_name)
    cands = candidate_options(model, GPUS, tps=(1, 2))
    options = [c[0] for c in cands]
    print("| workload | TPOT SLO | rate (req/s) | mixed fleet | mixed $/h | best single type | single $/h | saving |")
    print("|---|---|---|---|---|---|---|---|")
    for wl_name in ("chat", "long-document", "mixed"):
        wl0 = load_serving_workload(wl_name)
        for slo_tpot in (0.040, 0.120):
            tput = throughput_matrix(cands, wl0, 2.0, slo_tpot)
            for rate in (1, 4, 16, 64):
                wl = replace(wl0, rate_rps=float(rate))
                rates = wl.bucket_rates_rps()
                try:
                    plan = solve_fleet(options, tput, rates)
                except Exception as e:     # infeasible SLO for every option
                    print(f"| {wl_name} | {slo_tpot * 1e3:.0f} ms | {rate} | infeasible ({str(e)[:40]}) | | | | |")
                    continue
                singles = {}
                for g in GPUS:
                    try:
                        singles[g] = solve_fleet(*restrict(options, tput, lambda o, g=g: o.gpu == g), rates).cost_usd_per_h
                    except Exception:
                        singles[g] = math.inf
                best = min(singles, key=singles.get)
                mix = ", ".join(f"{int(n)}x {o.gpu}{'' if o.tp == 1 else f' tp{o.tp}'} {o.role[:3]}"
                                for o, n in zip(plan.options, plan.count) if n)
                saving = 1 - plan.cost_usd_per_h / singles[best] if math.isfinite(singles[best]) else float("nan")
                print(f"| {wl_name} | {slo_tpot * 1e3:.0f} ms | {rate} | {mix} | {plan.cost_usd_per_h:.2f} | {best} "
                      f"| {singles[best]:.2f} | {saving:.0%} |")
                sys.stdout.flush()


if __name__ == "__main__":
    main(*sys.argv[1:])
