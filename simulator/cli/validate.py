"""`roofplan validate`: predicted vs measured.

  --trace T + job flags  -> per op class (kernel time) and end to end for one traced step;
                            --plot PNG, --chrome-trace JSON (the predicted timeline)
  --end-to-end FILE      -> every case of an end_to_end.yaml-format file, MAPE per group
"""
from __future__ import annotations

import sys

from simulator.core.errors import RoofplanError
from simulator.report.tables import add_format_arg, emit, fmt_of
from simulator.core.units import fmt_bytes, fmt_time
from simulator.cli.args import plot_path


def register(sub) -> None:
    p = sub.add_parser("validate", help="compare predictions with a profiler trace or measured end-to-end cases")
    p.add_argument("--trace", default=None, metavar="T", help="torch.profiler Chrome trace (.json/.json.gz)")
    p.add_argument("--end-to-end", default=None, metavar="FILE", help="measured cases (measurements/<gpu>/end_to_end.yaml format)")
    p.add_argument("--plan", default=None, metavar="PLAN.json", help="offload plan (roofplan plan offload --format json)")
    p.add_argument("--result", default=None, metavar="RESULT.json", help="with --plan: roofplan run --plan ... --result")
    p.add_argument("--segment", default=None, help="trace segment to compare (default: the last one of --phase)")
    p.add_argument("--plot", type=plot_path, default=None, metavar="OUT.png", help="bar chart of predicted vs measured per class")
    p.add_argument("--chrome-trace", default=None, metavar="PRED.json", help="write the predicted timeline as a Chrome trace")
    # job flags as in predict, optional here because --end-to-end reads them from the file
    p.add_argument("--model")
    p.add_argument("--hardware")
    p.add_argument("--phase", choices=("prefill", "decode", "train"))
    from simulator.cli.predict import add_job_args
    import argparse
    tmp = argparse.ArgumentParser(add_help=False)
    add_job_args(tmp)
    for a in tmp._actions:
        if a.dest in ("model", "hardware", "phase"):
            continue
        kw = {"default": a.default, "help": a.help}
        if a.nargs == 0:
            p.add_argument(*a.option_strings, action="store_true", help=a.help)
        else:
            if a.type:
                kw["type"] = a.type
            if a.choices:
                kw["choices"] = a.choices
            if a.metavar:
                kw["metavar"] = a.metavar
            p.add_argument(*a.option_strings, **kw)
    add_format_arg(p)
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    if sum(map(bool, (args.trace, args.end_to_end, args.plan))) != 1:
        raise RoofplanError("validate needs exactly one of --trace T (with --model, --hardware, --phase), "
                            "--end-to-end FILE or --plan PLAN.json --result RESULT.json")
    if args.end_to_end:
        return _end_to_end(args)
    if args.plan:
        return _plan(args)
    for flag in ("model", "hardware", "phase"):
        if not getattr(args, flag):
            raise RoofplanError(f"validate --trace needs --{flag} (the job the trace recorded)")
    from simulator.core.models import load_model
    from simulator.core.predict import predict
    from simulator.core.profiles import load_executor_profile, load_kernel_profile
    from simulator.core.specs import load_hardware
    from simulator.calibration.trace import check_device, load_trace
    from simulator.calibration.validate import check_job, compare, pick_segment, plot, write_chrome_trace
    from simulator.cli.predict import job_from_args
    model = load_model(args.model)
    system = load_hardware(args.hardware)
    trace = load_trace(args.trace)
    check_device(trace, system.gpu)
    seg = pick_segment(trace, args.phase, args.segment)
    job = job_from_args(args)
    for w in check_job(trace, seg, model, job):     # a trace of another model or phase is refused
        print(f"roofplan: warning: {w}", file=sys.stderr)
    ex = load_executor_profile(args.executor)
    kp = load_kernel_profile(system.gpu.name, args.kernel_profile)
    pred = predict(model, system, job, ex, kp, check_memory=False)
    df, summary = compare(trace, seg, pred, ex.stream_gap_s)
    rows = [[r.cls, fmt_time(r.measured_s) if r.measured_s else "-", fmt_time(r.predicted_s) if r.predicted_s else "-",
             f"{100 * r.error:+.1f}%" if r.error == r.error else "-", r.measured_kernels, r.predicted_kernels]
            for r in df.itertuples()]
    s = summary
    rows.append(["kernels total", fmt_time(s["measured_kernel_time_s"]), fmt_time(s["predicted_gpu_time_s"]),
                 f"{100 * s['kernel_time_error']:+.1f}%", int(df["measured_kernels"].sum()), int(df["predicted_kernels"].sum())])
    rows.append(["step (wall)", fmt_time(s["measured_wall_s"]), fmt_time(s["predicted_step_s"]),
                 f"{100 * s['step_error']:+.1f}%", "", ""])
    title = (f"{model.name} {args.phase} batch {args.batch} on {system.name} ({ex.name} executor) vs "
             f"segment {seg} of {trace.path.rsplit('/', 1)[-1]}")
    footer = (f"\nkernel time error {100 * s['kernel_time_error']:+.1f}%, step error {100 * s['step_error']:+.1f}% "
              f"(predicted bound: {s['bound']}), per-class error weighted by measured time {100 * s['class_mape_weighted']:.1f}%")
    if s["bound"] == "host":
        footer += "\nnote: host-bound step; the traced wall time includes profiler overhead on the host"
    elif s["measured_host_stall_s"] > 0.02 * s["measured_wall_s"]:
        rest = s["measured_wall_s"] - s["measured_host_stall_s"]
        footer += (f"\nnote: the traced GPU waited {fmt_time(s['measured_host_stall_s'])} for the profiled host "
                   f"({s['host_stalls']} gaps over 20 us); without them the step is {fmt_time(rest)} "
                   f"(predicted {100 * (s['predicted_step_s'] / rest - 1):+.1f}%)")
    if args.plot:
        plot(df, s, title, args.plot)
        footer += f"\nwrote {args.plot}"
    if args.chrome_trace:
        write_chrome_trace(pred, args.chrome_trace)
        footer += f"\nwrote {args.chrome_trace} (open in https://ui.perfetto.dev beside {args.trace})"
    emit(fmt_of(args), json_obj={"summary": s, "classes": df.to_dict("records")}, rows=rows,
         header=["class", "measured", "predicted", "error", "kernels meas", "kernels pred"], title=title, footer=footer)
    return 0


def _end_to_end(args) -> int:
    from simulator.calibration.accuracy import compare_cases, load_cases, mape
    hw, cases = load_cases(args.end_to_end)
    hw = args.hardware or hw
    if not hw:
        raise RoofplanError(f"{args.end_to_end} names no 'hardware:'; pass --hardware")
    df = compare_cases(hw, cases)
    rows, unpredicted = [], []
    for r in df.to_dict("records"):
        if isinstance(r.get("error"), str):
            unpredicted.append(f"not predicted: {r['id']}: {r['error']}")
            rows.append([r["id"], r["group"], fmt_time(r["measured_time_s"]), "-", "n/a", "", "", ""])
            continue
        mem = r.get("measured_memory_bytes")
        has_mem = mem == mem and mem is not None
        rows.append([r["id"], r["group"], fmt_time(r["measured_time_s"]), fmt_time(r["predicted_time_s"]),
                     f"{100 * r['time_error']:+.1f}%",
                     fmt_bytes(mem) if has_mem else "-",
                     fmt_bytes(r["predicted_memory_bytes"]) if has_mem else "-",
                     f"{100 * r['memory_error']:+.1f}%" if has_mem else "-"])
    groups = {}
    for g, sub in df.groupby("group", sort=False):
        groups[g] = {"cases": len(sub), "time_mape": mape(sub.get("time_error", [])),
                     "memory_mape": mape(sub["memory_error"]) if "memory_error" in sub else float("nan")}
    overall = {"cases": len(df), "time_mape": mape(df.get("time_error", [])),
               "memory_mape": mape(df["memory_error"]) if "memory_error" in df else float("nan")}
    footer = "\n" + "\n".join(
        f"{g:<10} cases {v['cases']:>3}  time MAPE {100 * v['time_mape']:5.1f}%" +
        (f"  memory MAPE {100 * v['memory_mape']:5.1f}%" if v["memory_mape"] == v["memory_mape"] else "")
        for g, v in {**groups, "all": overall}.items() if v["time_mape"] == v["time_mape"])
    footer += "".join("\n" + u for u in unpredicted)
    from simulator.calibration.copy_fit import fitted_cases, in_sample_lines
    fitted = fitted_cases(hw, cases)
    footer += "".join("\n" + line for line in in_sample_lines(fitted))
    emit(fmt_of(args), json_obj={"hardware": hw, "cases": df.to_dict("records"), "groups": groups, "all": overall,
                                 "in_sample": {i: {"fitted": f"{exe}.copy_efficiency_scale", "held_out_time_error": e}
                                               for i, (exe, e) in fitted.items()}},
         rows=rows, header=["case", "group", "measured", "predicted", "error", "mem meas", "mem pred", "mem error"],
         title=f"predicted vs measured on {hw} ({args.end_to_end})", footer=footer)
    return 0


def _plan(args) -> int:
    if not args.result:
        raise RoofplanError("validate --plan needs --result RESULT.json (written by roofplan run --plan PLAN.json --result RESULT.json)")
    from planners.offload_check import PLAN_SCHEMA, RUN_SCHEMA, compare, load_json
    plan = load_json(args.plan, "--plan", PLAN_SCHEMA)
    res = load_json(args.result, "--result", RUN_SCHEMA)
    d = compare(plan, res)
    fmt_v = lambda v, u: fmt_time(v) if u == "s" else f"{v:,.2f} {u}"
    rows = [[r["quantity"], fmt_v(r["predicted"], r["unit"]), fmt_v(r["measured"], r["unit"]),
             f"{100 * r['error']:+.1f}%" if r["error"] is not None else "-"] for r in d["rows"]]
    ex = d["placement"]["executed"] or {}
    weff = ex.get("weights_effective", {})
    footer = ("\npredicted bound: " + ", ".join(f"{s['stage']} {s['binds']} ({100 * s['utilisation'][s['binds']]:.0f}%)"
                                            for s in d["stages"])
              + f"; plan binds: {d['binds']}"
              + "\nweights gpu/cpu/nvme planned " + "/".join(f"{100 * plan['placement']['weights'][t]:.0f}" for t in ("gpu", "cpu", "nvme"))
              + ", executed (whole tensors) " + "/".join(f"{100 * weff.get(t, 0):.0f}" for t in ("gpu", "cpu", "nvme"))
              + f"; KV cache on {ex.get('kv_cache')}, activations on {ex.get('activations')}, attention on {ex.get('attention')}")
    emit(fmt_of(args), json_obj=d, rows=rows, header=["quantity", "predicted", "measured", "error"],
         title=f"{d['model']} plan for {d['hardware']} vs run on {d['device']}", footer=footer)
    return 0
