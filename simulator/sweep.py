"""Sweeps: grids of configurations (YAML) expanded into groups, evaluated in shards.

A group shares everything but batch / seq / context, so its prefill and decode configurations go
through one call of `simulator.core.predict.predict_many` -- the same step assembler `predict()`
uses, on numpy arrays (millions of configurations per second). Training configurations go
through `predict()` one by one (`predict_rows`). Either way a sweep row equals `predict()` on
the same configuration (tests/core/test_one_cost_model.py checks that to 1e-9).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from simulator.core.errors import FieldError, RoofplanError
from simulator.core.predict import check_sizes, predict, predict_many
from simulator.core.workload import Job


# ---------------------------------------------------------------------------------------------
# grids

# plan fields a grid may list besides tp, pp, dp (Job fields; training ones apply to phase train)
PLAN_FIELDS = {"ep": (int, 1), "micro_batch": (int, 0), "zero": (int, 0), "recompute": (str, "none"),
               "lora_rank": (int, 0), "sp": (bool, False), "cp": (int, 1), "vpp": (int, 1)}

RESULT_COLUMNS = ("hardware", "model", "phase", "dtype", "tp", "pp", "dp", *PLAN_FIELDS, "offload", "batch", "seq",
                  "context", "n_gpus", "time_s", "tokens_per_s", "peak_memory_bytes", "fits", "bound", "transfer_time_s",
                  "usd_per_gpu_h", "usd_per_1m_tokens", "error")

GRID_KEYS = {"hardware", "model", "phase", "batch", "seq", "context", "tp", "pp", "dp", "dtype", "offload",
             "executor", "name", "description", *PLAN_FIELDS}


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
    plan: tuple = ()          # (field, value) pairs of PLAN_FIELDS that differ from Job's defaults

    @property
    def job(self) -> Job:
        """The Job every configuration of the group shares (sizes filled in per configuration)."""
        return Job(phase=self.phase, dtype=self.dtype, tp=self.tp, pp=self.pp, dp=self.dp,
                   offload_weights=self.offload, **dict(self.plan))

    @property
    def size(self) -> int:
        return len(self.batch) * len(self.seq) * len(self.context)


def _list(grid: dict, key: str, default, kind):
    """The values of grid field `key` as `kind`: a scalar or a non-empty list; numbers must be
    exact (1.5 is not an integer batch), booleans true or false."""
    v = grid.get(key, default)
    vals = v if isinstance(v, list) else [v]
    if not vals:
        raise FieldError(key, "[]", "an empty list gives no configurations", "list at least one value")
    def convert(x):
        if kind is int and (isinstance(x, bool) or not isinstance(x, int)):
            raise ValueError
        if kind is bool and not isinstance(x, bool):
            raise ValueError
        return kind(x)
    try:
        return [convert(x) for x in vals]
    except (TypeError, ValueError):
        raise FieldError(key, repr(v), f"must be a{'n' if kind is int else ''} {kind.__name__} or a list of them") from None


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
            raise FieldError("phase", ph, "unknown", "use prefill, decode or train")
    offloads = _list(grid, "offload", ["gpu"], str)
    for o in offloads:
        if o not in ("gpu", "cpu"):
            raise FieldError("offload", o, "unknown", "use gpu or cpu")
    batch = tuple(_list(grid, "batch", [1], int))
    seqs = tuple(_list(grid, "seq", [0], int))
    ctxs = tuple(_list(grid, "context", [0], int))
    plan_lists = [[(k, v) for v in _list(grid, k, [default], kind)] for k, (kind, default) in PLAN_FIELDS.items()]
    groups = []
    for hw, m, ph, dt, tp, pp, dp, off, exe, *plan in itertools.product(
            _list(grid, "hardware", None, str), _list(grid, "model", None, str), phases,
            _list(grid, "dtype", ["bf16"], str), _list(grid, "tp", [1], int), _list(grid, "pp", [1], int),
            _list(grid, "dp", [1], int), offloads, _list(grid, "executor", ["default"], str), *plan_lists):
        plan = tuple((k, v) for k, v in plan if v != PLAN_FIELDS[k][1])
        groups.append(Group(hw, m, ph, dt, tp, pp, dp, off, exe, batch,
                            seqs if ph != "decode" else (0,), ctxs if ph == "decode" else (0,), plan))
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
        "n_gpus": np.full(n, g.job.n_gpus),
    }
    for k, (kind, default) in PLAN_FIELDS.items():
        cols[k] = np.full(n, dict(g.plan).get(k, default), object if kind is str else None)
    for k in ("time_s", "tokens_per_s", "peak_memory_bytes", "transfer_time_s", "usd_per_gpu_h", "usd_per_1m_tokens"):
        cols[k] = np.full(n, np.nan)
    cols["fits"] = np.zeros(n, bool)
    cols["bound"] = np.full(n, "", object)
    cols["error"] = np.full(n, "", object)
    job = g.job
    try:
        model = _loaded(cache, "model", g.model)
        system = _loaded(cache, "hardware", g.hardware)
        ex = _loaded(cache, "executor", g.executor)
        kp = _loaded(cache, "kernels", system.gpu.name)
        price = _loaded(cache, "price", system.gpu.name)
        ok = check_sizes(model, g.phase, B, S, C)
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
            p = predict(model, system, job, ex, kp, check_memory=False, with_ops=False)
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
