"""`roofplan run`: execute one step of a job on this machine's cpu or cuda device with random
weights, time it, and record a profiler trace (needs the `executor` extra: torch)."""
from __future__ import annotations


from simulator.core.errors import RoofplanError
from simulator.report.tables import add_format_arg, emit, fmt_of
from simulator.core.units import fmt_bytes, fmt_time


def register(sub) -> None:
    p = sub.add_parser("run", help="run a job on a real device (torch) and record a trace",
                       description="Run one step of a job (or an offload plan) on this machine with random weights, "
                                   "time it and record a trace. A run the host RAM (MemAvailable) or, on cuda, the "
                                   "device's free memory cannot hold is refused before anything is allocated.")
    p.add_argument("--model", default=None, help="zoo name or path/to/config.json (with --plan: default the plan's model)")
    p.add_argument("--phase", default=None, choices=("prefill", "decode", "train"))
    p.add_argument("--plan", default=None, metavar="PLAN.json",
                   help="run an offload plan (roofplan plan offload --format json): placement, batch, zig-zag schedule")
    p.add_argument("--nvme-dir", default=None, metavar="DIR", help="with --plan: folder for NVMe-placed weights (default: a temp dir)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=0, help="prompt / training sequence length")
    p.add_argument("--context", type=int, default=0, help="decode: tokens already in the KV cache")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"),
                   help="inference weights/compute; train: the autocast dtype on cuda (cpu trains in fp32)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--recompute", default="none", choices=("none", "full"))
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--offload", default=None, metavar="weights=cpu", help="stream layer weights from host memory")
    p.add_argument("--host-memory", default="pinned", choices=("pinned", "pageable"))
    p.add_argument("--no-overlap", action="store_true", help="copy each layer's weights just before it computes")
    p.add_argument("--no-cuda-graph", action="store_true", help="decode on cuda: eager launches instead of a graph replay")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--trace-steps", type=int, default=2, help="profiled steps (ProfilerStep#N)")
    p.add_argument("--trace", default=None, metavar="OUT.json.gz", help="write the profiler Chrome trace")
    p.add_argument("--result", default=None, metavar="OUT.json", help="write measured times and peak memory")
    add_format_arg(p)
    p.set_defaults(func=cmd_run)
    m = sub.add_parser("microbench", help="measure kernel microbenchmarks on this machine (torch) for `calibrate --microbench`")
    m.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    m.add_argument("-o", "--output", required=True, metavar="OUT.jsonl")
    m.add_argument("--scale", type=int, default=1, help="size multiplier (1 for a CPU, 8-16 for a GPU)")
    m.add_argument("--spec-out", default=None, metavar="GPU.yaml",
                   help="also write a GPU-format spec of the device (peaks bounded from the measurements; for a CPU)")
    m.add_argument("--name", default="cpu-host", help="name of the --spec-out device")
    add_format_arg(m)
    m.set_defaults(func=cmd_microbench)


def cmd_run(args) -> int:
    if args.plan:
        from simulator.cli.run_plan import cmd_run_plan
        return cmd_run_plan(args)
    for flag in ("model", "phase"):
        if not getattr(args, flag):
            raise RoofplanError(f"roofplan run needs --{flag} (or --plan PLAN.json)")
    from simulator.core.models import load_model
    from simulator.core.workload import Job, validate_job
    model = load_model(args.model)
    from simulator.cli.predict import parse_offload
    offload = parse_offload(args.offload)
    validate_job(Job(phase=args.phase, batch=args.batch, seq=args.seq, context=args.context, dtype=args.dtype,
                     recompute=args.recompute, lora_rank=args.lora_rank, offload_weights=offload), model)
    for name in ("steps", "trace_steps"):
        if getattr(args, name) < 1:
            raise RoofplanError(f"--{name.replace('_', '-')} must be >= 1")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise RoofplanError("roofplan run needs torch: pip install 'roofplan[executor]' (torch==2.13.0)") from None
    from simulator.executor.run import RunSpec, run
    spec = RunSpec(phase=args.phase, batch=args.batch, seq=args.seq, context=args.context, dtype=args.dtype,
                   device=args.device, recompute=args.recompute, lora_rank=args.lora_rank, offload_weights=offload,
                   host_memory=args.host_memory, overlap=not args.no_overlap, cuda_graph=not args.no_cuda_graph,
                   steps=args.steps, warmup=args.warmup, trace_steps=args.trace_steps)
    res = run(model, spec, args.trace, args.result)
    rows = [["step time (median)", fmt_time(res["time_s"])],
            ["steps", ", ".join(fmt_time(t) for t in res["times_s"])],
            ["device", f"{res['device_name']} ({res['threads']} threads)" if args.device == "cpu" else res["device_name"]],
            ["parameters", f"{res['params']:,}"]]
    if "peak_memory_bytes" in res:
        rows.append(["peak memory", fmt_bytes(res["peak_memory_bytes"])])
    footer = "".join(f"\nwrote {p}" for p in (args.trace, args.result) if p)
    emit(fmt_of(args), json_obj=res, rows=rows, header=["measured", "value"],
         title=f"{model.name} {args.phase} batch {args.batch} on {args.device} (torch {res['torch']})", footer=footer)
    return 0


def cmd_microbench(args) -> int:
    try:
        import torch
    except ImportError:
        raise RoofplanError("roofplan microbench needs torch: pip install 'roofplan[executor]' (torch==2.13.0)") from None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RoofplanError("--device cuda: torch sees no CUDA device here; use --device cpu")
    if args.scale < 1:
        raise RoofplanError("--scale must be >= 1")
    import yaml
    from simulator.executor.microbench import device_spec, run_microbench, write_microbench
    rows = run_microbench(args.device, args.scale)
    write_microbench(args.output, rows)
    footer = f"\nwrote {args.output}"
    if args.spec_out:
        from pathlib import Path
        Path(args.spec_out).write_text(yaml.safe_dump(device_spec(rows, args.name), sort_keys=False))
        footer += f" and {args.spec_out}"
    kinds = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    emit(fmt_of(args), json_obj={"rows": rows}, rows=[[k, n] for k, n in kinds.items()], header=["kind", "rows"],
         title=f"microbenchmarks on {args.device}", footer=footer)
    return 0
