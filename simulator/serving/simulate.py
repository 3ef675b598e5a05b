"""Online serving on top of the core step model: continuous batching with a KV-cache budget,
chunked prefill, TTFT and TPOT (means and percentiles) as functions of the arrival rate and the
request-size mix; aggregated (one instance runs prefill and decode, vLLM / Sarathi-Serve) and
prefill/decode-disaggregated (DistServe, Zhong et al. OSDI 2024; Splitwise, Patel et al. ISCA 2024)
deployments.

Step times come from `simulator.core.predict.predict` (one source of truth): `step_tables` evaluates the
core once per grid point (prefill over prompt length; decode over batch x context) and the serving
model interpolates (prefill log-log in tokens; decode bilinear in batch x context). Tables are
built per call, never cached globally. The same predict() calls give each step's energy
(simulator.core.power): the tables keep the energy above the instance's idle floor, so an instance
draws  P = P_idle + rate x E_dyn per request  (`request_energy_j`), with a request's E_dyn its
prefill's plus out_tokens x decode(B, ctx) / B at the decode batch B the load sustains. Under a
power cap (`power_cap_w`) a step the power model cannot bring under the cap (a memory-bound step
that still exceeds it at half clock) takes REFUSED_STEP_S: the instance cannot serve it.

Closed forms (`aggregated`, `disaggregated`), Poisson arrivals at rate lam:
  prefill service  S_i = prefill(in_i)  (+ ceil(in_i / chunk) x decode(B) when the decode batch
                   shares the iterations: chunked prefill, Sarathi-Serve, Agrawal et al. OSDI 2024)
  TTFT wait        Pollaczek-Khinchine M/G/1 mean  W = lam E[S^2] / (2 (1 - rho)),  rho = lam E[S];
                   tail P(W > t) = rho exp(-rho t / W) (exponential approximation of the M/G/1
                   waiting time, Kingman); TTFT_i = W + S_i (+ half a decode step: an arrival
                   joins at the next iteration boundary), percentiles of the mixture.
  decode batch     Little's law  B = lam E[out] TPOT,  TPOT = decode(B, ctx) / (1 - rho_prefill):
                   the fixed point is the sign change of B - rate E[out] TPOT(B) on a log grid of B
                   (linear between grid points); no fixed point below the KV-cache limit
                   B_max = KV budget / E[in + out] -> unstable.
  percentiles      of the TTFT and TPOT mixtures: roots of CDF(t) = q by brentq.
  max rate         `max_rate`: doubling to bracket, then brentq on the SLO margin.
`simulate` is a small discrete-event simulation (iteration-level, fixed RNG seed) for checking the
closed forms and where they fail (bursty long prompts, KV preemption pressure).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from simulator.core.errors import FieldError, RoofplanError
from simulator.core.memory import inference_memory, kv_cache_bytes
from simulator.core.models import ModelConfig
from simulator.core.predict import predict
from simulator.core.profiles import ExecutorProfile, KernelProfile
from simulator.core.specs import System, system_from_gpu
from simulator.core.workload import Job

GPU_MEMORY_UTILIZATION = 0.9   # vLLM's default share of device memory it manages (weights + KV)
PREFILL_GRID = (16, 128, 512, 2048, 8192, 32768)
DECODE_BATCH_GRID = (1, 4, 16, 64, 256, 1024)
DECODE_CONTEXT_GRID = (64, 512, 2048, 8192, 32768)
# a step the power model cannot run under the instance's power cap (predict() refuses it): a time
# no SLO accepts, so interpolation keeps working and the option is simply not used there
REFUSED_STEP_S = 1e6


@dataclass(frozen=True)
class StepTables:
    """Core step times of one serving instance (a model on `tp` GPUs of one type)."""
    model: str
    gpu: str
    tp: int
    prefill_tokens: np.ndarray    # prompt lengths (tokens)
    prefill_s: np.ndarray         # time of one prefill of that many tokens
    decode_batch: np.ndarray
    decode_context: np.ndarray
    decode_s: np.ndarray          # [batch, context] time of one decode step
    kv_bytes_per_token: float     # per GPU
    kv_budget_tokens: float       # tokens of KV cache the instance can hold
    max_context: int
    iteration_overhead_s: float = 0.0   # engine host time per iteration, included in both tables
    prefill_attn_s: np.ndarray | None = None   # attention share of prefill_s (per prompt: quadratic)
    idle_w: float = 0.0                        # the instance (tp GPUs) at idle
    prefill_dyn_j: np.ndarray | None = None    # energy of one prefill above the idle floor (all tp GPUs)
    decode_dyn_j: np.ndarray | None = None     # [batch, context] energy of one decode step above idle
    power_cap_w: float | None = None           # board power limit per GPU the tables were built under
    options: EngineOptions | None = None       # quantization, prefix caching, speculation (None: plain)

    def kv_tokens(self, in_tokens, out_tokens) -> np.ndarray:
        """KV-cache tokens one request holds: its prompt and output, less the prefix a prefix
        cache shares with every other request (`shared_prefix_tokens` holds it once)."""
        hit = self.options.prefix_hit if self.options is not None else 0.0
        return np.floor((1.0 - hit) * np.asarray(in_tokens, float) + 0.5) + np.asarray(out_tokens, float)

    def shared_prefix_tokens(self, in_tokens) -> float:
        """The cached prefix every request shares, held once (the mean prompt's hit share)."""
        hit = self.options.prefix_hit if self.options is not None else 0.0
        return float(np.mean(np.asarray(in_tokens, float))) * hit

    def prefill_time(self, tokens) -> np.ndarray:
        """Prefill of `tokens` prompt tokens (log-log interpolation; linear extrapolation above)."""
        t = np.maximum(np.asarray(tokens, dtype=float), 1.0)
        x, y = np.log(self.prefill_tokens), np.log(self.prefill_s)
        out = np.exp(np.interp(np.log(t), x, y))
        slope = self.prefill_s[-1] / self.prefill_tokens[-1]
        return np.where(t > self.prefill_tokens[-1], t * slope, out)

    def attention_time(self, tokens) -> np.ndarray:
        """Attention part of the prefill of one prompt of `tokens` (log-log; quadratic above the grid)."""
        t = np.maximum(np.asarray(tokens, dtype=float), 1.0)
        if self.prefill_attn_s is None:
            return np.zeros_like(t)
        a = np.maximum(self.prefill_attn_s, 1e-12)
        out = np.exp(np.interp(np.log(t), np.log(self.prefill_tokens), np.log(a)))
        return np.where(t > self.prefill_tokens[-1], a[-1] * (t / self.prefill_tokens[-1]) ** 2, out)

    def batch_prefill_time(self, prompts) -> float:
        """One iteration prefilling several whole prompts together: the GEMMs and the weight reads
        run once over the summed tokens, attention per prompt (each attends only to itself)."""
        n = np.asarray(prompts, dtype=float)
        total = float(n.sum())
        return float(self.prefill_time(total) - self.attention_time(total) + self.attention_time(n).sum())

    def decode_time(self, batch, context) -> np.ndarray:
        """One decode step of `batch` sequences with `context` cached tokens each (bilinear in
        batch x context: step time is close to affine in both; context clamped to the grid; batch
        at least 1, linear extrapolation from the first cell below the grid, above it the last
        row scaled linearly in batch). Inputs broadcast against each other."""
        return self._decode_lookup(self._decode_interp, batch, context)

    def _decode_lookup(self, interp, batch, context) -> np.ndarray:
        b = np.maximum(np.asarray(batch, dtype=float), 1.0)
        c = np.clip(np.asarray(context, dtype=float), self.decode_context[0], self.decode_context[-1])
        bb, cc = np.broadcast_arrays(np.minimum(b, self.decode_batch[-1]), c)
        t = interp(np.stack([bb, cc], axis=-1)).reshape(bb.shape)
        return t * np.where(b > self.decode_batch[-1], b / self.decode_batch[-1], 1.0)

    @cached_property
    def _decode_interp(self):
        """scipy's bilinear interpolator over decode_s, built once per table (cached on the
        instance). fill_value=None extrapolates linearly; callers clamp everything but a batch
        below the first grid point, which is extrapolated as before."""
        return self._grid_interp(self.decode_s)

    def _grid_interp(self, table: np.ndarray):
        from scipy.interpolate import RegularGridInterpolator
        return RegularGridInterpolator((self.decode_batch, self.decode_context), table,
                                       method="linear", bounds_error=False, fill_value=None)

    @cached_property
    def _decode_energy_interp(self):
        return self._grid_interp(self.decode_dyn_j)

    def prefill_energy(self, tokens) -> np.ndarray:
        """Energy above the idle floor of one prefill of `tokens` prompt tokens (J, all tp GPUs;
        interpolated as prefill_time: log-log, linear above the grid)."""
        t = np.maximum(np.asarray(tokens, dtype=float), 1.0)
        if self.prefill_dyn_j is None:
            return np.zeros_like(t)
        e = np.maximum(self.prefill_dyn_j, 1e-30)
        out = np.exp(np.interp(np.log(t), np.log(self.prefill_tokens), np.log(e)))
        return np.where(t > self.prefill_tokens[-1], t * e[-1] / self.prefill_tokens[-1], out)

    def decode_energy(self, batch, context) -> np.ndarray:
        """Energy above the idle floor of one decode step (J, all tp GPUs; interpolated as decode_time)."""
        if self.decode_dyn_j is None:
            return np.zeros(np.broadcast_shapes(np.shape(batch), np.shape(context)))
        return self._decode_lookup(self._decode_energy_interp, batch, context)


@dataclass(frozen=True)
class EngineOptions:
    """What an instance runs beside its model and plan: weight and KV-cache quantization
    (Job.weight_dtype / Job.kv_dtype, simulator.core.quant), prefix caching (the share of every
    prompt already cached, Job.prefix_hit) and speculative decoding (K drafted tokens per step
    with per-token acceptance A, proposed by `draft` or, None, an EAGLE-style head;
    simulator.core.speculative). The defaults are a plain bf16 engine."""
    weight_dtype: str = ""
    kv_dtype: str = ""
    prefix_hit: float = 0.0
    spec_tokens: int = 0
    spec_acceptance: float | None = None
    draft: ModelConfig | None = None

    def check(self) -> "EngineOptions":
        from simulator.core.speculative import check_acceptance
        if not 0.0 <= self.prefix_hit < 1.0:
            raise FieldError("prefix_hit", self.prefix_hit, "must be a share of the prompt in [0, 1)",
                             "give e.g. 0.5 for half of every prompt cached")
        if self.spec_tokens < 0:
            raise FieldError("spec_tokens", self.spec_tokens, "must be >= 0 (0: no speculation)")
        if self.spec_tokens and self.spec_acceptance is None:
            raise FieldError("spec_acceptance", None, "speculative decoding needs a per-token acceptance rate",
                             "give one in (0, 1]")
        if self.spec_tokens:
            check_acceptance(self.spec_acceptance)
        elif self.spec_acceptance is not None or self.draft is not None:
            raise FieldError("spec_tokens", 0, "an acceptance rate or draft model needs spec_tokens K >= 1",
                             "give spec_tokens or drop them")
        return self

    @property
    def label(self) -> str:
        """A short name of the non-default options ('' for a plain engine), for tables."""
        parts = []
        if self.weight_dtype:
            parts.append(f"w{self.weight_dtype}")
        if self.kv_dtype:
            parts.append(f"kv{self.kv_dtype}")
        if self.prefix_hit:
            parts.append(f"prefix{self.prefix_hit:g}")
        if self.spec_tokens:
            parts.append(f"spec{self.spec_tokens}@{self.spec_acceptance:g}"
                         + (f"+{self.draft.name}" if self.draft is not None else ""))
        return ",".join(parts)


def step_tables(model: ModelConfig, system: System, tp: int = 1, dtype: str = "bf16",
                executor: ExecutorProfile | None = None, kernels: KernelProfile | None = None,
                iteration_overhead_s: float = 0.0, power_cap_w: float | None = None,
                options: EngineOptions = EngineOptions()) -> StepTables:
    """Evaluate the core `predict` on the prefill and decode grids for one (model, GPU, TP).

    KV budget (vLLM): GPU_MEMORY_UTILIZATION x device memory - weights - workspace - activations
    of a decode step, divided by the KV bytes of one token on this GPU.
    `iteration_overhead_s`: host time the serving engine adds to every iteration and does not
    overlap with the GPU (scheduler, sampler, detokenizer of vLLM V0; 0 for an engine that keeps
    the GPU fed); added to every prefill and decode step (the GPUs idle through it).
    Energy: each step's predict().energy less the instance's idle floor over the step.
    `power_cap_w`: each GPU's board power limit (predict()'s Job.power_cap_w); a step the cap
    cannot hold takes REFUSED_STEP_S (a cap below the GPU's idle power is refused outright).
    `options` (EngineOptions): quantized weights shrink the weights and speed their reads, an fp8
    KV cache doubles the tokens the budget holds; a prefix hit R prefills only the uncached
    (1 - R) of each prompt (prefill_s over the prompt length, the attention still reading the
    cached prefix) and keeps one shared copy of the prefix (`kv_tokens`); speculative decoding
    stores decode_s per generated token, the step K t_draft + t_verify over the E tokens it yields
    per sequence (the draft's weights and cache leave the KV budget), so Little's law and the
    iteration-level simulation keep counting one token per sequence per 'step'."""
    options = options.check()
    gpu = system.gpu
    L = model.max_positions
    from simulator.core.profiles import load_executor_profile, load_kernel_profile
    executor = executor or load_executor_profile("default")
    kernels = kernels or load_kernel_profile(gpu.name)   # parsed once, not per predict() call
    kw = dict(executor=executor, kernels=kernels, check_memory=False)
    quant = dict(weight_dtype=options.weight_dtype, kv_dtype=options.kv_dtype)
    base_job = Job("decode", batch=1, context=0, dtype=dtype, tp=tp, **quant)
    base = inference_memory(model, base_job, executor)
    kv_tok = kv_cache_bytes(model, base_job)
    budget = GPU_MEMORY_UTILIZATION * gpu.mem_bytes - base.weights - base.workspace - base.activations
    draft_w = 0.0
    if options.spec_tokens:   # the proposer's weights sit beside the target's; its cache per token too
        from simulator.core.speculative import check_draft, eagle_head
        if options.draft is not None:
            check_draft(options.draft, model)
        proposer = options.draft if options.draft is not None else eagle_head(model)
        dj = replace(base_job, tp=tp if options.draft is None else 1)
        draft_w = (inference_memory(proposer, dj, executor).weights if options.draft is not None
                   else base.weights / model.n_layers)
        kv_tok += kv_cache_bytes(proposer, dj) * (dj.tp / tp if options.draft is not None else 1.0)
        budget -= draft_w
    if budget <= 0:
        raise FieldError(
            "tp", tp, f"{model.name} does not fit on {tp} x {gpu.name} for serving: weights need "
            f"{base.weights / 2**30:.1f} GiB per GPU of {gpu.mem_bytes / 2**30:.0f} GiB", "use a larger tp or another GPU")
    system = system if system.gpu_count >= tp else system_from_gpu(system.gpu, tp)
    if power_cap_w is not None:   # a cap below idle refuses every step: say so once
        from simulator.core.power import GpuPower, check_cap_above_idle
        check_cap_above_idle(GpuPower.of(gpu, dtype), power_cap_w)
    idle_w = tp * _idle_w(gpu)

    def step(job: Job, with_ops: bool = False) -> tuple[float, float, object]:
        """(time, energy above idle, prediction) of one step -- per generated token and sequence
        when speculating; a step the cap cannot hold: REFUSED_STEP_S."""
        job = replace(job, power_cap_w=power_cap_w, **quant)
        try:
            if job.phase == "decode" and options.spec_tokens:
                return _spec_step(model, system, replace(job, spec_tokens=options.spec_tokens), options, idle_w, kw)
            p = predict(model, system, job, with_ops=with_ops, **kw)
        except FieldError as e:
            if e.field != "power_cap_w":
                raise
            return REFUSED_STEP_S, 0.0, None
        dyn = (p.energy.energy_j - idle_w * p.time_s) if p.energy is not None else 0.0
        return p.time_s, max(dyn, 0.0), p

    ptoks = np.array([t for t in PREFILL_GRID if t <= L] or [L], dtype=float)
    pre, pre_j, attn = [], [], []
    for t in ptoks:
        ts, ej, p = step(Job("prefill", batch=1, seq=int(t), dtype=dtype, tp=tp, prefix_hit=options.prefix_hit),
                         with_ops=True)
        pre.append(ts)
        pre_j.append(ej)
        attn.append(float(p.ops.loc[p.ops["cls"] == "attention", "time_s"].sum()) if p is not None else 0.0)
    top = L - 1 - options.spec_tokens       # the verification's K + 1 queries stay inside the model's positions
    ctx = np.array([c for c in DECODE_CONTEXT_GRID if c < top] + [top], dtype=float)
    ctx = np.unique(ctx)
    bat = np.array(DECODE_BATCH_GRID, dtype=float)
    dec = np.array([[step(Job("decode", batch=int(b), context=int(c), dtype=dtype, tp=tp))[:2] for c in ctx]
                    for b in bat])
    if iteration_overhead_s < 0:
        raise RoofplanError(f"iteration overhead must be >= 0 s (got {iteration_overhead_s})")
    per_step = iteration_overhead_s + executor.host_overhead_per_step_s   # the latter is inside predict's times
    return StepTables(model=model.name, gpu=gpu.name, tp=tp, prefill_tokens=ptoks,
                      prefill_s=np.array(pre) + iteration_overhead_s, decode_batch=bat, decode_context=ctx,
                      decode_s=dec[..., 0] + iteration_overhead_s, kv_bytes_per_token=kv_tok,
                      kv_budget_tokens=budget / kv_tok, max_context=L, iteration_overhead_s=per_step,
                      prefill_attn_s=np.array(attn), idle_w=idle_w, prefill_dyn_j=np.array(pre_j),
                      decode_dyn_j=dec[..., 1], power_cap_w=power_cap_w, options=options)


def _spec_step(model: ModelConfig, system: System, job: Job, options: EngineOptions, idle_w: float,
               kw: dict) -> tuple[float, float, object]:
    """A speculative decode step over the E tokens it yields per sequence: (time per token, energy
    above idle per token, the verification's prediction). The energy is the verification's plus K
    draft steps' (predict() each), less the idle floor over the whole step."""
    from simulator.core.speculative import predict_speculative
    sp = predict_speculative(model, system, job, options.spec_acceptance, options.draft, kw["executor"],
                             kw["kernels"], check_memory=False)
    if sp.verify.energy is not None:
        draft_j = sp.draft.energy.energy_j if sp.draft.energy is not None else 0.0
        dyn = max(sp.verify.energy.energy_j + options.spec_tokens * draft_j - idle_w * sp.time_s, 0.0)
    else:
        dyn = 0.0
    return sp.time_s / sp.tokens_per_step, dyn / sp.tokens_per_step, sp.verify


def _idle_w(gpu) -> float:
    """A GPU's idle board power as the power model takes it (simulator.core.power.GpuPower)."""
    from simulator.core.power import GpuPower
    return GpuPower.of(gpu).idle_w if gpu.tdp_w > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# request mix

@dataclass(frozen=True)
class RequestMix:
    """Request sizes as weighted points: in_tokens[i], out_tokens[i] with probability weight[i]."""
    in_tokens: np.ndarray
    out_tokens: np.ndarray
    weight: np.ndarray

    @staticmethod
    def of(in_tokens, out_tokens, weight=None) -> "RequestMix":
        i = np.atleast_1d(np.asarray(in_tokens, dtype=float))
        o = np.atleast_1d(np.asarray(out_tokens, dtype=float))
        w = np.ones_like(i) if weight is None else np.atleast_1d(np.asarray(weight, dtype=float))
        return RequestMix(i, o, w / w.sum())

    def mean(self, x) -> float:
        return float(np.sum(self.weight * x))


@dataclass(frozen=True)
class ServingEstimate:
    rate_rps: float
    stable: bool
    reason: str                 # why unstable ("" when stable)
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    tpot_mean_s: float
    tpot_p90_s: float
    tpot_p99_s: float
    decode_batch: float         # mean running sequences per decode instance
    utilisation: float          # busy share of the bottleneck instance
    kv_tokens: float            # mean KV tokens held per decode instance

    def meets(self, slo_ttft_s: float, slo_tpot_s: float, percentile: int = 90) -> bool:
        if not self.stable:
            return False
        return (getattr(self, f"ttft_p{percentile}_s") <= slo_ttft_s
                and getattr(self, f"tpot_p{percentile}_s") <= slo_tpot_s)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _unstable(rate: float, reason: str) -> ServingEstimate:
    inf = math.inf
    return ServingEstimate(rate, False, reason, inf, inf, inf, inf, inf, inf, inf, inf, 1.0, inf)


def _quantile_mix(values: np.ndarray, weight: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cw = np.cumsum(weight[order])
    return float(values[order][min(np.searchsorted(cw, q), len(cw) - 1)])


def _normal_mix_quantile(mean: np.ndarray, sd: np.ndarray, weight: np.ndarray, q: float) -> float:
    """q-quantile of a mixture of normals (sd 0: point masses)."""
    if not np.any(sd > 0):
        return _quantile_mix(mean, weight, q)
    if len(mean) == 1:
        from statistics import NormalDist
        return float(mean[0] + NormalDist().inv_cdf(q) * sd[0])
    from scipy.optimize import brentq
    from scipy.special import erf

    def excess(t):     # CDF(t) - q, rising in t (jumps at point masses: brentq keeps a bracket)
        z = np.where(sd > 0, (t - mean) / np.where(sd > 0, sd, 1.0), np.where(t >= mean, np.inf, -np.inf))
        return float(np.sum(weight * 0.5 * (1 + erf(z / math.sqrt(2))))) - q
    lo, hi = float(np.min(mean - 6 * sd)), float(np.max(mean + 6 * sd))
    if excess(lo) >= 0:      # a point mass at the bottom holds q already
        return lo
    if excess(hi) < 0:
        return hi
    return float(brentq(excess, lo, hi, xtol=(hi - lo) * 2.0 ** -50))   # the width 50 halvings reached


def _ttft_quantile(service: np.ndarray, weight: np.ndarray, rho: float, wait_mean: float, q: float) -> float:
    """q-quantile of TTFT = W + S_i with P(W > t) = rho exp(-rho t / W_mean) (W independent of S)."""
    if len(service) == 1:     # closed form: W_q = (W_mean / rho) ln(rho / (1 - q)) when rho > 1 - q
        wq = wait_mean / rho * math.log(rho / (1 - q)) if rho > 1 - q and wait_mean > 0 else 0.0
        return float(service[0]) + wq
    from scipy.optimize import brentq

    def excess(t):     # P(TTFT > t) - (1 - q), falling in t (jumps at each S_i: brentq keeps a bracket)
        x = np.maximum(t - service, 0.0)
        pw = rho * np.exp(-rho * x / wait_mean) if wait_mean > 0 else (x <= 0) * 0.0
        return float(np.sum(weight * np.where(t < service, 1.0, pw))) - (1 - q)
    lo, hi = float(service.min()), float(service.max()) + 50 * (wait_mean / max(rho, 1e-12) + 1e-6)
    if excess(lo) <= 0:
        return lo
    if excess(hi) > 0:
        return hi
    return float(brentq(excess, lo, hi, xtol=(hi - lo) * 2.0 ** -60))   # the width 60 halvings reached


def _decode_fixed_point(tables: StepTables, mix: RequestMix, rate: float, slow: float) -> tuple[float, str]:
    """Mean decode batch B solving B = rate E[out] decode(B, ctx) / slow (Little's law), slow =
    1 - prefill share of the instance. Returns (B, '') or (inf, reason)."""
    e_out = mix.mean(mix.out_tokens)
    ctx = mix.mean(mix.in_tokens + mix.out_tokens / 2)
    per_request = mix.mean(tables.kv_tokens(mix.in_tokens, mix.out_tokens))
    budget = tables.kv_budget_tokens - tables.shared_prefix_tokens(mix.in_tokens)
    b_max = budget / max(per_request, 1.0)
    if b_max < 1:
        return math.inf, f"one request ({per_request:.0f} tokens) exceeds the KV cache ({budget:.0f} tokens)"

    # g(B) = rate E[out] decode(B) / slow - B is > 0 near 0 and decreasing past its root (decode
    # time grows sublinearly in B); evaluate on a log grid at once, then interpolate the sign change
    grid = np.geomspace(1e-4, b_max, 400)
    g = rate * e_out * tables.decode_time(grid, ctx) / slow - grid
    if g[-1] > 0:
        if tables.power_cap_w is not None and np.any(tables.decode_s >= REFUSED_STEP_S):
            return math.inf, (f"the decode steps this load needs either exceed the KV-cache limit of {b_max:.0f} "
                              f"sequences or cannot be held under the {tables.power_cap_w:g} W power cap per GPU "
                              f"(the power model refuses them even at half clock)")
        return math.inf, f"decode batch would exceed the KV-cache limit of {b_max:.0f} sequences"
    k = int(np.argmax(g <= 0))
    if k == 0:
        return float(grid[0]), ""
    b0, b1, g0, g1 = grid[k - 1], grid[k], g[k - 1], g[k]
    return float(b0 + (b1 - b0) * g0 / (g0 - g1)), ""


def _estimate(tables_d: StepTables, mix: RequestMix, rate: float, service: np.ndarray, rate_p: float,
              rho_decode_share: float, batch: float, tpot_scale: float, offset_s: float = 0.0,
              stall_var_rate: float = 0.0) -> ServingEstimate:
    w = mix.weight
    es, es2 = float(np.sum(w * service)), float(np.sum(w * service ** 2))
    rho = rate_p * es
    if rho >= 1:
        return _unstable(rate, f"prefill utilisation {rho:.2f} >= 1")
    wait = rate_p * es2 / (2 * (1 - rho))
    tpot_i = tables_d.decode_time(batch, mix.in_tokens + mix.out_tokens / 2) * tpot_scale
    # prefills landing in a request's decode lifetime L = n TPOT (n = out - 1 gaps) form a compound
    # Poisson stall: Var(TPOT_i) = lam E[S^2] L / n^2 = stall_var_rate x TPOT_i / n
    tpot_sd = np.sqrt(stall_var_rate * tpot_i / np.maximum(mix.out_tokens - 1, 1))
    ttft_q = {q: _ttft_quantile(service, w, rho, wait, q) + offset_s for q in (0.5, 0.9, 0.99)}
    return ServingEstimate(
        rate_rps=rate, stable=True, reason="",
        ttft_mean_s=wait + es + offset_s, ttft_p50_s=ttft_q[0.5], ttft_p90_s=ttft_q[0.9], ttft_p99_s=ttft_q[0.99],
        tpot_mean_s=float(np.sum(w * tpot_i)), tpot_p90_s=_normal_mix_quantile(tpot_i, tpot_sd, w, 0.9),
        tpot_p99_s=_normal_mix_quantile(tpot_i, tpot_sd, w, 0.99), decode_batch=batch,
        utilisation=max(rho, rho_decode_share),
        kv_tokens=batch * mix.mean(tables_d.kv_tokens(mix.in_tokens, mix.out_tokens / 2)))


def aggregated(tables: StepTables, mix: RequestMix, rate: float, chunk_tokens: int = 512,
               chunked_prefill: bool = True) -> ServingEstimate:
    """One instance serving both phases with continuous batching (formulas in the module
    docstring). `rate` is requests/s arriving at this instance.

    chunked_prefill=True (Sarathi-Serve, vLLM V1): a prompt runs in chunks of `chunk_tokens` that
    share their iterations with the decode batch, so its service includes ceil(in / chunk) decode
    steps. chunked_prefill=False (vLLM V0, the colocated baseline of DistServe): an iteration runs
    either the waiting prompts or one decode step, prompts first; a prompt's service is its
    prefill alone and every prefill stalls the whole decode batch (the stall enters TPOT through
    1 / (1 - rho_prefill) and its compound-Poisson variance)."""
    if rate <= 0:
        raise RoofplanError(f"arrival rate must be > 0 (got {rate})")
    pre = tables.prefill_time(mix.in_tokens)
    rho_p = rate * mix.mean(pre)
    if rho_p >= 1:
        return _unstable(rate, f"prefill alone needs {rho_p:.2f} of the GPU")
    batch, why = _decode_fixed_point(tables, mix, rate, 1 - rho_p)
    if why:
        return _unstable(rate, why)
    d_b = tables.decode_time(batch, mix.in_tokens + mix.out_tokens / 2)
    if chunked_prefill:              # a chunk shares its iteration with the running decode batch
        service = pre + np.ceil(mix.in_tokens / chunk_tokens) * d_b
    else:
        service = pre
    # an arrival joins at the next iteration boundary: mean residual of the running decode step
    resid = 0.5 * float(np.sum(mix.weight * d_b)) * min(batch, 1.0)
    stall_var_rate = rate * float(np.sum(mix.weight * pre ** 2))
    return _estimate(tables, mix, rate, service, rate, 1.0 if batch > 0 else 0.0, batch, 1 / (1 - rho_p), resid,
                     stall_var_rate)


def kv_transfer_time(tables: StepTables, in_tokens, link_Bps: float, latency_s: float = 0.0) -> np.ndarray:
    """KV cache of the prompt moved prefill -> decode instance: in x kv bytes/token x tp / link."""
    return np.asarray(in_tokens, dtype=float) * tables.kv_bytes_per_token * tables.tp / link_Bps + latency_s


def disaggregated(tables_p: StepTables, tables_d: StepTables, mix: RequestMix, rate: float,
                  n_prefill: int = 1, n_decode: int = 1, link_Bps: float = 0.0) -> ServingEstimate:
    """Prefill on `n_prefill` instances (M/G/1 each, load split evenly), decode on `n_decode`
    instances (continuous batching, no prefill interference); TTFT includes the KV transfer over
    `link_Bps` (0: no transfer cost, e.g. both on one NVLink node and overlapped)."""
    if rate <= 0:
        raise RoofplanError(f"arrival rate must be > 0 (got {rate})")
    service = tables_p.prefill_time(mix.in_tokens)
    if link_Bps:
        service = service + kv_transfer_time(tables_p, mix.in_tokens, link_Bps)
    rate_d = rate / n_decode
    batch, why = _decode_fixed_point(tables_d, mix, rate_d, 1.0)
    if why:
        return _unstable(rate, why)
    est = _estimate(tables_d, mix, rate, service, rate / n_prefill, 1.0 if batch > 0 else 0.0, batch, 1.0)
    return est


def prefill_pool(tables: StepTables, mix: RequestMix, rate: float, link_Bps: float = 0.0) -> ServingEstimate:
    """One prefill-only instance at `rate` (decode capacity elsewhere is ample): TTFT fields only,
    TPOT fields 0."""
    if rate <= 0:
        raise RoofplanError(f"arrival rate must be > 0 (got {rate})")
    service = tables.prefill_time(mix.in_tokens)
    if link_Bps:
        service = service + kv_transfer_time(tables, mix.in_tokens, link_Bps)
    est = _estimate(tables, mix, rate, service, rate, 0.0, 0.0, 0.0)
    return est


def decode_pool(tables: StepTables, mix: RequestMix, rate: float) -> ServingEstimate:
    """One decode-only instance at `rate` (prompts arrive prefilled): TPOT fields, TTFT 0."""
    if rate <= 0:
        raise RoofplanError(f"arrival rate must be > 0 (got {rate})")
    batch, why = _decode_fixed_point(tables, mix, rate, 1.0)
    if why:
        return _unstable(rate, why)
    return _estimate(tables, mix, rate, np.zeros_like(mix.in_tokens), 0.0, 1.0, batch, 1.0)


def request_energy_j(tables: StepTables, mix: RequestMix, role: str, decode_batch: float) -> np.ndarray:
    """Energy above the instance's idle floor per request of each point of `mix` (J, all tp GPUs)
    on an instance of `role` whose decode batch is `decode_batch` (ServingEstimate.decode_batch):
    its prefill (aggregated, prefill) and its out_tokens decode steps' share, out x decode(B, ctx) /
    B, with a step holding the mix's sequences at the mean context the decode batch is solved at
    (`_decode_fixed_point`: a decoding instance is then busy exactly as that fixed point says, so
    it never draws more than its TDP). Below one running sequence a step still holds one (B >= 1).
    The instance draws idle_w + rate x E[request_energy_j]."""
    e = np.zeros_like(mix.in_tokens)
    if role in ("aggregated", "prefill"):
        e = e + tables.prefill_energy(mix.in_tokens)
    if role in ("aggregated", "decode"):
        b = max(float(decode_batch), 1.0)
        ctx = mix.mean(mix.in_tokens + mix.out_tokens / 2)
        e = e + mix.out_tokens * float(tables.decode_energy(b, ctx)) / b
    return e


def _slack(x: float, slo: float) -> float:
    """Relative headroom of latency x under its SLO, 1 - x / slo clipped to [-1, 1] (>= 0: met)."""
    if slo == math.inf:
        return 1.0
    if slo <= 0:
        return 0.0 if x <= slo else -1.0
    return max(-1.0, (slo - x) / slo)


def max_rate(estimate, slo_ttft_s: float, slo_tpot_s: float, percentile: int = 90,
             hi: float = 1.0, rel_tol: float = 1e-3) -> float:
    """Largest arrival rate r with estimate(r).meets(SLOs) (0 when even a trickle misses them),
    within rel_tol of the edge: doubling to bracket the edge, then brentq on the SLO margin
    min(1 - TTFT_p / SLO_TTFT, 1 - TPOT_p / SLO_TPOT) clipped at -1 (-1 when unstable), which
    falls as latency grows with load. Returns the highest rate evaluated that meets the SLOs."""
    from scipy.optimize import brentq
    seen: dict[float, float] = {}
    best = 0.0

    def margin(rate: float) -> float:
        nonlocal best
        if rate not in seen:
            e = estimate(rate)
            ok = e.meets(slo_ttft_s, slo_tpot_s, percentile)
            m = -1.0
            if e.stable:
                m = min(_slack(getattr(e, f"ttft_p{percentile}_s"), slo_ttft_s),
                        _slack(getattr(e, f"tpot_p{percentile}_s"), slo_tpot_s))
            if ok:
                best = max(best, rate)
            seen[rate] = (m if m >= 0 else 0.0) if ok else (m if m < 0 else -1e-12)   # sign = meets()
        return seen[rate]

    lo = 1e-6
    if margin(lo) < 0:
        return 0.0
    while margin(hi) >= 0:
        lo, hi = hi, hi * 2
        if hi > 1e7:
            return lo
    brentq(margin, lo, hi, rtol=rel_tol)   # final bracket narrower than rel_tol x rate, both ends evaluated
    return best


# ---------------------------------------------------------------------------------------------
# discrete-event simulation

@dataclass(frozen=True)
class SimResult:
    ttft_s: np.ndarray          # per request
    tpot_s: np.ndarray          # per request (nan for one-token outputs)
    in_tokens: np.ndarray
    out_tokens: np.ndarray
    iterations: int
    truncated: bool             # stopped at max_iterations / max_time_s

    def attainment(self, slo_ttft_s: float, slo_tpot_s: float) -> float:
        ok = (self.ttft_s <= slo_ttft_s) & ((self.tpot_s <= slo_tpot_s) | np.isnan(self.tpot_s))
        return float(np.mean(ok))

    def percentile(self, name: str, q: float) -> float:
        x = getattr(self, name)
        return float(np.nanpercentile(x, q))


def sample_requests(mix: RequestMix, rate: float, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(mix.weight), size=n, p=mix.weight)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=n))
    return arrivals, mix.in_tokens[idx].astype(int), np.maximum(mix.out_tokens[idx].astype(int), 1)


def _run_instance(tables: StepTables, arrive: np.ndarray, n_in: np.ndarray, n_out: np.ndarray,
                  prefilled: bool, chunk_tokens: int, max_iterations: int, deadline_s: float,
                  chunked_prefill: bool = True):
    """Iteration-level continuous batching on one instance: admit FCFS while the KV cache can
    reserve in + out tokens.
    chunked_prefill=True (vLLM with chunked prefill): each iteration runs the decode batch plus up
    to `chunk_tokens` prompt tokens; time = prefill(chunk) + decode(batch, mean context)
    (Sarathi-Serve hybrid batches cost about the sum of their parts when the chunk is compute-bound).
    chunked_prefill=False (vLLM V0 scheduler): when prompts wait, the iteration prefills whole
    prompts, FCFS, up to `chunk_tokens` tokens (max_num_batched_tokens; at least one prompt) and no
    decode runs; otherwise it is one decode step of the batch. Prompts of one iteration cost
    `StepTables.batch_prefill_time` (weights read once, attention per prompt).
    Returns (first-token time, finish time, iterations, truncated)."""
    n = len(arrive)
    n_in, n_out = n_in.tolist(), n_out.tolist()
    first = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    done_pre = [0] * n if not prefilled else list(n_in)
    gen = [0] * n if not prefilled else [1] * n
    if prefilled:
        first[:] = arrive
    budget = tables.kv_budget_tokens - tables.shared_prefix_tokens(n_in)
    need = tables.kv_tokens(n_in, n_out).tolist()      # KV tokens each request reserves
    # dense lookups so one iteration costs no numpy call: decode over batch 1..max x 64 contexts,
    # prefill over 0..chunk tokens
    b_cap = int(min(max(budget / max(min(need), 1), 1), 4096)) + 1
    ctx_step = max(tables.max_context / 63, 1.0)
    dec_tab = tables.decode_time(np.arange(b_cap + 1)[:, None], (np.arange(64) * ctx_step)[None, :]).tolist()
    longest = chunk_tokens if chunked_prefill else max(chunk_tokens, max(n_in))
    pre_tab = tables.prefill_time(np.arange(longest + 1)).tolist()
    overhead = tables.iteration_overhead_s
    t, nxt, used, it = 0.0, 0, 0.0, 0
    running: list[int] = []
    finished = 0
    while finished < n:
        if it >= max_iterations or t > deadline_s:
            return first, finish, it, True
        while nxt < n and arrive[nxt] <= t and used + need[nxt] <= budget:
            running.append(nxt)
            used += need[nxt]
            nxt += 1
        if not running:
            if nxt < n and need[nxt] > budget:
                raise FieldError("tp", tables.tp, f"a request of {need[nxt]:.0f} tokens exceeds the KV cache of "
                                 f"{budget:.0f} tokens on {tables.tp} x {tables.gpu}", "use a larger tp or GPU")
            t = max(t, arrive[nxt])
            continue
        dec = [r for r in running if done_pre[r] >= n_in[r]]
        chunk_left = chunk_tokens
        pre_tok = 0
        pre_done_now = []
        dt = 0.0
        if chunked_prefill:
            for r in running:
                if done_pre[r] < n_in[r] and chunk_left > 0:
                    take = min(chunk_left, n_in[r] - done_pre[r])
                    done_pre[r] += take
                    chunk_left -= take
                    pre_tok += take
                    if done_pre[r] >= n_in[r]:
                        pre_done_now.append(r)
            if pre_tok:
                dt += pre_tab[pre_tok] - (overhead if dec else 0.0)   # one iteration: one overhead
        else:
            for r in running:
                if done_pre[r] < n_in[r]:
                    if pre_done_now and n_in[r] > chunk_left:
                        break      # FCFS: the next prompt waits for the next iteration
                    chunk_left -= n_in[r]
                    done_pre[r] = n_in[r]
                    pre_done_now.append(r)
            if pre_done_now:
                dec = []       # prompts first: the decode batch waits for this iteration
                dt += (pre_tab[n_in[pre_done_now[0]]] if len(pre_done_now) == 1
                       else tables.batch_prefill_time([n_in[r] for r in pre_done_now]))
        if dec:
            ctx = sum(n_in[r] + gen[r] for r in dec) / len(dec)
            dt += dec_tab[min(len(dec), b_cap)][min(int(ctx / ctx_step + 0.5), 63)]
        t += dt
        it += 1
        for r in pre_done_now:
            first[r] = t
            gen[r] = 1
        for r in dec:
            gen[r] += 1
        still = []
        for r in running:
            if done_pre[r] >= n_in[r] and gen[r] >= n_out[r]:
                finish[r] = t
                used -= need[r]
                finished += 1
            else:
                still.append(r)
        running = still
    return first, finish, it, False


def _run_prefill_instance(tables: StepTables, arrive: np.ndarray, n_in: np.ndarray, batch_tokens: int) -> np.ndarray:
    """A prefill-only instance (DistServe's context stage): FCFS, each iteration prefills every
    waiting prompt up to `batch_tokens` tokens (at least one) in one batch. Returns the time each
    prompt's first token is out."""
    n = len(arrive)
    done = np.empty(n)
    t, i = 0.0, 0
    while i < n:
        t = max(t, arrive[i])
        j, tok = i + 1, int(n_in[i])
        while j < n and arrive[j] <= t and tok + n_in[j] <= batch_tokens:
            tok += int(n_in[j])
            j += 1
        t += tables.batch_prefill_time(n_in[i:j])
        done[i:j] = t
        i = j
    return done


def simulate(tables: StepTables, mix: RequestMix, rate: float, n_requests: int = 1000, seed: int = 0,
             **kw) -> SimResult:
    """Discrete-event simulation of `n_requests` Poisson arrivals drawn from `mix` (seeded); `kw`
    go to `replay`."""
    if rate <= 0 or n_requests < 1:
        raise RoofplanError("simulate needs rate > 0 and n_requests >= 1")
    arrive, n_in, n_out = sample_requests(mix, rate, n_requests, seed)
    return replay(tables, arrive, n_in, n_out, **kw)


def replay(tables: StepTables, arrive, n_in, n_out, chunk_tokens: int = 512,
           tables_decode: StepTables | None = None, n_prefill: int = 1, n_decode: int = 1,
           link_Bps: float = 0.0, max_iterations: int = 2_000_000, max_time_s: float = 1e6,
           chunked_prefill: bool = True, prefill_batch_tokens: int = 8192) -> SimResult:
    """Discrete-event simulation of given requests (arrival times in s, sorted; prompt and output
    tokens), e.g. a measured trace. Aggregated when `tables_decode` is None (scheduling policy
    `chunked_prefill`, see `_run_instance`); otherwise prefill instances (DistServe's context stage:
    FCFS batches of up to `prefill_batch_tokens`, `_run_prefill_instance`) hand the KV cache to
    decode instances (round-robin), as in DistServe."""
    arrive = np.asarray(arrive, dtype=float)
    n_in = np.asarray(n_in, dtype=int)
    n_out = np.maximum(np.asarray(n_out, dtype=int), 1)
    n_requests = len(arrive)
    if n_requests < 1 or len(n_in) != n_requests or len(n_out) != n_requests:
        raise RoofplanError("replay needs one prompt and one output length per arrival (at least one request)")
    if np.any(np.diff(arrive) < 0):
        raise RoofplanError("replay needs arrival times sorted ascending")
    if tables_decode is None:
        first, finish, it, trunc = _run_instance(tables, arrive, n_in, n_out, False, chunk_tokens,
                                                 max_iterations, max_time_s, chunked_prefill)
    else:
        xfer = kv_transfer_time(tables, n_in, link_Bps) if link_Bps else np.zeros(n_requests)
        first = np.empty(n_requests)
        for k in range(n_prefill):
            sel = np.arange(k, n_requests, n_prefill)
            first[sel] = _run_prefill_instance(tables, arrive[sel], n_in[sel], prefill_batch_tokens) + xfer[sel]
        finish = np.full(n_requests, np.nan)
        it, trunc = 0, False
        for k in range(n_decode):
            sel = np.arange(k, n_requests, n_decode)
            order = sel[np.argsort(first[sel], kind="stable")]
            _, fin, i_k, t_k = _run_instance(tables_decode, first[order], n_in[order], n_out[order], True,
                                             chunk_tokens, max_iterations, max_time_s)
            finish[order] = fin
            it += i_k
            trunc = trunc or t_k
    ttft = first - arrive
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(n_out > 1, (finish - first) / (n_out - 1), np.nan)
    return SimResult(ttft_s=ttft, tpot_s=tpot, in_tokens=n_in, out_tokens=n_out, iterations=it, truncated=trunc)


def max_rate_simulated(tables: StepTables, mix: RequestMix, slo_ttft_s: float, slo_tpot_s: float,
                       percentile: int = 90, n_requests: int = 800, seed: int = 0, hi: float = 64.0,
                       rel_tol: float = 0.02, **sim_kw) -> float:
    """Largest Poisson rate below `hi` whose simulated P`percentile` TTFT and TPOT (over requests,
    DistServe's definition) meet the SLOs: `bisect_rate` on `simulate` with a fixed seed (`sim_kw`
    go to it), to rel_tol."""
    def ok(rate: float) -> bool:
        sim = simulate(tables, mix, rate, n_requests=n_requests, seed=seed, **sim_kw)
        return (not sim.truncated and sim.percentile("ttft_s", percentile) <= slo_ttft_s
                and sim.percentile("tpot_s", percentile) <= slo_tpot_s)
    return bisect_rate(ok, hi, rtol=rel_tol)


def bisect_rate(ok, hi: float, xtol: float = 2e-12, rtol: float = 4 * np.finfo(float).eps) -> float:
    """Highest rate in (0, hi) that the predicate ok(rate) accepts (0 when none), by
    scipy.optimize.bisect on +1 (ok) / -1 over [0, hi], stopping when the bracket is narrower than
    xtol + rtol x rate. The ends are not evaluated: 0 is taken to pass and hi to fail (hi is the
    caller's upper bound). Bisection rather than brentq: a seeded simulation is a step function of
    the rate (discrete batching events, the truncation flag, request counts), with no continuous
    margin to interpolate; brentq's secant steps would probe other rates and can settle on
    another of its sign changes, bisection probes the midpoints it always did."""
    from scipy.optimize import bisect
    best = 0.0

    def sign(rate: float) -> float:
        nonlocal best
        if rate <= 0:
            return 1.0
        if rate >= hi:
            return -1.0
        if ok(rate):
            best = max(best, rate)
            return 1.0
        return -1.0
    bisect(sign, 0.0, hi, xtol=xtol, rtol=rtol)
    return best
