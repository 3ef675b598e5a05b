"""`roofplan plan fleet`: the cheapest (or least-energy, least-carbon) SLO-meeting serving fleet across
GPU types (planners.fleet), with its power, energy per token and carbon; --energy-front: the
dollars-energy Pareto front of such fleets."""
from __future__ import annotations

import argparse
import math
import sys

from simulator.core.errors import RoofplanError
from simulator.core.power import DEFAULT_CARBON_G_PER_KWH
from simulator.core.profiles import load_executor_profile
from simulator.report.tables import add_format_arg, emit, fmt_of

from simulator.cli.plan import plan_subparsers
from simulator.cli.args import finite_float, plot_path
from simulator.cli.speculative import add_spec_args

DEFAULT_GPUS = "h100-sxm,a100-sxm-80gb,l4,a10g"
OBJECTIVES = ("usd", "energy", "carbon")     # planners.fleet.OBJECTIVES (the parser is built without planners)
SIM_REQUESTS = 1000     # simulated requests per used option: 0.03-0.1 s each for chat on one H100 (measured on this 2-core VM)
QUANTIZED = ("fp8", "int8", "int4")     # weight formats that change the model's outputs


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
    p.add_argument("--executor", default=None,
                   help="serving engine's executor profile (e.g. vllm-v0, distserve; default: kernel time only); "
                        "the same as --engines with one name")
    p.add_argument("--engines", default=None, metavar="E1,E2",
                   help="serving engines to choose among (executor profile names or .yaml paths; each engine is one more "
                        "option per GPU type, TP and role; default: --executor)")
    p.add_argument("--weight-dtypes", default="bf16", metavar="W1,W2",
                   help="layer-weight formats to choose among: bf16, fp16, fp8 (W8A8, only on GPUs with fp8 tensor "
                        "cores), int8, int4 (weight-only); each is one more option per GPU type (default bf16)")
    p.add_argument("--kv-dtype", default="", help="KV cache dtype of every option, e.g. fp8 (default: --dtype bf16)")
    add_spec_args(p)   # --spec-tokens, --spec-acceptance, --draft-model, --prefix-hit: every option's engine
    p.add_argument("--check-sim", type=int, default=SIM_REQUESTS, metavar="N",
                   help=f"check the plan with the discrete-event simulation: N seeded Poisson requests per used option "
                        f"at the load the plan gives it; simulated P50/P90/P99 TTFT and TPOT beside the closed form's "
                        f"(default {SIM_REQUESTS}; 0: no check)")
    p.add_argument("--sim-admission", action=argparse.BooleanOptionalAction, default=True,
                   help="an option the simulation finds missing the SLOs keeps only its simulated capacity and the "
                        "fleet is re-solved (default on; --no-sim-admission only reports the miss)")
    p.add_argument("--objective", default="usd", choices=OBJECTIVES,
                   help="minimise dollars per hour (usd, default), the fleet's power (energy) or its CO2 (carbon; "
                        "differs from energy when GPU types sit on grids of different --carbon-g-per-kwh)")
    p.add_argument("--power-budget-kw", type=finite_float, default=None, metavar="KW",
                   help="the fleet's GPUs may draw at most this much power in all (kW)")
    p.add_argument("--power-cap", default="", metavar="W|GPU=W,...",
                   help="board power limit per GPU (W), one number for every type or gpu=W pairs, e.g. h100-sxm=500")
    p.add_argument("--carbon-g-per-kwh", default="", metavar="G|GPU=G,...",
                   help=f"grid carbon intensity (gCO2e/kWh), one number or gpu=G pairs (others: "
                        f"{DEFAULT_CARBON_G_PER_KWH:g}, Ember's 2023 world average)")
    p.add_argument("--energy-front", action="store_true",
                   help="also list the dollars-energy Pareto front: the cheapest fleet under power budgets from the "
                        "least-power fleet's draw to the cheapest fleet's (with --plot: plot that front)")
    p.add_argument("--plot", type=plot_path, default=None, metavar="PATH.png",
                   help="write the cost-vs-SLO Pareto front plot (with --energy-front: the dollars-energy front)")
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


def parse_per_gpu(text: str, gpus: list[str], flag: str, unit: str, example: str, low: float,
                  low_ok: bool = False) -> dict[str, float]:
    """One number for every GPU type or gpu=value pairs (--power-cap, --carbon-g-per-kwh)."""
    import math
    if not text:
        return {}
    pairs = [("", text)] if "=" not in text else [p.partition("=")[::2] for p in text.split(",")]
    out = {}
    for g, v in pairs:
        g = g.strip()
        if g and g not in gpus:
            raise RoofplanError(f"{flag} names '{g}' which is not in --gpus ({', '.join(gpus)}); add it to --gpus or drop it")
        try:
            x = float(v)
        except ValueError:
            raise RoofplanError(f"{flag} '{text}' must be one number ({unit}) or gpu=N pairs, e.g. {example}") from None
        if not math.isfinite(x) or x < low or (x == low and not low_ok):
            raise RoofplanError(f"{flag} {(g + '=') if g else ''}{v.strip()}: must be a finite number "
                                f"{'>=' if low_ok else '>'} {low:g} {unit}")
        out.update({g: x} if g else {k: x for k in gpus})
    return out


def cmd_plan_fleet(args) -> int:
    from dataclasses import replace

    from simulator.core.models import load_model
    from simulator.serving.workload import load_serving_workload

    from planners.fleet import (PLAUSIBLE_FLEET_GPUS, ROLES, candidate_options, dollars_energy_front, pareto_front,
                                plan_fleet, plot_pareto, unsupported_weights)

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
    power_caps = parse_per_gpu(args.power_cap, gpus, "--power-cap", "W", "300 or h100-sxm=500,a10g=200", 0.0)
    carbon = parse_per_gpu(args.carbon_g_per_kwh, gpus, "--carbon-g-per-kwh", "gCO2e/kWh", "481 or h100-sxm=30",
                           0.0, low_ok=True)
    if args.power_budget_kw is not None and args.power_budget_kw <= 0:
        raise RoofplanError(f"--power-budget-kw {args.power_budget_kw:g}: must be a positive number of kilowatts")
    budget_w = args.power_budget_kw * 1e3 if args.power_budget_kw is not None else None
    slo_ttft, slo_tpot = args.slo_ttft_ms / 1e3, args.slo_tpot_ms / 1e3
    engines = _engines(args)
    wds = [w.strip() for w in args.weight_dtypes.split(",") if w.strip()]
    options = _engine_options(args)
    tps = _ints(args.tp, "--tp")
    if args.check_sim < 0:
        raise RoofplanError(f"--check-sim {args.check_sim}: must be >= 0 requests per option (0: no simulated check)")
    cands = candidate_options(model, gpus, tps, roles, power_cap_w=power_caps, carbon_g_per_kwh=carbon,
                              engines=engines, weight_dtypes=wds, options=options)
    res, cands, _ = plan_fleet(model, wl, slo_ttft, slo_tpot, gpus, caps, tps, roles, args.percentile,
                               candidates=cands, objective=args.objective, power_budget_w=budget_w,
                               sim_requests=args.check_sim, sim_admission=args.sim_admission)
    skipped = unsupported_weights(gpus, [w for w in wds if w != "bf16"])
    plan = res.plan
    if plan.gpus > PLAUSIBLE_FLEET_GPUS:
        said = f"--rate {args.rate:g} req/s (the workload file says {file_rate:g})" if args.rate is not None \
            else f"the request rate of {wl.name} ({wl.rate_rps:g} req/s)"
        print(f"roofplan: warning: this fleet needs {plan.gpus:,} GPUs, beyond any plausible deployment "
              f"(> {PLAUSIBLE_FLEET_GPUS:,} GPUs); check {said}", file=sys.stderr)
    front = energy_front = None
    if args.energy_front:
        energy_front = dollars_energy_front(cands, wl, slo_ttft, slo_tpot, res, caps, percentile=args.percentile)
    if args.plot and energy_front:
        _plot_energy_front(energy_front, res, args.plot, f"{model.name} on {wl.name} ({wl.rate_rps:g} req/s)")
    elif args.plot:
        front = pareto_front(cands, wl, slo_ttft, slo_tpot, caps, percentile=args.percentile)
        plot_pareto(front, args.plot, f"{model.name} on {wl.name} ({wl.rate_rps:g} req/s)")
    used = [(o, int(n), u) for o, n, u in zip(plan.options, plan.count, plan.utilisation) if n]
    pred = {r["option"]: r for r in res.predicted}
    sim = {r["option"]: r for r in res.simulated}
    pct = args.percentile
    # the engine and weights columns appear once there is a choice (or a non-default one): the
    # table of a plain command stays as it was
    show_engine = len(engines) > 1 or set(engines) != {"default"}
    show_weights = set(wds) - {"bf16"} != set()
    rows = [[o.gpu, o.tp, o.role, *([o.engine] if show_engine else []), *([o.weights or "bf16"] if show_weights else []),
             n, f"{o.price_usd_per_h * n:.2f}", f"{pred[o.label]['power_w'] / 1e3:.3f}",
             f"{u:.0%}", f"{pred[o.label]['ttft_p_ms']:.0f}" if o.role != "decode" else "-",
             f"{pred[o.label]['tpot_p_ms']:.1f}" if o.role != "prefill" else "-", o.instance] for o, n, u in used]
    header = ["gpu", "tp", "role", *(["engine"] if show_engine else []), *(["weights"] if show_weights else []),
              "instances", "usd_per_h", "kw", "utilisation", f"ttft_p{pct}_ms", f"tpot_p{pct}_ms", "priced_as"]
    lines = [_totals(res, wl.rate_rps, carbon), _energy_line(res, carbon, args.power_budget_kw),
             f"solver {plan.report.solver} {plan.report.status}, gap {plan.report.gap:.2g}, {plan.report.time_s:.2f} s"]
    lines += _skipped_lines(skipped) + _quality_lines(used, options)
    if res.simulated:
        lines += [_sim_table(res, used, pct)]
    lines += _sim_summary(res, args.sim_admission)
    footer = "\n".join(lines)
    if energy_front:
        footer += "\ndollars-energy front (cheapest fleet under each power budget):\n" + _front_table(energy_front)
    if front:
        footer += "\npareto (slo scale: ttft/tpot ms -> $/h): " + ", ".join(
            f"{p['slo_ttft_ms']:.0f}/{p['slo_tpot_ms']:.0f} -> " + (f"{p['cost_usd_per_h']:.2f}" if math.isfinite(p['cost_usd_per_h']) else "infeasible")
            for p in front)
    js = dict(model=model.name, workload=wl.name, rate_rps=wl.rate_rps, slo_ttft_ms=args.slo_ttft_ms,
              slo_tpot_ms=args.slo_tpot_ms, percentile=pct, objective=args.objective,
              power_budget_kw=args.power_budget_kw, cost_usd_per_h=plan.cost_usd_per_h,
              power_w=res.power_w, energy_j_per_token=res.energy_j_per_token,
              co2_g_per_1m_tokens=res.co2_g_per_1m_tokens, output_tokens_per_s=res.output_tokens_per_s,
              engines=list(engines), weight_dtypes=wds, kv_dtype=options.kv_dtype or "bf16",
              prefix_hit=options.prefix_hit, spec_tokens=options.spec_tokens, spec_acceptance=options.spec_acceptance,
              draft_model=options.draft.name if options.draft is not None else None,
              skipped_weights=skipped,
              allocation=[dict(gpu=o.gpu, tp=o.tp, role=o.role, engine=o.engine, weights=o.weights or "bf16",
                               instances=n, usd_per_h=o.price_usd_per_h * n,
                               power_w=pred[o.label]["power_w"], carbon_g_per_kwh=o.carbon_g_per_kwh,
                               power_cap_w=power_caps.get(o.gpu),
                               utilisation=float(u), priced_as=o.instance, usd_per_gpu_h=o.price_usd_per_gpu_h,
                               predicted=pred[o.label], simulated=_json_sim(sim.get(o.label)))
                          for o, n, u in used],
              slo_attainment=res.slo_attainment, sim_requests=res.sim_requests,
              sim_slo_attainment=res.sim_attainment if res.simulated else None, sim_notes=list(res.notes),
              sim_resolves=res.sim_resolves,
              unchecked_cost_usd_per_h=res.unchecked_cost_usd_per_h if res.sim_resolves else None,
              single_type_cost_usd_per_h={g: (c if math.isfinite(c) else None) for g, c in res.single_type_cost_usd_per_h.items()},
              single_type_power_w={g: (c if math.isfinite(c) else None) for g, c in res.single_type_power_w.items()},
              energy_front=energy_front or [],
              solver=plan.report.__dict__, pareto=[{k: (v if not (isinstance(v, float) and math.isinf(v)) else None)
                                                    for k, v in p.items()} for p in (front or [])])
    engine_note = f"; every engine runs {options.label}" if options.label else ""
    emit(fmt_of(args), json_obj=js, rows=rows, header=header,
         title=f"fleet for {model.name}, workload {wl.name} ({wl.rate_rps:g} req/s), SLO p{pct} TTFT {args.slo_ttft_ms:g} ms, "
               f"TPOT {args.slo_tpot_ms:g} ms{engine_note}",
         footer=footer)
    return 0


def _engines(args) -> dict:
    """--engines (or --executor, the same with one name) -> {name: ExecutorProfile}."""
    if args.engines is not None and args.executor is not None:
        raise RoofplanError("--executor and --engines both name engines; give the engines in --engines alone")
    text = args.engines if args.engines is not None else (args.executor or "default")
    names = list(dict.fromkeys(e.strip() for e in text.split(",") if e.strip()))
    if not names:
        raise RoofplanError(f"--engines '{text}' is empty; name at least one executor profile, e.g. default,vllm-v0")
    return {n: load_executor_profile(n) for n in names}


def _engine_options(args):
    """The EngineOptions every option runs with (its weight dtype is set per option): --kv-dtype,
    --prefix-hit, --spec-tokens / --spec-acceptance / --draft-model."""
    from simulator.core.models import load_model
    from simulator.serving.simulate import EngineOptions
    if (args.spec_acceptance is not None or args.draft_model) and not args.spec_tokens:
        flag = "--spec-acceptance" if args.spec_acceptance is not None else "--draft-model"
        raise RoofplanError(f"{flag} needs --spec-tokens K (speculative decoding); add it or drop {flag}")
    draft = load_model(args.draft_model) if args.draft_model else None
    kv = "" if args.kv_dtype == "bf16" else args.kv_dtype      # the compute dtype: a plain engine's tables
    return EngineOptions(kv_dtype=kv, prefix_hit=args.prefix_hit, spec_tokens=args.spec_tokens,
                         spec_acceptance=args.spec_acceptance, draft=draft).check()


def _skipped_lines(skipped: dict) -> list[str]:
    """'weights fp8 skipped on a100-sxm-80gb, a10g: no fp8 tensor cores (W8A8 needs them)', one line per format."""
    by: dict[tuple[str, str], list[str]] = {}
    for g, whys in skipped.items():
        for wd, why in whys.items():
            by.setdefault((wd, why), []).append(g)
    return [f"weights {wd} skipped on {', '.join(gs)}: {why}" for (wd, why), gs in by.items()]


def _quality_lines(used, options) -> list[str]:
    """One line when the plan serves quantized weights or KV cache: they change the model's outputs."""
    quant = sorted({o.weights for o, _, _ in used if o.weights in QUANTIZED})
    kv = options.kv_dtype if options.kv_dtype in QUANTIZED else ""
    if not quant and not kv:
        return []
    what = " and ".join(x for x in (f"{'/'.join(quant)} weights" if quant else "", f"an {kv} KV cache" if kv else "") if x)
    return [f"note: this plan serves {what}, which change the model's outputs; the planner does not judge "
            f"quality (you opted in by listing them)"]


def _sim_table(res, used, pct: int) -> str:
    """The discrete-event check beside the closed form, one row per used option."""
    from simulator.report.tables import table
    pred = {r["option"]: r for r in res.predicted}
    f = lambda v, d=0: "-" if not math.isfinite(v) else f"{v:,.{d}f}"
    rows = []
    for r in res.simulated:
        c = pred[r["option"]]
        rows.append([r["option"], f"{r['rate_rps']:.3g}",
                     *(f(r[f"ttft_p{q}_ms"]) for q in (50, 90, 99)), f(c["ttft_p_ms"]) if r["role"] != "decode" else "-",
                     *(f(r[f"tpot_p{q}_ms"], 1) for q in (50, 90, 99)),
                     f(c["tpot_p_ms"], 1) if r["role"] != "prefill" else "-",
                     f"{r['attainment']:.0%}", "yes" if r["meets"] else "NO"])
    head = (f"simulated check: {res.sim_requests} seeded Poisson requests per option at its planned load, beside the "
            f"closed form (cf); SLO attainment (simulated) >= {res.sim_attainment:.0%}")
    return head + "\n" + table(rows, ["option", "req_s_each", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms",
                                      f"cf_ttft_p{pct}", "tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms",
                                      f"cf_tpot_p{pct}", "within_slo", "meets"])


def _sim_summary(res, admission: bool) -> list[str]:
    """One line on what the simulated check found: the misses it derated (the first one's detail,
    the rest in the JSON's sim_notes), and whether the plan shown now meets the SLOs there."""
    if not res.simulated:
        return []
    misses = [r["option"] for r in res.simulated if not r["meets"]]
    if res.sim_resolves:
        first = res.notes[0].split("; its simulated capacity")[0].removeprefix("simulation: ")
        now = ("every option of this plan meets its SLOs in the simulation" if not misses else
               f"{', '.join(misses)} still {'misses' if len(misses) == 1 else 'miss'} them after "
               f"{res.sim_resolves} re-solves")
        return [f"simulation: {res.sim_resolves} re-solve(s) after options met the SLOs in the closed form but not in the "
                f"simulation (first: {first}); each was derated to its simulated capacity: "
                f"${res.unchecked_cost_usd_per_h:.2f}/h -> ${res.plan.cost_usd_per_h:.2f}/h; {now}"]
    if misses:
        return [f"simulation: {', '.join(misses)} {'misses' if len(misses) == 1 else 'miss'} the SLOs the closed form "
                f"met; " + ("--sim-admission re-solves with the capacity derated to the simulated one" if not admission
                            else "the re-solves left it so")]
    return []


def _json_sim(row: dict | None) -> dict | None:
    if row is None:
        return None
    return {k: (v if not (isinstance(v, float) and not math.isfinite(v)) else None) for k, v in row.items()
            if k not in ("index", "option")}


def _totals(res, rate: float, carbon: dict) -> str:
    """The plan's total and how it compares with the best fleet of one GPU type, by the objective."""
    import math
    plan = res.plan
    obj = res.objective
    if obj == "usd":
        single, unit, fmt = res.single_type_cost_usd_per_h, "$/h", (lambda v: f"${v:.2f}/h")
        mine = plan.cost_usd_per_h
    elif obj == "energy":
        single, unit, fmt = res.single_type_power_w, "kW", (lambda v: f"{v / 1e3:.3f} kW")
        mine = res.power_w
    else:
        g = {o.gpu: o.carbon_g_per_kwh for o in plan.options}
        single = {k: v / 1e3 * g[k] for k, v in res.single_type_power_w.items()}
        unit, fmt, mine = "g CO2e/h", (lambda v: f"{v:.0f} g CO2e/h"), res.co2_g_per_h
    best = min(single.items(), key=lambda kv: kv[1])
    saving = 1 - mine / best[1] if math.isfinite(best[1]) and best[1] > 0 else 0.0
    shown = {"usd": lambda c: f"{c:.2f}", "energy": lambda c: f"{c / 1e3:.3f}", "carbon": lambda c: f"{c:.0f}"}[obj]
    singles = ", ".join(f"{g} {shown(c)}" if math.isfinite(c) else f"{g} infeasible" for g, c in single.items())
    what = {"usd": "", "energy": " (least power)", "carbon": " (least CO2)"}[obj]
    return (f"total ${plan.cost_usd_per_h:.2f}/h{what} for {rate:g} req/s; SLO attainment (predicted) "
            f"{res.slo_attainment:.0%}; best single type {best[0]} {fmt(best[1])} (mix saves {saving:.0%}); "
            f"single-type {unit}: {singles}")


def _energy_line(res, carbon: dict, budget_kw) -> str:
    intensities = sorted(set(o.carbon_g_per_kwh for o, n in zip(res.plan.options, res.plan.count) if n))
    grid = f"{intensities[0]:g} g/kWh" if len(intensities) == 1 else "per-GPU grid intensities"
    line = (f"power {res.power_w / 1e3:.3f} kW (GPUs), {res.energy_j_per_token:.3g} J per output token, "
            f"{res.co2_g_per_1m_tokens:.3g} g CO2e per 1M output tokens at {grid}")
    if budget_kw is not None:
        line += f"; budget {budget_kw:g} kW"
    return line


def _front_table(front: list[dict]) -> str:
    from simulator.report.tables import table
    rows = [[f"{p['cost_usd_per_h']:.2f}", f"{p['power_w'] / 1e3:.3f}", f"{p['energy_j_per_token']:.3g}",
             f"{p['slo_attainment']:.0%}", p["fleet"]] for p in front]
    return table(rows, ["usd_per_h", "kw", "j_per_token", "slo", "fleet"])


def _plot_energy_front(front: list[dict], res, path: str, title: str) -> None:
    from simulator.report.plots import dollars_energy_plot
    usd = [p["cost_usd_per_h"] for p in front]
    kw = [p["power_w"] / 1e3 for p in front]
    marks = {"cheapest": 0, "least power": len(front) - 1}
    dollars_energy_plot(usd, kw, [p["fleet"] for p in front], path, xlabel="fleet cost ($/h, lower is better)",
                        ylabel="fleet power (kW, lower is better)", title=title + ": dollars vs energy", marks=marks)
