"""Sweeps: grids of configurations (YAML) expanded into groups, evaluated in shards.

A group shares everything but batch / seq / context, so its prefill and decode configurations go
through one call of `simulator.core.predict.predict_many` -- the same step assembler `predict()`
uses, on numpy arrays (millions of configurations per second). Training configurations go
through `predict()` one by one (`predict_rows`). Serving options (OPTION_FIELDS: quantized
weights and KV cache, prefix caching, chunked prefill) are Job fields a group shares, so they ride
in the same call; a speculative group (spec_tokens K >= 1) is three predict_many calls combined as
`predict_speculative` combines its three predict() steps (`speculative_many`). Either way a sweep
row equals `predict()` / `predict_speculative()` on the same configuration
(tests/core/test_one_cost_model.py and tests/sweep/test_sweep_options.py check that to 1e-9).

Shards are files in a folder (shard-00000.csv or .parquet) beside `_manifest.json`, which holds
the run's fingerprint -- the grid, the bytes of every spec file, profile and model config the
grid reads, roofplan's version, the shard size and format -- and each finished shard's row count
and sha256. A resumed run keeps a shard only when its bytes still hash to the recorded sha256
(anything else is computed again) and refuses a folder whose fingerprint differs, naming what
changed: two versions of an input never meet in one result.

Reductions (the top N by a metric, the Pareto front of throughput vs cost or latency, the front
of energy per token vs cost (or vs throughput without prices), the best configuration per group
of columns) run on each shard where it is computed and are merged from
the small per-shard results: every one of them is exact under merging (a row in the global top
N is in its shard's top N; a point on the global front is on its shard's front), ties go to the
first row in grid order, and the client never holds every row.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import numpy as np
from pydantic import AfterValidator, BeforeValidator, Field

from pydantic import model_validator

from simulator.core.errors import RoofplanError
from simulator.core.memory import MemoryBreakdown
from simulator.core.predict import check_sizes, predict, predict_many
from simulator.core.power import DEFAULT_CARBON_G_PER_KWH
from simulator.core.quant import WEIGHT_DTYPES
from simulator.core.schema import Name, Strict, _finite, check, read_yaml
from simulator.core.speculative import (check_acceptance, check_draft, draft_plan, eagle_head, expected_tokens_per_step,
                                        speculative_energy)
from simulator.core.units import DTYPE_BYTES
from simulator.core.workload import ALL_LINEAR, MAX_SPEC_TOKENS, Job


# ---------------------------------------------------------------------------------------------
# grids

# plan fields a grid may list besides tp, pp, dp (Job fields; training ones apply to phase train)
PLAN_FIELDS = {"ep": (int, 1), "micro_batch": (int, 0), "zero": (int, 0), "recompute": (str, "none"),
               "lora_rank": (int, 0), "lora_targets": (str, ALL_LINEAR), "sp": (bool, False), "cp": (int, 1),
               "vpp": (int, 1)}

# serving options a grid may list: field -> (default, the phases it applies to). Job fields but for
# spec_acceptance and draft_model (predict_speculative's arguments). In a grid of several phases a
# field is ignored by the phases it does not apply to, as seq is by decode and context by prefill
# (their groups take the default: one row, not one per value); the proposer's acceptance and model
# are ignored by rows without speculative tokens. A grid none of whose phases a listed value applies
# to is refused (GridSchema).
OPTION_FIELDS = {
    "weight_dtype": (None, ("prefill", "decode")),    # quantized layer weights (simulator.core.quant); null: dtype
    "kv_dtype": (None, ("prefill", "decode")),        # KV cache dtype; null: dtype
    "prefix_hit": (0.0, ("prefill",)),                # share of each prompt already cached (prefix caching)
    "chunk_tokens": (0, ("decode",)),                 # chunked prefill: prompt tokens of one more request
    "chunk_context": (0, ("decode",)),                # that request's tokens prefilled before the chunk
    "spec_tokens": (0, ("decode",)),                  # speculative decoding: tokens drafted per step
    "spec_acceptance": (None, ("decode",)),           # per-token acceptance rate in (0, 1]
    "draft_model": (None, ("decode",)),               # the proposer (null: an EAGLE-style head)
}
JOB_OPTIONS = ("weight_dtype", "kv_dtype", "prefix_hit", "chunk_tokens", "chunk_context", "spec_tokens")

# energy of a row (simulator.core.power, as predict() reports it): W per GPU, J per step (all GPUs
# and hosts), J per token, g CO2e per 1M tokens at the row's grid intensity
ENERGY_COLUMNS = ("power_w", "energy_j", "energy_j_per_token", "co2_g_per_1m_tokens")

# a speculative row (predict_speculative): E tokens per sequence per step, tokens/s over plain decode's
SPEC_COLUMNS = ("spec_tokens_per_step", "spec_speedup")

RESULT_COLUMNS = ("hardware", "model", "phase", "dtype", "tp", "pp", "dp", *PLAN_FIELDS, "offload", *OPTION_FIELDS,
                  "power_cap_w", "carbon_g_per_kwh", "batch", "seq", "context", "n_gpus", "time_s", "tokens_per_s",
                  *SPEC_COLUMNS, "peak_memory_bytes", "fits", "bound", "transfer_time_s", *ENERGY_COLUMNS,
                  "usd_per_gpu_h", "usd_per_1m_tokens", "error")

# columns that describe a configuration (what a group-best reduction may group by)
CONFIG_COLUMNS = RESULT_COLUMNS[:RESULT_COLUMNS.index("n_gpus") + 1]

MAX_SIZE = 2**24     # batch, seq, context: past every model's positions, and their products stay in int64
MAX_COUNT = 2**20    # tp, pp, dp, ep, cp, vpp, lora_rank: past any cluster


def _as_list(v):
    """A grid field is a value or a non-empty list of values."""
    if isinstance(v, list):
        if not v:
            raise ValueError("is an empty list, which gives no configurations; list at least one value")
        return v
    return [v]


def _values(item):
    return Annotated[list[item], BeforeValidator(_as_list)]


Size = Annotated[int, Field(ge=1, le=MAX_SIZE)]
Watts = Annotated[float, Field(gt=0), AfterValidator(_finite)]
Intensity = Annotated[float, Field(ge=0), AfterValidator(_finite)]
Tokens = Annotated[int, Field(ge=0, le=MAX_SIZE)]
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
Share = Annotated[float, Field(ge=0, lt=1)]           # prefix_hit: the last prompt token is always computed
Acceptance = Annotated[float, Field(gt=0, le=1)]


class GridSchema(Strict):
    """One grid: every field a value or a non-empty list; integers exact (1.5 is not a batch),
    booleans true or false, sizes bounded. Unknown fields are refused with a did-you-mean."""
    name: Name | None = None
    description: str | None = None
    hardware: _values(Name)
    model: _values(Name)
    phase: _values(Literal["prefill", "decode", "train"]) = ["decode"]
    batch: _values(Size) = [1]
    seq: _values(Tokens) = [0]            # prefill prompt / training sequence
    context: _values(Tokens) = [0]        # decode: tokens already cached
    dtype: _values(Name) = ["bf16"]
    offload: _values(Literal["gpu", "cpu"]) = ["gpu"]
    executor: _values(Name) = ["default"]
    tp: _values(Count) = [1]
    pp: _values(Count) = [1]
    dp: _values(Count) = [1]
    ep: _values(Count) = [1]
    cp: _values(Count) = [1]
    vpp: _values(Count) = [1]
    micro_batch: _values(Annotated[int, Field(ge=0, le=MAX_SIZE)]) = [0]
    zero: _values(Annotated[int, Field(ge=0, le=3)]) = [0]
    recompute: _values(Literal["none", "selective", "full"]) = ["none"]
    lora_rank: _values(Annotated[int, Field(ge=0, le=MAX_COUNT)]) = [0]
    lora_targets: _values(Annotated[str, Field(pattern=r"^[a-z_]+(,[a-z_]+)*$|^all-linear$")]) = [ALL_LINEAR]
    sp: _values(bool) = [False]
    power_cap_w: _values(Watts | None) = [None]     # board power limit per GPU (null: the default, its TDP)
    carbon_g_per_kwh: _values(Intensity) = [DEFAULT_CARBON_G_PER_KWH]   # grid intensity for co2_g_per_1m_tokens
    # serving options (OPTION_FIELDS)
    weight_dtype: _values(Literal[WEIGHT_DTYPES] | None) = [None]
    kv_dtype: _values(Literal[tuple(DTYPE_BYTES)] | None) = [None]
    prefix_hit: _values(Share) = [0.0]
    chunk_tokens: _values(Tokens) = [0]
    chunk_context: _values(Tokens) = [0]
    spec_tokens: _values(Annotated[int, Field(ge=0, le=MAX_SPEC_TOKENS)]) = [0]
    spec_acceptance: _values(Acceptance | None) = [None]
    draft_model: _values(Name | None) = [None]

    @model_validator(mode="after")
    def _options_apply(self):
        """A serving option some phase of the grid uses; the proposer's fields with speculative tokens."""
        for k, (default, phases) in OPTION_FIELDS.items():
            if any(v != default for v in getattr(self, k)) and not set(phases) & set(self.phase):
                raise ValueError(f"{k} applies to phase {' and '.join(phases)} and the grid's phase is "
                                 f"{', '.join(self.phase)}; add {phases[0]} to phase or drop {k}")
        spec = any(self.spec_tokens)
        for k in ("spec_acceptance", "draft_model"):
            if not spec and any(v is not None for v in getattr(self, k)):
                raise ValueError(f"{k} is the speculative proposer's and no spec_tokens is >= 1; add spec_tokens "
                                 f"or drop {k}")
        if spec and None in self.spec_acceptance:
            raise ValueError("spec_tokens >= 1 needs spec_acceptance, the per-token acceptance rate in (0, 1] "
                             "(a value or a list without null)")
        return self


class GridFile(Strict):
    """A file of several grids (`grids: [...]`)."""
    name: Name | None = None
    description: str | None = None
    grids: Annotated[list[dict[str, Any]], Field(min_length=1)]


def check_grid(data: Any, where: str | Path = "grid") -> GridSchema:
    """A grid mapping validated (one RoofplanError line naming `where` and the field otherwise)."""
    if isinstance(data, GridSchema):
        return data
    if data is None:
        raise RoofplanError(f"{where}: empty; a grid needs at least hardware: and model: (see workloads/sweeps/*.yaml)")
    return check(GridSchema, data, where)


def load_grids(path: str | Path) -> list[GridSchema]:
    """The grids of a YAML file: one grid mapping, or `grids:` listing several."""
    data = read_yaml(path, "sweep grid")
    if isinstance(data, dict) and "grids" in data:
        grids = check(GridFile, data, path).grids
        return [check_grid(g, f"{path} grids[{i}]") for i, g in enumerate(grids)]
    return [check_grid(data, path)]


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
    power_cap_w: float | None = None
    carbon_g_per_kwh: float = DEFAULT_CARBON_G_PER_KWH
    options: tuple = ()       # (field, value) pairs of OPTION_FIELDS that differ from their defaults

    @property
    def job(self) -> Job:
        """The Job every configuration of the group shares (sizes filled in per configuration)."""
        return Job(phase=self.phase, dtype=self.dtype, tp=self.tp, pp=self.pp, dp=self.dp,
                   offload_weights=self.offload, power_cap_w=self.power_cap_w, **dict(self.plan),
                   **{k: v for k, v in self.options if k in JOB_OPTIONS})

    @property
    def spec_acceptance(self) -> float | None:
        return dict(self.options).get("spec_acceptance")

    @property
    def draft_model(self) -> str | None:
        return dict(self.options).get("draft_model")

    @property
    def size(self) -> int:
        return len(self.batch) * len(self.seq) * len(self.context)


def _option_values(grid: GridSchema, phase: str) -> dict[str, list]:
    """Each option's values in a group of `phase`: the grid's where the option applies, else its default."""
    return {k: getattr(grid, k) if phase in phases else [default] for k, (default, phases) in OPTION_FIELDS.items()}


def option_sets(grid: GridSchema, phase: str):
    """The serving options of `phase`'s groups, in grid order: (field, value) pairs that differ
    from the defaults, one tuple per combination (a step without speculative tokens has no
    acceptance or proposer: one combination, not one per value)."""
    vals = _option_values(grid, phase)
    rest = [k for k in OPTION_FIELDS if k not in ("spec_tokens", "spec_acceptance", "draft_model")]
    for combo in itertools.product(*(vals[k] for k in rest)):
        for k_spec in vals["spec_tokens"]:
            proposers = itertools.product(vals["spec_acceptance"], vals["draft_model"]) if k_spec else [(None, None)]
            for acc, draft in proposers:
                opts = {**dict(zip(rest, combo)), "spec_tokens": k_spec, "spec_acceptance": acc, "draft_model": draft}
                yield tuple((k, v) for k, v in opts.items() if v != OPTION_FIELDS[k][0])


def _count_option_sets(grid: GridSchema, phase: str) -> int:
    """len(list(option_sets(grid, phase))) without expanding them."""
    vals = _option_values(grid, phase)
    n = 1
    for k in OPTION_FIELDS:
        if k not in ("spec_tokens", "spec_acceptance", "draft_model"):
            n *= len(vals[k])
    spec = sum(1 for k in vals["spec_tokens"] if k)
    return n * (len(vals["spec_tokens"]) - spec + spec * len(vals["spec_acceptance"]) * len(vals["draft_model"]))


def count_rows(grid: GridSchema) -> int:
    """Configurations of a grid, counted without expanding it: decode groups run batch x context,
    prefill and training groups batch x seq, times the serving options each phase takes."""
    per_phase = sum(len(grid.batch) * len(grid.context if ph == "decode" else grid.seq) * _count_option_sets(grid, ph)
                    for ph in grid.phase)
    groups_per_phase = 1
    for k in ("hardware", "model", "dtype", "tp", "pp", "dp", "offload", "executor", *PLAN_FIELDS, "power_cap_w",
              "carbon_g_per_kwh"):
        groups_per_phase *= len(getattr(grid, k))
    return per_phase * groups_per_phase


def iter_groups(grid: GridSchema):
    """The groups of a validated grid, in grid order."""
    plan_lists = [[(k, v) for v in getattr(grid, k)] for k in PLAN_FIELDS]
    for hw, m, ph, dt, tp, pp, dp, off, exe, cap, carbon, *plan in itertools.product(
            grid.hardware, grid.model, grid.phase, grid.dtype, grid.tp, grid.pp, grid.dp, grid.offload,
            grid.executor, grid.power_cap_w, grid.carbon_g_per_kwh, *plan_lists):
        plan = tuple((k, v) for k, v in plan if v != PLAN_FIELDS[k][1])
        for options in option_sets(grid, ph):
            yield Group(hw, m, ph, dt, tp, pp, dp, off, exe, tuple(grid.batch),
                        tuple(grid.seq) if ph != "decode" else (0,), tuple(grid.context) if ph == "decode" else (0,),
                        plan, cap, carbon, options)


def parse_grid(grid, where: str | Path = "grid") -> list[Group]:
    """Expand a grid mapping into groups. Fields (scalar or list): hardware, model, phase,
    batch, seq (prefill, train), context (decode), tp, pp, dp, dtype, offload (gpu|cpu), executor,
    the plan fields of PLAN_FIELDS, power_cap_w (W per GPU, null: none), carbon_g_per_kwh and the
    serving options of OPTION_FIELDS (weight_dtype, kv_dtype; prefix_hit for prefill; chunk_tokens,
    chunk_context, spec_tokens, spec_acceptance, draft_model for decode)."""
    return list(iter_groups(check_grid(grid, where)))


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


# ---------------------------------------------------------------------------------------------
# evaluation


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
        "power_cap_w": np.full(n, np.nan if g.power_cap_w is None else g.power_cap_w),
        "carbon_g_per_kwh": np.full(n, g.carbon_g_per_kwh),
    }
    for k, (kind, default) in PLAN_FIELDS.items():
        cols[k] = np.full(n, dict(g.plan).get(k, default), object if kind is str else None)
    job = g.job
    cols.update({   # the options as predict() reports them: a dtype left out is the compute dtype
        "weight_dtype": np.full(n, job.weight_dtype or job.dtype, object),
        "kv_dtype": np.full(n, job.kv_dtype or job.dtype, object), "prefix_hit": np.full(n, float(job.prefix_hit)),
        "chunk_tokens": np.full(n, job.chunk_tokens), "chunk_context": np.full(n, job.chunk_context),
        "spec_tokens": np.full(n, job.spec_tokens),
        "spec_acceptance": np.full(n, np.nan if g.spec_acceptance is None else g.spec_acceptance),
        "draft_model": np.full(n, g.draft_model, object)})     # None: no draft model (an EAGLE-style head)
    for k in ("time_s", "tokens_per_s", *SPEC_COLUMNS, "peak_memory_bytes", "transfer_time_s", *ENERGY_COLUMNS,
              "usd_per_gpu_h", "usd_per_1m_tokens"):
        cols[k] = np.full(n, np.nan)
    cols["fits"] = np.zeros(n, bool)
    cols["bound"] = np.full(n, "", object)
    cols["error"] = np.full(n, "", object)
    try:
        model = _loaded(cache, "model", g.model)
        system = _loaded(cache, "hardware", g.hardware)
        ex = _loaded(cache, "executor", g.executor)
        kp = _loaded(cache, "kernels", system.gpu.name)
        price = _loaded(cache, "price", system.gpu.name)
        draft = _loaded(cache, "model", g.draft_model) if g.draft_model else None
        if draft is not None:       # before the sizes, as predict_speculative checks it first
            check_draft(draft, model)
        ok = check_sizes(model, g.phase, B, S, C)
        cols["error"][~ok] = f"sizes out of range for {model.name} (max {model.max_positions} tokens)"
        if job.spec_tokens:     # the K verified tokens count against the position limit (validate_job)
            too_long = ok & (C + 1 + job.spec_tokens > model.max_positions)
            cols["error"][too_long] = (f"sizes out of range for {model.name} with {job.spec_tokens} speculative "
                                       f"tokens (max {model.max_positions} tokens)")
            ok &= ~too_long
            if draft is not None:
                short = ok & ~check_sizes(draft, "decode", B, S, C)
                cols["error"][short] = f"sizes out of range for the draft {draft.name} (max {draft.max_positions} tokens)"
                ok &= ~short
        idx = np.flatnonzero(ok)
        if job.spec_tokens and idx.size:
            res = speculative_many(model, system, job, g.spec_acceptance, draft, B[idx], C[idx], ex, kp,
                                   g.carbon_g_per_kwh)
            for k, v in res.items():
                cols[k][idx] = v
        elif g.phase == "train":
            res = predict_rows(model, system, [replace(job, batch=int(B[i]), seq=int(S[i])) for i in idx], ex, kp,
                               g.carbon_g_per_kwh)
            for k in ("time_s", "tokens_per_s", "peak_memory_bytes", "transfer_time_s", *ENERGY_COLUMNS, "fits",
                      "bound", "error"):
                cols[k][idx] = res[k]
        elif idx.size:
            p = predict_many(model, system, job, B[idx], S[idx], C[idx], ex, kp, g.carbon_g_per_kwh)
            cols["time_s"][idx] = p.time_s
            cols["tokens_per_s"][idx] = p.tokens_per_s
            cols["peak_memory_bytes"][idx] = p.peak_memory_bytes
            cols["transfer_time_s"][idx] = p.transfer_time_s
            for k in ENERGY_COLUMNS:
                if k in p.energy:
                    cols[k][idx] = p.energy[k]
            cols["fits"][idx] = p.fits
            cols["bound"][idx] = p.bound
            cols["error"][idx] = p.cap_errors(g.power_cap_w)     # a cap the model cannot hold: predict()'s refusal
        if price:
            cols["usd_per_gpu_h"][:] = price
            cols["usd_per_1m_tokens"] = price * cols["n_gpus"] / 3600 / cols["tokens_per_s"] * 1e6
    except RoofplanError as e:
        cols["error"][cols["error"] == ""] = str(e)
    return cols


def speculative_many(model, system, job: Job, acceptance: float, draft, batch, context, ex, kp,
                     carbon_g_per_kwh: float = DEFAULT_CARBON_G_PER_KWH) -> dict[str, np.ndarray]:
    """predict_speculative() for arrays of (batch, context), its three predict() steps through
    predict_many: the target's verification of 1 + K tokens (job.spec_tokens = K), the plain decode
    (for the speedup) and the proposer's decode (`draft`, None: core.speculative.eagle_head), then

        t_step = K t_draft + t_verify,  E = (1 - A^(K+1)) / (1 - A),  tokens/s = batch x dp x E / t_step

    and the memory of target plus proposer, combined as predict_speculative combines them. Columns:
    time_s, tokens_per_s, SPEC_COLUMNS, peak_memory_bytes, fits, bound and transfer_time_s of the
    verification, the whole step's energy (core.speculative.speculative_energy, as predict_speculative
    prices it) and `error` (a power cap one of the steps cannot hold)."""
    a = check_acceptance(acceptance)
    if draft is not None:
        check_draft(draft, model)
    proposer = draft if draft is not None else eagle_head(model)
    plain_job = replace(job, spec_tokens=0)
    verify = predict_many(model, system, job, batch, 0, context, ex, kp, carbon_g_per_kwh)
    plain = predict_many(model, system, plain_job, batch, 0, context, ex, kp)
    draft_job = draft_plan(job, draft)        # the proposer's plan, as predict_speculative sets it
    step = predict_many(proposer, system, draft_job, batch, 0, context, ex, kp)
    k = job.spec_tokens
    e = expected_tokens_per_step(a, k)
    t = k * step.time_s + verify.time_s
    own_weights = step.memory["weights"] if draft is not None else verify.memory["weights"] / model.n_layers
    mem = MemoryBreakdown(weights=verify.memory["weights"] + own_weights,
                          kv_cache=verify.memory["kv_cache"] + step.memory["kv_cache"],
                          activations=verify.memory["activations"], workspace=verify.memory["workspace"])
    shape = np.shape(t)
    peak = np.broadcast_to(mem.total, shape)
    tokens_per_s = np.asarray(batch) * job.dp * e / t
    error = verify.cap_errors(job.power_cap_w)
    for other in (plain.cap_errors(job.power_cap_w), step.cap_errors(job.power_cap_w)):
        error = np.where(error == "", other, error)
    out = {"time_s": t, "tokens_per_s": tokens_per_s, "spec_tokens_per_step": np.full(shape, e),
           "spec_speedup": tokens_per_s / plain.tokens_per_s, "peak_memory_bytes": peak,
           "fits": peak <= system.gpu.mem_bytes, "bound": verify.bound, "transfer_time_s": verify.transfer_time_s,
           "error": error}
    if verify.energy and step.energy:
        energy = speculative_energy(verify.energy, step.energy, system, job, draft_job, verify.time_s, step.time_s,
                                    np.asarray(batch) * job.dp * e, carbon_g_per_kwh)
        out.update({c: np.broadcast_to(energy[c], shape) for c in ENERGY_COLUMNS})
    return out


def predict_rows(model, system, jobs: list[Job], ex, kp,
                 carbon_g_per_kwh: float = DEFAULT_CARBON_G_PER_KWH) -> dict[str, np.ndarray]:
    """Scalar predict() per job (training steps, or anything outside the vectorised scope)."""
    n = len(jobs)
    out = {k: np.full(n, np.nan) for k in ("time_s", "tokens_per_s", "peak_memory_bytes", "transfer_time_s",
                                           *ENERGY_COLUMNS)}
    out["fits"] = np.zeros(n, bool)
    out["bound"] = np.full(n, "", object)
    out["error"] = np.full(n, "", object)
    for i, job in enumerate(jobs):
        try:
            p = predict(model, system, job, ex, kp, check_memory=False, with_ops=False,
                        carbon_g_per_kwh=carbon_g_per_kwh)
        except RoofplanError as e:
            out["error"][i] = str(e)
            continue
        if p.energy is not None:
            for k in ENERGY_COLUMNS:
                out[k][i] = getattr(p.energy, k)
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


# ---------------------------------------------------------------------------------------------
# fingerprint: everything that changes an answer


def roofplan_version() -> str:
    """The installed distribution's version, else pyproject.toml's (a checkout run in place)."""
    import importlib.metadata
    try:
        return importlib.metadata.version("roofplan")
    except importlib.metadata.PackageNotFoundError:
        import tomllib
        from simulator.core.paths import REPO_ROOT
        try:
            return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def _shown(path: Path) -> str:
    """An input file by its place in the data folders (hardware_specs/gpus/h100-sxm.yaml,
    workloads/models/gpt2.json) wherever ROOFPLAN_HW_DIR / ROOFPLAN_MODELS_DIR put them: the
    fingerprint compares bytes, not folders. Other files: relative to the checkout, else absolute."""
    from simulator.core.models import models_root
    from simulator.core.paths import REPO_ROOT
    from simulator.core.specs import specs_root
    p = Path(path).resolve()
    for root, name in ((specs_root(), "hardware_specs"), (models_root(), "workloads/models"), (REPO_ROOT, "")):
        root = root.resolve()
        if p.is_relative_to(root):
            return str(Path(name) / p.relative_to(root)) if name else str(p.relative_to(root))
    return str(p)


def input_files(groups: list[Group]) -> dict[str, Path | None]:
    """Every file the groups' predictions read, by shown path (None: a name that resolves to no
    file, whose error rows would change if one appeared): hardware specs (the system, its GPU,
    links, CPU, NVMe; every system built from the GPU, which sets its price), the kernel profile
    each GPU uses, executor profiles and model configs."""
    from simulator.core.models import models_root
    from simulator.core.profiles import REFERENCE_GPU
    from simulator.core.specs import list_names, load_hardware, load_system, spec_path, specs_root
    files: dict[str, Path | None] = {}

    def add(path: Path):
        files[_shown(path)] = path

    gpus = set()
    systems = set(list_names("system"))
    for hw in dict.fromkeys(g.hardware for g in groups):
        try:
            s = load_hardware(hw)
        except RoofplanError:
            files[f"hardware '{hw}'"] = None
            continue
        gpus.add(s.gpu.name)
        if hw in systems:
            add(spec_path("system", hw))
        add(spec_path("gpu", s.gpu.name))
        for link in {s.host_link.name, s.gpu_link and s.gpu_link.name, s.network and s.network.name,
                     s.gpu.host_link, s.gpu.gpu_link} - {None}:
            add(spec_path("link", link))
        if s.cpu:
            add(spec_path("cpu", s.cpu.name))
        if s.nvme:
            add(spec_path("nvme", s.nvme.name))
    for name in sorted(systems):
        if load_system(name).gpu.name in gpus:
            add(spec_path("system", name))
    kernels = specs_root() / "profiles" / "kernels"
    for gpu in sorted(gpus):
        own = kernels / f"{gpu}.yaml"
        add(own if own.is_file() else kernels / f"{REFERENCE_GPU}.yaml")
    for exe in dict.fromkeys(g.executor for g in groups):
        p = Path(exe)
        if not (p.suffix in (".yaml", ".yml") and p.is_file()):
            p = specs_root() / "profiles" / "executors" / f"{exe}.yaml"
        if p.is_file():
            add(p)
        else:
            files[f"executor '{exe}'"] = None
    for m in dict.fromkeys(x for g in groups for x in (g.model, g.draft_model) if x):
        p = Path(m)
        if p.suffix == ".json" or os.sep in m:
            p = p / "config.json" if p.is_dir() else p
        else:
            p = models_root() / f"{m}.json"
        if p.is_file():
            add(p)
        else:
            files[f"model '{m}'"] = None
    return dict(sorted(files.items()))


def grid_sha256(grids: list[GridSchema]) -> str:
    """sha256 of the validated grids (name and description left out, and the fields added since
    grids were first hashed -- the serving options of OPTION_FIELDS, lora_targets -- where they hold
    their defaults: a grid from before they existed hashes as it did)."""
    later = {**{k: default for k, (default, _) in OPTION_FIELDS.items()}, "lora_targets": ALL_LINEAR}

    def dump(g: GridSchema) -> dict:
        unset = {k for k, default in later.items() if getattr(g, k) == [default]}
        return g.model_dump(mode="json", exclude={"name", "description", *unset})
    return hashlib.sha256(json.dumps([dump(g) for g in grids], sort_keys=True).encode()).hexdigest()


def fingerprint(grids: list[GridSchema], groups: list[Group], shard_size: int, fmt: str) -> dict:
    """What a finished shard's rows depend on: roofplan's version, the grid, the result columns,
    the shard size and format, and the sha256 of each input file's bytes."""
    return {"roofplan": roofplan_version(), "grid": grid_sha256(grids),
            "columns": hashlib.sha256(",".join(RESULT_COLUMNS).encode()).hexdigest(),
            "shard_size": shard_size, "format": fmt,
            "inputs": {k: file_sha256(p) if p is not None else "absent" for k, p in input_files(groups).items()}}


def what_changed(old: dict, new: dict) -> str | None:
    """The first difference between two fingerprints, in words (None when equal)."""
    if old.get("roofplan") != new["roofplan"]:
        return f"roofplan's version changed ({old.get('roofplan')} -> {new['roofplan']})"
    if old.get("grid") != new["grid"]:
        return "the grid changed"
    if old.get("columns") != new["columns"]:    # shards of other columns cannot be streamed into one file
        return "the result columns changed (roofplan's sweep output gained or lost columns)"
    if old.get("shard_size") != new["shard_size"]:
        return f"the shard size changed ({old.get('shard_size')} -> {new['shard_size']})"
    if old.get("format") != new["format"]:
        return f"the shard format changed ({old.get('format')} -> {new['format']})"
    before, now = old.get("inputs") or {}, new["inputs"]
    for k in sorted(set(before) | set(now)):
        if k not in now:
            return f"{k} is no longer an input"
        if k not in before:
            return f"{k} is a new input"
        if before[k] != now[k]:
            return f"{k} {'appeared' if before[k] == 'absent' else 'disappeared' if now[k] == 'absent' else 'changed'}"
    return None


# ---------------------------------------------------------------------------------------------
# shard files and their manifest

MANIFEST = "_manifest.json"       # a leading _ : pyarrow and pandas skip it when reading a dataset folder


def shard_path(folder: Path, index: int, fmt: str) -> Path:
    return folder / f"shard-{index:05d}.{fmt}"


def is_shard_file(name: str) -> bool:
    """The files a shard folder may hold: shards, unfinished shards (.shard-*.tmp), the manifest."""
    return name == MANIFEST or name.startswith(("shard-", ".shard-", f".{MANIFEST}"))


def write_table(df, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        need_pyarrow()
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)


def read_table(path: Path):
    """A shard as written, floats bit for bit (pandas 3 reads CSV that way by default and deprecates
    the option pandas 2 needs for it)."""
    import pandas as pd
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"error": str, "bound": str}, **exact)


def need_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise RoofplanError("Parquet output needs pyarrow; pip install 'roofplan[dist]' (or pyarrow), or write .csv") from None


class Manifest:
    """`_manifest.json` of a shard folder: the fingerprint and, per finished shard, its rows and
    sha256. Written whole to a temporary file and renamed over the old one (a kill leaves the old
    or the new, never half of one), at most once a second while shards come in."""

    def __init__(self, folder: Path, print_: dict, n_shards: int, done: dict[int, dict] | None = None):
        self.path, self.fingerprint, self.n_shards = folder / MANIFEST, print_, n_shards
        self.done: dict[int, dict] = dict(done or {})
        self._saved = 0.0

    def record(self, index: int, rows: int, sha256: str) -> None:
        self.done[index] = {"rows": rows, "sha256": sha256}
        if time.monotonic() - self._saved > 1.0:
            self.save()

    def save(self) -> None:
        tmp = self.path.with_name("." + self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"manifest": 1, "fingerprint": self.fingerprint, "shards": self.n_shards,
                                       "done": {str(i): r for i, r in sorted(self.done.items())}}))
            os.replace(tmp, self.path)
        except OSError as e:
            raise RoofplanError(f"cannot write {self.path} ({e.strerror or e}); free space or choose another folder") from None
        self._saved = time.monotonic()

    @staticmethod
    def read(folder: Path) -> dict | None:
        """The manifest a previous run left (None: none there); ValueError when unreadable."""
        path = folder / MANIFEST
        if not path.is_file():
            return None
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            done = {int(i): {"rows": int(r["rows"]), "sha256": str(r["sha256"])} for i, r in old["done"].items()}
            if not isinstance(old["fingerprint"], dict):
                raise TypeError
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(f"{path} is unreadable") from None
        return {"fingerprint": old["fingerprint"], "done": done}


def open_shards(folder: Path, print_: dict, n_shards: int, resume: bool, note: Callable[[str], None],
                fix: str = "rerun without --resume or with a new --shard-dir") -> Manifest:
    """The manifest of this run. Resuming keeps each recorded shard whose file hashes to its
    sha256 (missing or damaged ones are computed again, said in one `note`); a fingerprint that
    differs is refused (`fix` says how to start afresh). Not resuming clears the folder's shards."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RoofplanError(f"cannot create the shard folder {folder} ({e.strerror}); choose another place") from None
    old = None
    if resume:
        try:
            old = Manifest.read(folder)
        except ValueError as e:
            note(f"resume: {e}; computing every shard again")
        if old is not None:
            changed = what_changed(old["fingerprint"], print_)
            if changed:
                raise RoofplanError(f"{changed} since the shards in {folder} were written; {fix}")
    kept: dict[int, dict] = {}
    if old is not None:
        bad = []
        for i, rec in sorted(old["done"].items()):
            if not 0 <= i < n_shards:
                continue
            p = shard_path(folder, i, print_["format"])
            if not p.is_file():
                bad.append(f"{p.name} missing")
            elif file_sha256(p) != rec["sha256"]:
                bad.append(f"{p.name} truncated or changed (sha256 differs)")
            else:
                kept[i] = rec
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            note(f"resume: computing again {len(bad)} of {len(old['done'])} finished shards whose files are "
                 f"missing or damaged: {'; '.join(bad[:3])}{more}")
    else:
        for f in folder.iterdir():
            if f.name.startswith(("shard-", ".shard-")) and f.is_file():
                f.unlink()
    manifest = Manifest(folder, print_, n_shards, kept)
    manifest.save()
    return manifest


# ---------------------------------------------------------------------------------------------
# reductions, per shard and merged

SORT_ASCENDING = {  # metric -> smaller is better?
    "usd_per_1m_tokens": True, "tokens_per_s": False, "tokens_per_s_per_gpu": False, "time_s": True,
    "energy_j_per_token": True, "co2_g_per_1m_tokens": True,
}
# Pareto fronts a shard keeps: key -> (x, smaller x is better?, y, larger y is better?); which of a
# pair is shown is decided after the merge (with prices or without)
FRONTS = {"usd_per_1m_tokens": ("usd_per_1m_tokens", True, "tokens_per_s", True),
          "time_s": ("time_s", True, "tokens_per_s", True),
          "energy:usd_per_1m_tokens": ("usd_per_1m_tokens", True, "energy_j_per_token", False),
          "energy:tokens_per_s": ("tokens_per_s", False, "energy_j_per_token", False)}
ORDER = ["_shard", "_row"]      # a row's place in the grid: ties go to the first
SAMPLE_ROWS = 2000              # background points of a Pareto plot (a bottom-k sample by row hash)


@dataclass(frozen=True)
class Reductions:
    """What each shard reduces its rows to. `sort` None: $/1M tokens when any fitting row has a
    price, else tokens/s (decided after the merge, so each shard keeps both)."""
    top: int = 10
    sort: str | None = None
    pareto: bool = False
    group_by: tuple[str, ...] = ()
    sample: bool = False
    energy_pareto: bool = False      # the front of J/token vs $/1M tokens (vs tokens/s without prices)

    @property
    def sorts(self) -> tuple[str, ...]:
        return (self.sort,) if self.sort else ("usd_per_1m_tokens", "tokens_per_s")

    @property
    def fronts(self) -> tuple[str, ...]:
        return (("usd_per_1m_tokens", "time_s") if self.pareto else ()) + \
            (("energy:usd_per_1m_tokens", "energy:tokens_per_s") if self.energy_pareto else ())


def _rank_order(df, metric: str) -> np.ndarray:
    """Positions of `df`'s rows best first by `metric`, ties in grid order, missing values last
    (sorting the three key columns, not the frame's 45: a shard's reduction copies only what it keeps)."""
    x = df[metric].to_numpy(float)
    key = x if SORT_ASCENDING[metric] else -x         # numpy sorts nan last either way
    return np.lexsort((df["_row"].to_numpy(), df["_shard"].to_numpy(), key))


def _top(df, metric: str, n: int):
    return df.iloc[_rank_order(df, metric)[:n]]


def _front(df, key: str):
    """Rows of `df` on the Pareto front FRONTS[key] (e.g. $/1M tokens, smaller is better, vs
    tokens/s), ordered by x; of equal points the first in grid order."""
    from simulator.report.plots import pareto_front
    x, min_x, y, max_y = FRONTS[key]
    df = df[df[x].notna() & df[y].notna()].sort_values(ORDER)
    return df.iloc[pareto_front(df[x].to_numpy(), df[y].to_numpy(), min_x, max_y)]


def _sample_priority(df):
    """A fixed pseudo-random number per grid row (Knuth's multiplicative hash of its place)."""
    place = df["_shard"].to_numpy(np.uint64) * np.uint64(1_000_003) + df["_row"].to_numpy(np.uint64)
    return (place * np.uint64(2654435761)) % np.uint64(2**32)


@dataclass
class Partial:
    """A shard's rows reduced (or several shards' partials merged): counts, and small frames."""
    rows: int = 0
    fit: int = 0
    errors: int = 0
    priced: bool = False                            # a fitting row with a price exists
    top: dict = field(default_factory=dict)         # metric -> best `top` rows
    best: dict = field(default_factory=dict)        # metric -> best row per group_by
    front: dict = field(default_factory=dict)       # "usd_per_1m_tokens" | "time_s" -> Pareto rows
    sample: Any = None                              # bottom-k rows by _sample_priority

    def merge(self, other: "Partial", red: Reductions) -> "Partial":
        import pandas as pd

        def both(a, b):
            return b if a is None else a if b is None else pd.concat([a, b], ignore_index=True)
        out = Partial(self.rows + other.rows, self.fit + other.fit, self.errors + other.errors,
                      self.priced or other.priced)
        for m in red.sorts:
            if red.top:
                out.top[m] = _top(both(self.top.get(m), other.top.get(m)), m, red.top)
            if red.group_by:
                out.best[m] = _group_best(both(self.best.get(m), other.best.get(m)), m, red.group_by)
        for x in red.fronts:
            out.front[x] = _front(both(self.front.get(x), other.front.get(x)), x)
        if red.sample:
            s = both(self.sample, other.sample)
            out.sample = None if s is None else _bottom(s)
        return out


def _group_best(df, metric: str, by: tuple[str, ...]):
    """The best row per distinct `by` (missing values a value of their own), in ranked order."""
    order = _rank_order(df, metric)
    first = ~df[list(by)].iloc[order].duplicated().to_numpy()
    return df.iloc[order[first]]


def _bottom(df):
    return df.assign(_p=_sample_priority(df)).sort_values(["_p", *ORDER]).head(SAMPLE_ROWS).drop(columns="_p")


def reduce_shard(df, red: Reductions, index: int) -> Partial:
    """One shard's rows -> its Partial. Rows count when they have no error and fit in memory."""
    err = df["error"].notna() & (df["error"] != "")
    fits = df["fits"].astype(bool)
    ok = df[~err & fits].assign(_shard=index, _row=np.flatnonzero(~err & fits), error=None)
    ok["tokens_per_s_per_gpu"] = ok["tokens_per_s"] / ok["n_gpus"]
    part = Partial(len(df), int(fits.sum()), int(err.sum()), bool(ok["usd_per_1m_tokens"].notna().any()))
    for m in red.sorts:
        if red.top:
            part.top[m] = _top(ok, m, red.top)
        if red.group_by:
            part.best[m] = _group_best(ok, m, red.group_by)
    for x in red.fronts:
        part.front[x] = _front(ok, x)
    if red.sample:
        part.sample = _bottom(ok)
    return part


def summarise(part: Partial, red: Reductions) -> dict:
    """The merged reductions as plain frames (helper columns dropped): `sort` (the metric used),
    `top`, `best` (per group_by), `pareto` (with `pareto_x`, the cost or latency column),
    `energy_pareto` (J/token vs `energy_pareto_x`, $/1M tokens or tokens/s) and `sample` (the
    plot's background)."""
    sort = red.sort or ("usd_per_1m_tokens" if part.priced else "tokens_per_s")
    x = "usd_per_1m_tokens" if part.priced else "time_s"
    ex = "usd_per_1m_tokens" if part.priced else "tokens_per_s"

    def clean(df):
        return None if df is None else df.drop(columns=[*ORDER, "tokens_per_s_per_gpu"]).reset_index(drop=True)
    sample = part.sample
    if sample is not None and x == "usd_per_1m_tokens":
        sample = sample[sample[x].notna()]
    return {"sort": sort, "rows": part.rows, "fit": part.fit, "errors": part.errors,
            "top": clean(part.top.get(sort)), "best": clean(part.best.get(sort)),
            "pareto": clean(part.front.get(x)), "pareto_x": x, "energy_pareto": clean(part.front.get("energy:" + ex)),
            "energy_pareto_x": ex, "sample": clean(sample)}


# ---------------------------------------------------------------------------------------------
# running shards (worker tasks: a local process pool or Dask)


@dataclass(frozen=True)
class ShardDone:
    index: int
    rows: int
    sha256: str | None           # None: a kept shard, already in the manifest
    partial: Partial


def compute_shard(index: int, groups: list[Group], path: str, prices: dict | None, red: Reductions) -> ShardDone:
    """Worker task: compute one shard, write it under a hidden temporary name and rename it into
    place (a kill leaves no half shard under the real name), reduce it where it is."""
    df = run_shard(groups, prices)
    p = Path(path)
    tmp = p.with_name("." + p.name + ".tmp")
    try:
        write_table(df, tmp, p.suffix[1:])
        os.replace(tmp, p)
    except OSError as e:
        raise RoofplanError(f"cannot write the shard {p} ({e.strerror or e}); free space or choose another folder") from None
    return ShardDone(index, len(df), file_sha256(p), reduce_shard(df, red, index))


def reduce_kept_shard(index: int, path: str, red: Reductions) -> ShardDone:
    """Worker task: reduce a shard an earlier run finished (its sha256 was checked)."""
    df = read_table(Path(path))
    return ShardDone(index, len(df), None, reduce_shard(df, red, index))


DASK_CONNECT_TIMEOUT_S = 10


def _run_tasks(tasks: list[tuple], workers: int, dask_scheduler: str | None, done: Callable[[ShardDone], None]) -> None:
    """Run (function, *args) tasks, at most 2 per worker in flight (the client holds a few shards'
    groups and partials, not the run's), calling `done` with each result as it comes."""
    if dask_scheduler:
        try:
            from distributed import Client, as_completed
        except ImportError:
            raise RoofplanError("a Dask scheduler needs dask.distributed; pip install 'roofplan[dist]'") from None
        try:
            client = Client(dask_scheduler, timeout=DASK_CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RoofplanError(f"cannot reach the Dask scheduler at {dask_scheduler} ({reason}); check the address "
                                f"and that `dask scheduler` runs there") from None
        try:
            window = 2 * max(1, len(client.scheduler_info().get("workers", {})))
            todo = iter(tasks)
            running = as_completed([client.submit(*t, pure=False) for t in itertools.islice(todo, window)])
            for fut in running:
                done(fut.result())
                for t in itertools.islice(todo, 1):
                    running.add(client.submit(*t, pure=False))
        finally:
            client.close()
    elif workers > 1 and len(tasks) > 1:
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
            todo = iter(tasks)
            running = {pool.submit(*t) for t in itertools.islice(todo, 2 * workers)}
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    done(fut.result())
                    running |= {pool.submit(*t) for t in itertools.islice(todo, 1)}
    else:
        for fn, *args in tasks:
            done(fn(*args))


def run_sweep(shards: list[list[Group]], manifest: Manifest, red: Reductions, *, prices: dict | None = None,
              workers: int = 1, dask_scheduler: str | None = None,
              on_shard: Callable[[int], None] | None = None) -> tuple[list[Path], dict]:
    """Compute every shard `manifest` (from open_shards) does not hold, reduce each shard where it
    runs, merge. Returns the shard files in grid order and `summarise`'s dict."""
    paths = [shard_path(manifest.path.parent, i, manifest.fingerprint["format"]) for i in range(len(shards))]
    tasks = [(reduce_kept_shard, i, str(paths[i]), red) if i in manifest.done else
             (compute_shard, i, shards[i], str(paths[i]), prices, red) for i in range(len(shards))]
    merged = Partial()

    def done(r: ShardDone):
        nonlocal merged
        if r.sha256 is not None:
            manifest.record(r.index, r.rows, r.sha256)
        merged = merged.merge(r.partial, red)
        if on_shard:
            on_shard(sum(g.size for g in shards[r.index]))

    try:
        _run_tasks(tasks, workers, dask_scheduler, done)
    finally:
        manifest.save()
    return paths, summarise(merged, red)


def write_output(paths: list[Path], out: Path) -> None:
    """Stream the shards into one file, one shard in memory at a time (CSV: the bytes, each
    header but the first dropped; Parquet: a row group per shard), renamed into place at the end."""
    tmp = out.with_name("." + out.name + ".tmp")
    try:
        _stream(paths, tmp, out.suffix)
        os.replace(tmp, out)
    except OSError as e:
        raise RoofplanError(f"cannot write {out} ({e.strerror or e}); free space or choose another place") from None


def _stream(paths: list[Path], tmp: Path, suffix: str) -> None:
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        writer = None
        try:
            for p in paths:
                t = pq.read_table(p)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, t.schema)
                elif not t.schema.equals(writer.schema, check_metadata=False):
                    t = t.cast(writer.schema)
                writer.write_table(t)
        finally:
            if writer is not None:
                writer.close()
    else:
        import shutil
        with open(tmp, "wb") as f:
            for i, p in enumerate(paths):
                with open(p, "rb") as src:
                    if i:
                        src.readline()
                    shutil.copyfileobj(src, f, 2**20)


# ---------------------------------------------------------------------------------------------
# estimates before a run

SAMPLE_GROUPS = 6          # strata of the group list, one group timed from each
SAMPLE_CONFIGS = 5_000     # configurations timed per sampled group
SAMPLE_TRAIN = 8           # training configurations go through scalar predict(), ~ms each


@dataclass(frozen=True)
class Estimate:
    """Rows, output size and time of a run, from timing a small sample of its grid on one core."""
    rows: int
    fmt: str
    bytes_per_row: float
    seconds_per_row: float      # one core: compute and write
    sample_rows: int

    @property
    def output_bytes(self) -> float:
        return self.rows * self.bytes_per_row

    def seconds(self, workers: int) -> float:
        return self.rows * self.seconds_per_row / max(workers, 1)


def estimate(groups: list[Group], rows: int, fmt: str, prices: dict | None = None) -> Estimate:
    """Time SAMPLE_GROUPS groups, one from each stratum of the group list, on slices of about
    SAMPLE_CONFIGS configurations, through what a shard does (compute, serialise as `fmt`, hash,
    reduce); each stratum weighs by its rows. Parallel workers are taken as perfectly parallel."""
    import pandas as pd
    cache: dict = {("price", k): v for k, v in (prices or {}).items()}
    bounds = np.linspace(0, len(groups), min(SAMPLE_GROUPS, len(groups)) + 1).astype(int)
    listed = sum(g.size for g in groups)
    s_per_row = bytes_per_row = 0.0
    sampled = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        stratum = groups[a:b]
        g = stratum[len(stratum) // 2]
        limit = SAMPLE_TRAIN if g.phase == "train" else SAMPLE_CONFIGS
        g = replace(g, seq=g.seq[:limit], context=g.context[:limit])
        g = replace(g, batch=g.batch[:max(1, limit // (len(g.seq) * len(g.context)))])
        sweep_group(replace(g, batch=g.batch[:1], seq=g.seq[:1], context=g.context[:1]), cache)  # load its specs
        t0 = time.perf_counter()
        df = pd.DataFrame(sweep_group(g, cache), columns=list(RESULT_COLUMNS))
        buf = io.BytesIO()
        # a CSV file has one header: the bytes per row are the rows' without it
        df.to_parquet(buf, index=False) if fmt == "parquet" else df.to_csv(buf, index=False, header=False)
        hashlib.sha256(buf.getbuffer())
        reduce_shard(df, Reductions(), 0)
        t = time.perf_counter() - t0
        weight = sum(x.size for x in stratum) / listed
        s_per_row += weight * t / g.size
        bytes_per_row += weight * buf.tell() / g.size
        sampled += g.size
    return Estimate(rows, fmt, bytes_per_row, s_per_row, sampled)
