"""`roofplan run --plan PLAN.json`: execute an inference offload plan (schema
roofplan.offload-plan/1) on this machine's cpu or cuda device; see simulator/executor/plan_run.py."""
from __future__ import annotations

from simulator.core.errors import RoofplanError
from simulator.core.workload import ALL_LINEAR
from simulator.report.tables import emit, fmt_of
from simulator.core.units import fmt_bytes, fmt_time


def cmd_run_plan(args) -> int:
    from planners.offload_check import PLAN_SCHEMA, load_json
    from simulator.core.models import load_model
    plan = load_json(args.plan, "--plan", PLAN_SCHEMA)
    for flag in ("phase", "offload", "lora_rank"):
        if getattr(args, flag):
            raise RoofplanError(f"--{flag.replace('_', '-')} does not combine with --plan (the plan sets it); drop it")
    if args.lora_targets != ALL_LINEAR:
        raise RoofplanError("--lora-targets does not combine with --plan (a plan is an inference run); drop it")
    for name in ("steps",):
        if getattr(args, name) < 1:
            raise RoofplanError(f"--{name} must be >= 1")
    name = args.model or plan.get("model")
    try:
        model = load_model(name)
    except RoofplanError:
        if args.model:
            raise
        raise RoofplanError(f"the plan's model {name!r} is not in the zoo; pass --model path/to/config.json "
                            f"(the config the plan was made from)") from None
    if model.name != plan.get("model"):
        raise RoofplanError(f"--model {args.model} is {model.name}, the plan is for {plan.get('model')}; "
                            f"pass the config the plan was made from")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise RoofplanError("roofplan run needs torch: pip install 'roofplan[executor]' (torch==2.13.0)") from None
    from simulator.cli.run import set_threads
    set_threads(args.threads)
    from simulator.executor.plan_run import parse_plan, run_plan
    parse_plan(plan)
    res = run_plan(model, plan, device=args.device, steps=args.steps, warmup=args.warmup, trace_path=args.trace,
                   result_path=args.result, nvme_dir=args.nvme_dir, plan_path=args.plan)
    pl = res["placement"]
    eff = "/".join(f"{100 * pl['weights_effective'][t]:.0f}" for t in ("gpu", "cpu", "nvme"))
    rows = [["time per block (median)", fmt_time(res["time_s"])],
            ["prefill / decode", f"{fmt_time(res['prefill_s'])} / {fmt_time(res['decode_s'])}"],
            ["throughput", f"{res['tokens_per_s']:,.2f} tokens/s ({res['tokens']} tokens)"],
            ["runs", ", ".join(fmt_time(t) for t in res["times_s"])],
            ["weights gpu/cpu/nvme % (whole tensors)", eff],
            ["KV cache / activations / attention", f"{pl['kv_cache']} / {pl['activations']} / {pl['attention']}"],
            ["host tensors / streamed copies", f"{res['host_memory'] or '-'} / " + ("side stream" if res["overlap"] else "synchronous")],
            ["device", res["device_name"] + (f" ({res['threads']} threads)" if args.device == "cpu" else "")]]
    if "peak_memory_bytes" in res:
        rows.append(["peak memory", fmt_bytes(res["peak_memory_bytes"])])
    sch = res["schedule"]
    footer = "".join(f"\nwrote {p}" for p in (args.trace, args.result) if p)
    emit(fmt_of(args), json_obj=res, rows=rows, header=["measured", "value"],
         title=f"{model.name} plan {args.plan}: {res['phase']}, GPU batch {sch['gpu_batch_size']} x "
               f"{sch['num_gpu_batches']} zig-zag on {args.device} (torch {res['torch']})", footer=footer)
    return 0
