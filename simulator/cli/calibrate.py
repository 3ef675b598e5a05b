"""`roofplan calibrate`: fit profiles to measurements.

  --microbench F        -> kernel profile (efficiency curves per op class; calibrate.fit_kernel_profile);
                           a figure the file cannot give is refused, or taken from --fallback-profile P
                           and named in the profile's source
  --trace T [--trace]   -> executor profile (layer structure, GEMM scale, host-cost table of the
                           host-bound step deflated by --end-to-end cases or --step-time;
                           trace_fit.fit_executor_profile, host_fit), against the GPU's kernel
                           profile; refitting an existing -o keeps the fields a trace cannot tell.
  both                  -> the kernel profile goes to --kernels-out, the executor profile (fitted
                           against the new kernel profile) to -o
  --step-times F --engine E -> executor profile of a serving engine from its published iteration
                           times (step_fit.fit_step_times), against the GPU's kernel profile
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from simulator.core.errors import RoofplanError
from simulator.core.profiles import load_kernel_profile, parse_kernel_profile
from simulator.core.specs import read_yaml
from simulator.report.tables import add_format_arg, emit, fmt_of
from simulator.core.specs import load_hardware, specs_root
from simulator.cli.args import finite_float


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a kernel profile (microbenchmarks) or an executor profile (traces)")
    p.add_argument("--trace", action="append", default=[], metavar="T", help="torch.profiler Chrome trace (.json/.json.gz); repeatable")
    p.add_argument("--microbench", default=None, metavar="F", help="microbenchmark JSONL (measurements/<gpu>/microbench.jsonl format)")
    p.add_argument("--hardware", required=True, help="GPU or system the measurements come from")
    p.add_argument("-o", "--output", required=True, metavar="PROFILE.yaml", help="profile to write")
    p.add_argument("--fallback-profile", default=None, metavar="P",
                   help="with --microbench: kernel profile (name or .yaml) to take the figures the file does not "
                        "measure from, named in the written profile's source (default: refuse them)")
    p.add_argument("--kernels-out", default=None, metavar="K.yaml", help="with both --trace and --microbench: where the kernel profile goes")
    p.add_argument("--kernel-profile", default=None, help="kernel profile for fitting an executor (default: the GPU's own)")
    p.add_argument("--step-time", type=finite_float, default=None, metavar="SECONDS",
                   help="wall time of the traced host-bound step measured without the profiler (the profiler slows the host); "
                        "a step without a graph build")
    p.add_argument("--end-to-end", default=None, metavar="E2E.yaml",
                   help="un-profiled cases (end_to_end.yaml format): the traced model's batch-1 prefill fits the profiler "
                        "deflation of the host costs, its decode the per-step graph build; the executor's other cases are held out")
    p.add_argument("--step-times", default=None, metavar="F",
                   help="serving-engine iteration times (YAML, format in simulator/calibration/step_fit.py) -> executor profile")
    p.add_argument("--engine", default=None, help="with --step-times: which engine of the file to fit")
    p.add_argument("--description", default="", help="description stored in an executor profile")
    add_format_arg(p)
    p.set_defaults(func=cmd_calibrate)


def _write(path: Path, d: dict, flow: bool | None = False, width: int = 100) -> None:
    """`flow=None`: mappings of scalars on one line ({gemm: 30.2, attention: 53.8})."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(d, sort_keys=False, width=width, default_flow_style=flow))
    except OSError as e:
        raise RoofplanError(f"cannot write {path} ({e.strerror}); pass another -o") from None


def _executor_base(out: Path) -> tuple[dict, str, str]:
    """Fields a trace cannot tell: those of the profile being refitted (-o, when it exists: its
    workspace, training host costs, description), else default.yaml's (eager kernel sequences of
    RMSNorm and RoPE, fp32 residual in training, workspace; graph-only fields dropped). Returns
    (fields, their source text, where they came from)."""
    if out.is_file():
        prev = read_yaml(out)
        if not isinstance(prev, dict):
            raise RoofplanError(f"{out}: not an executor profile (a YAML mapping); pass another -o")
        return ({k: v for k, v in prev.items() if k not in ("source", "name", "kind")}, str(prev.get("source", "")),
                f"the previous {out.name}")
    p = specs_root() / "profiles" / "executors" / "default.yaml"
    base = read_yaml(p) if p.is_file() else {}
    return {k: v for k, v in base.items() if k not in ("description", "source", "kernel_overhead_us", "name", "kind")}, "", "default.yaml"


# sentences this command writes into `source` (refitting replaces them), and those of the host fit
_OWN_SENTENCES = ("fitted by `roofplan calibrate", "Other fields")
_HOST_SENTENCES = ("Host lane", "Mapped onto roofplan ops", "Held out")
_TRAIN_SENTENCES = ("Training (",)
TRAIN_HOST_FIELDS = ("host_autograd_scale", "host_backward_per_kernel_us", "host_backward_per_layer_us", "host_optimizer_us")


def _kept_sentences(source: str, refitted: set[str], host: bool, train: bool = False) -> list[str]:
    """Sentences of a refitted profile's source about what the fit keeps: not written by this
    command (its host sentences only when the host costs were refitted, its training sentence
    when the training host costs were) and naming no refitted field."""
    own = _OWN_SENTENCES + (_HOST_SENTENCES if host else ()) + (_TRAIN_SENTENCES if train else ())
    out = []
    for s in re.split(r"(?<=\.)\s+(?=[A-Za-z`])", source.strip()):
        if not s or s.startswith(own) or (host and re.fullmatch(r"\S+ cases are held out\.", s)) \
                or any(re.search(rf"\b{re.escape(f)}\b", s) for f in refitted):
            continue
        out.append(s)
    return out


# evidence key of simulator.calibration.kernel_fit's fits -> the fields each writes
IN_STREAM_EVIDENCE = {"kernel_floors": ("kernel_overhead_us",), "gemm_in_stream": ("gemm_overhead_us", "gemm_memory_efficiency"),
                      "attn_decode": ("attn_decode_overhead_us",), "memory_scales": ("memory_efficiency_scale",)}


def _in_stream_source(ev: dict) -> str:
    """One sentence on the kernel fields the traces timed in the stack's own stream."""
    parts = []
    if "kernel_floors" in ev:
        f = ev["kernel_floors"]
        parts.append("kernel_overhead_us: mean traced duration of the norm/elementwise kernels of ops whose inputs are all under "
                     f"{f['tiny_elems']} elements, in segments where most are ({', '.join(f['segments'])}: "
                     + ", ".join(f"{c} {x['mean_us']:.2f} us over {x['kernels']} kernels" for c, x in f["classes"].items())
                     + "; an isolated event-timed launch: the kernel profile's)")
    if "gemm_in_stream" in ev:
        g = ev["gemm_in_stream"]
        parts.append(f"gemm_overhead_us and gemm_memory_efficiency: least squares over the {g['calls']} memory-bound inference "
                     f"GEMM calls (F.linear, split-K reductions included), {g['measured_s'] * 1e3:.2f} ms traced, "
                     f"{g['profile_s'] * 1e3:.2f} ms by the kernel profile, {g['fitted_s'] * 1e3:.2f} ms fitted ("
                     + ", ".join(f"{x['MB']:g} MB {x['measured_us']:g} vs {x['fitted_us']:g} us" for x in g["sizes"]) + ")")
    if "attn_decode" in ev:
        a = ev["attn_decode"]
        parts.append(f"attn_decode_overhead_us: {a['calls']} decode attention calls, {a['measured_us']:.2f} us traced, "
                     f"{a['work_us']:.2f} us of work by the kernel profile (whose overhead is {a['profile_overhead_us']:.2f} us)")
    if "memory_scales" in ev:
        m = ev["memory_scales"]
        parts.append(f"memory_efficiency_scale: predicted over traced work time of each class in {m['segment']} of {m['trace']} "
                     f"({m['model']} prefill batch {m['batch']} x {m['seq']}; the per-kernel overheads above taken out: "
                     + ", ".join(f"{c} {x['measured_s'] * 1e3:.1f} ms traced, {x['predicted_unscaled_s'] * 1e3:.1f} ms unscaled"
                                 for c, x in m["classes"].items()) + ")")
    return ("In-stream kernels (simulator.calibration.kernel_fit: this stack's own kernels, timed in its trace, replace "
            "the isolated microbenchmarks' constants): " + "; ".join(parts) + ".")


def _host_source(h: dict, trace: str) -> list[str]:
    """The host fit's sentences (evidence of host_fit.fit_host)."""
    kinds = h["kinds"]
    f = h["fields"]

    def us(kind):
        return f"{kinds[kind]['mean_us_profiled']:.1f}"
    build = kinds["new_shape_build"]
    text = (f"Host lane (simulator.core.step.lanes): per-op CPU costs from the CPU timeline of {trace} ({h['segment']} step, "
            f"top-level aten ops: elementwise {us('elementwise')} us, norm pieces {us('norm')}, copy/cat/casts {us('copy')}, "
            f"linear/matmul {us('gemm')}, attention {us('attention')} steady, view-like {us('view')}, Python between ops "
            f"{us('python_per_layer')} us per layer, {us('python_outside_layers')} us outside the layers")
    if build["count"]:
        text += (f"; the slow attention call of the step {build['mean_us_profiled'] / 1e3:.1f} ms beyond a steady one: "
                 "the backend builds a graph for the new shape")
    fit = "; ".join(f"{x['id']} ({x['measured_s'] * 1e3:.2f} ms)" for x in h["k_fitted_on"])
    text += f"), deflated by the profiler factor {h['k_prof']:.3f} fitted on {fit}, measured without the profiler"
    if h["new_shape_fitted_on"]:
        text += "; host_new_shape_us fitted on " + "; ".join(f"{x['id']} ({x['measured_s'] * 1e3:.2f} ms)"
                                                             for x in h["new_shape_fitted_on"])
    out = [text + "."]
    po = f["host_per_op_us"]
    out.append(f"Mapped onto roofplan ops: {f['host_overhead_per_kernel_us']:g} us per kernel (elementwise/norm/copy pieces), "
               f"+ {po.get('gemm', 0):g} us per GEMM op and + {po.get('attention', 0):g} us per attention op (their dispatch "
               f"beyond a launch), {f['host_per_layer_us']:g} us per layer (Python gaps + view ops), "
               f"{f['host_overhead_per_step_us']:g} us per step (the same outside the layers).")
    held = h["held_out"]
    parts = []
    if "other_models" in held:
        o = held["other_models"]
        parts.append(f"{o['inference_cases']} inference cases of {', '.join(o['models'])} within "
                     f"{100 * o['min_error']:+.1f}..{100 * o['max_error']:+.1f}% (MAPE {100 * o['mape']:.1f}%)")
    for t in held["traced_steps"]:
        parts.append(f"the traced {t['segment']} host time from the {h['segment']} costs (profiled) {100 * t['error']:+.1f}%, "
                     f"its layers {t['late_layers']} {100 * t['late_layer_error']:+.1f}% per layer")
    if parts:
        out.append("Held out: " + "; ".join(parts) + ".")
    return out


def _train_host_source(t: dict, f: dict, held: list[dict]) -> str:
    """The training host fit's sentence (evidence of host_fit.fit_train_host)."""
    n = t["nodes"]
    nodes = ", ".join(f"{c} {n[c]['mean_us_profiled']:g}" for c in n if n[c]["count"])
    text = (f"Training (host_fit.fit_train_host, from the CPU timeline of {t['trace']}, {t['segment']} of {t['model']}, "
            f"deflated by the same {t['k_prof']:.4f}): the forward thread spends {t['forward_ms_profiled']:.1f} ms profiled, "
            f"the autograd thread {t['backward_ms_profiled']:.1f} ms, optimizer.step + zero_grad {t['optimizer_ms_profiled']:.1f} ms; "
            f"mean backward node by class (us profiled: {nodes}) gives host_backward_per_kernel_us; host_autograd_scale "
            f"{f['host_autograd_scale']:g} and host_backward_per_layer_us {f['host_backward_per_layer_us']:g} make the host lane of "
            f"{t['model']} issue the forward and the backward in k x their traced spans")
    rows = [r for r in held if r["phase"] == "train" and "error" in r]
    if rows:
        text += "; held out: " + ", ".join(f"{r['id']} {100 * r['error']:+.1f}%" for r in rows)
    return text + "."


def _held_out_rows(h: dict | None) -> list[list[str]]:
    """Table rows: the profiler factor and every held-out prediction of the host fit."""
    if not h:
        return []
    rows = [["host fit", "profiler factor k", f"{h['k_prof']:.4f} (fitted on {', '.join(x['id'] for x in h['k_fitted_on'])})"]]
    for t in h["held_out"]["traced_steps"]:
        val = (f"{t['predicted_host_s'] * 1e3:.2f} ms vs {t['measured_host_s'] * 1e3:.2f} ms ({100 * t['error']:+.1f}%); "
               f"{t['late_layers']} {100 * t['late_layer_error']:+.1f}% per layer")
        rows.append(["held out", f"traced {t['segment']} host (profiled)", val])
    for c in h["held_out"].get("trace_classes", []):
        rows.append(["held out", f"kernel classes, {c['segment']} of {c['trace']}",
                     ", ".join(f"{k} {100 * e:+.1f}%" for k, e in c["classes"].items())
                     + f"; kernels {100 * c['kernel_time_error']:+.1f}%"])
    for r in h["held_out"].get("end_to_end", []):
        if r["role"] == "fitted":
            continue
        val = (f"{r['predicted_s'] * 1e3:.2f} ms vs {r['measured_s'] * 1e3:.2f} ms ({100 * r['error']:+.1f}%)"
               if "error" in r else r.get("note", ""))
        rows.append(["held out", r["id"], val])
    if "other_models" in h["held_out"]:
        o = h["held_out"]["other_models"]
        rows.append(["held out", f"{', '.join(o['models'])} inference MAPE",
                     f"{100 * o['mape']:.1f}% ({o['inference_cases']} cases, {100 * o['min_error']:+.1f}..{100 * o['max_error']:+.1f}%)"])
    return rows


def cmd_calibrate(args) -> int:
    if args.step_times:
        return _calibrate_step_times(args)
    if not args.trace and not args.microbench and args.end_to_end:
        return _calibrate_copies(args)
    if not args.trace and not args.microbench:
        raise RoofplanError("calibrate needs --microbench F (kernel profile), --trace T, --end-to-end E2E or --step-times F "
                            "--engine E (executor profile)")
    if args.trace and args.microbench and not args.kernels_out:
        raise RoofplanError("with both --trace and --microbench, pass --kernels-out K.yaml for the kernel profile (-o gets the executor profile)")
    if args.fallback_profile and not args.microbench:
        raise RoofplanError("--fallback-profile fills what a microbenchmark file lacks; pass it with --microbench F")
    if args.step_time is not None and args.step_time <= 0:
        raise RoofplanError(f"--step-time must be > 0 seconds (got {args.step_time})")
    system = load_hardware(args.hardware)
    out = Path(args.output)
    rows, result = [], {}
    # every input is read and checked before anything is fitted, and every profile is written
    # only once all fits have succeeded: bad data never leaves a profile behind
    writes: list[tuple[Path, dict, dict]] = []
    mb_rows = traces = e2e = None
    if args.microbench:
        from simulator.calibration.calibrate import read_microbench, recorded_devices
        from simulator.calibration.trace import check_recorded_device
        mb_rows = read_microbench(args.microbench)
        for dev in recorded_devices(mb_rows):       # as a trace's deviceProperties are checked
            check_recorded_device(dev, args.microbench, system.gpu)
    if args.trace:
        from simulator.calibration.trace import check_device, load_trace
        traces = [load_trace(t) for t in args.trace]
        for t in traces:
            check_device(t, system.gpu)
        if args.end_to_end:
            from simulator.calibration.accuracy import load_cases
            hw, cases = load_cases(args.end_to_end)
            if hw and load_hardware(hw).gpu.name != system.gpu.name:
                raise RoofplanError(f"{args.end_to_end} was measured on {hw}, the trace on {system.gpu.name}; pass cases of the traced GPU")
            e2e = (Path(args.end_to_end).name, cases)
    else:
        for flag, val in (("--end-to-end", args.end_to_end), ("--step-time", args.step_time)):
            if val is not None:
                raise RoofplanError(f"{flag} deflates the host costs of a traced step; pass it with --trace T "
                                    "(or --end-to-end alone: an executor's copy efficiency)")
    kp = None
    if mb_rows is not None:
        from simulator.calibration.calibrate import fit_kernel_profile
        mb = Path(args.microbench)
        fallback = _fallback_profile(args.fallback_profile) if args.fallback_profile else None
        prof, errors = fit_kernel_profile(mb_rows, system.gpu, system.host_link, fallback=fallback,
                                          source=f"fitted by `roofplan calibrate --microbench {mb.name} --hardware {args.hardware}"
                                                 + (f" --fallback-profile {args.fallback_profile}`" if fallback else "`"))
        kpath = Path(args.kernels_out) if args.trace else out
        writes.append((kpath, prof, {}))
        kp = parse_kernel_profile(prof, kpath)
        from simulator.calibration.calibrate import missing_figures
        taken = [fig for fig, _, _ in missing_figures(mb_rows)] if fallback else []
        result["kernel_profile"] = {"path": str(kpath), "fit_mape": errors, "from_fallback": taken}
        rows += [["kernel profile", part, f"fit error {100 * e:.1f}%"] for part, e in errors.items()]
        rows += [["kernel profile", fig, f"from {fallback[0]} (--fallback-profile; named in source)"] for fig in taken]
    if traces is not None:
        from simulator.calibration.trace_fit import fit_executor_profile
        if kp is None:
            kp = load_kernel_profile(system.gpu.name, args.kernel_profile)
        base, base_source, base_from = _executor_base(out)
        prof, ev = fit_executor_profile(traces, system, kp, out.stem, args.step_time, base, e2e)
        prof["fitted_on"] = system.gpu.name      # the GPU the traces were recorded on (check_device)
        refitted = {k for k in prof if k not in base or prof[k] != base[k]} | {
            "fused_qkv", "fused_gate_up", "repeat_kv", "kv_cache_concat", "gemm_efficiency_scale", "stream_gap_us"} | {
            f for k, fields in IN_STREAM_EVIDENCE.items() if k in ev for f in fields}
        if "host" in ev:
            refitted |= {"host_overhead_per_kernel_us", "host_per_op_us", "host_per_layer_us", "host_overhead_per_step_us",
                         "host_new_shape_us"}
        names = ", ".join(Path(t).name for t in args.trace)
        prof["description"] = args.description or prof["description"]
        src = [f"fitted by `roofplan calibrate --trace {' --trace '.join(Path(t).name for t in args.trace)} --hardware {args.hardware}"
               + (f" --step-time {args.step_time}" if args.step_time else "")
               + (f" --end-to-end {Path(args.end_to_end).name}" if args.end_to_end else "") + f"` (kernel profile {kp.name}) from {names}."]
        if "host" in ev:
            ev["host"]["fields"] = {k: prof[k] for k in ("host_overhead_per_kernel_us", "host_per_op_us", "host_per_layer_us",
                                                         "host_overhead_per_step_us", "host_new_shape_us")}
            src += _host_source(ev["host"], ev["host"]["trace"])
        if "train_host" in ev:
            refitted |= set(TRAIN_HOST_FIELDS)
            ev["train_host"]["fields"] = {k: prof[k] for k in TRAIN_HOST_FIELDS}
            src.append(_train_host_source(ev["train_host"], prof, ev["host"]["held_out"].get("end_to_end", [])))
        src += _kept_sentences(base_source, refitted, "host" in ev, "train_host" in ev)
        if "gemm" in ev:
            g = ev["gemm"]
            src.append("gemm_efficiency_scale: measured/predicted time of the traces' compute-bound GEMM calls: "
                       + "; ".join(f"{x['measured_s'] * 1e3:.1f} ms vs {x['predicted_unscaled_s'] * 1e3:.1f} ms"
                                   for x in g if x.get("compute_bound_calls")) + ".")
        if any(k in ev for k in IN_STREAM_EVIDENCE):
            src.append(_in_stream_source(ev))
        if "stream_gap" in ev:
            src.append("stream_gap_us: median gap between back-to-back kernels in the GPU-bound segments ("
                       + "; ".join(f"{x['segment']} of {x['trace']}: {x['median_us']:.2f} us over {x['gaps']} gaps"
                                   for x in ev["stream_gap"]["segments"]) + "), which traced kernel durations leave out.")
        if "layer_structure" in ev:
            s = ev["layer_structure"]
            src.append(f"fused_qkv/fused_gate_up/repeat_kv/kv_cache_concat: from aten::linear weight shapes (hidden {s['hidden']}, "
                       f"ffn {s['ffn']}), SDPA K/V heads and aten::cat of the KV cache in the trace.")
        src.append(f"Other fields from {base_from}.")
        prof["source"] = " ".join(src)
        ordered = {"description": prof.pop("description"), **{k: v for k, v in prof.items() if k != "source"},
                   "source": prof["source"]}
        writes.append((out, ordered, {"flow": None, "width": 120}))
        result["executor_profile"] = {"path": str(out), "fields": {k: v for k, v in ordered.items() if k not in ("description", "source")},
                                      "evidence": ev}
        rows += [["executor profile", k, str(v)] for k, v in ordered.items() if k not in ("description", "source")]
        if "train_host" in ev:
            t = ev["train_host"]
            rows.append(["train host fit", f"{t['segment']} of {t['trace']}",
                         f"forward {t['forward_ms_profiled']:.1f} ms, backward {t['backward_ms_profiled']:.1f} ms, optimizer "
                         f"{t['optimizer_ms_profiled']:.1f} ms profiled, x k"])
        if "train_host_kept" in ev:
            rows.append(["train host fit", "host_autograd_scale ... host_optimizer_us kept", ev["train_host_kept"]])
        rows += _held_out_rows(ev.get("host"))
    for path, d, style in writes:
        _write(path, d, **style)
    emit(fmt_of(args), json_obj=result, rows=rows, header=["profile", "field", "value"],
         title=f"calibrated on {system.gpu.name}", footer=f"\nwrote {out}" + (f" and {args.kernels_out}" if args.trace and args.microbench else ""))
    return 0


def _calibrate_copies(args) -> int:
    """`--end-to-end E2E -o P.yaml` alone: P's copy_efficiency_scale from the cases of executor P
    (its file's name) that offload weights (simulator.calibration.copy_fit); the other fields and
    the source sentences that do not name what is refitted stay, those of -o when it exists, else
    of the shipped profile of that name."""
    from simulator.calibration.accuracy import load_cases
    from simulator.calibration.copy_fit import fit_copy_efficiency
    from simulator.core.profiles import load_executor_profile
    if args.step_time is not None:
        raise RoofplanError("--step-time deflates the host costs of a traced step; pass it with --trace T")
    out = Path(args.output)
    base = out if out.is_file() else specs_root() / "profiles" / "executors" / f"{out.stem}.yaml"
    if not base.is_file():
        from simulator.core.profiles import list_profiles
        raise RoofplanError(f"-o {out}: no executor profile '{out.stem}' to refit; --end-to-end alone refits the copy "
                            f"efficiency of an existing one, named by -o's file name ({', '.join(list_profiles('executors'))})")
    system = load_hardware(args.hardware)
    hw, cases = load_cases(args.end_to_end)
    if hw and load_hardware(hw).gpu.name != system.gpu.name:
        raise RoofplanError(f"{args.end_to_end} was measured on {hw}, not on {system.gpu.name}; pass --hardware {hw}")
    kp = load_kernel_profile(system.gpu.name, args.kernel_profile)
    ex = load_executor_profile(str(base))
    try:
        scale, rows = fit_copy_efficiency(cases, out.stem, system, kp, ex)
    except RoofplanError as e:
        raise RoofplanError(f"{args.end_to_end}: {e}") from None
    prev = read_yaml(base)
    name = Path(args.end_to_end).name
    fitted = "; ".join(f"{r['id']} {r['measured_s']:.3g} s measured, {r['unfitted_s']:.3g} s at the microbenchmarked rate "
                       f"({100 * (r['unfitted_s'] / r['measured_s'] - 1):+.1f}%), {r['fitted_s']:.3g} s fitted "
                       f"({100 * r['fitted_error']:+.1f}%), held out {100 * r['held_out_error']:+.1f}%" for r in rows)
    sentence = (f"copy_efficiency_scale {scale:.4f} and fitted_on fitted by `roofplan calibrate --end-to-end {name} --hardware "
                f"{args.hardware}` (simulator.calibration.copy_fit, kernel profile {kp.name}): the scale of the "
                f"microbenchmarked copy rate that minimises the squared log errors of the {len(rows)} weight-offload "
                f"case(s) of {out.stem} in {name}: {fitted} (held out: at the scale fitted on the other cases, 1 when "
                "there are none; the expected-error table reports those errors).")
    kept = _kept_sentences(str(prev.get("source", "")), {"copy_efficiency_scale", "fitted_on"}, host=False)
    d = {k: v for k, v in prev.items() if k not in ("source", "copy_efficiency_scale", "fitted_on")}
    d.update(copy_efficiency_scale=round(scale, 4), fitted_on=system.gpu.name, source=" ".join(kept + [sentence]))
    _write(out, d, width=120)
    table = [["executor profile", "copy_efficiency_scale", f"{scale:.4f}"]] + [
        ["fitted" if len(rows) == 1 else "case", r["id"],
         f"{r['fitted_s']:.3g} s vs {r['measured_s']:.3g} s ({100 * r['fitted_error']:+.1f}%); held out "
         f"{100 * r['held_out_error']:+.1f}% (scale {r['held_out_scale']:.3f})"] for r in rows]
    emit(fmt_of(args), json_obj={"executor_profile": {"path": str(out), "copy_efficiency_scale": round(scale, 4),
                                                      "cases": rows}},
         rows=table, header=["profile", "field", "value"], title=f"{out.stem} copies calibrated on {system.gpu.name}",
         footer=f"\nwrote {out}")
    return 0


def _fallback_profile(name: str) -> tuple[str, dict]:
    """(name, checked YAML mapping) of a kernel profile given by name (profiles/kernels/) or path."""
    from simulator.core.profiles import list_profiles
    p = Path(name)
    if not p.suffix:
        p = specs_root() / "profiles" / "kernels" / f"{name}.yaml"
        if not p.is_file():
            from simulator.core.errors import did_you_mean
            have = list_profiles("kernels")
            raise RoofplanError(f"--fallback-profile {name}: no kernel profile of that name{did_you_mean(name, have)}; "
                                f"one of {', '.join(have)}, or a .yaml path")
    elif not p.is_file():
        raise RoofplanError(f"--fallback-profile {name}: file not found; give a kernel profile name or .yaml path")
    d = read_yaml(p)
    parse_kernel_profile(d, p)              # a fallback is checked like any profile
    return p.stem, d


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
