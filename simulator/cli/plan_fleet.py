"""`roofplan plan fleet`: the cheapest SLO-meeting serving fleet across GPU types (planners.fleet)."""
from __future__ import annotations

import math
import sys

from simulator.core.errors import RoofplanError
from simulator.core.profiles import load_executor_profile
from simulator.report.tables import add_format_arg, emit, fmt_of

from simulator.cli.plan import plan_subparsers
from simulator.cli.args import finite_float, plot_path

DEFAULT_GPUS = "h100-sxm,a100-sxm-80gb,l4,a10g"


def register(subparsers) -> None:
    p = plan_subparsers(subparsers).add_parser(
        "fleet", help="cheapest mix of GPU types serving a workload within TTFT/TPOT SLOs (Melange ILP)")
    p.add_argument("--model", required=True, help="zoo name (roofplan models) or path/to/config.json")
    p.add_argument("--workload", required=True, help="workloads/serving/<name>.yaml name or path")
    p.add_argument("--slo-ttft-ms", type=finite_float, required=True, help="time-to-first-token SLO (ms) at --percentile")
    p.add_argument("--slo-tpot-ms", type=finite_float, required=True, help="time-per-output-token SLO (ms) at --percentile")
    p.add_argument("--gpus", default=DEFAULT_GPUS, help=f"comma-separated GPU types (default {DEFAULT_GPUS})")
    p.add_argument("--max-per-type", default="", help="GPU inventory caps, e.g. h100-sxm=8,l4=16 or one number for all")
    p.add_argument("--tp", default="1,2,4,8", help="tensor-parallel degrees to consider (default 1,2,4,8)")
    p.add_argument("--roles", default="aggregated,prefill,decode",
                   help="instance roles: aggregated and/or prefill,decode (disaggregated pools)")
    p.add_argument("--rate", type=finite_float, default=None, help="override the workload's request rate (requests/s)")
    p.add_argument("--percentile", type=int, default=90, choices=(50, 90, 99))
    p.add_argument("--executor", default="default",
                   help="serving engine's executor profile (e.g. vllm-v0, distserve; default: kernel time only)")
    p.add_argument("--plot", type=plot_path, default=None, metavar="PATH.png", help="write the cost-vs-SLO Pareto front plot")
    add_format_arg(p)
    p.set_defaults(func=cmd_plan_fleet)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise RoofplanError(f"{flag} '{text}' must be comma-separated integers, e.g. 1,2,4") from None
    if not vals or any(v < 1 for v in vals):
        raise RoofplanError(f"{flag} '{text}' must list positive integers, e.g. 1,2,4")
    return vals


def parse_caps(text: str, gpus: list[str]) -> dict[str, int]:
    if not text:
        return {}
    if "=" not in text:
        try:
            n = int(text)
        except ValueError:
            raise RoofplanError(f"--max-per-type '{text}' must be one integer or gpu=N pairs, e.g. h100-sxm=8,l4=16") from None
        if n < 0:
            raise RoofplanError(f"--max-per-type {n}: the cap must be >= 0")
        return {g: n for g in gpus}
    caps = {}
    for part in text.split(","):
        g, _, v = part.partition("=")
        g = g.strip()
        if g not in gpus:
            raise RoofplanError(f"--max-per-type names '{g}' which is not in --gpus ({', '.join(gpus)}); add it to --gpus or drop it")
        try:
            caps[g] = int(v)
        except ValueError:
            raise RoofplanError(f"--max-per-type {part}: the cap must be an integer, e.g. {g}=8") from None
        if caps[g] < 0:
            raise RoofplanError(f"--max-per-type {part}: the cap must be >= 0")
    return caps


def cmd_plan_fleet(args) -> int:
    from dataclasses import replace

    from simulator.core.models import load_model
    from simulator.serving.workload import load_serving_workload

    from planners.fleet import PLAUSIBLE_FLEET_GPUS, ROLES, pareto_front, plan_fleet, plot_pareto

    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    if not gpus:
        raise RoofplanError("--gpus is empty; name at least one GPU type, e.g. --gpus l4,a100-sxm-80gb")
    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles or (("prefill" in roles) != ("decode" in roles)):
        raise RoofplanError(f"--roles '{args.roles}' must name aggregated and/or both prefill,decode")
    if args.slo_ttft_ms <= 0 or args.slo_tpot_ms <= 0:
        raise RoofplanError("--slo-ttft-ms and --slo-tpot-ms must be > 0")
    model = load_model(args.model)
    wl = load_serving_workload(args.workload)
    file_rate = wl.rate_rps
    if args.rate is not None:
        if args.rate <= 0:
            raise RoofplanError(f"--rate must be > 0 (got {args.rate})")
        wl = replace(wl, rate_rps=args.rate)
    caps = parse_caps(args.max_per_type, gpus)
    slo_ttft, slo_tpot = args.slo_ttft_ms / 1e3, args.slo_tpot_ms / 1e3
    res, cands, _ = plan_fleet(model, wl, slo_ttft, slo_tpot, gpus, caps, _ints(args.tp, "--tp"), roles,
                               args.percentile, executor=load_executor_profile(args.executor))
    plan = res.plan
    if plan.gpus > PLAUSIBLE_FLEET_GPUS:
        said = f"--rate {args.rate:g} req/s (the workload file says {file_rate:g})" if args.rate is not None \
            else f"the request rate of {wl.name} ({wl.rate_rps:g} req/s)"
        print(f"roofplan: warning: this fleet needs {plan.gpus:,} GPUs, beyond any plausible deployment "
              f"(> {PLAUSIBLE_FLEET_GPUS:,} GPUs); check {said}", file=sys.stderr)
    front = None
    if args.plot:
        front = pareto_front(cands, wl, slo_ttft, slo_tpot, caps, percentile=args.percentile)
        plot_pareto(front, args.plot, f"{model.name} on {wl.name} ({wl.rate_rps:g} req/s)")
    used = [(o, int(n), u) for o, n, u in zip(plan.options, plan.count, plan.utilisation) if n]
    pred = {r["option"]: r for r in res.predicted}
    pct = args.percentile
    rows = [[o.gpu, o.tp, o.role, n, f"{o.price_usd_per_h * n:.2f}", f"{u:.0%}",
             f"{pred[o.label]['ttft_p_ms']:.0f}" if o.role != "decode" else "-",
             f"{pred[o.label]['tpot_p_ms']:.1f}" if o.role != "prefill" else "-", o.instance] for o, n, u in used]
    header = ["gpu", "tp", "role", "instances", "usd_per_h", "utilisation", f"ttft_p{pct}_ms", f"tpot_p{pct}_ms",
              "priced_as"]
    best_single = min(res.single_type_cost_usd_per_h.items(), key=lambda kv: kv[1])
    saving = 1 - plan.cost_usd_per_h / best_single[1] if math.isfinite(best_single[1]) and best_single[1] > 0 else 0.0
    singles = ", ".join(f"{g} {c:.2f}" if math.isfinite(c) else f"{g} infeasible"
                        for g, c in res.single_type_cost_usd_per_h.items())
    footer = (f"total ${plan.cost_usd_per_h:.2f}/h for {wl.rate_rps:g} req/s; SLO attainment (predicted) "
              f"{res.slo_attainment:.0%}; best single type {best_single[0]} ${best_single[1]:.2f}/h "
              f"(mix saves {saving:.0%}); single-type $/h: {singles}\n"
              f"solver {plan.report.solver} {plan.report.status}, gap {plan.report.gap:.2g}, {plan.report.time_s:.2f} s")
    if front:
        footer += "\npareto (slo scale: ttft/tpot ms -> $/h): " + ", ".join(
            f"{p['slo_ttft_ms']:.0f}/{p['slo_tpot_ms']:.0f} -> " + (f"{p['cost_usd_per_h']:.2f}" if math.isfinite(p['cost_usd_per_h']) else "infeasible")
            for p in front)
    js = dict(model=model.name, workload=wl.name, rate_rps=wl.rate_rps, slo_ttft_ms=args.slo_ttft_ms,
              slo_tpot_ms=args.slo_tpot_ms, percentile=pct, cost_usd_per_h=plan.cost_usd_per_h,
              allocation=[dict(gpu=o.gpu, tp=o.tp, role=o.role, instances=n, usd_per_h=o.price_usd_per_h * n,
                               utilisation=float(u), priced_as=o.instance, usd_per_gpu_h=o.price_usd_per_gpu_h,
                               predicted=pred[o.label]) for o, n, u in used],
              slo_attainment=res.slo_attainment,
              single_type_cost_usd_per_h={g: (c if math.isfinite(c) else None) for g, c in res.single_type_cost_usd_per_h.items()},
              solver=plan.report.__dict__, pareto=[{k: (v if not (isinstance(v, float) and math.isinf(v)) else None)
                                                    for k, v in p.items()} for p in (front or [])])
    emit(fmt_of(args), json_obj=js, rows=rows, header=header,
         title=f"fleet for {model.name}, workload {wl.name} ({wl.rate_rps:g} req/s), SLO p{pct} TTFT {args.slo_ttft_ms:g} ms, TPOT {args.slo_tpot_ms:g} ms",
         footer=footer)
    return 0
