"""`roofplan calibrate`: fit profiles to measurements.

  --microbench F        -> kernel profile (efficiency curves per op class; calibrate.fit_kernel_profile)
  --trace T [--trace]   -> executor profile (layer structure, host overhead per launch, GEMM scale;
                           trace_fit.fit_executor_profile), against the GPU's kernel profile
  both                  -> the kernel profile goes to --kernels-out, the executor profile (fitted
                           against the new kernel profile) to -o
  --step-times F --engine E -> executor profile of a serving engine from its published iteration
                           times (step_fit.fit_step_times), against the GPU's kernel profile
"""
from __future__ import annotations

from pathlib import Path

import yaml

from simulator.core.errors import RoofplanError
from simulator.core.profiles import load_kernel_profile, parse_kernel_profile
from simulator.core.specs import read_yaml
from simulator.report.tables import add_format_arg, emit, fmt_of
from simulator.core.specs import load_hardware, specs_root


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a kernel profile (microbenchmarks) or an executor profile (traces)")
    p.add_argument("--trace", action="append", default=[], metavar="T", help="torch.profiler Chrome trace (.json/.json.gz); repeatable")
    p.add_argument("--microbench", default=None, metavar="F", help="microbenchmark JSONL (measurements/<gpu>/microbench.jsonl format)")
    p.add_argument("--hardware", required=True, help="GPU or system the measurements come from")
    p.add_argument("-o", "--output", required=True, metavar="PROFILE.yaml", help="profile to write")
    p.add_argument("--kernels-out", default=None, metavar="K.yaml", help="with both --trace and --microbench: where the kernel profile goes")
    p.add_argument("--kernel-profile", default=None, help="kernel profile for fitting an executor (default: the GPU's own)")
    p.add_argument("--step-time", type=float, default=None, metavar="SECONDS",
                   help="wall time of the traced host-bound step measured without the profiler (the profiler slows the host)")
    p.add_argument("--step-times", default=None, metavar="F",
                   help="serving-engine iteration times (YAML, format in simulator/calibration/step_fit.py) -> executor profile")
    p.add_argument("--engine", default=None, help="with --step-times: which engine of the file to fit")
    p.add_argument("--description", default="", help="description stored in an executor profile")
    add_format_arg(p)
    p.set_defaults(func=cmd_calibrate)


def _write(path: Path, d: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(d, sort_keys=False, width=100))
    except OSError as e:
        raise RoofplanError(f"cannot write {path} ({e.strerror}); pass another -o") from None


def _executor_base() -> dict:
    """Fields a trace cannot tell, from profiles/executors/default.yaml (eager kernel sequences of
    RMSNorm and RoPE, fp32 residual in training, workspace); graph-only fields dropped."""
    p = specs_root() / "profiles" / "executors" / "default.yaml"
    base = read_yaml(p) if p.is_file() else {}
    return {k: v for k, v in base.items() if k not in ("description", "source", "kernel_overhead_us", "name", "kind")}


def cmd_calibrate(args) -> int:
    if args.step_times:
        return _calibrate_step_times(args)
    if not args.trace and not args.microbench:
        raise RoofplanError("calibrate needs --microbench F (kernel profile), --trace T or --step-times F --engine E (executor profile)")
    if args.trace and args.microbench and not args.kernels_out:
        raise RoofplanError("with both --trace and --microbench, pass --kernels-out K.yaml for the kernel profile (-o gets the executor profile)")
    if args.step_time is not None and args.step_time <= 0:
        raise RoofplanError(f"--step-time must be > 0 seconds (got {args.step_time})")
    system = load_hardware(args.hardware)
    out = Path(args.output)
    rows, result = [], {}
    kp = None
    if args.microbench:
        from simulator.calibration.calibrate import fit_kernel_profile, read_microbench
        mb = Path(args.microbench)
        prof, errors = fit_kernel_profile(read_microbench(mb), system.gpu, system.host_link,
                                          source=f"fitted by `roofplan calibrate --microbench {mb.name} --hardware {args.hardware}`")
        kpath = Path(args.kernels_out) if args.trace else out
        _write(kpath, prof)
        kp = parse_kernel_profile(prof, kpath)
        result["kernel_profile"] = {"path": str(kpath), "fit_mape": errors}
        rows += [["kernel profile", part, f"fit error {100 * e:.1f}%"] for part, e in errors.items()]
    if args.trace:
        from simulator.calibration.trace import check_device, load_trace
        from simulator.calibration.trace_fit import fit_executor_profile
        traces = [load_trace(t) for t in args.trace]
        for t in traces:
            check_device(t, system.gpu)
        if kp is None:
            kp = load_kernel_profile(system.gpu.name, args.kernel_profile)
        prof, ev = fit_executor_profile(traces, system, kp, out.stem, args.step_time, _executor_base())
        names = ", ".join(Path(t).name for t in args.trace)
        prof["description"] = args.description or prof["description"]
        src = [f"fitted by `roofplan calibrate --trace {' --trace '.join(Path(t).name for t in args.trace)} --hardware {args.hardware}"
               + (f" --step-time {args.step_time}" if args.step_time else "") + f"` (kernel profile {kp.name}) from {names}."]
        if "host" in ev:
            h = ev["host"]
            src.append(f"host_overhead_per_kernel_us: {h['wall_s'] * 1e3:.2f} ms wall of host-bound segment {h['segment']} "
                       f"/ {h['launches']} launches ({h['kernels']} kernels, {h['kernel_time_s'] * 1e3:.2f} ms of GPU time; "
                       f"traced CPU span {h['traced_cpu_span_s'] * 1e3:.1f} ms with the profiler).")
        if "gemm" in ev:
            g = ev["gemm"]
            src.append("gemm_efficiency_scale: measured/predicted time of the traces' compute-bound GEMM calls: "
                       + "; ".join(f"{x['measured_s'] * 1e3:.1f} ms vs {x['predicted_unscaled_s'] * 1e3:.1f} ms"
                                   for x in g if x.get("compute_bound_calls")) + ".")
        if "layer_structure" in ev:
            s = ev["layer_structure"]
            src.append(f"fused_qkv/fused_gate_up/repeat_kv/kv_cache_concat: from aten::linear weight shapes (hidden {s['hidden']}, "
                       f"ffn {s['ffn']}), SDPA K/V heads and aten::cat of the KV cache in the trace.")
        src.append("Other fields from default.yaml.")
        prof["source"] = " ".join(src)
        ordered = {"description": prof.pop("description"), **{k: v for k, v in prof.items() if k != "source"},
                   "source": prof["source"]}
        _write(out, ordered)
        result["executor_profile"] = {"path": str(out), "fields": {k: v for k, v in ordered.items() if k not in ("description", "source")},
                                      "evidence": ev}
        rows += [["executor profile", k, str(v)] for k, v in ordered.items() if k not in ("description", "source")]
    emit(fmt_of(args), json_obj=result, rows=rows, header=["profile", "field", "value"],
         title=f"calibrated on {system.gpu.name}", footer=f"\nwrote {out}" + (f" and {args.kernels_out}" if args.trace and args.microbench else ""))
    return 0


def _calibrate_step_times(args) -> int:
    from simulator.calibration.step_fit import fit_step_times
    if args.trace or args.microbench:
        raise RoofplanError("--step-times fits an executor profile on its own; run --trace/--microbench separately")
    if not args.engine:
        raise RoofplanError("--step-times needs --engine E (one of the engines in the file)")
    system = load_hardware(args.hardware)
    kp = load_kernel_profile(system.gpu.name, args.kernel_profile)
    prof, report = fit_step_times(args.step_times, args.engine, system.gpu, kp)
    if args.description:
        prof["description"] = args.description
    out = Path(args.output)
    _write(out, prof)
    rows = [[k, str(v)] for k, v in report.items() if k not in ("engine", "hardware")]
    emit(fmt_of(args), json_obj={"executor_profile": {"path": str(out), **report}}, rows=rows, header=["field", "value"],
         title=f"{args.engine} on {system.gpu.name}: executor profile fitted to step times", footer=f"\nwrote {out}")
    return 0
