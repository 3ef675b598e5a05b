"""`roofplan run`: execute one step of a job on this machine's cpu or cuda device with random
weights, time it, and record a profiler trace (needs the `executor` extra: torch)."""
from __future__ import annotations


from simulator.core.errors import RoofplanError
from simulator.report.tables import add_format_arg, emit, fmt_of
from simulator.core.units import fmt_bytes, fmt_time
from simulator.core.workload import ALL_LINEAR


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
    p.add_argument("--lora-targets", default=ALL_LINEAR, metavar="all-linear|qkv,down,...",
                   help="linears LoRA adapts; this decoder fuses q, k, v (qkv) and gate, up (gate_up)")
    p.add_argument("--offload", default=None, metavar="weights=cpu", help="stream layer weights from host memory")
    p.add_argument("--host-memory", default="pinned", choices=("pinned", "pageable"))
    p.add_argument("--no-overlap", action="store_true", help="copy each layer's weights just before it computes")
    p.add_argument("--no-cuda-graph", action="store_true", help="decode on cuda: eager launches instead of a graph replay")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--trace-steps", type=int, default=2, help="profiled steps (ProfilerStep#N)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch intra-op threads (default: torch's)")
    p.add_argument("--trace", default=None, metavar="OUT.json.gz", help="write the profiler Chrome trace")
    p.add_argument("--result", default=None, metavar="OUT.json", help="write measured times and peak memory")
    add_format_arg(p)
    p.set_defaults(func=cmd_run)
    m = sub.add_parser("microbench", help="measure kernel microbenchmarks on this machine (torch) for `calibrate --microbench`",
                       description="Measure everything a kernel profile holds (GEMMs per dtype, attention prefill/decode, "
                                   "elementwise, launch cost, device copies, host<->device pinned and pageable copies), "
                                   "the offload folder's read/write rates (--nvme-dir) and the host CPU (copy, fp32 GEMM, "
                                   "AdamW, attention), in the microbench.jsonl format. On cpu the host<->device copies "
                                   "are host memcpys (the device is host memory) and say so (stand_in).")
    m.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    m.add_argument("-o", "--output", required=True, metavar="OUT.jsonl")
    budget = m.add_mutually_exclusive_group()
    budget.add_argument("--quick", dest="budget", action="store_const", const="quick",
                        help="the quick budget (default): < 3 minutes on a GPU, seconds on a CPU")
    budget.add_argument("--full", dest="budget", action="store_const", const="full",
                        help="more shapes, sizes and repetitions")
    m.set_defaults(budget="quick")
    m.add_argument("--nvme-dir", default=None, metavar="DIR",
                   help="the offload folder: its sequential write/read rates are measured (a file written and removed); "
                        "without it the NVMe rows are skipped with that reason")
    m.add_argument("--threads", type=int, default=None, metavar="N", help="torch intra-op threads (default: torch's)")
    m.add_argument("--spec-out", default=None, metavar="GPU.yaml",
                   help="also write a GPU-format spec of the device (peaks bounded from the measurements; for a CPU)")
    m.add_argument("--name", default="cpu-host", help="name of the --spec-out device")
    add_format_arg(m)
    m.set_defaults(func=cmd_microbench)


def set_threads(n: int | None) -> None:
    """torch's intra-op threads, when --threads is given (checked; torch imported by the caller)."""
    if n is None:
        return
    if n < 1:
        raise RoofplanError(f"--threads must be >= 1 (got {n})")
    import torch
    torch.set_num_threads(n)


def applied_text(res: dict) -> str:
    """What really ran (run.build_step's `applied`), in words."""
    parts = [f"{res['dtype']}" + (f" autocast over {res['weights_dtype']} weights" if res.get("autocast") else "")]
    if res["phase"] == "decode":
        parts.append("CUDA graph replay" if res.get("cuda_graph") else "eager launches")
    if res.get("offload_weights") == "cpu":
        parts.append(f"layer weights in {res['host_memory']} host memory, "
                     + ("copies overlapped on a side stream" if res.get("overlap") else "copied synchronously"))
    return ", ".join(parts)


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
                     recompute=args.recompute, lora_rank=args.lora_rank, lora_targets=args.lora_targets,
                     offload_weights=offload), model)
    for name in ("steps", "trace_steps"):
        if getattr(args, name) < 1:
            raise RoofplanError(f"--{name.replace('_', '-')} must be >= 1")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise RoofplanError("roofplan run needs torch: pip install 'roofplan[executor]' (torch==2.13.0)") from None
    set_threads(args.threads)
    from simulator.executor.run import RunSpec, run
    spec = RunSpec(phase=args.phase, batch=args.batch, seq=args.seq, context=args.context, dtype=args.dtype,
                   device=args.device, recompute=args.recompute, lora_rank=args.lora_rank,
                   lora_targets=args.lora_targets, offload_weights=offload,
                   host_memory=args.host_memory, overlap=not args.no_overlap, cuda_graph=not args.no_cuda_graph,
                   steps=args.steps, warmup=args.warmup, trace_steps=args.trace_steps)
    res = run(model, spec, args.trace, args.result)
    rows = [["step time (median)", fmt_time(res["time_s"])],
            ["steps", ", ".join(fmt_time(t) for t in res["times_s"])],
            ["device", f"{res['device_name']} ({res['threads']} threads)" if args.device == "cpu" else res["device_name"]],
            ["ran as", applied_text(res)],
            ["parameters", f"{res['params']:,}"]]
    if "peak_memory_bytes" in res:
        rows.append(["peak memory", fmt_bytes(res["peak_memory_bytes"])])
    footer = "".join(f"\nwrote {p}" for p in (args.trace, args.result) if p)
    emit(fmt_of(args), json_obj=res, rows=rows, header=["measured", "value"],
         title=f"{model.name} {args.phase} batch {args.batch} on {args.device} (torch {res['torch']})", footer=footer)
    return 0


def cmd_microbench(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise RoofplanError("roofplan microbench needs torch: pip install 'roofplan[executor]' (torch==2.13.0)") from None
    import time
    set_threads(args.threads)
    from simulator.executor.microbench import run_microbench, write_microbench
    t0 = time.perf_counter()
    took = {}
    rows = run_microbench(args.device, args.budget, args.nvme_dir, log=lambda name, s: took.__setitem__(name, s))
    write_microbench(args.output, rows)
    footer = f"\n{time.perf_counter() - t0:.1f} s ({args.budget} budget); wrote {args.output}"
    if args.spec_out:
        import yaml
        from pathlib import Path
        from simulator.executor.measured_specs import device_spec
        try:
            Path(args.spec_out).write_text(yaml.safe_dump(device_spec(rows, args.name), sort_keys=False))
        except OSError as e:
            raise RoofplanError(f"cannot write {args.spec_out} ({e.strerror}); pass another --spec-out") from None
        footer += f" and {args.spec_out}"
    kinds: dict[str, int] = {}
    for r in rows:
        if r["kind"] != "env":
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    skipped = [f"skipped {r['what']}: {r['reason']}" for r in rows if r["kind"] == "skip"]
    stand_in = sorted({r["stand_in"] for r in rows if r.get("stand_in")})
    footer += "".join(f"\n{s}" for s in skipped) + "".join(f"\nhost<->device copies: {s}" for s in stand_in)
    emit(fmt_of(args), json_obj={"rows": rows, "section_s": took}, rows=[[k, n] for k, n in kinds.items()],
         header=["kind", "rows"], title=f"microbenchmarks on {rows[0]['gpu'] or args.device}", footer=footer)
    return 0
