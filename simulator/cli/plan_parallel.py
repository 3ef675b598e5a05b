"""`roofplan plan parallel`: best training parallelism for N GPUs (planners.parallel), with each
plan's power, energy and carbon (predict()'s); --tokens: the whole run; --energy-front: the
time-energy Pareto front over GPU counts and power caps."""
from __future__ import annotations

import math

from simulator.cli.args import finite_float, plot_path
from simulator.cli.plan import plan_subparsers
from simulator.core.errors import RoofplanError, clip
from simulator.core.units import fmt_duration, fmt_energy, fmt_mass_g
from simulator.core.profiles import load_executor_profile
from simulator.report.tables import add_format_arg

from planners.parallel import OBJECTIVES, search


def register(sub) -> None:
    from simulator.core.power import DEFAULT_CARBON_G_PER_KWH
    p = plan_subparsers(sub).add_parser(
        "parallel", help="best training parallelism (tp, pp, dp, micro-batch, schedule, ZeRO, recompute, SP) for N GPUs")
    p.add_argument("--model", required=True, help="zoo name (roofplan models) or path/to/config.json")
    p.add_argument("--hardware", required=True, help="system (node) name, e.g. dgx-a100 (roofplan hw list)")
    p.add_argument("--gpus", type=int, required=True, help="GPUs in all (nodes x GPUs per node)")
    p.add_argument("--global-batch", type=int, required=True, help="sequences per optimizer step, all replicas")
    p.add_argument("--seq", type=int, required=True, help="tokens per sequence")
    p.add_argument("--objective", choices=OBJECTIVES, default="throughput",
                   help="throughput: fastest step on --gpus; cost: fewest GPU-hours per token on --gpus or fewer; "
                        "energy / carbon: least energy (CO2) per token on --gpus or fewer")
    p.add_argument("--top", type=int, default=10, help="plans to list")
    p.add_argument("--zero", default="0,1,2,3", help="ZeRO stages to consider, comma-separated (default 0,1,2,3)")
    p.add_argument("--executor", default="megatron", help="executor profile (default: megatron)")
    p.add_argument("--tokens", type=finite_float, default=None, metavar="N",
                   help="a training run of N tokens (e.g. 1e12): its time, energy and CO2 per plan")
    p.add_argument("--power-cap", default="", metavar="W[,W...]",
                   help="board power limit per GPU (W); a comma list (none for the default limit) scores every plan "
                        "under each, e.g. none,560,420")
    p.add_argument("--power-budget-kw", type=finite_float, default=None, metavar="KW",
                   help="plans whose GPUs and hosts draw more than this in all (kW) are left out")
    p.add_argument("--carbon-g-per-kwh", type=finite_float, default=DEFAULT_CARBON_G_PER_KWH, metavar="G",
                   help=f"grid carbon intensity (default {DEFAULT_CARBON_G_PER_KWH:g}, Ember's 2023 world average)")
    p.add_argument("--energy-front", action="store_true",
                   help="list the Pareto front of step (or run) time vs energy over --gpus and its halvings and the "
                        "--power-cap values, instead of the top plans")
    p.add_argument("--plot", type=plot_path, default=None, metavar="FILE.png",
                   help="with --energy-front: plot time vs energy, the front highlighted")
    add_format_arg(p)
    p.set_defaults(func=cmd_plan_parallel)


def parse_caps(text: str) -> tuple:
    """--power-cap: "" -> (None,); "none,560" -> (None, 560.0)."""
    if not text.strip():
        return (None,)
    caps = []
    for part in text.split(","):
        part = part.strip()
        if part.lower() == "none":
            caps.append(None)
            continue
        try:
            w = float(part)
        except ValueError:
            raise RoofplanError(f"--power-cap {clip(text)}: use watts per GPU, a comma list, none for the default "
                                f"limit (e.g. none,560,420)") from None
        if not (math.isfinite(w) and w > 0):
            raise RoofplanError(f"--power-cap {clip(part)}: must be a positive number of watts per GPU")
        caps.append(w)
    return tuple(dict.fromkeys(caps))


def cmd_plan_parallel(args) -> int:
    from planners.parallel import with_energy
    from simulator.core.models import load_model
    from simulator.core.specs import load_hardware
    from simulator.report.tables import emit, fmt_of
    if args.top < 1:
        raise RoofplanError(f"--top must be >= 1 (got {args.top})")
    try:
        zeros = tuple(int(z) for z in args.zero.split(","))
    except ValueError:
        raise RoofplanError(f"--zero {clip(args.zero)} is not understood; use a comma list of 0, 1, 2, 3") from None
    caps = parse_caps(args.power_cap)
    if args.power_budget_kw is not None and args.power_budget_kw <= 0:
        raise RoofplanError(f"--power-budget-kw {args.power_budget_kw:g}: must be a positive number of kilowatts")
    if args.tokens is not None and args.tokens <= 0:
        raise RoofplanError(f"--tokens {args.tokens:g}: must be a positive number of tokens, e.g. 1e12")
    if args.plot and not args.energy_front:
        raise RoofplanError("--plot draws the time-energy front; add --energy-front")
    model = load_model(args.model)
    system = load_hardware(args.hardware)
    ex = load_executor_profile(args.executor)
    # the front spans GPU counts: search --gpus and its halvings (as cost, energy and carbon do)
    res = search(model, system, args.gpus, args.global_batch, args.seq,
                 "cost" if args.energy_front and args.objective == "throughput" else args.objective, ex, zeros=zeros)
    en = with_energy(res, model, system, args.seq, args.global_batch, ex, objective=args.objective, caps=caps,
                     top=args.top, power_budget_w=args.power_budget_kw * 1e3 if args.power_budget_kw else None,
                     tokens=args.tokens, carbon_g_per_kwh=args.carbon_g_per_kwh, front=args.energy_front)
    top = en.plans
    capped = caps != (None,)
    run = args.tokens is not None
    header = ["#", "gpus", "tp", "pp", "dp", "mb", "v", "zero", "recompute", "sp", *(["cap W"] if capped else []),
              "step", "TFLOP/s/GPU", "MFU", "mem GiB", "kW", "J/tok", *(["run", "run energy"] if run else []),
              *([] if args.energy_front else ["vs best", "why slower"])]
    rows = [[i + 1, r.gpus, r.tp, r.pp, r.dp, r.micro_batch, r.vpp, r.zero, r.recompute, "on" if r.sp else "off",
             *([f"{r.power_cap_w:g}" if r.power_cap_w == r.power_cap_w else "-"] if capped else []),
             f"{r.time_s:.3f} s", f"{r.model_flops_per_gpu_s / 1e12:.0f}", f"{100 * r.mfu:.1f}%",
             f"{r.memory_bytes / 2**30:.1f}", f"{r.plan_power_w / 1e3:,.1f}", f"{r.energy_j_per_token:.3g}",
             *([fmt_duration(r.run_time_s), fmt_energy(r.run_energy_j)] if run else []),
             *([] if args.energy_front else [f"{100 * r.vs_best:+.1f}%", r.why])] for i, r in enumerate(top.itertuples())]
    price = system.price_usd_per_gpu_h
    footer = (f"\n{res.evaluated:,} plans scored, {len(res.plans):,} fit in {system.gpu.mem_bytes / 2**30:.0f} GiB, "
              f"{res.search_time_s:.2f} s; " + (f"time-energy front over {_counts(res)}" + (
                  f" x power caps {args.power_cap}" if capped else "") if args.energy_front else
                  f"ranked by {args.objective}"))
    if args.objective == "cost" and not args.energy_front:
        best = top.iloc[0]
        footer += f"; best: {best.gpu_h_per_Mtok:.3f} GPU-h per 1M tokens" + \
            (f" = ${best.gpu_h_per_Mtok * price:.2f}" if price else f" ({system.name} has no price)")
    footer += (f"\nkW: the plan's GPUs and hosts; J/tok and g CO2e from predict() (docs/energy.md), "
               f"{args.carbon_g_per_kwh:g} g/kWh; {en.predicted:,} of {en.candidates:,} plans{' x caps' if capped else ''} "
               f"predicted, the rest bounded out")
    if run and not args.energy_front:
        b = top.iloc[0]
        footer += (f"\nrun of {args.tokens:.3g} tokens with plan 1: {int(b.run_steps):,} steps, "
                   f"{fmt_duration(b.run_time_s)}, {fmt_energy(b.run_energy_j)}, {fmt_mass_g(b.run_co2_g)} CO2e")
    if args.plot:
        _plot_front(top, res.plans, args.plot, run, f"{model.name} on {system.name}: time vs energy")
    emit(fmt_of(args), json_obj={"objective": args.objective, "evaluated": res.evaluated,
                                 "search_time_s": res.search_time_s, "energy_front": args.energy_front,
                                 "power_caps_w": list(caps), "power_budget_kw": args.power_budget_kw,
                                 "tokens": args.tokens, "carbon_g_per_kwh": args.carbon_g_per_kwh,
                                 "predicted": en.predicted, "plans": top.to_dict(orient="records")},
         rows=rows, header=header, title=f"{model.name} training on {args.gpus} x {system.gpu.name} "
                                          f"({system.name}), global batch {args.global_batch} x {args.seq} tokens",
         footer=footer)
    return 0


def _counts(res) -> str:
    counts = sorted(int(g) for g in res.plans["gpus"].unique())
    return "GPU counts " + ", ".join(map(str, counts))


def _plot_front(front, plans, path: str, run: bool, title: str) -> None:
    """The front (time vs energy, both smaller is better), labelled by GPU count and cap."""
    from simulator.report.plots import pareto_plot
    t = front["run_time_s" if run else "time_s"].to_numpy() / (86400 if run else 1)
    e = front["run_energy_j" if run else "energy_j"].to_numpy() / (3.6e9 if run else 1e6)
    labels = [f"{int(r.gpus)} GPUs" + (f" {r.power_cap_w:g} W" if r.power_cap_w == r.power_cap_w else "")
              for r in front.itertuples()]
    pareto_plot(t, e, labels, path, xlabel=f"{'run' if run else 'step'} time ({'days' if run else 's'}, lower is better)",
                ylabel=f"{'run' if run else 'step'} energy ({'MWh' if run else 'MJ'}, lower is better)",
                minimize_x=True, maximize_y=False, title=title)
