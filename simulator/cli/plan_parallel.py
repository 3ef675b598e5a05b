"""`roofplan plan parallel`: best training parallelism for N GPUs (planners.parallel)."""
from __future__ import annotations

from simulator.cli.plan import plan_subparsers
from simulator.core.errors import RoofplanError, clip
from simulator.core.profiles import load_executor_profile
from simulator.report.tables import add_format_arg

from planners.parallel import OBJECTIVES, search



def register(sub) -> None:
    p = plan_subparsers(sub).add_parser(
        "parallel", help="best training parallelism (tp, pp, dp, micro-batch, schedule, ZeRO, recompute, SP) for N GPUs")
    p.add_argument("--model", required=True, help="zoo name (roofplan models) or path/to/config.json")
    p.add_argument("--hardware", required=True, help="system (node) name, e.g. dgx-a100 (roofplan hw list)")
    p.add_argument("--gpus", type=int, required=True, help="GPUs in all (nodes x GPUs per node)")
    p.add_argument("--global-batch", type=int, required=True, help="sequences per optimizer step, all replicas")
    p.add_argument("--seq", type=int, required=True, help="tokens per sequence")
    p.add_argument("--objective", choices=OBJECTIVES, default="throughput",
                   help="throughput: fastest step on --gpus; cost: fewest GPU-hours per token on --gpus or fewer")
    p.add_argument("--top", type=int, default=10, help="plans to list")
    p.add_argument("--zero", default="0,1,2,3", help="ZeRO stages to consider, comma-separated (default 0,1,2,3)")
    p.add_argument("--executor", default="megatron", help="executor profile (default: megatron)")
    add_format_arg(p)
    p.set_defaults(func=cmd_plan_parallel)


def cmd_plan_parallel(args) -> int:
    from simulator.core.models import load_model
    from simulator.report.tables import emit, fmt_of
    from simulator.core.specs import load_hardware
    if args.top < 1:
        raise RoofplanError(f"--top must be >= 1 (got {args.top})")
    try:
        zeros = tuple(int(z) for z in args.zero.split(","))
    except ValueError:
        raise RoofplanError(f"--zero {clip(args.zero)} is not understood; use a comma list of 0, 1, 2, 3") from None
    model = load_model(args.model)
    system = load_hardware(args.hardware)
    res = search(model, system, args.gpus, args.global_batch, args.seq, args.objective,
                 load_executor_profile(args.executor), zeros=zeros)
    top = res.plans.head(args.top)
    header = ["#", "gpus", "tp", "pp", "dp", "mb", "v", "zero", "recompute", "sp", "step", "TFLOP/s/GPU", "MFU",
              "mem GiB", "vs best", "why slower"]
    rows = [[i + 1, r.gpus, r.tp, r.pp, r.dp, r.micro_batch, r.vpp, r.zero, r.recompute, "on" if r.sp else "off",
             f"{r.time_s:.3f} s", f"{r.model_flops_per_gpu_s / 1e12:.0f}", f"{100 * r.mfu:.1f}%",
             f"{r.memory_bytes / 2**30:.1f}", f"{100 * r.vs_best:+.1f}%", r.why] for i, r in enumerate(top.itertuples())]
    price = system.price_usd_per_gpu_h
    footer = (f"\n{res.evaluated:,} plans scored, {len(res.plans):,} fit in {system.gpu.mem_bytes / 2**30:.0f} GiB, "
              f"{res.search_time_s:.2f} s; ranked by {args.objective}")
    if args.objective == "cost":
        best = res.plans.iloc[0]
        footer += f"; best: {best.gpu_h_per_Mtok:.3f} GPU-h per 1M tokens" + \
            (f" = ${best.gpu_h_per_Mtok * price:.2f}" if price else f" ({system.name} has no price)")
    emit(fmt_of(args), json_obj={"objective": args.objective, "evaluated": res.evaluated,
                                 "search_time_s": res.search_time_s,
                                 "plans": top.to_dict(orient="records")},
         rows=rows, header=header, title=f"{model.name} training on {args.gpus} x {system.gpu.name} "
                                          f"({system.name}), global batch {args.global_batch} x {args.seq} tokens",
         footer=footer)
    return 0
