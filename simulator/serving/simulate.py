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
from simulator.core.workload import Job, validate_job

GPU_MEMORY_UTILIZATION = 0.9   # vLLM's default share of device memory it manages (weights + KV)
PREFILL_GRID = (16, 128, 512, 2048, 8192, 32768)
DECODE_BATCH_GRID = (1, 4, 16, 64, 256, 1024)
DECODE_CONTEXT_GRID = (64, 512, 2048, 8192, 32768)
CHUNK_GRID = (16, 128, 512, 2048, 8192)      # prompt tokens of a mixed step (chunked prefill)
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
    chunk_tokens_grid: np.ndarray | None = None   # mixed steps: prompt-chunk sizes N of the table below
    chunk_added_s: np.ndarray | None = None    # [batch, N] time a chunk of N prompt tokens adds to a decode
                                               # step of `batch` (predict() of the mixed step - the decode)
    engine: Engine | None = None               # the serving engine's behaviour (None: a plain instance)

    @property
    def block(self) -> int:
        return self.engine.kv_block_tokens if self.engine is not None else 1

    def kv_tokens(self, in_tokens, out_tokens) -> np.ndarray:
        """KV-cache tokens one request holds: its prompt and output, less the prefix a prefix
        cache shares with every other request (`shared_prefix_tokens` holds it once)."""
        own = self.uncached_tokens(in_tokens) + np.asarray(out_tokens, float)
        return np.ceil(own / self.block) * self.block      # whole KV blocks (pages)

    def uncached_tokens(self, in_tokens) -> np.ndarray:
        """Prompt tokens a prefill computes: all but the cached prefix (prefix caching); an engine
        with KV blocks caches whole blocks only, so the hit is rounded down to a block."""
        n = np.asarray(in_tokens, float)
        hit = self.options.prefix_hit if self.options is not None else 0.0
        if self.block > 1:
            return n - np.floor(hit * n / self.block) * self.block
        return np.floor((1.0 - hit) * n + 0.5)

    def shared_prefix_tokens(self, in_tokens) -> float:
        """The cached prefix every request shares, held once (the mean prompt's hit share)."""
        n = np.asarray(in_tokens, float)
        return float(np.mean(n - self.uncached_tokens(n)))

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
        row scaled linearly in batch). Inputs broadcast against each other. An engine with CUDA
        graphs runs the batch padded up to its next captured size; its host time per step is
        added, or hidden under the GPU's when it schedules asynchronously (`engine_step_time`)."""
        if self.engine is None:
            return self._decode_lookup(self._decode_interp, batch, context)
        gpu = self._decode_lookup(self._decode_interp, padded_batch(batch, self.engine.graph_sizes), context)
        return self.engine.step(gpu, batch)

    def mixed_time(self, batch, context, chunk, chunk_context=0) -> np.ndarray:
        """One step of chunked prefill: `batch` sequences decode at `context` and, in the same
        forward, `chunk` prompt tokens of one more request are prefilled after `chunk_context` of
        its tokens (earlier chunks, or its cached prefix). The decode step plus what the chunk adds
        to it at this batch (`chunk_added_s`, predict() of the core's mixed step, log-log in chunk
        tokens, linear in batch, per token above the grid), plus the chunk's attention to its
        earlier tokens (`attention_pair_s` x N x M). Batch 0: the chunk with one decode slot (a
        prefill of N + 1 tokens). No CUDA-graph padding (a mixed batch runs outside the decode
        graphs); the engine's host time as in decode_time. Inputs broadcast."""
        b = np.asarray(batch, float)
        n = np.maximum(np.asarray(chunk, float), 0.0)
        m = np.asarray(chunk_context, float)
        dec = self._decode_lookup(self._decode_interp, np.maximum(b, 1.0), np.where(b > 0, context, 0.0))
        gpu = dec + self.chunk_added(np.maximum(b, 1.0), n) + self.attention_pair_s * n * m
        return self.engine.step(gpu, b) if self.engine is not None else gpu

    @cached_property
    def attention_pair_s(self) -> float:
        """Prefill attention time per (query, earlier key) pair, from the longest prompt of the
        prefill table (q computed tokens after t - q cached ones: q (t - q) + q^2 / 2 pairs): what
        a chunk's attention to the M tokens before it costs beyond its own causal part."""
        if self.prefill_attn_s is None:
            return 0.0
        t = float(self.prefill_tokens[-1])
        q = float(self.uncached_tokens(t)) if self.options is not None else t
        return float(self.prefill_attn_s[-1]) / (q * (t - q) + q * q / 2)

    def chunk_added(self, batch, chunk) -> np.ndarray:
        """Time `chunk` prompt tokens add to a decode step of `batch` sequences (0 for no chunk).
        Tables without a mixed-step grid: a separate prefill of the chunk (two passes)."""
        n = np.asarray(chunk, float)
        if self.chunk_added_s is None:
            return np.where(n > 0, self.prefill_time(n), 0.0)
        b = np.clip(np.asarray(batch, float), self.decode_batch[0], self.decode_batch[-1])
        g = self.chunk_tokens_grid
        b, nn = np.broadcast_arrays(b, np.clip(n, g[0], g[-1]))
        t = self._chunk_interp(np.stack([b, np.log(nn)], axis=-1)).reshape(b.shape)
        t = np.exp(t)
        top = np.exp(self._chunk_interp(np.stack([b, np.full_like(b, np.log(g[-1]))], axis=-1)).reshape(b.shape))
        t = np.where(n > g[-1], top * n / g[-1], np.where(n < g[0], t * n / g[0], t))
        return np.where(n > 0, t, 0.0)

    @cached_property
    def _chunk_interp(self):
        from scipy.interpolate import RegularGridInterpolator
        return RegularGridInterpolator((self.decode_batch, np.log(self.chunk_tokens_grid)),
                                       np.log(np.maximum(self.chunk_added_s, 1e-12)), method="linear")

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
        """Energy above the idle floor of one decode step (J, all tp GPUs; interpolated as
        decode_time, the batch padded as the engine runs it)."""
        if self.decode_dyn_j is None:
            return np.zeros(np.broadcast_shapes(np.shape(batch), np.shape(context)))
        if self.engine is not None:
            batch = padded_batch(batch, self.engine.graph_sizes)
        return self._decode_lookup(self._decode_energy_interp, batch, context)


def padded_batch(batch, sizes) -> np.ndarray:
    """The batch a CUDA-graph engine runs: `batch` rounded up to a whole sequence and then to the
    next captured size (vLLM V1, SGLang); beyond the largest captured size no graph runs and the
    batch is its own. No sizes: the batch unchanged (a fractional mean batch stays fractional)."""
    b = np.asarray(batch, float)
    if not sizes:
        return b
    s = np.asarray(sizes, float)
    whole = np.ceil(b - 1e-9)
    i = np.searchsorted(s, whole, side="left")
    return np.where(i < len(s), s[np.minimum(i, len(s) - 1)], whole)


def engine_step_time(gpu_s, batch, step_s: float, per_seq_s: float, overlapped: bool) -> np.ndarray:
    """An engine's step: the GPU's time and its host work per step (scheduler, input preparation,
    output processing: step_s + per_seq_s x running sequences), in sequence, or overlapped with
    the GPU's previous step (asynchronous scheduling), where only host work beyond the GPU's
    shows."""
    host = step_s + per_seq_s * np.maximum(np.asarray(batch, float), 0.0)
    return np.maximum(gpu_s, host) if overlapped else np.asarray(gpu_s) + host


@dataclass(frozen=True)
class Engine:
    """What the serving simulation reads from an engine profile (ExecutorProfile's serving fields)."""
    name: str
    graph_sizes: tuple[int, ...] = ()     # CUDA-graph batch sizes (decode batches padded up to them)
    max_num_batched_tokens: int = 0       # token budget per step (decode + prompt chunks); 0: none
    host_step_s: float = 0.0
    host_per_seq_s: float = 0.0
    async_scheduling: bool = False
    kv_block_tokens: int = 1
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION
    mixed_prefill: bool = True            # prompt chunks in the decode batch's forward (False: prompts first)

    @staticmethod
    def of(ex: ExecutorProfile) -> "Engine | None":
        """The engine behaviour of a profile; None when it has none (default, megatron, ...)."""
        if not (ex.cuda_graph_batch_sizes or ex.max_num_batched_tokens or ex.scheduler_step_s
                or ex.scheduler_per_seq_s or ex.kv_block_tokens > 1 or ex.gpu_memory_utilization is not None
                or ex.mixed_prefill is not None):
            return None
        return Engine(ex.name, tuple(ex.cuda_graph_batch_sizes), ex.max_num_batched_tokens, ex.scheduler_step_s,
                      ex.scheduler_per_seq_s, ex.async_scheduling, ex.kv_block_tokens,
                      ex.gpu_memory_utilization if ex.gpu_memory_utilization is not None else GPU_MEMORY_UTILIZATION,
                      ex.mixed_prefill is not False)

    def step(self, gpu_s, batch) -> np.ndarray:
        return engine_step_time(gpu_s, batch, self.host_step_s, self.host_per_seq_s, self.async_scheduling)


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
    base_job = validate_job(Job("decode", batch=1, context=0, dtype=dtype, tp=tp, **quant), model)   # dtypes, tp
    base = inference_memory(model, base_job, executor)
    kv_tok = kv_cache_bytes(model, base_job)
    engine = Engine.of(executor)
    util = engine.gpu_memory_utilization if engine is not None else GPU_MEMORY_UTILIZATION
    act = base.activations
    if engine is not None and engine.max_num_batched_tokens:
        # the engine sizes its KV cache after a profiling forward of a full token budget (vLLM's
        # profile_run): those activations stay reserved
        prof = Job("prefill", batch=1, seq=min(engine.max_num_batched_tokens, L), dtype=dtype, tp=tp, **quant)
        act = max(act, inference_memory(model, prof, executor).activations)
    budget = util * gpu.mem_bytes - base.weights - base.workspace - act
    draft_w = 0.0
    if options.spec_tokens:   # the proposer's weights and cache sit beside the target's, as predict_speculative
        from simulator.core.speculative import check_draft, draft_plan, eagle_head   # counts them
        if options.draft is not None:
            check_draft(options.draft, model)
        proposer = options.draft if options.draft is not None else eagle_head(model)
        dj = draft_plan(base_job, options.draft)
        draft_w = (inference_memory(proposer, dj, executor).weights if options.draft is not None
                   else base.weights / model.n_layers)
        kv_tok += kv_cache_bytes(proposer, dj)
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
            draft = _draft_prefill(model, job, options, system, kw) if job.phase == "prefill" else None
        except FieldError as e:
            if e.field != "power_cap_w":
                raise
            return REFUSED_STEP_S, 0.0, None
        t, e = p.time_s, (p.energy.energy_j if p.energy is not None else 0.0)
        if draft is not None:    # the proposer prefills the prompt too (its own KV cache) before decoding
            t += draft.time_s
            e += draft.energy.energy_j + (tp - draft.job.n_gpus) * idle_w / tp * draft.time_s if draft.energy else 0.0
        dyn = (e - idle_w * t) if p.energy is not None else 0.0
        return t, max(dyn, 0.0), p

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
    chunks = np.array([n for n in CHUNK_GRID if n + int(ctx[0]) <= L - 1], dtype=float)
    added = None
    if len(chunks) >= 2:   # the mixed step of chunked prefill: what a chunk adds to a decode step
        c0 = int(ctx[0])
        plain = (np.array(_plain_steps(model, system, bat, c0, dtype, tp, power_cap_w, quant, kw))
                 if options.spec_tokens else dec[:, 0, 0])
        with_chunk = np.array([[_step_time(model, system, Job("decode", batch=int(b), context=c0, dtype=dtype, tp=tp,
                                                               chunk_tokens=int(n), power_cap_w=power_cap_w, **quant),
                                           kw) for n in chunks] for b in bat])
        added = np.maximum(with_chunk - plain[:, None], 1e-9)
    blocks = engine.kv_block_tokens if engine is not None else 1
    return StepTables(model=model.name, gpu=gpu.name, tp=tp, prefill_tokens=ptoks,
                      prefill_s=np.array(pre) + iteration_overhead_s, decode_batch=bat, decode_context=ctx,
                      decode_s=dec[..., 0] + iteration_overhead_s, kv_bytes_per_token=kv_tok,
                      kv_budget_tokens=(np.floor(budget / kv_tok / blocks) * blocks if engine is not None else budget / kv_tok),
                      max_context=L,
                      iteration_overhead_s=per_step,
                      prefill_attn_s=np.array(attn), idle_w=idle_w, prefill_dyn_j=np.array(pre_j),
                      decode_dyn_j=dec[..., 1], power_cap_w=power_cap_w, options=options,
                      chunk_tokens_grid=chunks if added is not None else None, chunk_added_s=added, engine=engine)


def _step_time(model: ModelConfig, system: System, job: Job, kw: dict) -> float:
    """predict()'s step time, REFUSED_STEP_S where the power cap cannot hold it."""
    try:
        return predict(model, system, job, with_ops=False, **kw).time_s
    except FieldError as e:
        if e.field != "power_cap_w":
            raise
        return REFUSED_STEP_S


def _plain_steps(model, system, batches, context, dtype, tp, power_cap_w, quant, kw) -> list[float]:
    """Non-speculative decode steps (the base a chunk's added time is measured against when the
    tables hold speculative per-token steps)."""
    return [_step_time(model, system, Job("decode", batch=int(b), context=context, dtype=dtype, tp=tp,
                                          power_cap_w=power_cap_w, **quant), kw) for b in batches]


def _draft_prefill(model: ModelConfig, job: Job, options: EngineOptions, system: System, kw: dict):
    """The speculative proposer's prefill of the same prompt (a draft model's, or an EAGLE-style
    head's one layer; core.speculative.draft_plan places it), or None without speculation."""
    if not options.spec_tokens:
        return None
    from simulator.core.speculative import draft_plan, eagle_head
    proposer = options.draft if options.draft is not None else eagle_head(model)
    return predict(proposer, system, draft_plan(job, options.draft), **kw)


def _spec_step(model: ModelConfig, system: System, job: Job, options: EngineOptions, idle_w: float,
               kw: dict) -> tuple[float, float, object]:
    """A speculative decode step over the E tokens it yields per sequence: (time per token, energy
    above idle per token, the verification's prediction). The energy is the whole step's
    (predict_speculative: the verification plus K draft steps), less the idle floor over the step."""
    from simulator.core.speculative import predict_speculative
    sp = predict_speculative(model, system, job, options.spec_acceptance, options.draft, kw["executor"],
                             kw["kernels"], check_memory=False)
    dyn = max(sp.energy["energy_j"] - idle_w * sp.time_s, 0.0) if sp.energy is not None else 0.0
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
    tpot_p50_s: float = math.nan

    def meets(self, slo_ttft_s: float, slo_tpot_s: float, percentile: int = 90) -> bool:
        if not self.stable:
            return False
        return (getattr(self, f"ttft_p{percentile}_s") <= slo_ttft_s
                and getattr(self, f"tpot_p{percentile}_s") <= slo_tpot_s)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _unstable(rate: float, reason: str) -> ServingEstimate:
    inf = math.inf
    return ServingEstimate(rate, False, reason, inf, inf, inf, inf, inf, inf, inf, inf, 1.0, inf, inf)


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
    # every sequence of a continuous batch waits for the same step: the batch's step at its mean
    # context (the decode batch's fixed point, `_decode_fixed_point`), whatever the request's own
    ctx = mix.mean(mix.in_tokens + mix.out_tokens / 2)
    tpot_i = np.full_like(mix.in_tokens, float(tables_d.decode_time(batch, ctx)) * tpot_scale)
    # prefills landing in a request's decode lifetime L = n TPOT (n = out - 1 gaps) form a compound
    # Poisson stall: Var(TPOT_i) = lam E[S^2] L / n^2 = stall_var_rate x TPOT_i / n
    tpot_sd = np.sqrt(stall_var_rate * tpot_i / np.maximum(mix.out_tokens - 1, 1))
    ttft_q = {q: _ttft_quantile(service, w, rho, wait, q) + offset_s for q in (0.5, 0.9, 0.99)}
    return ServingEstimate(
        rate_rps=rate, stable=True, reason="",
        ttft_mean_s=wait + es + offset_s, ttft_p50_s=ttft_q[0.5], ttft_p90_s=ttft_q[0.9], ttft_p99_s=ttft_q[0.99],
        tpot_mean_s=float(np.sum(w * tpot_i)), tpot_p90_s=_normal_mix_quantile(tpot_i, tpot_sd, w, 0.9),
        tpot_p99_s=_normal_mix_quantile(tpot_i, tpot_sd, w, 0.99), decode_batch=batch,
        tpot_p50_s=_normal_mix_quantile(tpot_i, tpot_sd, w, 0.5),
        utilisation=max(rho, rho_decode_share),
        kv_tokens=batch * mix.mean(tables_d.kv_tokens(mix.in_tokens, mix.out_tokens / 2)))


def aggregated(tables: StepTables, mix: RequestMix, rate: float, chunk_tokens: int | None = None,
               chunked_prefill: bool | None = None) -> ServingEstimate:
    """One instance serving both phases with continuous batching (formulas in the module
    docstring). `rate` is requests/s arriving at this instance.

    chunked_prefill=True (Sarathi-Serve; vLLM V1, SGLang): a prompt's uncached tokens run in
    chunks that share one forward with the running decode batch (`StepTables.mixed_time`): an
    engine's token budget per step (`chunk_tokens`, default its max_num_batched_tokens) holds the
    B decode tokens and B_max - B prompt tokens; a plain instance adds `chunk_tokens` (default 512)
    prompt tokens to the decode batch. A prompt's service is its ceil(uncached / chunk) steps:
    as many decode steps plus what its chunks add to them (`chunk_work`); that added work is the
    share of the instance the decode batch loses (TPOT = step / (1 - rate E[chunk work])), solved
    together with the decode batch (Little's law) by fixed-point iteration.
    chunked_prefill=False (vLLM V0, the colocated baseline of DistServe): an iteration runs
    either the waiting prompts or one decode step, prompts first; a prompt's service is its
    prefill alone and every prefill stalls the whole decode batch (the stall enters TPOT through
    1 / (1 - rho_prefill) and its compound-Poisson variance).
    Not given, both come from the engine (`scheduling`)."""
    if rate <= 0:
        raise RoofplanError(f"arrival rate must be > 0 (got {rate})")
    chunked_prefill, budget = scheduling(tables, chunked_prefill, chunk_tokens)
    ctx = mix.in_tokens + mix.out_tokens / 2
    if not chunked_prefill:
        work = tables.prefill_time(mix.in_tokens)     # a prompt's service is its prefill alone
        loaded = _loaded(tables, mix, rate, work)
        if isinstance(loaded, ServingEstimate):
            return loaded
        rho_p, batch = loaded
        return _aggregated_estimate(tables, mix, rate, work, work, rho_p, batch, tables.decode_time(batch, ctx))
    work = chunk_work(tables, mix, 1.0, budget)           # first guess: a decode batch of one
    for _ in range(8):   # the chunks' added work depends on the decode batch they ride with, and back
        loaded = _loaded(tables, mix, rate, work)
        if isinstance(loaded, ServingEstimate):
            return loaded
        _, batch = loaded
        new = chunk_work(tables, mix, batch, budget)
        if np.allclose(new, work, rtol=1e-4):
            break
        work = new
    work = new
    rho_p = rate * mix.mean(work)
    if rho_p >= 1:
        return _unstable(rate, f"prefill alone needs {rho_p:.2f} of the GPU")
    d_b = tables.decode_time(batch, ctx)
    steps = np.ceil(tables.uncached_tokens(mix.in_tokens) / _chunk_of(tables, budget, batch))
    return _aggregated_estimate(tables, mix, rate, work + steps * d_b, work, rho_p, batch, d_b)


def _loaded(tables: StepTables, mix: RequestMix, rate: float, work: np.ndarray):
    """(prefill share rho_p = rate E[work], decode batch at the remaining share) of an aggregated
    instance whose prompts each take `work` of it, or the unstable estimate when there is none."""
    rho_p = rate * mix.mean(work)
    if rho_p >= 1:
        return _unstable(rate, f"prefill alone needs {rho_p:.2f} of the GPU")
    batch, why = _decode_fixed_point(tables, mix, rate, 1 - rho_p)
    return _unstable(rate, why) if why else (rho_p, batch)


def _aggregated_estimate(tables: StepTables, mix: RequestMix, rate: float, service: np.ndarray, work: np.ndarray,
                         rho_p: float, batch: float, d_b: np.ndarray) -> ServingEstimate:
    """The estimate of an aggregated instance: TTFT over the prompts' `service`, TPOT slowed by the
    prefill share and stalled by each prompt's `work` (compound Poisson); an arrival joins at the
    next iteration boundary (the mean residual of the running decode step)."""
    resid = 0.5 * float(np.sum(mix.weight * d_b)) * min(batch, 1.0)
    return _estimate(tables, mix, rate, service, rate, 1.0 if batch > 0 else 0.0, batch, 1 / (1 - rho_p), resid,
                     rate * float(np.sum(mix.weight * work ** 2)))

V0_BATCHED_TOKENS = 2048   # vLLM V0 without chunked prefill: max(max_model_len, 2048) tokens per step (2k-context models)


def scheduling(tables: StepTables, chunked_prefill: bool | None = None,
               chunk_tokens: int | None = None) -> tuple[bool, int]:
    """How the instance's engine schedules prompts beside its decode batch -- one rule for the
    closed forms (`aggregated`), the simulation (`replay`), `roofplan serve` and the fleet planner:
    (chunked_prefill, tokens per step). Prompt chunks ride in the decode batch's forward unless the
    engine says they do not (ExecutorProfile.mixed_prefill False: vLLM V0, DistServe's colocated
    baseline, SGLang without --enable-mixed-chunk; not said: mixed, as Sarathi-Serve). Tokens per
    step: the given budget, else the engine's max_num_batched_tokens, else 512 when mixed and
    V0_BATCHED_TOKENS when prompts run first."""
    ex = tables.engine
    if chunked_prefill is None:
        chunked_prefill = ex is None or ex.mixed_prefill
    if chunk_tokens is not None:
        if chunk_tokens < 1:
            raise FieldError("max_num_batched_tokens", chunk_tokens, "must be >= 1 token per step")
        return chunked_prefill, int(chunk_tokens)
    if ex is not None and ex.max_num_batched_tokens:
        return chunked_prefill, ex.max_num_batched_tokens
    return chunked_prefill, 512 if chunked_prefill else V0_BATCHED_TOKENS


def _chunk_of(tables: StepTables, budget: int, batch: float) -> float:
    """Prompt tokens per step beside a decode batch: an engine's budget counts the decode tokens
    first (at least one prompt token still runs); a plain instance's budget is prompt tokens."""
    if tables.engine is not None and tables.engine.max_num_batched_tokens:
        return max(budget - math.ceil(batch), 1)
    return budget


def chunk_work(tables: StepTables, mix: RequestMix, batch: float, budget: int) -> np.ndarray:
    """Time each prompt of `mix` adds to the steps it rides in at decode batch `batch`: its
    uncached tokens in chunks of the budget's prompt share, each chunk's added time
    (`StepTables.chunk_added`) and its attention to the tokens before it (cached prefix and
    earlier chunks)."""
    u = tables.uncached_tokens(mix.in_tokens)
    c = _chunk_of(tables, budget, batch)
    full = np.floor(u / c)
    last = u - full * c
    b = max(batch, 1.0)
    cached = mix.in_tokens - u
    # query x earlier-key pairs over all chunks: each token attends to the tokens of earlier chunks
    # and the cached prefix (full chunks: c^2 k(k-1)/2 pairs; the last chunk after all full ones)
    pairs = c * c * full * (full - 1) / 2 + last * full * c + u * cached
    return (full * float(tables.chunk_added(b, c)) + tables.chunk_added(b, last)
            + tables.attention_pair_s * pairs)


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
    reserve in + out tokens (whole blocks; a cached prefix once).
    chunked_prefill=True (Sarathi-Serve; vLLM V1, SGLang): each iteration runs the decode batch
    and prompt chunks in one forward, `StepTables.mixed_time` (the core's mixed step: weights read
    once). An engine's token budget (`chunk_tokens` = max_num_batched_tokens) counts the decode
    tokens first and fills the rest with prompt tokens, FCFS; a plain instance adds up to
    `chunk_tokens` prompt tokens to the decode batch. Only a prompt's uncached tokens are
    prefilled (prefix caching); the chunk attends to the cached prefix and the earlier chunks.
    chunked_prefill=False (vLLM V0 scheduler): when prompts wait, the iteration prefills whole
    prompts, FCFS, up to `chunk_tokens` tokens (max_num_batched_tokens; at least one prompt) and no
    decode runs; otherwise it is one decode step of the batch. Prompts of one iteration cost
    `StepTables.batch_prefill_time` (weights read once, attention per prompt).
    Returns (first-token time, finish time, iterations, truncated)."""
    n = len(arrive)
    n_in, n_out = n_in.tolist(), n_out.tolist()
    first = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    todo = tables.uncached_tokens(n_in).astype(int).tolist() if chunked_prefill else list(n_in)
    cached = [a - b for a, b in zip(n_in, todo)]
    done_pre = [0] * n if not prefilled else list(todo)
    gen = [0] * n if not prefilled else [1] * n
    if prefilled:
        first[:] = arrive
    budget = tables.kv_budget_tokens - tables.shared_prefix_tokens(n_in)
    need = tables.kv_tokens(n_in, n_out).tolist()      # KV tokens each request reserves
    # dense lookups so one iteration costs no numpy call: decode over batch 1..max x 64 contexts,
    # prefill over 0..chunk tokens, a chunk's added time per batch-grid row over 0..chunk tokens
    b_cap = int(min(max(budget / max(min(need), 1), 1), 4096)) + 1
    ctx_step = max(tables.max_context / 63, 1.0)
    dec_tab = tables.decode_time(np.arange(b_cap + 1)[:, None], (np.arange(64) * ctx_step)[None, :]).tolist()
    engine = tables.engine if chunked_prefill and tables.engine is not None and tables.engine.max_num_batched_tokens \
        else None
    longest = chunk_tokens if chunked_prefill else max(chunk_tokens, max(n_in))
    pre_tab = tables.prefill_time(np.arange(longest + 1)).tolist()
    rows = tables.decode_batch.tolist()
    add_tab = [tables.chunk_added(b, np.arange(chunk_tokens + 1)).tolist() for b in rows] if chunked_prefill else []
    pair_s = tables.attention_pair_s
    eng = tables.engine
    gpu_tab = (tables._decode_lookup(tables._decode_interp, np.maximum(np.arange(b_cap + 1), 1)[:, None],
                                     (np.arange(64) * ctx_step)[None, :]).tolist() if eng is not None else dec_tab)

    def added(b: int, tok: int) -> float:   # chunk_added, linear between batch-grid rows
        if b <= rows[0]:
            return add_tab[0][tok]
        if b >= rows[-1]:
            return add_tab[-1][tok]
        k = next(i for i in range(1, len(rows)) if rows[i] >= b)
        w = (b - rows[k - 1]) / (rows[k] - rows[k - 1])
        return add_tab[k - 1][tok] * (1 - w) + add_tab[k][tok] * w

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
        dec = [r for r in running if done_pre[r] >= todo[r]]
        chunk_left = max(chunk_tokens - len(dec), 0) if engine is not None else chunk_tokens
        pre_tok = 0
        pre_ctx = 0
        pre_done_now = []
        dt = 0.0
        if chunked_prefill:
            for r in running:
                if done_pre[r] < todo[r] and chunk_left > 0:
                    take = min(chunk_left, todo[r] - done_pre[r])
                    pre_ctx += take * (cached[r] + done_pre[r])     # query x earlier-key pairs of the chunk
                    done_pre[r] += take
                    chunk_left -= take
                    pre_tok += take
                    if done_pre[r] >= todo[r]:
                        pre_done_now.append(r)
            ctx = sum(n_in[r] + gen[r] for r in dec) / len(dec) if dec else 0.0
            if pre_tok:      # one mixed step: the decode (unpadded) + the chunks, the host's time once
                b = len(dec)
                gpu = gpu_tab[max(min(b, b_cap), 1)][min(int(ctx / ctx_step + 0.5), 63)]
                gpu += added(max(b, 1), pre_tok) + pair_s * pre_ctx
                if eng is not None:
                    h = eng.host_step_s + eng.host_per_seq_s * b
                    gpu = max(gpu, h) if eng.async_scheduling else gpu + h
                dt = gpu
            elif dec:
                dt = dec_tab[min(len(dec), b_cap)][min(int(ctx / ctx_step + 0.5), 63)]
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
            if done_pre[r] >= todo[r] and gen[r] >= n_out[r]:
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


def replay(tables: StepTables, arrive, n_in, n_out, chunk_tokens: int | None = None,
           tables_decode: StepTables | None = None, n_prefill: int = 1, n_decode: int = 1,
           link_Bps: float = 0.0, max_iterations: int = 2_000_000, max_time_s: float = 1e6,
           chunked_prefill: bool | None = None, prefill_batch_tokens: int = 8192) -> SimResult:
    """Discrete-event simulation of given requests (arrival times in s, sorted; prompt and output
    tokens), e.g. a measured trace. Aggregated when `tables_decode` is None (scheduling policy
    `chunked_prefill`, see `_run_instance`); otherwise prefill instances (DistServe's context stage:
    FCFS batches of up to `prefill_batch_tokens`, `_run_prefill_instance`) hand the KV cache to
    decode instances (round-robin), as in DistServe. Not given, `chunked_prefill` and
    `chunk_tokens` (tokens per step) come from the engine, as for `aggregated` (`scheduling`)."""
    chunked_prefill, chunk_tokens = scheduling(tables, chunked_prefill, chunk_tokens)
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
