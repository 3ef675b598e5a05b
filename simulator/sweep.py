"""Vectorised decode/prefill predictions over many configurations, and cartesian sweep grids.

`predict_many` evaluates the same formulas as the scalar `predict()` on numpy arrays. The op
lists in ops.py and the memory formulas in memory.py are plain arithmetic, so handing them a
`Job` whose batch / seq / context are numpy arrays yields ops whose flops and bytes are arrays;
roofline.op_gpu_time_array dispatches each op to array functions of (flops, bytes) -- the
efficiency curves are np.interp. Arrays may be broadcast against each
other (batch (nB,1,1) x seq (1,nS,1) x context (1,1,nC)): every op is then evaluated only on the
axes it depends on (a decode GEMM depends on batch, not context) and the sums broadcast to the
full grid, which is why a cartesian sweep runs at millions of configurations per second.

Scope of the vectorised path: phases prefill and decode with any tp / pp / dp, dtype and
weight offload. Training steps go through the scalar `predict()` one by one (`predict_rows`).
`tests/sweep/test_sweep.py` checks that both paths agree to 1e-9 on a grid of models x GPUs.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from simulator.core.errors import RoofplanError
from simulator.core.memory import inference_memory, weight_params_per_gpu
from simulator.core.models import ModelConfig
from simulator.core.ops import forward_ops
from simulator.core.predict import _h2d_Bps, predict, system_for_job
from simulator.core.profiles import ExecutorProfile, KernelProfile
from simulator.core.comm import collective_time
from simulator.core.roofline import op_gpu_time_array
from simulator.core.specs import System
from simulator.core.units import DTYPE_BYTES
from simulator.core.workload import Job, validate_job

# the order pandas' groupby("bound").idxmax() visits labels in predict(): ties go to the first
BOUNDS = ("communication", "compute", "host", "memory")
MEMORY_PARTS = ("weights", "kv_cache", "activations", "workspace")


@dataclass(frozen=True)
class ManyPredictions:
    """Arrays broadcast to one shape: one element per configuration (SI units)."""
    time_s: np.ndarray
    tokens_per_s: np.ndarray
    peak_memory_bytes: np.ndarray
    fits: np.ndarray
    bound: np.ndarray                 # strings from BOUNDS or "transfer"
    transfer_time_s: np.ndarray
    memory: dict                      # MEMORY_PARTS -> array
    n_gpus: int


def _check_sizes(model: ModelConfig, phase: str, batch, seq, context) -> np.ndarray:
    """Boolean mask of configurations whose sizes validate_job accepts (the structure -- tp,
    dtype, ... -- is checked once by the scalar path)."""
    total = seq + (context + 1 if phase == "decode" else 0)
    ok = (batch >= 1) & (seq >= 0) & (context >= 0) & (total <= model.max_positions)
    if phase == "prefill":
        ok = ok & (seq >= 1)
    return ok


def predict_many(model: ModelConfig, system: System, job: Job, batch, seq=0, context=0,
                 executor: ExecutorProfile | None = None, kernels: KernelProfile | None = None) -> ManyPredictions:
    """predict() for every (batch, seq, context) in the broadcast of the three arrays; the other
    fields come from `job` (phase prefill or decode). Sizes outside the model's limits raise
    RoofplanError: filter them first (`sweep_group` does)."""
    from simulator.core.profiles import load_executor_profile, load_kernel_profile
    if job.phase not in ("prefill", "decode"):
        raise RoofplanError(f"the vectorised path covers prefill and decode, not {job.phase}; use predict_rows")
    B = np.asarray(batch, dtype=np.int64)
    S = np.asarray(seq if job.phase == "prefill" else 0, dtype=np.int64)
    C = np.asarray(context if job.phase == "decode" else 0, dtype=np.int64)
    if not np.all(_check_sizes(model, job.phase, B, S, C)):
        raise RoofplanError(f"some batch/seq/context values are out of range for {model.name} "
                            f"(batch >= 1, seq >= 1 for prefill, total tokens <= {model.max_positions})")
    # structure checks (tp divides heads, dtype, pp <= layers) on one representative
    job = validate_job(replace(job, batch=int(B.flat[0]), seq=int(S.flat[0]), context=int(C.flat[0])), model)
    ex = executor or load_executor_profile("default")
    kp = kernels or load_kernel_profile(system.gpu.name)
    system = system_for_job(system, job)
    gpu = system.gpu
    n_gpus = job.n_gpus
    lps = -(-model.n_layers // job.pp)
    a = DTYPE_BYTES[job.dtype]
    vjob = replace(job, batch=B, seq=S, context=C)
    fwd = forward_ops(model, vjob, ex, layers=lps)

    shape = np.broadcast_shapes(B.shape, S.shape, C.shape)
    by_tokens = _token_only_ops(model, vjob, ex, lps, fwd, shape)
    compute = np.zeros(shape)
    layer_compute = np.zeros(shape)
    by_bound = {b: np.zeros(shape) for b in BOUNDS}
    for i, op in enumerate(fwd):
        if i in by_tokens:   # evaluated once per distinct token count, gathered to every config
            unique_op, inverse = by_tokens[i]
            t_u, bound = op_gpu_time_array(unique_op, system, kp, ex, job.tp)
            t_gpu = np.asarray(t_u, float)[inverse]
            if not isinstance(bound, str):
                bound = np.asarray(bound)[inverse]
        else:
            t_gpu, bound = op_gpu_time_array(op, system, kp, ex, job.tp)
        t_gpu = np.asarray(t_gpu, float)
        t_host = op.kernels * ex.host_overhead_per_kernel_s if op.cls != "communication" else 0.0
        t = (np.maximum(t_gpu, t_host) if t_host else t_gpu) * op.count
        compute += t
        if op.name.startswith(("layer.", "moe_layer.")):
            layer_compute += t
        if t_host:
            host = t_host > t_gpu
            by_bound["host"] += np.where(host, t, 0.0)
            t = np.where(host, 0.0, t)
        if isinstance(bound, str):
            by_bound[bound] += t
        else:
            in_compute = np.where(bound, t, 0.0)
            by_bound["compute"] += in_compute
            by_bound["memory"] += t - in_compute

    transfer = np.zeros(shape)
    if job.offload_weights == "cpu":
        per_layer = layer_compute / lps
        other = compute - per_layer * lps
        layer_bytes = (weight_params_per_gpu(model, job) - (model.embedding_params + model.head_params) / job.tp) / lps * a
        layer_transfer = layer_bytes / _h2d_Bps(system, kp, job.host_memory) + kp.copy_latency_s
        transfer = transfer + layer_transfer * lps
        if job.overlap:
            stream = layer_transfer + (lps - 1) * np.maximum(per_layer, layer_transfer) + per_layer
        else:
            stream = lps * (per_layer + layer_transfer)
        step = other + stream
        buffers = 2 * layer_bytes + (model.embedding_params + model.head_params) / job.tp * a
        mem = inference_memory(model, vjob, ex, weights_on_gpu=False, offload_buffers=buffers)
        if system.host_mem_bytes is not None and layer_bytes * lps > system.host_mem_bytes:
            predict(model, system, job, ex, kp, check_memory=False)   # raises the scalar path's message
    else:
        step = compute
        mem = inference_memory(model, vjob, ex)
    if job.pp > 1:
        hop = B * (1 if job.phase == "decode" else S) * model.hidden * a
        step = step * job.pp + (job.pp - 1) * collective_time("p2p", hop, 2, system, 2)
    step = step + ex.host_overhead_per_step_s
    tokens = B * (1 if job.phase == "decode" else S) * job.dp
    mem_parts = {k: np.broadcast_to(np.asarray(getattr(mem, k), float), shape) for k in MEMORY_PARTS}
    peak = sum(mem_parts.values())
    stacked = np.stack([by_bound[b] for b in BOUNDS])
    bound = np.asarray(BOUNDS, dtype=object)[np.argmax(stacked, axis=0)]
    if job.offload_weights == "cpu":
        bound = np.where((transfer > 0) & (transfer >= step * 0.5), "transfer", bound).astype(object)
    step = np.broadcast_to(step, shape)
    return ManyPredictions(
        time_s=step, tokens_per_s=np.broadcast_to(tokens / step, shape), peak_memory_bytes=np.broadcast_to(peak, shape),
        fits=np.broadcast_to(peak <= gpu.mem_bytes, shape), bound=np.broadcast_to(bound, shape),
        transfer_time_s=np.broadcast_to(transfer, shape), memory=mem_parts, n_gpus=n_gpus)


def _token_only_ops(model: ModelConfig, vjob: Job, ex: ExecutorProfile, lps: int, fwd, shape) -> dict:
    """Ops whose FLOPs and bytes depend only on the step's token count (prefill: batch x seq,
    decode: batch) -- most of them -- are timed once per distinct count and gathered, instead of
    once per configuration: a sweep of scattered (batch, context) pairs has few distinct batches.
    Which ops qualify is found, not assumed: an op qualifies when two jobs with the same token
    counts but different shapes (prefill: T x 1 vs 1 x T; decode: context 0 vs 1) give it equal
    numbers. Returns {index in fwd: (op on the distinct counts, inverse index into `shape`)}."""
    n = int(np.prod(shape))
    if n < 4096:
        return {}
    B = np.broadcast_to(vjob.batch, shape)
    tokens = B * (np.broadcast_to(vjob.seq, shape) if vjob.phase == "prefill" else 1)
    unique, inverse = np.unique(tokens, return_inverse=True)
    if unique.size * 2 > n:   # too few repeats to pay for np.unique and the gathers
        return {}
    if vjob.phase == "prefill":
        a = forward_ops(model, replace(vjob, batch=unique, seq=np.ones_like(unique)), ex, layers=lps)
        b = forward_ops(model, replace(vjob, batch=np.ones_like(unique), seq=unique), ex, layers=lps)
    else:
        a = forward_ops(model, replace(vjob, batch=unique, context=np.zeros_like(unique)), ex, layers=lps)
        b = forward_ops(model, replace(vjob, batch=unique, context=np.ones_like(unique)), ex, layers=lps)
    if not (len(a) == len(b) == len(fwd)):
        return {}
    out = {}
    for i, (op, x, y) in enumerate(zip(fwd, a, b)):
        full_size = np.shape(op.flops) == shape or np.shape(op.bytes) == shape
        if op.name == x.name == y.name and full_size and np.array_equal(x.flops, y.flops) \
                and np.array_equal(x.bytes, y.bytes) and np.array_equal(x.seq, y.seq):
            out[i] = (x, inverse.reshape(shape))
    return out


# ---------------------------------------------------------------------------------------------
# grids

RESULT_COLUMNS = ("hardware", "model", "phase", "dtype", "tp", "pp", "dp", "offload", "batch", "seq", "context",
                  "n_gpus", "time_s", "tokens_per_s", "peak_memory_bytes", "fits", "bound", "transfer_time_s",
                  "usd_per_gpu_h", "usd_per_1m_tokens", "error")

GRID_KEYS = {"hardware", "model", "phase", "batch", "seq", "context", "tp", "pp", "dp", "dtype", "offload",
             "executor", "name", "description"}


@dataclass(frozen=True)
class Group:
    """Configurations sharing everything but batch / seq / context: one vectorised call."""
    hardware: str
    model: str
    phase: str
    dtype: str
    tp: int
    pp: int
    dp: int
    offload: str
    executor: str
    batch: tuple[int, ...]
    seq: tuple[int, ...]
    context: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.batch) * len(self.seq) * len(self.context)


def _list(grid: dict, key: str, default, kind):
    v = grid.get(key, default)
    vals = v if isinstance(v, list) else [v]
    try:
        return [kind(x) for x in vals]
    except (TypeError, ValueError):
        raise RoofplanError(f"grid field '{key}' must be a {kind.__name__} or a list of them (got {v!r})") from None


def parse_grid(grid) -> list[Group]:
    """Expand a grid mapping into groups. Fields (scalar or list): hardware, model, phase,
    batch, seq (prefill), context (decode), tp, pp, dp, dtype, offload (gpu|cpu), executor."""
    from simulator.core.errors import did_you_mean
    if not isinstance(grid, dict):
        raise RoofplanError("a sweep grid must be a YAML mapping of field: value or [values]")
    for k in grid:
        if k not in GRID_KEYS:
            raise RoofplanError(f"unknown grid field '{k}'{did_you_mean(k, GRID_KEYS)}; fields: {', '.join(sorted(GRID_KEYS - {'name', 'description'}))}")
    for k in ("hardware", "model"):
        if k not in grid:
            raise RoofplanError(f"the grid needs '{k}:' (a name or a list of names)")
    phases = _list(grid, "phase", ["decode"], str)
    for ph in phases:
        if ph not in ("prefill", "decode", "train"):
            raise RoofplanError(f"grid phase '{ph}' is unknown; use prefill, decode or train")
    offloads = _list(grid, "offload", ["gpu"], str)
    for o in offloads:
        if o not in ("gpu", "cpu"):
            raise RoofplanError(f"grid offload '{o}' is unknown; use gpu or cpu")
    batch = tuple(_list(grid, "batch", [1], int))
    seqs = tuple(_list(grid, "seq", [0], int))
    ctxs = tuple(_list(grid, "context", [0], int))
    groups = []
    for hw, m, ph, dt, tp, pp, dp, off, exe in itertools.product(
            _list(grid, "hardware", None, str), _list(grid, "model", None, str), phases,
            _list(grid, "dtype", ["bf16"], str), _list(grid, "tp", [1], int), _list(grid, "pp", [1], int),
            _list(grid, "dp", [1], int), offloads, _list(grid, "executor", ["default"], str)):
        groups.append(Group(hw, m, ph, dt, tp, pp, dp, off, exe, batch,
                            seqs if ph != "decode" else (0,), ctxs if ph == "decode" else (0,)))
    return groups


def shard_groups(groups: list[Group], shard_size: int) -> list[list[Group]]:
    """Split into shards of about `shard_size` configurations (a group is split along batch)."""
    out, cur, n = [], [], 0
    for g in groups:
        per_batch = len(g.seq) * len(g.context)
        step = max(1, shard_size // max(per_batch, 1))
        for i in range(0, len(g.batch), step):
            part = replace(g, batch=g.batch[i:i + step])
            cur.append(part)
            n += part.size
            if n >= shard_size:
                out.append(cur)
                cur, n = [], 0
    if cur:
        out.append(cur)
    return out


def _loaded(cache: dict, kind: str, name: str):
    """Specs loaded once per shard (`cache` lives for one run_shard call: no global state)."""
    from simulator.core.models import load_model
    from simulator.core.pricing import cheapest_price_per_gpu_h
    from simulator.core.profiles import load_executor_profile, load_kernel_profile
    from simulator.core.specs import load_hardware
    loaders = {"model": load_model, "hardware": load_hardware, "executor": load_executor_profile,
               "kernels": load_kernel_profile, "price": lambda n: cheapest_price_per_gpu_h(n)[0]}
    key = (kind, name)
    if key not in cache:
        try:
            cache[key] = loaders[kind](name)
        except RoofplanError as e:
            cache[key] = e
    if isinstance(cache[key], RoofplanError):
        raise cache[key]
    return cache[key]


def sweep_group(g: Group, cache: dict | None = None) -> dict[str, np.ndarray]:
    """Columns (RESULT_COLUMNS) for every configuration of one group. A structural error (tp that
    does not divide the heads, unknown GPU) fills the `error` column instead of stopping the sweep."""
    cache = {} if cache is None else cache
    Bg, Sg, Cg = np.meshgrid(np.array(g.batch, np.int64), np.array(g.seq, np.int64),
                             np.array(g.context, np.int64), indexing="ij")
    B, S, C = Bg.ravel(), Sg.ravel(), Cg.ravel()
    n = B.size
    cols: dict[str, np.ndarray] = {
        "hardware": np.full(n, g.hardware, object), "model": np.full(n, g.model, object),
        "phase": np.full(n, g.phase, object), "dtype": np.full(n, g.dtype, object),
        "tp": np.full(n, g.tp), "pp": np.full(n, g.pp), "dp": np.full(n, g.dp),
        "offload": np.full(n, g.offload, object), "batch": B, "seq": S, "context": C,
        "n_gpus": np.full(n, g.tp * g.pp * g.dp),
    }
    for k in ("time_s", "tokens_per_s", "peak_memory_bytes", "transfer_time_s", "usd_per_gpu_h", "usd_per_1m_tokens"):
        cols[k] = np.full(n, np.nan)
    cols["fits"] = np.zeros(n, bool)
    cols["bound"] = np.full(n, "", object)
    cols["error"] = np.full(n, "", object)
    job = Job(phase=g.phase, dtype=g.dtype, tp=g.tp, pp=g.pp, dp=g.dp, offload_weights=g.offload)
    try:
        model = _loaded(cache, "model", g.model)
        system = _loaded(cache, "hardware", g.hardware)
        ex = _loaded(cache, "executor", g.executor)
        kp = _loaded(cache, "kernels", system.gpu.name)
        price = _loaded(cache, "price", system.gpu.name)
        ok = _check_sizes(model, g.phase, B, S, C)
        cols["error"][~ok] = f"sizes out of range for {model.name} (max {model.max_positions} tokens)"
        idx = np.flatnonzero(ok)
        if g.phase == "train":
            res = predict_rows(model, system, [replace(job, batch=int(B[i]), seq=int(S[i])) for i in idx], ex, kp)
            for k in ("time_s", "tokens_per_s", "peak_memory_bytes", "transfer_time_s", "fits", "bound", "error"):
                cols[k][idx] = res[k]
        elif idx.size:
            p = predict_many(model, system, job, B[idx], S[idx], C[idx], ex, kp)
            cols["time_s"][idx] = p.time_s
            cols["tokens_per_s"][idx] = p.tokens_per_s
            cols["peak_memory_bytes"][idx] = p.peak_memory_bytes
            cols["transfer_time_s"][idx] = p.transfer_time_s
            cols["fits"][idx] = p.fits
            cols["bound"][idx] = p.bound
        if price:
            cols["usd_per_gpu_h"][:] = price
            cols["usd_per_1m_tokens"] = price * cols["n_gpus"] / 3600 / cols["tokens_per_s"] * 1e6
    except RoofplanError as e:
        cols["error"][cols["error"] == ""] = str(e)
    return cols


def predict_rows(model, system, jobs: list[Job], ex, kp) -> dict[str, np.ndarray]:
    """Scalar predict() per job (training steps, or anything outside the vectorised scope)."""
    n = len(jobs)
    out = {k: np.full(n, np.nan) for k in ("time_s", "tokens_per_s", "peak_memory_bytes", "transfer_time_s")}
    out["fits"] = np.zeros(n, bool)
    out["bound"] = np.full(n, "", object)
    out["error"] = np.full(n, "", object)
    for i, job in enumerate(jobs):
        try:
            p = predict(model, system, job, ex, kp, check_memory=False)
        except RoofplanError as e:
            out["error"][i] = str(e)
            continue
        out["time_s"][i], out["tokens_per_s"][i] = p.time_s, p.tokens_per_s
        out["peak_memory_bytes"][i], out["transfer_time_s"][i] = p.peak_memory_bytes, p.transfer_time_s
        out["fits"][i], out["bound"][i] = p.fits, p.bound
    return out


def gpu_prices(groups: list[Group]) -> dict[str, float | None]:
    """Cheapest USD per GPU-hour (price_usd_per_h / gpu_count over hardware_specs/systems, as
    pricing.cheapest_price_per_gpu_h) of every GPU the groups use, in one pass over the systems."""
    from simulator.core.specs import list_names, load_hardware, load_system
    gpus = set()
    for hw in dict.fromkeys(g.hardware for g in groups):
        try:
            gpus.add(load_hardware(hw).gpu.name)
        except RoofplanError:
            continue
    out: dict[str, float | None] = {g: None for g in gpus}
    for name in list_names("system"):
        s = load_system(name)
        if s.gpu.name in gpus and s.price_usd_per_h:
            p = s.price_usd_per_h / s.gpu_count
            out[s.gpu.name] = p if out[s.gpu.name] is None else min(out[s.gpu.name], p)
    return out


def run_shard(groups: list[Group], prices: dict[str, float | None] | None = None):
    """All groups of one shard -> one pandas DataFrame (RESULT_COLUMNS). `prices` (GPU name ->
    USD per GPU-hour, from gpu_prices) saves each shard the price look-up."""
    import pandas as pd
    cache: dict = {("price", k): v for k, v in (prices or {}).items()}
    parts = [pd.DataFrame(sweep_group(g, cache), columns=list(RESULT_COLUMNS)) for g in groups]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(RESULT_COLUMNS))
