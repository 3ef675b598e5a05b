"""`roofplan selfcheck`, the executor's part: the fixed set of jobs run on this machine, the specs
of this machine written beside the shipped ones, the measured files in the measurements/<gpu>/
format of the shared H100 measurements, and the report rendered as markdown.

The orchestration (microbench -> kernel profile -> plan -> run -> validate) is in
simulator/cli/selfcheck.py: it calls the calibration fits and the offload planner, which this
layer may not import.

Jobs (JOBS, by device and budget): a decode step (a CUDA-graph replay on cuda; eager on cpu,
which has no graphs), an eager prefill, one training step, one LoRA step and an offload plan from
`plan offload` executed by `run --plan`. On cuda the quick jobs use Llama-3.2-1B at sizes where
the GPU, not the host, sets the pace (the full ones Llama-3.1-8B, as the shared measurements);
on cpu the tiny Llama of tests/data (hidden 256, 4 layers) in fp32, in seconds.
"""
from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from simulator.core.errors import RoofplanError
from simulator.core.paths import REPO_ROOT
from simulator.executor import measured_specs as ms

TINY = "tests/data/tiny-llama.json"
SCHEMA = "roofplan.selfcheck/1"


@dataclass(frozen=True)
class PlanRequest:
    """What `plan offload` is asked (the CLI layer plans it): a whole generation, the GPU memory
    capped so part of the weights must live on the host."""
    prompt_len: int
    gen_len: int
    batch: int
    gpu_memory_GiB: float


@dataclass(frozen=True)
class CheckJob:
    id: str
    kind: str                  # decode | prefill | train | lora | offload-plan
    model: str                 # zoo name or config path (relative to the checkout)
    phase: str
    batch: int = 1
    seq: int = 0
    context: int = 0
    dtype: str = "bf16"
    recompute: str = "none"
    lora_rank: int = 0
    cuda_graph: bool = True
    plan: PlanRequest | None = None
    executor: str = "default"  # the executor profile its prediction uses
    what: str = ""             # how it runs, for the report and the measurements' README

    def model_arg(self) -> str:
        """The model as load_model takes it: a zoo name, or the config's path in this checkout."""
        return str(REPO_ROOT / self.model) if self.model.endswith(".json") else self.model


def jobs(device: str, budget: str) -> list[CheckJob]:
    """The fixed set of jobs for a device and budget (module docstring)."""
    if device == "cpu":
        m, dt = TINY, "fp32"
        return [
            CheckJob("decode", "decode", m, "decode", batch=8, context=256, dtype=dt,
                     what="decode step, eager (cpu has no CUDA graphs), static KV cache"),
            CheckJob("prefill", "prefill", m, "prefill", batch=2, seq=128, dtype=dt, what="eager prefill"),
            CheckJob("train", "train", m, "train", batch=2, seq=64, dtype=dt, what="training step, fp32, AdamW"),
            CheckJob("lora", "lora", m, "train", batch=2, seq=64, dtype=dt, lora_rank=8,
                     what="LoRA step, rank 8 on every linear, base frozen"),
            CheckJob("offload-plan", "offload-plan", m, "decode", dtype=dt, plan=PlanRequest(32, 8, 4, 0.295),
                     what="`plan offload` decode plan (GPU memory capped) run by `run --plan`"),
        ]
    quick = budget == "quick"
    small, big = "llama-3.2-1b", ("llama-3.2-1b" if quick else "llama-3.1-8b")
    return [
        CheckJob("decode", "decode", big, "decode", batch=16, context=1024 if quick else 4096,
                 what="decode step replayed from a CUDA graph, static KV cache"),
        CheckJob("prefill", "prefill", big, "prefill", batch=4 if quick else 8, seq=2048 if quick else 1024,
                 what="eager prefill at a GPU-bound size"),
        CheckJob("train", "train", small, "train", batch=4, seq=1024 if quick else 2048,
                 what="training step, fp32 master weights + bf16 autocast, fused AdamW"),
        CheckJob("lora", "lora", small if quick else big, "train", batch=4 if quick else 1, seq=1024 if quick else 2048,
                 lora_rank=16, recompute="none" if quick else "full", what="LoRA step, rank 16 on every linear, bf16 base frozen"),
        CheckJob("offload-plan", "offload-plan", big, "decode",
                 plan=PlanRequest(512, 32, 8, 1.5) if quick else PlanRequest(512, 32, 8, 8.0),
                 what="`plan offload` decode plan (GPU memory capped) run by `run --plan`"),
    ]


STEPS = 10                    # timed steps of a run job (3 warm-up on cuda, 2 on cpu), one more traced
PLAN_RUNS = 5                 # timed generations of the plan (1 warm-up)


def run_spec(job: CheckJob, device: str):
    """The executor's RunSpec of a job (torch imported here)."""
    from simulator.executor.run import RunSpec
    return RunSpec(phase=job.phase, batch=job.batch, seq=job.seq, context=job.context, dtype=job.dtype, device=device,
                   recompute=job.recompute, lora_rank=job.lora_rank, cuda_graph=job.cuda_graph,
                   steps=STEPS, warmup=3 if device == "cuda" else 2, trace_steps=1)


def measured_time(result: dict) -> float:
    """The measured step: the median of the timed steps on cuda, their minimum on cpu (on a
    shared CPU other processes only ever add time)."""
    return statistics.median(result["times_s"]) if result["device"] == "cuda" else min(result["times_s"])


def plan_result_measured(result: dict) -> dict:
    """A `run --plan` result with its time per block (and throughput) as measured_time says."""
    t = measured_time(result)
    return {**result, "time_s": t, "tokens_per_s": result["tokens"] / t}


# --------------------------------------------------------------------------------------------
# this machine's specs, beside a copy of the shipped ones


@dataclass(frozen=True)
class MachineSpecs:
    """Where the selfcheck's specs folder is and what it added."""
    hw_dir: Path
    gpu: str                  # the device's GPU spec (shipped on cuda; cpu-host on cpu)
    system: str               # this machine as a node: the device, its host CPU, RAM and offload disk
    written: dict = field(default_factory=dict)     # kind -> file written


def write_machine_specs(hw_dir: Path, rows: list[dict], device: str, gpu: str | None, nvme_dir: Path | None) -> MachineSpecs:
    """Copy the shipped specs (simulator.core.specs.specs_root()) to `hw_dir` and add this
    machine's: on cpu the device itself (gpus/cpu-host.yaml and its memcpy link); always the host
    CPU, the offload disk (when measured) and the node (systems/<gpu>-selfcheck.yaml)."""
    from simulator.core.specs import specs_root
    src = specs_root()
    if hw_dir.exists():
        shutil.rmtree(hw_dir)
    shutil.copytree(src, hw_dir)
    written = {}

    def put(kind_dir: str, spec: dict) -> None:
        p = hw_dir / kind_dir / f"{spec['name']}.yaml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(yaml.safe_dump(spec, sort_keys=False))
        written[kind_dir] = str(p)

    if device == "cpu":
        gpu = "cpu-host"
        link = ms.memcpy_link(rows, "cpu-host-memcpy")
        put("links", link)
        put("gpus", ms.device_spec(rows, gpu, host_link=link["name"]))
        host_link = link["name"]
    else:
        host_link = yaml.safe_load((hw_dir / "gpus" / f"{gpu}.yaml").read_text())["host_link"]
    cpu = ms.host_cpu_spec(rows, "selfcheck-host-cpu")
    put("cpus", cpu)
    nvme = ms.nvme_spec(rows, "selfcheck-nvme", shutil.disk_usage(nvme_dir).free if nvme_dir and nvme_dir.exists() else 0)
    if nvme:
        put("nvme", nvme)
    system = ms.system_spec(rows, f"{gpu}-selfcheck", gpu, host_link, cpu["name"], nvme["name"] if nvme else None)
    put("systems", system)
    return MachineSpecs(hw_dir, gpu, system["name"], written)


# --------------------------------------------------------------------------------------------
# the measured files, in the measurements/<gpu>/ format


def end_to_end_case(job: CheckJob, result: dict, executor: str) -> dict:
    """One case of end_to_end.yaml (simulator/calibration/accuracy.py Case) for a run job, with
    the settings that applied (the run's dtype, not the request's)."""
    size = f"s{job.seq}" if job.phase != "decode" else f"l{job.context}"
    case = {"id": f"{job.id}-{Path(job.model).stem}-b{job.batch}-{size}", "group": job.kind, "model": job.model,
            "phase": job.phase, "batch": job.batch}
    if job.seq:
        case["seq"] = job.seq
    if job.context:
        case["context"] = job.context
    case["dtype"] = result["dtype"]
    if job.recompute != "none":
        case["recompute"] = job.recompute
    if job.lora_rank:
        case["lora_rank"] = job.lora_rank
    case["executor"] = executor
    case["time_s"] = measured_time(result)
    if result.get("peak_memory_bytes"):
        case["peak_memory_bytes"] = result["peak_memory_bytes"]
    how = "CUDA graph replay" if result.get("cuda_graph") else "eager"
    case["source"] = (f"roofplan selfcheck: roofplan run ({job.what}; ran as {result['dtype']}, {how}, "
                      f"{threads_text(result['threads'])}), {'median' if result['device'] == 'cuda' else 'minimum'} of "
                      f"{len(result['times_s'])} steps")
    return case


def write_end_to_end(path: Path, hardware: str, device_text: str, cases: list[dict], measured: str) -> None:
    d = {"hardware": hardware, "device": device_text, "measured": measured,
         "source": "roofplan selfcheck (simulator/executor/selfcheck.py); time_s per case as its source says", "cases": cases}
    path.write_text(yaml.safe_dump(d, sort_keys=False, width=110))


def measurements_readme(report: dict) -> str:
    """README.md of the measurements folder: how each file was measured (as the shared one)."""
    env = report["environment"]
    lines = [f"# {report['hardware']} measurements ({env['measured']}, roofplan selfcheck --device {report['device']} "
             f"--{report['budget']})", "",
             f"Device: {env['device_name']}; host: {env['cpu'] or 'CPU model not reported'}, {env['nproc']} logical CPUs, "
             + (f"{env['host_memory_GiB']:.1f} GiB RAM" if env.get("host_memory_GiB") else "RAM not reported")
             + f"; torch {env['torch']}" + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
             + f", {threads_text(report['threads'])}.", "",
             "## microbench.jsonl (one JSON object per line, `kind` says which)",
             "Written by `roofplan microbench` (simulator/executor/microbench.py: each kind and how it is timed is in its "
             "docstring). " + ("On cuda: CUDA events, L2 flushed before each repetition, median." if report["device"] == "cuda"
                               else "On cpu: wall time, the minimum over repeated runs; the host <-> device copies are host "
                                    "memcpys (the device is host memory), marked `stand_in`.")]
    skipped = report.get("skipped", [])
    if skipped:
        lines.append("Not measured (`skip` records): " + "; ".join(skipped) + ".")
    lines += ["", "## Traces (PyTorch profiler, Chrome trace JSON, gzip)"]
    for j in report["jobs"]:
        if j.get("trace"):
            lines.append(f"- `{Path(j['trace']).name}`: {j['what']} ({j['model']}, {j['shape']}); "
                         f"ran as {j['applied_text']}.")
    lines += ["", "## end_to_end.yaml",
              "Measured step times (and peak device memory on cuda) of the run jobs above, without the profiler: "
              + (f"the median of {STEPS} steps after 3 warm-up steps." if report["device"] == "cuda"
                 else f"the minimum of {STEPS} steps after 2 warm-up steps.")
              + " Each case names the executor profile its prediction uses.", "",
              "## result_<job>.json",
              "Each run's result as `roofplan run --result` writes it: every timed step, what really applied (dtype, CUDA "
              "graph, pinned host memory, overlap, threads) and the request under `requested`.", "",
              "## plan_offload.json, result_offload-plan.json",
              "The offload plan (`roofplan plan offload --format json`, GPU memory capped so part of the weights lives on "
              f"the host) and its run (`roofplan run --plan`, {PLAN_RUNS} generations after one warm-up, the "
              + ("median" if report["device"] == "cuda" else "minimum") + " compared): `roofplan validate --plan "
              "plan_offload.json --result result_offload-plan.json` compares them (with the median)."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the report


def threads_text(n: int) -> str:
    return f"{n} torch thread{'s' if n != 1 else ''}"


def _pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:+.1f}%"


def _ms(x) -> str:
    return "-" if x is None or x != x else (f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s")


def render_markdown(report: dict) -> str:
    """report.md: the stages, per job predicted vs measured before and after calibration, the
    per-op-class errors, the files written."""
    levels = report["levels"]
    out = [f"# roofplan selfcheck: {report['hardware']} ({report['device']}, {report['budget']})", "",
           f"Device {report['environment']['device_name']}, torch {report['environment']['torch']}, "
           f"{threads_text(report['threads'])}; {report['total_s']:.1f} s in all. "
           "Error = predicted / measured - 1.", "", "## Stages", "", "| stage | status | seconds | detail |", "|---|---|---:|---|"]
    out += [f"| {s['stage']} | {s['status']} | {s['seconds']:.1f} | {s['detail']} |" for s in report["stages"]]
    out += ["", "## Kernel profiles compared", ""]
    out += [f"- **{lv}**: {report['profiles'][lv]['what']}" for lv in levels]
    out += ["", "## Predicted vs measured, per job", "",
            "| job | model | shape | ran as | measured | " + " | ".join(f"{lv} | error" for lv in levels) + " |",
            "|---|---|---|---|---:|" + "---:|---:|" * len(levels)]
    for j in report["jobs"]:
        if "error" in j and isinstance(j["error"], str):
            out.append(f"| {j['id']} | {j['model']} | {j['shape']} | failed: {j['error']} |" + " |" * (1 + 2 * len(levels)))
            continue
        cells = " | ".join(f"{_ms(j['predicted_s'].get(lv))} | {_pct(j['time_error'].get(lv))}" for lv in levels)
        out.append(f"| {j['id']} | {j['model']} | {j['shape']} | {j['applied_text']} | {_ms(j['measured_s'])} | {cells} |")
    s = report["summary"]
    out += ["", "Time MAPE over the jobs: " + ", ".join(f"{lv} {100 * s['time_mape'][lv]:.1f}%" for lv in levels
                                                         if s["time_mape"].get(lv) is not None) + "."]
    if s.get("memory_mape"):
        out.append("Peak memory MAPE: " + ", ".join(f"{lv} {100 * v:.1f}%" for lv, v in s["memory_mape"].items()) + ".")
    out += ["", "## Per op class (kernel time from each trace vs the prediction's device time)", "",
            "| job | class | measured | " + " | ".join(f"{lv} | error" for lv in levels) + " |",
            "|---|---|---:|" + "---:|---:|" * len(levels)]
    for j in report["jobs"]:
        for c in j.get("classes", []):
            cells = " | ".join(f"{_ms(c['predicted_s'].get(lv))} | {_pct(c['error'].get(lv))}" for lv in levels)
            out.append(f"| {j['id']} | {c['cls']} | {_ms(c['measured_s'])} | {cells} |")
    out += ["", "Per-class error weighted by measured time, over all traced jobs: "
            + ", ".join(f"{lv} {100 * v:.1f}%" for lv, v in s["class_error_weighted"].items()) + "."]
    if report.get("plan"):
        p = report["plan"]
        out += ["", "## Offload plan", "", p["text"], "", "| quantity | measured | " + " | ".join(levels) + " |",
                "|---|---:|" + "---:|" * len(levels)]
        for r in p["rows"]:
            out.append(f"| {r['quantity']} | {r['measured_text']} | " + " | ".join(
                f"{r['predicted_text'].get(lv, '-')} ({_pct(r['error'].get(lv))})" for lv in levels) + " |")
    out += ["", "## Files", ""] + [f"- {k}: `{v}`" for k, v in report["files"].items()]
    return "\n".join(out) + "\n"


def write_json(path: Path, d: dict) -> None:
    path.write_text(json.dumps(d, indent=1, default=_jsonable))


def _jsonable(o):
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    if isinstance(o, Path):
        return str(o)
    try:
        return float(o)
    except (TypeError, ValueError):
        raise TypeError(f"not JSON: {type(o).__name__}") from None


def shape_text(job: CheckJob) -> str:
    if job.plan:
        p = job.plan
        return f"batch {p.batch}, prompt {p.prompt_len} + {p.gen_len} generated, GPU memory {p.gpu_memory_GiB:g} GiB"
    parts = [f"batch {job.batch}"] + ([f"seq {job.seq}"] if job.seq else []) + ([f"context {job.context}"] if job.context else [])
    parts += [f"LoRA r{job.lora_rank}"] if job.lora_rank else []
    parts += [f"recompute {job.recompute}"] if job.recompute != "none" else []
    return ", ".join(parts)


def with_device(job: CheckJob, device: str) -> CheckJob:
    """cpu runs have no graphs: the job says it does not ask for one."""
    return replace(job, cuda_graph=job.cuda_graph and device == "cuda")


def check_out_dir(out: Path) -> None:
    """The selfcheck writes under `out`: refuse a file, or a non-empty folder that is not an
    earlier selfcheck's (it would be overwritten)."""
    if out.exists() and not out.is_dir():
        raise RoofplanError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.json").is_file():
        raise RoofplanError(f"--out {out} is a non-empty folder that holds no selfcheck report; give a new or empty folder")
