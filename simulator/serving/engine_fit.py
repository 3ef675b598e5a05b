"""Fit a serving engine's executor profile to its published steady-state inter-token latencies.

What serving benchmarks publish for today's engines is not a step-time table but the steady state
of a loaded server: B requests in flight, the median inter-token latency (ITL) and the output
throughput (the ML.ENERGY leaderboard, benchmarks/data/serving_published.yaml). In that state a
step of a chunked-prefill engine (vLLM V1, SGLang) decodes the B running sequences and, in the same
forward, prefills the prompts of the requests that replace finished ones: k of them, k ~ Poisson(B
/ E[out]) per step, so the median step carries the median of that Poisson count of prompts
(none below B ~ 0.69 E[out]: a pure decode step, padded to the engine's CUDA-graph batch size).
That step is `predict()` of a decode Job with `chunk_tokens` = k x prompt (the core's mixed step),
plus the engine's per-step host time where it is not hidden (`simulate.engine_step_time`).

`fit_engine` fits, against the GPU's kernel profile and with the engine's structure fixed (fused
norms and rope, CUDA graphs: the profile file's other fields):
  gemm_bandwidth_scale           the engine's memory-bound (small-batch) GEMMs vs the microbenchmarks
  attn_decode_traffic_scale      HBM bytes its paged decode attention moves per byte of KV cache
                                 (more traffic, not a slower rate: the published power of the same
                                 runs rises with batch as traffic does, which a slower rate over
                                 the same bytes would not show -- benchmarks/energy.py)
  host_overhead_per_step_us      host time per step the GPU waits for (sampling sync, launches
                                 outside the graph) -- inside predict(), so `roofplan predict
                                 --executor vllm-v1` gives the same step
by bounded least squares on log(predicted / measured) over the points with role fit; the points
with role check are reported as held-out error, per run.

`serving_runs` are published online-serving benchmarks (e.g. `sglang.bench_serving`): N requests
of the run's mean prompt and output lengths, Poisson at a rate or all sent at once (offline), and
the run's median TTFT, TPOT (per request, first token excluded) and inter-token latency, or its
output throughput. `run_predictions` replays the same arrivals through the serving simulation
that `roofplan serve --engine E --simulate N` runs (simulate.step_tables with the engine profile,
simulate.replay with the engine's chunked prefill and token budget): TTFT and TPOT are the
simulation's medians over requests, the throughput is the output tokens over the last finish,
and the median ITL is the median step -- at these loads a pure decode step of the simulation's
mean decode batch (Little's law), padded to the engine's CUDA-graph size, at the mean context.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from simulator.core.errors import RoofplanError
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import ExecutorProfile, load_kernel_profile
from simulator.core.schema import Name, NonNegative, PosInt, Positive, Strict, Text, check, read_yaml
from simulator.core.specs import load_hardware, system_from_gpu
from simulator.core.workload import Job

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "serving_published.yaml"
FITTED = ("gemm_bandwidth_scale", "attn_decode_traffic_scale", "host_overhead_per_step_us")
BOUNDS = ((0.5, 3.0), (1.0, 8.0), (0.0, 1e4))


class SteadyRun(Strict):
    model: Name
    hardware: Name
    tp: PosInt
    weight_dtype: Literal["", "bf16", "fp16", "fp8", "int8", "int4"] = ""
    engine: Name
    source: Name


class SteadyPoint(Strict):
    run: Name
    max_num_seqs: PosInt
    avg_batch: Positive
    avg_output_tokens: Positive
    median_itl_ms: Positive
    p90_itl_ms: Positive
    output_tokens_per_s: Positive
    role: Literal["fit", "check"]


class SteadyState(Strict):
    runs: dict[Name, SteadyRun]
    points: list[SteadyPoint] = Field(min_length=1)


class Reproduction(Strict):
    """One published serving result, predicted through the serving simulator (never fitted).
    metric output_tokens_per_s: a steady state of `batch` requests in flight (B / the mean mixed
    step); speedup: a speculative decode step per token vs the plain one at `batch`;
    requests_per_s / throughput_ratio: the simulation of `requests` Poisson arrivals at
    `rate_rps` (completed requests per second; the ratio over the same run with prefix_hit 0)."""
    name: Text
    source: Name
    feature: Literal["chunked-prefill", "prefix-caching", "speculative-decoding", "fp8-weights", "int4-weights"]
    engine: Name
    model: Name
    hardware: Name
    tp: PosInt = 1
    dtype: Literal["bf16", "fp16"] = "bf16"
    weight_dtype: Literal["", "bf16", "fp16", "fp8", "int8", "int4"] = ""
    prefix_hit: NonNegative = 0.0
    spec_tokens: int = Field(0, ge=0)
    spec_acceptance: Positive | None = None
    batch: PosInt = 1
    context_tokens: PosInt = 512
    prompt_tokens: PosInt
    output_tokens: PosInt
    rate_rps: Positive | None = None
    requests: PosInt | None = None
    max_num_batched_tokens: PosInt | None = None
    metric: Literal["output_tokens_per_s", "speedup", "requests_per_s", "throughput_ratio"]
    published: Positive
    role: Literal["check"] = "check"
    xfail_error_pct: float | None = None   # a known miss: the measured error (the test is a strict xfail)
    note: Text | None = None


RUN_METRICS = ("median_itl_ms", "median_tpot_ms", "median_ttft_ms", "output_tokens_per_s")


class ServingRun(Strict):
    """One published online-serving benchmark run (module docstring): what it sent and what it
    measured; each published metric is one point (role fit or check; xfail_error_pct: a known
    miss per metric, its measured error, a strict xfail in the tests)."""
    name: Text
    source: Name
    engine: Name
    engine_version: Text
    model: Name
    hardware: Name
    tp: PosInt = 1
    weight_dtype: Literal["", "bf16", "fp16", "fp8", "int8", "int4"] = ""
    dataset: Text
    prompt_tokens: PosInt            # mean prompt length of the run's requests
    output_tokens: PosInt            # mean output length
    requests: PosInt
    rate_rps: Positive | None = None   # Poisson arrivals; None: all sent at once (offline)
    median_itl_ms: Positive | None = None
    median_tpot_ms: Positive | None = None
    median_ttft_ms: Positive | None = None
    output_tokens_per_s: Positive | None = None
    role: Literal["fit", "check"] = "check"
    xfail_error_pct: dict[Literal[RUN_METRICS], float] = {}
    note: Text | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return {m: getattr(self, m) for m in RUN_METRICS if getattr(self, m) is not None}


class PublishedFile(Strict):
    sources: dict[Name, Text]
    assumptions: dict[Name, Text]
    prompt_tokens: PosInt
    context_tokens: PosInt
    steady_state: SteadyState
    reproductions: list[Reproduction] = []
    serving_runs: list[ServingRun] = []


def read_published(path: Path = DATA) -> PublishedFile:
    f = check(PublishedFile, read_yaml(path), path, fix="see the comments at the top of the file")
    for p in f.steady_state.points:
        if p.run not in f.steady_state.runs:
            raise RoofplanError(f"{path}: point of run '{p.run}' names no run in steady_state.runs")
    for r in [*f.steady_state.runs.values(), *f.reproductions, *f.serving_runs]:
        if r.source not in f.sources:
            raise RoofplanError(f"{path}: source '{r.source}' is not in sources")
    for r in f.serving_runs:
        if not r.metrics:
            raise RoofplanError(f"{path}: serving run '{r.name}' publishes none of {', '.join(RUN_METRICS)}; "
                                f"give at least one")
        for m in r.xfail_error_pct:
            if m not in r.metrics:
                raise RoofplanError(f"{path}: serving run '{r.name}': xfail_error_pct names {m}, which the run "
                                    f"does not publish")
    return f


def median_prompts_per_step(batch: float, avg_output_tokens: float) -> int:
    """Median number of prompts a steady-state step prefills: Poisson with mean B / E[out]."""
    from scipy.stats import poisson
    return int(poisson.median(batch / avg_output_tokens))


def steady_job(avg_batch: float, prompts: int, ex: ExecutorProfile, prompt_tokens: int, context_tokens: int,
               tp: int, weight_dtype: str = "") -> Job:
    """One step of the steady state of `avg_batch` requests in flight that prefills `prompts`
    prompts of `prompt_tokens` beside the decode batch (the core's mixed step, Job.chunk_tokens);
    a pure decode step (no prompt) runs at the engine's CUDA-graph batch size the batch pads to."""
    from simulator.serving.simulate import padded_batch
    batch = max(int(round(avg_batch)), 1)
    chunk = prompts * prompt_tokens
    step_batch = batch if chunk else int(padded_batch(batch, ex.cuda_graph_batch_sizes))
    return Job("decode", batch=step_batch, context=context_tokens, tp=tp, weight_dtype=weight_dtype, chunk_tokens=chunk)


def steady_steps(avg_batch: float, avg_output_tokens: float, ex: ExecutorProfile, prompt_tokens: int,
                 context_tokens: int, tp: int, weight_dtype: str = "", tail: float = 1e-6) -> list[tuple[float, Job]]:
    """Every step of the steady state with its share of steps: k ~ Poisson(B / E[out]) prompts per
    step (`steady_job`), k up to the (1 - tail) quantile, the shares renormalised. Means over
    these (time, energy) are what throughput and energy per token average over; the median
    inter-token latency is the median step (`steady_step_s`)."""
    from scipy.stats import poisson
    lam = avg_batch / avg_output_tokens
    ks = np.arange(int(poisson.ppf(1.0 - tail, lam)) + 1)
    w = poisson.pmf(ks, lam)
    return [(float(wi / w.sum()), steady_job(avg_batch, int(k), ex, prompt_tokens, context_tokens, tp, weight_dtype))
            for k, wi in zip(ks, w)]


def steady_step_s(point: SteadyPoint, run: SteadyRun, ex: ExecutorProfile, kernels, prompt_tokens: int,
                  context_tokens: int, models: dict | None = None) -> float:
    """The median steady-state step of one published point under profile `ex` (module docstring)."""
    from simulator.serving.simulate import engine_step_time
    models = {} if models is None else models
    model = models.setdefault(run.model, load_model(run.model))
    gpu = load_hardware(run.hardware).gpu
    job = steady_job(point.avg_batch, median_prompts_per_step(point.avg_batch, point.avg_output_tokens), ex,
                     prompt_tokens, context_tokens, run.tp, run.weight_dtype)
    gpu_s = predict(model, system_from_gpu(gpu, run.tp), job, executor=ex, kernels=kernels, check_memory=False,
                    with_ops=False).time_s
    batch = max(int(round(point.avg_batch)), 1)
    return float(engine_step_time(gpu_s, batch, ex.scheduler_step_s, ex.scheduler_per_seq_s, ex.async_scheduling))


def _with(base: ExecutorProfile, x) -> ExecutorProfile:
    return dataclasses.replace(base, gemm_bandwidth_scale=float(x[0]), attn_decode_traffic_scale=float(x[1]),
                               host_overhead_per_step_s=float(x[2]) * 1e-6)


def errors(f: PublishedFile, ex: ExecutorProfile, engine: str) -> list[dict]:
    """Predicted vs published median ITL of every steady-state point of `engine`."""
    out, models, kps = [], {}, {}
    for p in f.steady_state.points:
        run = f.steady_state.runs[p.run]
        if run.engine != engine:
            continue
        kp = kps.setdefault(run.hardware, load_kernel_profile(run.hardware))
        pred = steady_step_s(p, run, ex, kp, f.prompt_tokens, f.context_tokens, models)
        out.append({"run": p.run, "batch": p.avg_batch, "role": p.role, "published_ms": p.median_itl_ms,
                    "predicted_ms": pred * 1e3, "error": pred * 1e3 / p.median_itl_ms - 1})
    return out


def summary(rows: list[dict]) -> dict:
    """MAPE and worst error (signed) over fit and held-out rows, and per held-out run."""
    out = {}
    for role in ("fit", "check"):
        e = np.array([r["error"] for r in rows if r["role"] == role])
        if len(e):
            out[role] = {"points": len(e), "mape_pct": round(float(np.mean(np.abs(e))) * 100, 1),
                         "worst_pct": round(float(e[np.argmax(np.abs(e))]) * 100, 1)}
    return out


def run_tables(run: ServingRun, ex: ExecutorProfile, kernels=None):
    """The step tables `roofplan serve` builds for the run's model, GPU, TP and engine profile."""
    from simulator.serving import simulate as sv
    system = load_hardware(run.hardware)
    return sv.step_tables(load_model(run.model), system, tp=run.tp, executor=ex,
                          kernels=kernels if kernels is not None else load_kernel_profile(system.gpu.name),
                          options=sv.EngineOptions(weight_dtype=run.weight_dtype))


def run_predictions(run: ServingRun, ex: ExecutorProfile, tables=None, seed: int = 0) -> dict[str, float]:
    """Every metric of `RUN_METRICS` for one serving run under profile `ex` (module docstring):
    the run's requests (Poisson at rate_rps, seeded as `roofplan serve --simulate`, or all at t=0)
    replayed with the engine's scheduling, as `roofplan serve` runs it."""
    from simulator.serving import simulate as sv
    t = tables if tables is not None else run_tables(run, ex)
    if run.rate_rps is None:
        arrive = np.zeros(run.requests)
        n_in = np.full(run.requests, run.prompt_tokens)
        n_out = np.full(run.requests, run.output_tokens)
    else:
        mix = sv.RequestMix.of([run.prompt_tokens], [run.output_tokens])
        arrive, n_in, n_out = sv.sample_requests(mix, run.rate_rps, run.requests, seed)
    sim = sv.replay(t, arrive, n_in, n_out)      # the engine's scheduling (simulate.scheduling)
    tpot = np.nan_to_num(sim.tpot_s)
    end = float(np.max(arrive + sim.ttft_s + tpot * (n_out - 1)))
    batch = float(np.sum(tpot * (n_out - 1))) / end          # Little's law: decoding time over the span
    step = float(t.decode_time(max(batch, 1.0), run.prompt_tokens + run.output_tokens / 2))
    return {"median_itl_ms": step * 1e3, "median_tpot_ms": float(np.nanmedian(sim.tpot_s)) * 1e3,
            "median_ttft_ms": float(np.median(sim.ttft_s)) * 1e3, "output_tokens_per_s": float(n_out.sum()) / end,
            "decode_batch": batch}


def run_errors(f: PublishedFile, ex: ExecutorProfile, engine: str) -> list[dict]:
    """Predicted vs published metrics of every serving run of `engine`, one row per metric."""
    out, tabs = [], {}
    for r in f.serving_runs:
        if r.engine != engine:
            continue
        key = (r.model, r.hardware, r.tp, r.weight_dtype)
        if key not in tabs:
            tabs[key] = run_tables(r, ex)
        pred = run_predictions(r, ex, tabs[key])
        for m, pub in r.metrics.items():
            out.append({"run": r.name, "metric": m, "role": r.role, "published": pub, "predicted": pred[m],
                        "error": pred[m] / pub - 1, "decode_batch": pred["decode_batch"],
                        "xfail_error_pct": r.xfail_error_pct.get(m)})
    return out


def fit_engine(base: ExecutorProfile, engine: str, f: PublishedFile | None = None) -> tuple[ExecutorProfile, dict]:
    """(`base` with FITTED replaced by the least-squares fit, fitted values and error summary)."""
    from scipy.optimize import least_squares
    f = f or read_published()
    pts = [p for p in f.steady_state.points if p.role == "fit" and f.steady_state.runs[p.run].engine == engine]
    if not pts:
        held = [r for r in f.serving_runs if r.engine == engine]
        raise RoofplanError(f"engine '{engine}' has no steady-state points with role fit"
                            + (f" (its {len(held)} serving runs are held-out checks of the profile as it is: "
                               f"`python benchmarks/serving_published.py` prints them)" if held else ""))
    meas = np.array([p.median_itl_ms / 1e3 for p in pts])
    models, kps = {}, {}

    def resid(x):
        ex = _with(base, x)
        pred = []
        for p in pts:
            run = f.steady_state.runs[p.run]
            kp = kps.setdefault(run.hardware, load_kernel_profile(run.hardware))
            pred.append(steady_step_s(p, run, ex, kp, f.prompt_tokens, f.context_tokens, models))
        return np.log(np.array(pred) / meas)

    x0 = (base.gemm_bandwidth_scale, base.attn_decode_traffic_scale, base.host_overhead_per_step_s * 1e6)
    res = least_squares(resid, x0=x0, bounds=tuple(zip(*BOUNDS)), x_scale=(0.1, 0.1, 100.0), diff_step=1e-3)
    ex = _with(base, res.x)
    fitted = {k: round(float(v), 1 if k.endswith("_us") else 4) for k, v in zip(FITTED, res.x)}
    return ex, {"fitted": fitted, **summary(errors(f, ex, engine))}
