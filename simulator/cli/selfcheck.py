"""`roofplan selfcheck --device {cuda,cpu} [--quick|--full] --out DIR`: the whole loop on this
machine, in one command -- microbench -> calibrate a kernel profile for this device -> plan an
offload -> run the executor on a fixed set of jobs with traces -> validate each -> one report.

Stages (each timed and reported; a job that fails is reported and the others go on):
  microbench   simulator/executor/microbench.py (budget --quick or --full; the offload folder's
               disk with it)
  specs        this machine's specs beside a copy of the shipped ones (DIR/hw, for ROOFPLAN_HW_DIR):
               on cpu the device itself (cpu-host, peaks bounded by the measurements); always the
               host CPU, the offload disk and the node (systems/<gpu>-selfcheck)
  calibrate    calibrate.fit_kernel_profile on the microbenchmarks -> DIR/hw/profiles/kernels/<gpu>.yaml
  plan         planners.offload.plan_offload for the offload job, with the new profile
  run          executor/run.py and plan_run.py on the jobs of executor/selfcheck.jobs()
  validate     each run job: predict() with three kernel profiles -- `datasheet` (no calibration),
               `before` (what roofplan used for this device before: its shipped profile, else the
               reference GPU's curves carried by ideal time) and `after` (the one just fitted) --
               against the measured step, and per op class against the trace
               (calibration.validate.compare); the plan: plan_offload with the planned placement and
               schedule pinned, per profile, against `run --plan` (planners.offload_check.compare)

Written: DIR/report.md and DIR/report.json, DIR/measurements/<gpu>/ in the format of the shared
measurements (microbench.jsonl, end_to_end.yaml, traces, the plan and its run, README.md), DIR/hw.
Exit 0 when every stage and job ran, 1 when a job failed (the report says which), 2 on bad input.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
import traceback
from pathlib import Path

from simulator.core.errors import RoofplanError
from simulator.report.tables import add_format_arg, emit, fmt_of

LEVELS = ("datasheet", "before", "after")


def register(sub) -> None:
    p = sub.add_parser("selfcheck", help="measure, calibrate, run and validate on this machine; one report",
                       description="microbench -> calibrate a kernel profile for this device -> plan offload -> run the "
                                   "executor on a fixed set of jobs (decode, prefill, training step, LoRA, an offload plan) "
                                   "with traces -> validate each against predictions before and after calibration -> "
                                   "report.md / report.json and the measured files in the measurements/<gpu>/ format.")
    p.add_argument("--device", required=True, choices=("cpu", "cuda"))
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--quick", dest="budget", action="store_const", const="quick",
                        help="the quick budget (default): under 8 minutes on one GPU; tiny sizes on cpu (CI)")
    budget.add_argument("--full", dest="budget", action="store_const", const="full", help="the full microbenchmarks and larger jobs")
    p.set_defaults(budget="quick")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the report, the measurements and the specs")
    p.add_argument("--hardware", default=None, help="cuda: this GPU's spec (default: the spec whose name matches the device's)")
    p.add_argument("--nvme-dir", default=None, metavar="DIR", help="offload folder to measure and stream from (default: DIR/nvme)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch intra-op threads (default: 1 on cpu, steady timings on a shared machine; torch's on cuda)")
    add_format_arg(p)
    p.set_defaults(func=cmd_selfcheck)


class Stages:
    """Each stage's status, seconds and a line of detail, in order."""

    def __init__(self):
        self.rows: list[dict] = []

    @contextlib.contextmanager
    def __call__(self, name: str):
        row = {"stage": name, "status": "ok", "seconds": 0.0, "detail": ""}
        self.rows.append(row)
        t0 = time.perf_counter()
        try:
            yield row
        except BaseException as e:
            row["status"] = "failed"
            row["detail"] = row["detail"] or f"{type(e).__name__}: {e}"
            raise
        finally:
            row["seconds"] = time.perf_counter() - t0


@contextlib.contextmanager
def _hw_dir(path: Path):
    """ROOFPLAN_HW_DIR points at the selfcheck's specs for the duration (restored after)."""
    old = os.environ.get("ROOFPLAN_HW_DIR")
    os.environ["ROOFPLAN_HW_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ROOFPLAN_HW_DIR", None)
        else:
            os.environ["ROOFPLAN_HW_DIR"] = old


def _gpu_spec_name(device_name: str) -> str:
    """The shipped GPU spec whose name matches the CUDA device's (as a trace's device is checked)."""
    from simulator.calibration.trace import check_recorded_device
    from simulator.core.specs import list_names, load_gpu
    for name in list_names("gpu"):
        try:
            check_recorded_device(device_name, "", load_gpu(name))
            return name
        except RoofplanError:
            continue
    raise RoofplanError(f"no GPU spec matches this device ({device_name}); add hardware_specs/gpus/<name>.yaml and pass "
                        "--hardware <name>")


def cmd_selfcheck(args) -> int:
    try:
        import torch
    except ImportError:
        raise RoofplanError("roofplan selfcheck needs torch: pip install 'roofplan[executor]' (torch==2.13.0)") from None
    from simulator.executor.selfcheck import check_out_dir
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RoofplanError("--device cuda: torch sees no CUDA device here (CPU build or no GPU); use --device cpu")
    if args.hardware and args.device == "cpu":
        raise RoofplanError("--hardware names the GPU spec of a cuda device; on cpu the device is described by "
                            "the measurements (cpu-host); drop it")
    if args.hardware:
        from simulator.core.specs import load_gpu
        load_gpu(args.hardware)                  # an unknown name is refused before anything runs
    if args.threads is not None and args.threads < 1:
        raise RoofplanError(f"--threads must be >= 1 (got {args.threads})")
    out = Path(args.out)
    check_out_dir(out)
    threads_before = torch.get_num_threads()
    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    try:
        report = selfcheck(args, out)
    finally:
        torch.set_num_threads(threads_before)
    rows = [[j["id"], j["shape"], j.get("applied_text", ""), _t(j.get("measured_s"))]
            + [f"{_t(j.get('predicted_s', {}).get(lv))} {_p(j.get('time_error', {}).get(lv))}" for lv in LEVELS]
            for j in report["jobs"]]
    s = report["summary"]
    footer = ("\ntime MAPE " + ", ".join(f"{lv} {100 * v:.1f}%" for lv, v in s["time_mape"].items() if v is not None)
              + "; per-class error weighted by kernel time " + ", ".join(f"{lv} {100 * v:.1f}%" for lv, v in s["class_error_weighted"].items())
              + "\nstages: " + ", ".join(f"{r['stage']} {r['status']} {r['seconds']:.1f} s" for r in report["stages"])
              + f"\nwrote {report['files']['report']} and {report['files']['report_json']}, measurements in {report['files']['measurements']}")
    failed = [j for j in report["jobs"] if isinstance(j.get("error"), str)]
    footer += "".join(f"\nfailed: {j['id']}: {j['error']}" for j in failed)
    emit(fmt_of(args), json_obj=report, rows=rows,
         header=["job", "shape", "ran as", "measured"] + [f"{lv} (error)" for lv in LEVELS],
         title=f"selfcheck on {report['hardware']} ({report['environment']['device_name']}, {report['budget']}): "
               "predicted vs measured, error = predicted / measured - 1", footer=footer)
    return 1 if failed else 0


def _t(x) -> str:
    from simulator.core.units import fmt_time
    return "-" if x is None or x != x else fmt_time(x)


def _p(x) -> str:
    return "" if x is None or x != x else f"({100 * x:+.1f}%)"


def selfcheck(args, out: Path) -> dict:
    """Every stage; returns the report (also written as report.json / report.md)."""
    import torch
    from simulator.executor import selfcheck as sc
    from simulator.executor.measured_specs import host_mem_GiB
    from simulator.executor.microbench import run_microbench, write_microbench
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    nvme_dir = Path(args.nvme_dir) if args.nvme_dir else out / "nvme"
    stages = Stages()
    with stages("microbench") as st:
        rows = run_microbench(args.device, args.budget, nvme_dir)
        st["detail"] = f"{len(rows) - 1} rows ({args.budget})"
    env = rows[0]
    gpu = (args.hardware or _gpu_spec_name(env["gpu"])) if args.device == "cuda" else "cpu-host"
    if args.hardware:                            # the device must be the GPU the spec describes
        from simulator.calibration.trace import check_recorded_device
        from simulator.core.specs import load_gpu
        check_recorded_device(env["gpu"], "this device's microbenchmark", load_gpu(args.hardware))
    meas = out / "measurements" / gpu
    meas.mkdir(parents=True, exist_ok=True)
    write_microbench(meas / "microbench.jsonl", rows)
    with stages("specs") as st:
        machine = sc.write_machine_specs(out / "hw", rows, args.device, gpu, nvme_dir)
        st["detail"] = f"{machine.system} in {machine.hw_dir}"
    report = {"schema": sc.SCHEMA, "device": args.device, "hardware": gpu, "system": machine.system, "budget": args.budget,
              "threads": torch.get_num_threads(), "levels": list(LEVELS), "stages": stages.rows,
              "environment": {"device_name": env["gpu"] or f"cpu ({env.get('cpu') or 'host'})", "torch": env["torch"],
                              "cuda": env.get("cuda"), "cpu": env.get("cpu", ""), "nproc": env.get("nproc"),
                              "meminfo": env.get("meminfo", ""), "host_memory_GiB": host_mem_GiB(rows),
                              "measured": env.get("measured") or datetime.date.today().isoformat()},
              "skipped": [f"{r['what']}: {r['reason']}" for r in rows if r["kind"] == "skip"]}
    with _hw_dir(machine.hw_dir):
        report |= _calibrate_run_validate(args, out, meas, rows, machine, stages)
    report["total_s"] = time.perf_counter() - t_start
    report["files"] = {"report": str(out / "report.md"), "report_json": str(out / "report.json"),
                       "measurements": str(meas), "specs": str(machine.hw_dir),
                       "kernel_profile": str(machine.hw_dir / "profiles" / "kernels" / f"{gpu}.yaml"),
                       "validate_again": f"ROOFPLAN_HW_DIR={machine.hw_dir} roofplan validate --end-to-end "
                                         f"{meas / 'end_to_end.yaml'}"}
    (meas / "README.md").write_text(sc.measurements_readme(report))
    sc.write_json(out / "report.json", report)
    (out / "report.md").write_text(sc.render_markdown(report))
    return report


def _calibrate_run_validate(args, out: Path, meas: Path, rows: list[dict], machine, stages: Stages) -> dict:
    """The stages that read the selfcheck's specs (ROOFPLAN_HW_DIR is set by the caller)."""
    import yaml
    from simulator.calibration.calibrate import fit_kernel_profile
    from simulator.core.profiles import load_executor_profile, load_kernel_profile, parse_kernel_profile
    from simulator.core.specs import load_hardware
    from simulator.executor import selfcheck as sc
    system = load_hardware(machine.system)
    gpu = system.gpu.name
    kps = {"datasheet": load_kernel_profile(gpu, "datasheet"), "before": load_kernel_profile(gpu)}
    before_what = (f"{kps['before'].name}.yaml as shipped" + (f", the {kps['before'].fitted_on} curves carried by ideal time "
                   f"to {gpu}'s peaks" if kps["before"].fitted_on != gpu else f", fitted on {gpu}"))
    with stages("calibrate") as st:
        kpath = machine.hw_dir / "profiles" / "kernels" / f"{gpu}.yaml"
        prof, fit_err = fit_kernel_profile(rows, system.gpu, system.host_link,
                                           source=f"fitted by `roofplan selfcheck --device {args.device} --{args.budget}` "
                                                  f"(roofplan calibrate --microbench {meas / 'microbench.jsonl'} --hardware {gpu})")
        kpath.write_text(yaml.safe_dump(prof, sort_keys=False, width=100))
        kps["after"] = parse_kernel_profile(prof, kpath)
        st["detail"] = ", ".join(f"{k} {100 * v:.1f}%" for k, v in fit_err.items()) + " fit error"
    profiles = {"datasheet": {"what": "datasheet peaks, no calibration (the plain roofline)"},
                "before": {"what": before_what, "name": kps["before"].name, "fitted_on": kps["before"].fitted_on},
                "after": {"what": f"fitted here to this device's microbenchmarks ({kpath})", "path": str(kpath),
                          "fit_mape": fit_err}}
    executor = load_executor_profile("default")
    jobs = [sc.with_device(j, args.device) for j in sc.jobs(args.device, args.budget)]
    plan_job = next(j for j in jobs if j.plan)
    plan = None
    with stages("plan") as st:
        try:
            plan = _plan(plan_job, system, executor, kps["after"])
            (meas / "plan_offload.json").write_text(json.dumps(plan, indent=1))
            st["detail"] = (f"GPU batch {plan['schedule']['gpu_batch_size']} x {plan['schedule']['num_gpu_batches']}, weights "
                            + "/".join(f"{100 * plan['placement']['weights'][t]:.0f}" for t in ("gpu", "cpu", "nvme"))
                            + " % gpu/cpu/nvme")
        except RoofplanError as e:
            st["status"], st["detail"] = "failed", str(e)
    results = {}
    with stages("run") as st:
        for job in jobs:
            try:
                results[job.id] = _run_job(job, args.device, meas, plan, args.nvme_dir or str(out / "nvme"))
            except Exception as e:            # one job's failure is reported, the others go on
                results[job.id] = {"error": _one_line(e)}
        ok = [k for k, r in results.items() if "error" not in r]
        st["detail"] = f"{len(ok)} of {len(jobs)} jobs ran"
        if len(ok) < len(jobs):
            st["status"] = "failed"
    report_jobs, cases = [], []
    with stages("validate") as st:
        for job in jobs:
            r = results[job.id]
            entry = {"id": job.id, "kind": job.kind, "model": _short_model(job.model), "what": job.what, "shape": sc.shape_text(job),
                     "executor": executor.name}
            if "error" in r:
                entry["error"] = r["error"]
            elif job.plan:
                entry |= _validate_plan(job, r, plan, system, executor, kps)
            else:
                entry |= _validate_run(job, r, system, executor, kps)
                cases.append(sc.end_to_end_case(job, r, executor.name))
            report_jobs.append(entry)
        device_text = f"{rows[0]['gpu'] or 'cpu'}; torch {rows[0]['torch']}, {sc.threads_text(rows[0]['threads'])}"
        if cases:
            sc.write_end_to_end(meas / "end_to_end.yaml", machine.system, device_text, cases,
                                rows[0].get("measured") or datetime.date.today().isoformat())
        st["detail"] = f"{len(cases)} run jobs and {'the' if plan and 'error' not in results.get(plan_job.id, {}) else 'no'} plan"
    summary = _summary(report_jobs)
    plan_entry = next((j for j in report_jobs if j["kind"] == "offload-plan" and "plan_rows" in j), None)
    return {"profiles": profiles, "jobs": report_jobs, "summary": summary,
            "plan": {"text": plan_entry["plan_text"], "rows": plan_entry["plan_rows"]} if plan_entry else None}


def _one_line(e: BaseException) -> str:
    if isinstance(e, RoofplanError):
        return str(e)
    tb = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} ({Path(tb.filename).name}:{tb.lineno})"


def _short_model(model: str) -> str:
    return Path(model).stem if model.endswith(".json") else model


def _plan(job, system, executor, kp) -> dict:
    """`plan offload` of the job, with the freshly calibrated profile (the plan the executor runs)."""
    from planners.offload import OffloadRequest, plan_offload
    from simulator.core.models import load_model
    from simulator.core.units import GiB
    p = job.plan
    req = OffloadRequest(phase=job.phase, prompt_len=p.prompt_len, gen_len=p.gen_len, batch=p.batch, dtype=job.dtype,
                         gpu_mem_bytes=p.gpu_memory_GiB * GiB)
    return plan_offload(load_model(job.model_arg()), system, req, executor, kp).as_dict()


def _run_job(job, device: str, meas: Path, plan: dict | None, nvme_dir: str) -> dict:
    import gc
    import torch
    from simulator.core.models import load_model
    if device == "cuda":          # the previous job's cached blocks would count as used by the fit check
        gc.collect()
        torch.cuda.empty_cache()
    model = load_model(job.model_arg())
    trace = meas / f"trace_{job.id}.json.gz"
    result = meas / f"result_{job.id}.json"
    if job.plan:
        if plan is None:
            raise RoofplanError("no plan to run (the plan stage failed)")
        from simulator.executor.plan_run import run_plan
        from simulator.executor.selfcheck import PLAN_RUNS
        r = run_plan(model, plan, device=device, steps=PLAN_RUNS, warmup=1, trace_path=str(trace), result_path=str(result),
                     nvme_dir=nvme_dir, plan_path=str(meas / "plan_offload.json"))
    else:
        from simulator.executor.run import run
        from simulator.executor.selfcheck import run_spec
        r = run(model, run_spec(job, device), str(trace), str(result))
    return r


def _core_job(job, result: dict):
    from simulator.core.workload import Job
    return Job(phase=job.phase, batch=job.batch, seq=job.seq, context=job.context, dtype=result["dtype"],
               recompute=job.recompute, lora_rank=job.lora_rank)


def _applied_text(r: dict) -> str:
    from simulator.cli.run import applied_text
    from simulator.executor.selfcheck import threads_text
    return applied_text(r) + f", {threads_text(r['threads'])}"


def _validate_run(job, r: dict, system, executor, kps: dict) -> dict:
    """Predicted vs measured: the step (each level) and, from the trace, each op class."""
    from simulator.calibration.trace import load_trace
    from simulator.calibration.validate import compare, pick_segment
    from simulator.core.models import load_model
    from simulator.core.predict import predict
    from simulator.executor.selfcheck import measured_time
    model = load_model(job.model_arg())
    cj = _core_job(job, r)
    measured = measured_time(r)
    preds = {lv: predict(model, system, cj, executor, kps[lv], check_memory=False) for lv in LEVELS}
    entry = {"applied": {k: r[k] for k in ("device", "dtype", "weights_dtype", "autocast", "cuda_graph", "threads")},
             "applied_text": _applied_text(r), "measured_s": measured, "times_s": r["times_s"],
             "predicted_s": {lv: p.time_s for lv, p in preds.items()},
             "time_error": {lv: p.time_s / measured - 1 for lv, p in preds.items()},
             "trace": r.get("trace"), "result": str(Path(r["trace"]).with_name(f"result_{job.id}.json")) if r.get("trace") else None}
    if r.get("peak_memory_bytes"):
        entry["memory"] = {"measured_bytes": r["peak_memory_bytes"], "predicted_bytes": preds["after"].peak_memory_bytes,
                           "error": preds["after"].peak_memory_bytes / r["peak_memory_bytes"] - 1}
    trace = load_trace(r["trace"])
    seg = pick_segment(trace, job.phase)
    by_level = {lv: compare(trace, seg, p)[0].set_index("cls") for lv, p in preds.items()}
    classes = []
    for cls in by_level["after"].index:
        m = float(by_level["after"].loc[cls, "measured_s"])
        classes.append({"cls": cls, "measured_s": m, "measured_kernels": int(by_level["after"].loc[cls, "measured_kernels"]),
                        "predicted_s": {lv: float(df.loc[cls, "predicted_s"]) for lv, df in by_level.items()},
                        "error": {lv: (float(df.loc[cls, "predicted_s"]) / m - 1 if m > 0 else None) for lv, df in by_level.items()}})
    entry["classes"] = classes
    entry["segment"] = seg
    return entry


def _validate_plan(job, r: dict, plan: dict, system, executor, kps: dict) -> dict:
    """The plan's prediction per level (placement, schedule and attention pinned to the plan's)
    against the run (planners.offload_check.compare)."""
    from planners.offload import OffloadRequest, plan_offload
    from planners.offload_check import compare
    from simulator.core.models import load_model
    from simulator.core.units import fmt_time
    from simulator.executor.selfcheck import threads_text
    model = load_model(job.model_arg())
    p = job.plan
    req = OffloadRequest(phase=job.phase, prompt_len=p.prompt_len, gen_len=p.gen_len, batch=p.batch, dtype=job.dtype,
                         gpu_mem_bytes=p.gpu_memory_GiB * 2**30, attention=plan["attention"] or "gpu")
    fixed = {k: {"gpu": v["gpu"], "nvme": v["nvme"]} for k, v in plan["placement"].items() if v}
    plans = {"after": plan}
    for lv in ("datasheet", "before"):
        plans[lv] = plan_offload(model, system, req, executor, kps[lv], fixed=fixed, gbs=plan["schedule"]["gpu_batch_size"],
                                 nb=plan["schedule"]["num_gpu_batches"]).as_dict()
    from simulator.executor.selfcheck import plan_result_measured
    cmp = {lv: compare(pl, plan_result_measured(r)) for lv, pl in plans.items()}
    rows = []
    for i, row in enumerate(cmp["after"]["rows"]):
        unit = row["unit"]
        fmt = (lambda v: fmt_time(v)) if unit == "s" else (lambda v: f"{v:,.1f} {unit}")
        pred = {lv: c["rows"][i]["predicted"] for lv, c in cmp.items()}
        # error = predicted / measured - 1 throughout the report (offload_check's is measured / predicted - 1)
        rows.append({"quantity": row["quantity"], "measured": row["measured"], "measured_text": fmt(row["measured"]),
                     "predicted": pred, "predicted_text": {lv: fmt(v) for lv, v in pred.items()},
                     "error": {lv: (v / row["measured"] - 1) if row["measured"] else None for lv, v in pred.items()}})
    total = rows[0]
    placed = "/".join(f"{100 * plan['placement']['weights'][t]:.0f}" for t in ("gpu", "cpu", "nvme"))
    executed = "/".join(f"{100 * r['placement']['weights_effective'][t]:.0f}" for t in ("gpu", "cpu", "nvme"))
    text = (f"{_short_model(job.model)} decode, prompt {p.prompt_len} + {p.gen_len} generated, GPU batch "
            f"{plan['schedule']['gpu_batch_size']} x {plan['schedule']['num_gpu_batches']}, attention on {plan['attention']}; "
            f"weights planned {placed} % gpu/cpu/nvme, executed {executed} (whole tensors); KV cache on "
            f"{r['placement']['kv_cache']}, activations on {r['placement']['activations']}; host tensors "
            f"{r['host_memory'] or '-'}, copies {'on a side stream' if r['overlap'] else 'synchronous'}; plan binds: {plan['binds']}.")
    return {"applied": {"device": r["device"], "dtype": r["dtype"], "host_memory": r["host_memory"], "overlap": r["overlap"],
                        "threads": r["threads"]},
            "applied_text": f"{r['dtype']}, weights {executed} % gpu/cpu/nvme, {r['host_memory'] or 'no'} host tensors, "
                            f"{threads_text(r['threads'])}",
            "measured_s": total["measured"], "times_s": r["times_s"], "predicted_s": total["predicted"],
            "time_error": total["error"], "trace": r.get("trace"), "plan_rows": rows, "plan_text": text}


def _summary(jobs: list[dict]) -> dict:
    """Time MAPE over the jobs per level; per-class error weighted by measured kernel time over
    every traced class of every job; peak memory MAPE (cuda)."""
    done = [j for j in jobs if "time_error" in j]
    mape = {lv: (sum(abs(j["time_error"][lv]) for j in done) / len(done)) if done else None for lv in LEVELS}
    classes = [c for j in done for c in j.get("classes", []) if c["measured_s"] > 0]
    total = sum(c["measured_s"] for c in classes)
    weighted = {lv: sum(abs(c["error"][lv]) * c["measured_s"] for c in classes if c["error"][lv] is not None) / total
                for lv in LEVELS} if total else {}
    mem = [j["memory"]["error"] for j in done if "memory" in j]
    out = {"jobs": len(jobs), "validated": len(done), "time_mape": mape, "class_error_weighted": weighted}
    if mem:
        out["memory_mape"] = {"after": sum(map(abs, mem)) / len(mem)}
    return out
