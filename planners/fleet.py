"""SLO-aware serving fleets across GPU types and prices (Melange, Griggs et al. 2024,
arXiv:2404.14527, section 5: cost-aware bin packing as an ILP).

Options o = (GPU type, TP degree, role, engine, weights); role is `aggregated` (one instance runs
prefill and decode) or `prefill` / `decode` (a DistServe-style disaggregated pool); engine is an
executor profile (simulator.core.profiles: the serving engine's step times); weights the layer
weights' format (bf16, or fp8 W8A8 where the GPU has fp8 tensor cores, int8 / int4 weight-only:
simulator.core.quant). Every option's engine also runs the same EngineOptions (KV dtype, prefix
hit, speculative decoding). For every request bucket b (input x output length) and option o the
serving model gives T[b, o], the largest request rate one instance sustains while meeting the SLOs
at the chosen percentile (`simulator.serving.simulate.max_rate` on `step_tables` of that option).

    minimise    sum_o price_o n_o                                   ($/h; objective usd)
             or P = sum_o P_floor,o n_o + sum_{b,o} x[b,o] lam_b E[b,o]    (W; objective energy)
             or sum_o g_o (P_floor,o n_o + sum_b x[b,o] lam_b E[b,o])     (gCO2/h; objective carbon)
    subject to  sum_{o agg} x[b,o] + sum_{o prefill} x[b,o] = 1       every bucket's prefill served
                sum_{o agg} x[b,o] + sum_{o decode}  x[b,o] = 1       every bucket's decode served
                sum_b x[b,o] lam_b / T[b,o] <= n_o                    instance capacity
                sum_{o prefill in k} x[b,o] = sum_{o decode in k} x[b,o]   for each group k of one engine and
                                                                      weights: a request's KV cache moves
                                                                      to a decode instance of its own kind
                sum_{o on gpu g} tp_o n_o <= cap_g                    inventory
                P <= power budget                                     (--power-budget-kw)
                n_o integer >= 0, 0 <= x[b,o] <= 1
Fractions x are continuous (Melange's slices with an unbounded slice factor: a load balancer can
split any bucket's traffic), so the plan is never dearer than Melange's slice assignment. Like
Melange, a bucket's throughput on an instance is assumed independent of what else it serves; the
plan is then checked with the serving model at the mix and rate each option really gets, and an
option that misses its SLOs there keeps 97% of its throughput in a re-solve (at most 8 times).
Among fleets of equal cost the planner takes the one that spends least on options of a later
FleetOption.preference rank (the first engine listed and unquantized weights come first: a second
solve under the cost found), so a quantized option or another engine is chosen when it is cheaper.

The simulated check (`simulate_plan`, `sim_requests` > 0): the closed forms size the fleet; then
each used option runs `sim_requests` seeded Poisson requests of the mix and per-instance rate the
plan gives it through the serving module's discrete-event simulation (`simulate_option`), which
reports P50/P90/P99 TTFT and TPOT over requests and the share within the SLOs. With admission on,
an option the closed forms pass and the simulation fails keeps only its simulated capacity at that
mix (bisection on the seeded simulation, `simulated_capacity`): its column of T is scaled by
s / (rate / utilisation), the ILP's capacity of one instance at that mix, and the fleet is
re-solved (within the same 8 re-solves). The simulation only lowers a capacity, never raises it:
where it is the more optimistic of the two (it usually is at high load: it interleaves prompt
chunks the M/G/1 form queues), the closed form stays the sizing model.

Energy (simulator.core.power through predict(), simulator.serving.simulate.request_energy_j): the
power of an instance is linear in its load between its floor P_floor,o at no load (idle for a
prefill instance, which idles between prompts; for one that decodes, a batch-1 decode step's power,
since continuous batching keeps stepping while any sequence is held) and what the serving model
predicts at its SLO-limited rate T[b,o], where it spends E[b,o] joules per request beyond the floor
(`energy_matrix`); g_o is the grid intensity where GPU type o runs (gCO2/kWh). With one intensity
for every type, carbon ranks fleets as energy does. The check above predicts each used option's
power at the rate it really gets; a fleet whose checked power exceeds the budget is re-solved under
a budget lowered by the excess (within the same 8 re-solves). GPUs only: the priced instances'
hosts are not counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from simulator.core.errors import FieldError, RoofplanError
from simulator.core.models import ModelConfig
from simulator.core.power import DEFAULT_CARBON_G_PER_KWH, check_carbon
from simulator.core.pricing import cheapest_price_per_gpu_h
from simulator.core.workload import Job
from simulator.serving.simulate import (EngineOptions, RequestMix, SimResult, StepTables, aggregated, bisect_rate,
                                        decode_pool, max_rate, prefill_pool, replay, request_energy_j,
                                        sample_requests, step_tables)
from simulator.serving.workload import ServingWorkload
from simulator.core.specs import load_gpu, system_from_gpu

from .solver import SolveReport, solve

ROLES = ("aggregated", "prefill", "decode")
DEFAULT_ENGINE = "default"       # the executor profile of kernel time only
OBJECTIVES = ("usd", "energy", "carbon")
# Beyond this many GPUs a fleet for one model is no plausible deployment: the CLI warns that the
# inputs (the request rate above all) are likely off by orders of magnitude.
PLAUSIBLE_FLEET_GPUS = 10_000


@dataclass(frozen=True)
class FleetOption:
    gpu: str
    tp: int
    role: str
    price_usd_per_gpu_h: float
    instance: str = ""            # the priced instance the GPU-hour price comes from
    floor_w: float = 0.0          # one provisioned instance at (almost) no load: idle for a prefill
                                  # instance; one that decodes runs a batch-1 step whenever it holds a sequence
    carbon_g_per_kwh: float = DEFAULT_CARBON_G_PER_KWH   # grid intensity where this GPU type runs
    engine: str = DEFAULT_ENGINE  # the serving engine: an executor profile name (simulator.core.profiles)
    weights: str = ""             # layer weights' dtype (Job.weight_dtype; "": the compute dtype)
    preference: int = 0           # rank among options that differ only in engine and weights (0: the first
                                  # engine listed, unquantized); breaks ties between fleets of equal cost

    @property
    def price_usd_per_h(self) -> float:
        return self.price_usd_per_gpu_h * self.tp

    @property
    def label(self) -> str:
        """'h100-sxm tp1 decode', with the weights and the engine when they are not the defaults
        ('l40s tp1 decode int4 vllm-v0')."""
        extra = [w for w in (self.weights, self.engine if self.engine != DEFAULT_ENGINE else "") if w]
        return " ".join([f"{self.gpu} tp{self.tp} {self.role}", *extra])


@dataclass(frozen=True)
class FleetPlan:
    options: tuple[FleetOption, ...]
    count: np.ndarray             # instances per option
    share: np.ndarray             # [bucket, option] fraction of the bucket's requests
    load: np.ndarray              # instances' worth of load per option (sum_b x lam / T)
    cost_usd_per_h: float
    report: SolveReport
    bucket_rates_rps: np.ndarray
    power_w: float = math.nan     # the ILP's linear power model (W; nan without energy figures)
    objective: str = "usd"
    energy_j: np.ndarray | None = None   # E[b, o] it was solved with (energy_matrix)

    @property
    def utilisation(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.load / np.maximum(self.count, 1), 0.0)

    @property
    def gpus(self) -> int:
        return sum(self.gpus_by_type().values())

    def gpus_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o, n in zip(self.options, self.count):
            if n:
                out[o.gpu] = out.get(o.gpu, 0) + int(n) * o.tp
        return out


def option_prices(gpus: list[str]) -> dict[str, tuple[float, str]]:
    """Cheapest $/GPU-h per GPU type over hardware_specs/systems (instance price / gpu_count)."""
    out = {}
    for g in gpus:
        load_gpu(g)
        price, inst = cheapest_price_per_gpu_h(g)
        if price is None:
            raise RoofplanError(f"no priced instance in hardware_specs/systems uses GPU '{g}'; add one with price_usd_per_h")
        out[g] = (price, inst)
    return out


def unsupported_weights(gpus: list[str], weight_dtypes, dtype: str = "bf16") -> dict[str, dict[str, str]]:
    """{gpu: {weight dtype: why}} for the pairs no instance can run, by the check predict() makes
    (simulator.core.predict.check_weight_dtype_on: fp8 W8A8 needs fp8 tensor cores in the GPU's spec)."""
    from simulator.core.predict import check_weight_dtype_on
    out: dict[str, dict[str, str]] = {}
    for g in gpus:
        gpu = load_gpu(g)
        for wd in weight_dtypes:
            try:
                check_weight_dtype_on(gpu, Job("decode", dtype=dtype, weight_dtype=wd))
            except FieldError as e:
                out.setdefault(g, {})[wd] = e.problem.replace(f"{gpu.name} has ", "")
    return out


def _weight_dtypes(weight_dtypes, dtype: str) -> tuple[str, ...]:
    """The layer-weight dtypes to offer, checked; the compute dtype as "" (unquantized: the tables
    of a plain engine, bit for bit)."""
    from simulator.core.quant import WEIGHT_DTYPES
    out = []
    for wd in weight_dtypes:
        if wd and wd not in WEIGHT_DTYPES:
            raise FieldError("weight_dtypes", wd, "unknown", f"use {', '.join(WEIGHT_DTYPES)}")
        wd = "" if wd == dtype else wd
        if wd not in out:
            out.append(wd)
    if not out:
        raise FieldError("weight_dtypes", "", "is empty", f"name at least one, e.g. {dtype}")
    return tuple(sorted(out, key=lambda w: w != ""))     # unquantized first: the preferred at equal cost


def candidate_options(model: ModelConfig, gpus: list[str], tps=(1, 2, 4, 8), roles=ROLES,
                      dtype: str = "bf16", executor=None, power_cap_w: dict[str, float] | None = None,
                      carbon_g_per_kwh: dict[str, float] | None = None, engines: dict | None = None,
                      weight_dtypes=("",), options: EngineOptions = EngineOptions()
                      ) -> list[tuple[FleetOption, StepTables]]:
    """Every (GPU, TP, role, engine, weight dtype) that holds the model, with its step tables (built
    once per GPU x TP x engine x weight dtype). `engines`: name -> the serving engine's
    ExecutorProfile (default: `executor` alone, itself default kernel time only). `weight_dtypes`:
    the layer weights each GPU type is offered in ("" or `dtype`: unquantized); a GPU gets only
    those it runs (`unsupported_weights`: fp8 only with fp8 tensor cores), and none run anywhere
    is an error. `options`: the KV dtype, prefix hit and speculation every option's engine runs
    with (EngineOptions; its weight dtype is set per option). `power_cap_w`: board power limit per
    GPU type (W); `carbon_g_per_kwh`: grid intensity per GPU type (default DEFAULT_CARBON_G_PER_KWH)."""
    prices = option_prices(gpus)
    power_cap_w, carbon_g_per_kwh = power_cap_w or {}, carbon_g_per_kwh or {}
    for g, v in carbon_g_per_kwh.items():
        check_carbon(v)
    if engines is None:
        engines = {getattr(executor, "name", None) or DEFAULT_ENGINE: executor}
    wds = _weight_dtypes(weight_dtypes, dtype)
    options = options.check()
    from simulator.core.units import DTYPE_BYTES
    if options.kv_dtype and options.kv_dtype not in DTYPE_BYTES:   # before the loop, as the draft below
        raise FieldError("kv_dtype", options.kv_dtype, "unknown", f"use one of {', '.join(DTYPE_BYTES)}")
    if options.draft is not None:            # before the loop: step_tables' errors there mean "does not fit"
        from simulator.core.speculative import check_draft
        check_draft(options.draft, model)
    skip = unsupported_weights(gpus, wds, dtype)
    runnable = [wd for wd in wds if any(wd not in skip.get(g, {}) for g in gpus)]
    if not runnable:
        why = next(iter(skip.values()))[wds[0]]
        raise FieldError("weight_dtypes", ",".join(w or dtype for w in wds),
                         f"{', '.join(gpus)} {'has' if len(gpus) == 1 else 'have'} {why}",
                         "add int8 or int4 (weight-only) or bf16, or a GPU with fp8 such as h100-sxm or l40s")
    out = []
    for g in gpus:
        system = system_from_gpu(load_gpu(g), 1)
        cap = power_cap_w.get(g)
        for tp in tps:
            if model.n_heads % tp or (model.n_kv_heads % tp and tp % model.n_kv_heads):
                continue
            for k, (name, ex) in enumerate(engines.items()):
                for i, wd in enumerate(wds):
                    if wd in skip.get(g, {}):
                        continue
                    try:
                        tables = step_tables(model, system, tp, dtype, executor=ex, power_cap_w=cap,
                                             options=replace(options, weight_dtype=wd))
                    except FieldError as e:
                        if e.field == "power_cap_w":    # below this GPU's idle power: every step refused
                            raise FieldError("power_cap_w", f"{g}={cap:g}", e.problem.replace("the GPU's", f"{g}'s"),
                                             e.fix) from None
                        continue          # does not fit at this TP
                    except RoofplanError:
                        continue
                    for role in roles:
                        out.append((FleetOption(g, tp, role, prices[g][0], prices[g][1], _floor_w(tables, role),
                                                carbon_g_per_kwh.get(g, DEFAULT_CARBON_G_PER_KWH), name, wd,
                                                k * len(wds) + i), tables))
    if not out:
        raise RoofplanError(f"{model.name} fits on none of {', '.join(gpus)} at TP {', '.join(map(str, tps))}; "
                            f"add larger GPUs (gpus) or larger TP degrees (tps)")
    return out


def _floor_w(tables: StepTables, role: str) -> float:
    """The power of a provisioned instance at (almost) no load (module doc): a prefill instance
    idles between prompts; one that decodes keeps stepping while it holds any sequence, so its
    floor is a batch-1 decode step's power at the shortest context of the tables."""
    if role == "prefill":
        return tables.idle_w
    c = tables.decode_context[0]
    return tables.idle_w + float(tables.decode_energy(1.0, c) / tables.decode_time(1.0, c))


def _estimator(role: str, tables: StepTables, mix: RequestMix):
    if role == "aggregated":
        return lambda r: aggregated(tables, mix, r)
    if role == "prefill":
        return lambda r: prefill_pool(tables, mix, r)
    return lambda r: decode_pool(tables, mix, r)


def _slos(role: str, slo_ttft_s: float, slo_tpot_s: float) -> tuple[float, float]:
    return {"aggregated": (slo_ttft_s, slo_tpot_s), "prefill": (slo_ttft_s, math.inf),
            "decode": (math.inf, slo_tpot_s)}[role]


def throughput_matrix(candidates, workload: ServingWorkload, slo_ttft_s: float, slo_tpot_s: float,
                      percentile: int = 90) -> np.ndarray:
    """T[b, o]: requests/s one instance of option o serves for bucket b within the SLOs (0: never)."""
    T = np.zeros((len(workload.buckets), len(candidates)))
    for j, (opt, tables) in enumerate(candidates):
        for i, b in enumerate(workload.buckets):
            if b.in_tokens + b.out_tokens > tables.max_context:
                continue
            mix = RequestMix.of([b.in_tokens], [b.out_tokens])
            st, sp = _slos(opt.role, slo_ttft_s, slo_tpot_s)
            T[i, j] = max_rate(_estimator(opt.role, tables, mix), st, sp, percentile, rel_tol=2e-3)
    return T


def energy_matrix(candidates, workload: ServingWorkload, tput: np.ndarray) -> np.ndarray:
    """E[b, o]: joules per request of bucket b on option o beyond the instance's floor, such that
    one instance serving b at its SLO-limited rate T = tput[b, o] draws what the serving model
    predicts there: floor_w + T E = idle + T x request_energy_j at the decode batch T sustains
    (the chord of the instance's power from no load to full load; 0 where o never serves b)."""
    E = np.zeros_like(tput)
    for j, (opt, tables) in enumerate(candidates):
        for i, b in enumerate(workload.buckets):
            if tput[i, j] <= 0:
                continue
            mix = RequestMix.of([b.in_tokens], [b.out_tokens])
            est = _estimator(opt.role, tables, mix)(tput[i, j])
            full = tables.idle_w + tput[i, j] * float(
                request_energy_j(tables, mix, opt.role, est.decode_batch if est.stable else 1.0)[0])
            E[i, j] = max(full - opt.floor_w, 0.0) / tput[i, j]
    return E


def unservable_buckets(tput: np.ndarray, bucket_rates_rps: np.ndarray, roles: list[str],
                       groups: list | None = None) -> list[int]:
    """Buckets with requests that no aggregated option, nor any prefill option together with any
    decode option of the same group (engine and weights: `pd_group`), serves within the SLOs
    (tput[b, o] == 0 for all of them)."""
    roles = np.asarray(roles)
    groups = np.asarray([0] * len(roles) if groups is None else [str(g) for g in groups])
    ok = lambda b, role, sel: bool(np.any(tput[b, (roles == role) & sel] > 0))
    every = np.ones(len(roles), dtype=bool)
    return [b for b in range(tput.shape[0]) if bucket_rates_rps[b] > 0
            and not (ok(b, "aggregated", every) or any(ok(b, "prefill", groups == g) and ok(b, "decode", groups == g)
                                                       for g in set(groups.tolist())))]


def pd_group(option: FleetOption) -> tuple[str, str]:
    """A disaggregated request's prefill and decode instances run one engine and one set of
    weights: the KV cache the prefill writes is the decode's input, in that engine's layout and
    from the same model."""
    return option.engine, option.weights


# A lone request: max_rate's first probe (simulator.serving.simulate.max_rate, lo = 1e-6 req/s).
# Its latencies are the best any load achieves: an option that misses the SLOs here has T[b, o] = 0.
TRICKLE_RPS = 1e-6


def _lone_request_latency(opt: FleetOption, tables: StepTables, bucket, percentile: int) -> tuple[float, float, str]:
    """(TTFT, TPOT, why not) at the percentile for a lone request of `bucket` on one instance of
    `opt`; inf where the role does not produce the latency or the instance cannot serve it."""
    if bucket.in_tokens + bucket.out_tokens > tables.max_context:
        return math.inf, math.inf, f"{bucket.in_tokens + bucket.out_tokens} tokens exceed the {tables.max_context} positions"
    est = _estimator(opt.role, tables, RequestMix.of([bucket.in_tokens], [bucket.out_tokens]))(TRICKLE_RPS)
    if not est.stable:
        return math.inf, math.inf, est.reason
    ttft = getattr(est, f"ttft_p{percentile}_s") if opt.role != "decode" else math.inf
    tpot = getattr(est, f"tpot_p{percentile}_s") if opt.role != "prefill" else math.inf
    return ttft, tpot, ""


def _ms(x: float) -> str:
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x * 1e3:,.0f} ms"


def slo_shortfall(candidates, workload: ServingWorkload, buckets: list[int], slo_ttft_s: float,
                  slo_tpot_s: float, percentile: int = 90) -> str:
    """One line on why no option serves `buckets` (no aggregated option, nor prefill and decode
    options, within the SLOs). A lone request gets the best latency any load gives, so for each
    SLO: the worst over these buckets of the best p-th percentile latency over the options (the
    least SLO that serves them), and per GPU type the same over its own options (with the TP of its
    best option for the hardest bucket). An SLO binds when that least value exceeds it."""
    lat = [[_lone_request_latency(opt, tables, workload.buckets[b], percentile) for opt, tables in candidates]
           for b in buckets]
    t = np.array([[v[:2] for v in row] for row in lat])                  # [bucket, option, (ttft, tpot)]
    why = next((v[2] for row in lat for v in row if v[2]), "")
    slos = np.array([slo_ttft_s, slo_tpot_s])
    least = t.min(axis=1)                                                 # [bucket, slo]
    need = least.max(axis=0)                                              # the least SLO serving all
    hardest = buckets[int(np.argmax((least / slos).max(axis=1)))]
    others = f" (and {len(buckets) - 1} more request buckets)" if len(buckets) > 1 else ""
    head = f"no GPU option meets the SLOs for requests of {workload.buckets[hardest].label}{others}"
    names = ("TTFT", "TPOT")
    binds = [k for k in (0, 1) if need[k] > slos[k]]
    if not binds:
        return (f"{head}: p{percentile} TTFT {_ms(need[0])} and TPOT {_ms(need[1])} are each within the SLOs "
                f"({_ms(slo_ttft_s)}, {_ms(slo_tpot_s)}) on some option, but no aggregated option meets both; "
                f"allow the prefill and decode roles or loosen either SLO")
    gpus = list(dict.fromkeys(opt.gpu for opt, _ in candidates))

    def per_gpu(k: int) -> str:
        out = []
        for g in gpus:
            cols = [j for j, (opt, _) in enumerate(candidates) if opt.gpu == g]
            worst_b = int(np.argmax(t[:, cols, k].min(axis=1)))
            j = cols[int(np.argmin(t[worst_b, cols, k]))]
            v = t[worst_b, j, k]
            out.append(f"{g} tp{candidates[j][0].tp} {_ms(v)}" if math.isfinite(v) else f"{g} none")
        return ", ".join(out)
    said, loosen = [], []
    for k in binds:
        if math.isfinite(need[k]):
            said.append(f"p{percentile} {names[k]} binds: {_ms(slos[k])} asked, best {_ms(need[k])} ({per_gpu(k)})")
            loosen.append(f"the {names[k]} SLO to >= {_ms(need[k])}")
        else:
            said.append(f"no option gives a {names[k]} at all ({why})")
    said += [f"{names[k]} {_ms(slos[k])} is met" for k in (0, 1) if k not in binds]
    fix = ("loosen " + " and ".join(loosen) + " or add faster GPUs (gpus)") if loosen else ""
    if len(loosen) < len(binds):
        fix += ("; " if fix else "") + "add GPUs with more memory (gpus) or higher TP degrees (tps)"
    return f"{head}, not even for a lone request: {'; '.join(said)}; {fix}"


def _power_terms(options, energy_j: np.ndarray, rates: np.ndarray, objective: str):
    """Coefficients of n_o and x[b, o] in the fleet's power (W; objective energy or usd) or carbon
    (gCO2/h) -- the module doc's P."""
    idle = np.array([o.floor_w for o in options])
    per_x = energy_j * rates[:, None]
    if objective == "carbon":
        g = np.array([o.carbon_g_per_kwh for o in options]) / 1e3     # g per Wh
        return idle * g, per_x * g[None, :]
    return idle, per_x


def plan_power_w(options, count: np.ndarray, share: np.ndarray, rates: np.ndarray, energy_j: np.ndarray) -> float:
    """The fleet's power under the ILP's linear model (W)."""
    n_w, x_w = _power_terms(options, energy_j, rates, "energy")
    return float(np.sum(n_w * count) + np.sum(x_w * share))


def solve_fleet(options: list[FleetOption], tput: np.ndarray, bucket_rates_rps: np.ndarray,
                max_gpus: dict[str, int] | None = None, time_limit_s: float = 10,
                gap: float = 5e-3, labels: list[str] | None = None, objective: str = "usd",
                energy_j: np.ndarray | None = None, power_budget_w: float | None = None,
                _carbon_budget: float | None = None, _tie_break: bool = False,
                _cost_cap: float | None = None) -> FleetPlan:
    """The ILP in the module docstring. `tput[b, o]` in requests/s per instance; `energy_j[b, o]`
    joules per request beyond the instance's floor (energy_matrix), needed by the energy and carbon
    objectives and the power budget (W). Energy and carbon are solved to `gap`, then the cheapest
    fleet within that gap of the optimum is taken (fleets of near-equal power can differ a lot in
    dollars, and the solver would otherwise stop at any of them)."""
    if objective not in OBJECTIVES:
        raise FieldError("objective", objective, "unknown", f"use {', '.join(OBJECTIVES)}")
    if (objective != "usd" or power_budget_w is not None) and energy_j is None:
        raise RoofplanError("the energy objective and the power budget need the options' energy (energy_matrix)")
    import pulp
    nb, no = tput.shape
    roles = [o.role for o in options]
    groups = [pd_group(o) for o in options]
    for b in unservable_buckets(tput, bucket_rates_rps, roles, groups)[:1]:
        name = labels[b] if labels else f"bucket {b}"
        raise RoofplanError(f"no GPU option meets the SLOs for requests of {name}; loosen the TTFT/TPOT SLOs or add faster GPUs (gpus)")
    prob = pulp.LpProblem("fleet", pulp.LpMinimize)
    var = _var_factory(prob)
    # n_o never needs more instances than carrying every bucket it can serve alone (tightens the LP)
    with np.errstate(divide="ignore"):
        n_max = [int(math.ceil(np.sum(np.where(tput[:, o] > 0, bucket_rates_rps / np.where(tput[:, o] > 0, tput[:, o], 1), 0)) - 1e-9))
                 for o in range(no)]
    if not max_gpus and objective == "usd" and power_budget_w is None:
        # no instance of an optimal plan costs more than a feasible plan does
        ub = _greedy_cost(options, tput, bucket_rates_rps)
        n_max = [min(m, int(math.floor(ub / options[o].price_usd_per_h + 1e-9))) for o, m in enumerate(n_max)]
    n = [var(f"n_{o}", 0, n_max[o], pulp.LpInteger) for o in range(no)]
    x = {(b, o): var(f"x_{b}_{o}", 0, 1, pulp.LpContinuous)
         for b in range(nb) for o in range(no) if tput[b, o] > 0 and bucket_rates_rps[b] > 0}
    if energy_j is not None:
        n_w, x_w = _power_terms(options, energy_j, bucket_rates_rps, "energy")
    if objective == "usd":
        if _cost_cap is None:
            prob += pulp.lpSum(options[o].price_usd_per_h * n[o] for o in range(no))
        else:      # among fleets of this cost, the least spent on options of a later preference rank
            prob += pulp.lpSum(options[o].preference * options[o].price_usd_per_h * n[o] for o in range(no))
            prob += pulp.lpSum(options[o].price_usd_per_h * n[o] for o in range(no)) <= _cost_cap
    else:
        n_c, x_c = _power_terms(options, energy_j, bucket_rates_rps, objective)
        prob += pulp.lpSum([n_c[o] * n[o] for o in range(no)] + [x_c[b, o] * v for (b, o), v in x.items()])
    if power_budget_w is not None:
        prob += pulp.lpSum([n_w[o] * n[o] for o in range(no)] + [x_w[b, o] * v for (b, o), v in x.items()]) \
            <= power_budget_w
    if _carbon_budget is not None:
        n_g, x_g = _power_terms(options, energy_j, bucket_rates_rps, "carbon")
        prob += pulp.lpSum([n_g[o] * n[o] for o in range(no)] + [x_g[b, o] * v for (b, o), v in x.items()]) \
            <= _carbon_budget
    for b in range(nb):
        if bucket_rates_rps[b] <= 0:
            continue
        agg = [x[b, o] for o in range(no) if (b, o) in x and roles[o] == "aggregated"]
        prob += pulp.lpSum(agg + [x[b, o] for o in range(no) if (b, o) in x and roles[o] == "prefill"]) == 1
        prob += pulp.lpSum(agg + [x[b, o] for o in range(no) if (b, o) in x and roles[o] == "decode"]) == 1
        for g in set(groups) if len(set(groups)) > 1 else ():     # prefill and decode of one engine and weights
            prob += (pulp.lpSum(x[b, o] for o in range(no) if (b, o) in x and roles[o] == "prefill" and groups[o] == g)
                     == pulp.lpSum(x[b, o] for o in range(no) if (b, o) in x and roles[o] == "decode" and groups[o] == g))
    for o in range(no):
        terms = [x[b, o] * (bucket_rates_rps[b] / tput[b, o]) for b in range(nb) if (b, o) in x]
        if terms:
            prob += pulp.lpSum(terms) <= n[o]
        else:
            prob += n[o] == 0
    for g, cap in (max_gpus or {}).items():
        prob += pulp.lpSum(options[o].tp * n[o] for o in range(no) if options[o].gpu == g) <= cap
    # The LP bound lies within ~0.3% of the optimum on this structure, and near-equivalent options
    # make closing the last 0.1% a long proof: the default gap of 0.5% is provable (dual bound),
    # far below the serving model's own error, and keeps 5 GPU types x 100 buckets under ~1 s.
    # HiGHS's presolve and sub-MIP heuristics (RINS, RENS, root reduced cost) cost more than they
    # save here (benchmarks/plan_fleet.py).
    rep = solve(prob, time_limit_s, gap, highs_options=dict(
        presolve="off", mip_heuristic_effort=0.0, mip_heuristic_run_rins=False,
        mip_heuristic_run_rens=False, mip_heuristic_run_root_reduced_cost=False))
    if rep.status == "Infeasible" and not max_gpus:
        # Without caps every servable load has a fleet: the solver lost it to the size of the numbers.
        best = np.max(tput, axis=1, initial=0.0)
        least = float(sum(lam / t for lam, t in zip(bucket_rates_rps, best) if lam > 0 and t > 0))
        raise RoofplanError(f"no fleet found for a load of at least {least:,.0f} instances (solver {rep.solver}: "
                            f"{rep.status}), a size beyond the solver's numerical range; check the request rate")
    if not rep.has_solution and power_budget_w is not None:
        raise FieldError("power_budget_kw", f"{power_budget_w / 1e3:g}", f"no fleet meets the load within it "
                         f"(solver {rep.solver}: {rep.status})", "raise the budget or loosen the SLOs")
    if not rep.has_solution:
        caps = ", ".join(f"{g}={c}" for g, c in (max_gpus or {}).items())
        raise FieldError("max_gpus", caps or "no caps", f"no fleet meets the load within the inventory "
                         f"(solver {rep.solver}: {rep.status})", "raise the caps or loosen the SLOs")
    count = np.array([round(v.value() or 0) for v in n], dtype=int)
    share = np.zeros((nb, no))
    for (b, o), v in x.items():
        share[b, o] = v.value() or 0.0
    load = np.array([sum(share[b, o] * bucket_rates_rps[b] / tput[b, o] for b in range(nb) if (b, o) in x)
                     for o in range(no)])
    cost = float(sum(options[o].price_usd_per_h * count[o] for o in range(no)))
    rates = np.asarray(bucket_rates_rps, dtype=float)
    power = plan_power_w(options, count, share, rates, energy_j) if energy_j is not None else math.nan
    plan = FleetPlan(tuple(options), count, share, load, cost, rep, rates, power, objective, energy_j)
    if objective == "usd" and _cost_cap is None and any(n and o.preference for o, n in zip(options, count)):
        # a fleet of equal cost with the preferred options (the first engine, unquantized weights)?
        try:
            pref = solve_fleet(options, tput, rates, max_gpus, time_limit_s, gap, labels, "usd", energy_j,
                               power_budget_w, _carbon_budget, _tie_break, _cost_cap=cost * (1 + 1e-9))
        except RoofplanError:
            return plan
        return replace(pref, report=rep)
    if objective == "usd" or _tie_break:
        return plan
    # the cheapest fleet within the gap of the least power (carbon), under the same constraints
    bound = _objective_value(plan, objective) * (1 + gap)
    budget = min(bound, power_budget_w) if objective == "energy" and power_budget_w is not None else \
        bound if objective == "energy" else power_budget_w
    try:
        cheap = solve_fleet(options, tput, rates, max_gpus, time_limit_s, gap, labels, "usd", energy_j, budget,
                            bound if objective == "carbon" else None, _tie_break=True)
    except RoofplanError:
        return plan
    return FleetPlan(tuple(options), cheap.count, cheap.share, cheap.load, cheap.cost_usd_per_h, rep, rates,
                     cheap.power_w, objective, energy_j)


def _greedy_cost(options, tput: np.ndarray, rates: np.ndarray) -> float:
    """$/h of a feasible plan: every bucket on its cheapest aggregated option or cheapest prefill
    plus decode pair (per request served), instance counts rounded up."""
    price = np.array([o.price_usd_per_h for o in options])
    roles = np.array([o.role for o in options])
    with np.errstate(divide="ignore"):
        per_req = np.where(tput > 0, price / np.where(tput > 0, tput, 1), np.inf)   # [b, o] $/h per req/s
    load = np.zeros(len(options))
    groups = np.array([str(pd_group(o)) for o in options])
    for b, lam in enumerate(rates):
        if lam <= 0:
            continue
        masked = lambda sel: np.where(sel, per_req[b], np.inf)    # [o] only the selected options
        agg = masked(roles == "aggregated")
        pick, best = [int(np.argmin(agg))], float(np.min(agg))
        for g in set(groups.tolist()):      # the cheapest prefill + decode pair of one group
            pre, dec = masked((roles == "prefill") & (groups == g)), masked((roles == "decode") & (groups == g))
            if float(np.min(pre) + np.min(dec)) < best:
                pick, best = [int(np.argmin(pre)), int(np.argmin(dec))], float(np.min(pre) + np.min(dec))
        for o in pick:
            load[o] += lam / tput[b, o]
    return float(np.sum(price * np.ceil(load - 1e-9)))


def _var_factory(prob):
    """prob.add_variable (PuLP >= 3.3; LpVariable alone is deprecated there) or LpVariable."""
    import pulp
    if hasattr(prob, "add_variable"):
        return lambda name, lo, hi, cat: prob.add_variable(name, lowBound=lo, upBound=hi, cat=cat)
    return lambda name, lo, hi, cat: pulp.LpVariable(name, lowBound=lo, upBound=hi, cat=cat)


def restrict(options: list[FleetOption], tput: np.ndarray, keep) -> tuple[list[FleetOption], np.ndarray]:
    idx = [i for i, o in enumerate(options) if keep(o)]
    return [options[i] for i in idx], tput[:, idx]


@dataclass(frozen=True)
class FleetResult:
    plan: FleetPlan
    single_type_cost_usd_per_h: dict[str, float]     # $/h of the best fleet of one GPU type by the objective (inf: none)
    predicted: list[dict] = field(default_factory=list)   # per used option: rate, P90 TTFT/TPOT, power
    slo_attainment: float = 1.0
    power_w: float = math.nan                        # the serving model's check of the fleet's power (W)
    co2_g_per_h: float = math.nan                    # that power at each GPU type's grid intensity
    output_tokens_per_s: float = math.nan            # the workload's generated tokens per second
    single_type_power_w: dict[str, float] = field(default_factory=dict)   # those fleets' power, checked (inf: none)
    objective: str = "usd"
    energy_j: np.ndarray | None = None               # E[b, o] the ILP used (energy_matrix)
    tput: np.ndarray | None = None                   # T[b, o] of the last solve (derated by the SLO re-solves)
    simulated: list[dict] = field(default_factory=list)   # per used option: the discrete-event check (simulate_plan)
    sim_attainment: float = math.nan                 # share of requests within the SLOs there (a lower bound)
    sim_requests: int = 0                            # simulated requests per option (0: not checked)
    notes: tuple[str, ...] = ()                      # what the simulated check found and did, one line each
    unchecked_cost_usd_per_h: float = math.nan       # the fleet before the simulation derated any option (nan: never)
    sim_resolves: int = 0                            # re-solves after simulated misses

    @property
    def energy_j_per_token(self) -> float:
        """Joules per generated token: the fleet's power over its output token rate."""
        return self.power_w / self.output_tokens_per_s

    @property
    def co2_g_per_1m_tokens(self) -> float:
        return self.co2_g_per_h / 3600 / self.output_tokens_per_s * 1e6


def evaluate_plan(plan: FleetPlan, candidates, workload: ServingWorkload, slo_ttft_s: float,
                  slo_tpot_s: float, percentile: int = 90) -> tuple[list[dict], float]:
    """Serving-model check of each used option at its assigned mix and per-instance rate; SLO
    attainment = share of the request rate on options whose predicted percentiles meet the SLOs.
    Each row's `power_w` is its instances' draw: idle_w each, plus the rate times the energy per
    request at the decode batch the check predicts (simulator.serving.simulate.request_energy_j)."""
    rows, missed, total = [], 0.0, 0.0
    for o, (opt, tables) in enumerate(candidates):
        if plan.count[o] == 0:
            continue
        lam = plan.share[:, o] * plan.bucket_rates_rps
        idle = tables.idle_w * int(plan.count[o])
        if lam.sum() <= 0:
            rows.append(dict(option=opt.label, instances=int(plan.count[o]), rate_rps=0.0, meets=True,
                             ttft_p_ms=0.0, tpot_p_ms=0.0, power_w=idle))
            continue
        mix = RequestMix.of([b.in_tokens for b in workload.buckets], [b.out_tokens for b in workload.buckets], lam + 1e-300)
        rate = lam.sum() / plan.count[o]
        est = _estimator(opt.role, tables, mix)(rate)
        st, sp = _slos(opt.role, slo_ttft_s, slo_tpot_s)
        meets = est.meets(st, sp, percentile)
        per_request = mix.mean(request_energy_j(tables, mix, opt.role, est.decode_batch if est.stable else 1.0))
        rows.append(dict(option=opt.label, instances=int(plan.count[o]), rate_rps=float(lam.sum()), meets=bool(meets),
                         ttft_p_ms=getattr(est, f"ttft_p{percentile}_s") * 1e3,
                         tpot_p_ms=getattr(est, f"tpot_p{percentile}_s") * 1e3,
                         power_w=idle + float(lam.sum()) * per_request))
        if opt.role != "decode":      # count each request once (at its prefill / aggregated option)
            total += lam.sum()
        missed += 0.0 if meets else lam.sum()    # a decode miss fails the requests it decodes
    return rows, (max(0.0, 1.0 - missed / total) if total else 1.0)


# ---------------------------------------------------------------------------------------------
# the discrete-event check of a plan

SIM_SEED = 0          # one seed: the check gives the same answer every run
SIM_CAPACITY_RTOL = 0.02   # simulated capacity to 2% (bisection on a seeded step function)


def _assigned(plan: FleetPlan, o: int, workload: ServingWorkload) -> tuple[RequestMix, float]:
    """The mix and the per-instance rate (req/s) the plan gives option o (its load split evenly
    over its instances, as evaluate_plan checks it)."""
    lam = np.maximum(plan.share[:, o], 0.0) * plan.bucket_rates_rps     # the solver's -1e-12 shares are 0
    mix = RequestMix.of([b.in_tokens for b in workload.buckets], [b.out_tokens for b in workload.buckets], lam + 1e-300)
    return mix, float(lam.sum()) / int(plan.count[o])


def simulate_option(role: str, tables: StepTables, mix: RequestMix, rate: float, n_requests: int,
                    seed: int = SIM_SEED) -> SimResult:
    """One instance of `role` at `rate` req/s of `mix`: `n_requests` seeded Poisson arrivals
    (serving.sample_requests) through the serving module's discrete-event simulation
    (serving.replay, its default scheduling, as the closed forms' defaults):
      aggregated  the instance runs both phases (chunked prefill under the token budget `aggregated`
                  assumes: the engine's max_num_batched_tokens, else 512 prompt tokens per step);
      prefill     a prefill-only instance (DistServe's context stage, replay's prefill instances):
                  its TTFT; every request then decodes one token (the decode side is not this option's);
      decode      requests arrive prefilled at their arrival times, as `decode_pool` assumes: a
                  prefill stage of negligible time in front of the decode instance."""
    arrive, n_in, n_out = sample_requests(mix, rate, n_requests, seed)
    if role == "aggregated":
        return replay(tables, arrive, n_in, n_out)   # the token budget `aggregated` assumes
    if role == "prefill":
        return replay(tables, arrive, n_in, np.ones_like(n_out), tables_decode=tables)
    instant = replace(tables, prefill_s=np.full_like(tables.prefill_s, 1e-12),
                      prefill_attn_s=np.zeros_like(tables.prefill_s))
    return replay(instant, arrive, n_in, n_out, tables_decode=tables)


def _sim_stats(role: str, sim: SimResult, slo_ttft_s: float, slo_tpot_s: float, percentile: int) -> dict:
    """P50/P90/P99 TTFT and TPOT (ms; nan where the role does not produce them), the share of
    requests within the role's SLOs (an unfinished request misses), and whether the P`percentile`s
    meet them (DistServe's definition, as serving.max_rate_simulated)."""
    ttft_ok = sim.ttft_s <= slo_ttft_s if role != "decode" else np.isfinite(sim.ttft_s)
    done = np.isfinite(sim.ttft_s) & (np.isfinite(sim.tpot_s) | (sim.out_tokens <= 1))
    tpot_ok = ((sim.tpot_s <= slo_tpot_s) | (sim.out_tokens <= 1)) & done if role != "prefill" else ttft_ok
    out = dict(attainment=float(np.mean(ttft_ok & tpot_ok)), truncated=bool(sim.truncated))
    for name, used in (("ttft", role != "decode"), ("tpot", role != "prefill")):
        x = getattr(sim, f"{name}_s")
        for q in (50, 90, 99):
            out[f"{name}_p{q}_ms"] = float(np.nanpercentile(x, q)) * 1e3 if used and np.any(np.isfinite(x)) else math.nan
    p_ttft, p_tpot = out[f"ttft_p{percentile}_ms"], out[f"tpot_p{percentile}_ms"]
    out["meets"] = bool(not sim.truncated and (role == "decode" or p_ttft <= slo_ttft_s * 1e3)
                        and (role == "prefill" or p_tpot <= slo_tpot_s * 1e3))
    return out


def simulate_plan(plan: FleetPlan, candidates, workload: ServingWorkload, slo_ttft_s: float, slo_tpot_s: float,
                  percentile: int = 90, n_requests: int = 1000, seed: int = SIM_SEED) -> tuple[list[dict], float]:
    """The discrete-event check of each used option: one instance at the mix and per-instance rate
    the plan gives it (`simulate_option`), its simulated P50/P90/P99 TTFT and TPOT, the share of its
    requests within its role's SLOs and whether its P`percentile`s meet them. The fleet's share of
    requests within both SLOs is bounded below by counting every miss at a prefill, decode or
    aggregated instance as a lost request (a request passes one aggregated instance, or one prefill
    and one decode instance: a union bound over its two stages)."""
    rows, missed, total = [], 0.0, 0.0
    for o, (opt, tables) in enumerate(candidates):
        if plan.count[o] == 0 or plan.share[:, o].sum() <= 0:
            continue
        mix, rate = _assigned(plan, o, workload)
        st, sp = _slos(opt.role, slo_ttft_s, slo_tpot_s)
        stats = _sim_stats(opt.role, simulate_option(opt.role, tables, mix, rate, n_requests, seed), st, sp, percentile)
        rows.append(dict(option=opt.label, index=o, role=opt.role, instances=int(plan.count[o]), rate_rps=rate,
                         requests=n_requests, **stats))
        lam = rate * int(plan.count[o])
        if opt.role != "decode":
            total += lam
        missed += lam * (1.0 - stats["attainment"])
    return rows, (max(0.0, 1.0 - missed / total) if total else 1.0)


def simulated_capacity(role: str, tables: StepTables, mix: RequestMix, slo_ttft_s: float, slo_tpot_s: float,
                       percentile: int = 90, hi: float = 64.0, n_requests: int = 1000, seed: int = SIM_SEED) -> float:
    """Largest rate below `hi` at which one instance of `role` meets the SLOs in the simulation
    (`simulate_option`, `_sim_stats`' P`percentile`s), by serving.bisect_rate to SIM_CAPACITY_RTOL;
    for an aggregated instance this is serving.max_rate_simulated."""
    st, sp = _slos(role, slo_ttft_s, slo_tpot_s)
    return bisect_rate(lambda r: _sim_stats(role, simulate_option(role, tables, mix, r, n_requests, seed), st, sp,
                                            percentile)["meets"], hi, rtol=SIM_CAPACITY_RTOL)


def _sim_miss_line(sim: dict, closed: dict, slos: tuple[float, float], percentile: int) -> str:
    """'simulation: h100-sxm tp1 aggregated misses p90 TTFT at 33.3 req/s per instance (1,210 ms
    simulated, 437 ms closed form, SLO 1000 ms)'."""
    what = []
    for name, k, slo in (("TTFT", "ttft", slos[0]), ("TPOT", "tpot", slos[1])):
        v = sim[f"{k}_p{percentile}_ms"]
        if math.isfinite(v) and v > slo * 1e3:
            what.append(f"p{percentile} {name} ({_ms(v / 1e3)} simulated, {_ms(closed[f'{k}_p_ms'] / 1e3)} closed form, "
                        f"SLO {_ms(slo)})")
    if sim["truncated"]:
        what.append("the simulation (it did not finish: the load is unstable)")
    return (f"simulation: {sim['option']} misses {' and '.join(what)} at {sim['rate_rps']:.3g} req/s per instance "
            f"({sim['attainment']:.0%} of its requests within the SLOs)")


def _sim_derate(plan: FleetPlan, candidates, workload: ServingWorkload, o: int, sim: dict, closed_rows: list[dict],
                slos: tuple[float, float], percentile: int, n_requests: int, seed: int) -> tuple[float, str]:
    """(factor, note): option o's throughput column scaled to its simulated capacity at the mix the
    plan gave it. At that mix the ILP's capacity of one instance is rate / utilisation (the load
    sum_b x lam_b / T[b, o] is linear in the rate); the simulation fails at the assigned rate, so
    its capacity s lies below it (bisection over (0, rate)); factor = s / (rate / utilisation)."""
    opt, tables = candidates[o]
    mix, rate = _assigned(plan, o, workload)
    closed_cap = rate / (plan.load[o] / plan.count[o])
    s = simulated_capacity(opt.role, tables, mix, *slos, percentile, hi=rate, n_requests=n_requests, seed=seed)
    closed = next(r for r in closed_rows if r["option"] == opt.label)
    line = (_sim_miss_line(sim, closed, slos, percentile) + f"; its simulated capacity at that mix is {s:.3g} req/s "
            f"against {closed_cap:.3g} closed form: re-solved with it derated to that")
    return s / closed_cap, line


def plan_fleet(model: ModelConfig, workload: ServingWorkload, slo_ttft_s: float, slo_tpot_s: float,
               gpus: list[str], max_gpus: dict[str, int] | None = None, tps=(1, 2, 4, 8), roles=ROLES,
               percentile: int = 90, candidates=None, executor=None, objective: str = "usd",
               power_budget_w: float | None = None, power_cap_w: dict[str, float] | None = None,
               carbon_g_per_kwh: dict[str, float] | None = None, sim_requests: int = 0,
               sim_admission: bool = True, sim_seed: int = SIM_SEED) -> tuple[FleetResult, list, np.ndarray]:
    """Profile every option with the serving model, solve the ILP for the mix and for each single
    GPU type (minimising `objective`: usd, energy or carbon, under `power_budget_w` if given), and
    check the plan. `sim_requests` > 0: also check each used option with the discrete-event
    simulation of `sim_requests` requests at the load the plan gives it (`simulate_plan`); with
    `sim_admission`, an option the closed forms pass and the simulation fails is derated to its
    simulated capacity at that mix (`simulated_capacity`) and the fleet re-solved (module doc).
    Returns (result, candidates, throughput matrix)."""
    if sim_requests < 0:
        raise FieldError("sim_requests", sim_requests, "must be >= 0 (0: no simulated check)")
    if slo_ttft_s <= 0 or slo_tpot_s <= 0:
        name = "slo_ttft_s" if slo_ttft_s <= 0 else "slo_tpot_s"
        raise FieldError(name, slo_ttft_s if slo_ttft_s <= 0 else slo_tpot_s, "must be > 0")
    if objective not in OBJECTIVES:
        raise FieldError("objective", objective, "unknown", f"use {', '.join(OBJECTIVES)}")
    if power_budget_w is not None and not (math.isfinite(power_budget_w) and power_budget_w > 0):
        raise FieldError("power_budget_kw", f"{power_budget_w / 1e3:g}", "must be a positive number of kilowatts")
    long = [b for b, r in zip(workload.buckets, workload.bucket_rates_rps())
            if r > 0 and b.in_tokens + b.out_tokens > model.max_positions]
    if long:
        raise RoofplanError(
            f"workload {workload.name} has requests of {long[0].label} tokens ({len(long)} bucket(s)), beyond "
            f"{model.name}'s context of {model.max_positions} tokens; use a model with a longer context or a workload without them")
    cands = candidates or candidate_options(model, gpus, tps, roles, executor=executor, power_cap_w=power_cap_w,
                                            carbon_g_per_kwh=carbon_g_per_kwh)
    options = [c[0] for c in cands]
    tput = throughput_matrix(cands, workload, slo_ttft_s, slo_tpot_s, percentile)
    rates = workload.bucket_rates_rps()
    labels = [b.label for b in workload.buckets]
    unserved = unservable_buckets(tput, rates, [o.role for o in options], [pd_group(o) for o in options])
    if unserved:
        raise RoofplanError(slo_shortfall(cands, workload, unserved, slo_ttft_s, slo_tpot_s, percentile))
    energy = energy_matrix(cands, workload, tput)
    least = None
    if power_budget_w is not None:
        least = _least_power(cands, workload, slo_ttft_s, slo_tpot_s, percentile, tput, rates, max_gpus, labels, energy)
        if least[0] > power_budget_w:
            raise _budget_error(power_budget_w, *least, workload)
    obj = dict(objective=objective, energy_j=energy)
    budget = power_budget_w
    plan, single = _cheapest(options, tput, rates, max_gpus, labels, power_budget_w=budget, **obj)
    # Melange's ILP adds per-bucket rates linearly; the serving model checks the mix each option
    # really gets. An option that misses its SLOs there is derated and the fleet re-solved; a fleet
    # whose checked power exceeds the budget is re-solved under a budget lowered by the excess.
    # The simulation then checks a plan the closed forms pass; with sim_admission an option it
    # fails keeps only its simulated capacity at the mix it was given, and the fleet is re-solved.
    derated = tput.copy()
    notes: list[str] = []
    slos = (slo_ttft_s, slo_tpot_s)
    unchecked_cost, sim_resolves = math.nan, 0     # the plan before the simulation's first derating; re-solves
    for _ in range(MAX_REPAIRS):
        rows, att = evaluate_plan(plan, cands, workload, slo_ttft_s, slo_tpot_s, percentile)
        missing = [o for o, (opt, _) in enumerate(cands) if plan.count[o] and
                   any(r["option"] == opt.label and not r["meets"] for r in rows)]
        over = sum(r["power_w"] for r in rows) - power_budget_w if power_budget_w is not None else 0.0
        sim_missing = {}
        if sim_requests and not missing and over <= 0:
            sim_rows, _ = simulate_plan(plan, cands, workload, *slos, percentile, sim_requests, sim_seed)
            sim_missing = {r["index"]: r for r in sim_rows if not r["meets"]}
            if sim_admission and sim_missing:
                sim_resolves += 1
                if not math.isfinite(unchecked_cost):
                    unchecked_cost = plan.cost_usd_per_h
                for o, r in sim_missing.items():
                    factor, line = _sim_derate(plan, cands, workload, o, r, rows, slos, percentile, sim_requests,
                                               sim_seed)
                    derated[:, o] *= factor
                    notes.append(line)
        if not missing and over <= 0 and not (sim_admission and sim_missing):
            break
        derated[:, missing] *= REPAIR_DERATE
        if over > 0:
            budget -= over
        try:
            plan, single = _cheapest(options, derated, rates, max_gpus, labels, power_budget_w=budget, **obj)
        except FieldError as e:
            if e.field != "power_budget_kw":
                raise
            raise _budget_error(power_budget_w, *least, workload) from None
    rows, att = evaluate_plan(plan, cands, workload, slo_ttft_s, slo_tpot_s, percentile)
    by_label = {o.label: o for o in options}
    single_checked = {g: (evaluate_plan(p, cands, workload, slo_ttft_s, slo_tpot_s, percentile) if p is not None
                          else None) for g, p in single.items()}
    if objective != "usd":
        # the ILP minimises a linear estimate of power (energy_matrix); the checked power decides:
        # a single-type fleet the check puts below the mix, meeting its SLOs and the budget, is the answer
        def checked(rs):
            return sum(r["power_w"] * (by_label[r["option"]].carbon_g_per_kwh if objective == "carbon" else 1.0)
                       for r in rs)

        ok = {g: c for g, c in single_checked.items() if c is not None and all(r["meets"] for r in c[0])
              and (power_budget_w is None or sum(r["power_w"] for r in c[0]) <= power_budget_w)}
        best = min(ok, key=lambda g: checked(ok[g][0]), default=None)
        if best is not None and checked(ok[best][0]) < checked(rows):
            plan, (rows, att) = single[best], ok[best]
    sim_rows, sim_att = (simulate_plan(plan, cands, workload, *slos, percentile, sim_requests, sim_seed)
                         if sim_requests else ([], math.nan))
    by_label_rows = {r["option"]: r for r in rows}
    for r in sim_rows:
        if not r["meets"] and by_label_rows[r["option"]]["meets"]:
            notes.append(_sim_miss_line(r, by_label_rows[r["option"]], slos, percentile)
                         + (f"; still after {MAX_REPAIRS} re-solves" if sim_admission else
                            "; sim admission re-solves with its capacity derated to the simulated one"))
    single_power = {g: (sum(r["power_w"] for r in c[0]) if c is not None else math.inf)
                    for g, c in single_checked.items()}
    single_cost = {g: (p.cost_usd_per_h if p is not None else math.inf) for g, p in single.items()}
    power = sum(r["power_w"] for r in rows)
    co2 = sum(r["power_w"] / 1e3 * by_label[r["option"]].carbon_g_per_kwh for r in rows)
    out_tps = float(sum(r * b.out_tokens for r, b in zip(rates, workload.buckets)))
    return FleetResult(plan, single_cost, rows, att, power, co2, out_tps, single_power, objective, energy,
                       derated, sim_rows, sim_att, sim_requests, tuple(notes), unchecked_cost,
                       sim_resolves), cands, tput


def _least_power(cands, workload, slo_ttft_s, slo_tpot_s, percentile, tput, rates, max_gpus, labels,
                 energy) -> tuple[float, FleetPlan]:
    """(checked power, plan) of the least-power fleet (the ILP's energy objective, under the inventory)."""
    options = [c[0] for c in cands]
    least = solve_fleet(options, tput, rates, max_gpus, labels=labels, objective="energy", energy_j=energy)
    rows, _ = evaluate_plan(least, cands, workload, slo_ttft_s, slo_tpot_s, percentile)
    return max(sum(r["power_w"] for r in rows), least.power_w), least


def _budget_error(power_budget_w: float, least_w: float, least: FleetPlan, workload) -> FieldError:
    """A power budget no fleet meets: one line saying by how much (the least-power fleet's draw)."""
    return FieldError("power_budget_kw", f"{power_budget_w / 1e3:g}",
                      f"no fleet serves {workload.rate_rps:g} req/s within the SLOs under it: the least-power fleet "
                      f"draws {least_w / 1e3:.3g} kW ({_describe(least)}), over by "
                      f"{(least_w - power_budget_w) / 1e3:.3g} kW",
                      f"raise the budget to >= {math.ceil(least_w / 10) / 100:g} kW, loosen the SLOs or lower the rate")


def _describe(plan: FleetPlan) -> str:
    """'3 x h100-sxm tp1 aggregated, 1 x l4 tp1 prefill'."""
    return ", ".join(f"{int(n)} x {o.label}" for o, n in zip(plan.options, plan.count) if n)


def _objective_value(plan: FleetPlan, objective: str) -> float:
    """$/h, W or gCO2/h of a plan under the ILP's model."""
    if objective == "usd":
        return plan.cost_usd_per_h
    if objective == "energy":
        return plan.power_w
    n_c, x_c = _power_terms(plan.options, plan.energy_j, plan.bucket_rates_rps, "carbon")
    return float(np.sum(n_c * plan.count) + np.sum(x_c * plan.share))


MAX_REPAIRS = 8          # re-solves when the serving model finds an option missing its SLOs
REPAIR_DERATE = 0.97     # throughput kept by such an option at each re-solve


def _cheapest(options, tput, rates, max_gpus, labels, objective: str = "usd", energy_j=None, power_budget_w=None):
    """The mixed fleet, and the best single-type fleet per GPU by the objective (the mixed plan is
    replaced by the best single-type one when that is better: the mixed ILP stops within its gap)."""
    kw = dict(objective=objective, power_budget_w=power_budget_w)
    plan = solve_fleet(options, tput, rates, max_gpus, labels=labels, energy_j=energy_j, **kw)
    single: dict[str, FleetPlan | None] = {}
    for g in dict.fromkeys(o.gpu for o in options):
        keep = np.array([o.gpu == g for o in options])
        opts_g, t_g = restrict(options, tput, lambda o: o.gpu == g)
        try:
            p_g = solve_fleet(opts_g, t_g, rates, max_gpus, labels=labels,
                              energy_j=energy_j[:, keep] if energy_j is not None else None, **kw)
        except RoofplanError:
            single[g] = None
            continue
        count = np.zeros(len(options), dtype=int)
        share = np.zeros((len(rates), len(options)))
        load = np.zeros(len(options))
        count[keep], share[:, keep], load[keep] = p_g.count, p_g.share, p_g.load
        single[g] = FleetPlan(tuple(options), count, share, load, p_g.cost_usd_per_h, p_g.report,
                              plan.bucket_rates_rps, p_g.power_w, objective, energy_j)
    best = min((g for g in single if single[g] is not None),
               key=lambda g: _objective_value(single[g], objective), default=None)
    if best is not None and _objective_value(single[best], objective) < _objective_value(plan, objective):
        plan = single[best]
    return plan, single


def dollars_energy_front(candidates, workload: ServingWorkload, slo_ttft_s: float, slo_tpot_s: float,
                         result: FleetResult, max_gpus=None, points: int = 8,
                         percentile: int = 90) -> list[dict]:
    """The dollars-energy Pareto front of fleets meeting the SLOs: the cheapest fleet, the
    least-power fleet, and between them the cheapest fleet under power budgets evenly spaced from
    one's power to the other's (epsilon-constraint; the ILP's linear power, each plan then checked
    by the serving model: `power_w` is the check's, `model_power_w` the ILP's). Dominated points
    are dropped, and a fleet appears once. The throughput matrix is the result's last (after its SLO
    re-solves); the cheapest point is the result's own plan when it minimised dollars."""
    options = [c[0] for c in candidates]
    rates = workload.bucket_rates_rps()
    labels = [b.label for b in workload.buckets]
    energy, tput = result.energy_j, result.tput
    cheap = result.plan if result.objective == "usd" else \
        solve_fleet(options, tput, rates, max_gpus, labels=labels, objective="usd", energy_j=energy)
    green = solve_fleet(options, tput, rates, max_gpus, labels=labels, objective="energy", energy_j=energy)
    plans = [cheap, green]
    if cheap.power_w > green.power_w:
        for budget in np.linspace(green.power_w, cheap.power_w, points)[1:-1]:
            try:
                plans.append(solve_fleet(options, tput, rates, max_gpus, labels=labels, objective="usd",
                                         energy_j=energy, power_budget_w=float(budget)))
            except RoofplanError:
                continue
    pts, seen = [], set()
    for p in plans:                  # a fleet once: as first solved (a budget may re-split its load)
        if _describe(p) in seen:
            continue
        seen.add(_describe(p))
        rows, att = evaluate_plan(p, candidates, workload, slo_ttft_s, slo_tpot_s, percentile)
        power = sum(r["power_w"] for r in rows)
        pts.append(dict(cost_usd_per_h=p.cost_usd_per_h, power_w=power, model_power_w=p.power_w,
                        energy_j_per_token=power / result.output_tokens_per_s, slo_attainment=att,
                        fleet=_describe(p), gpus=p.gpus_by_type()))
    pts.sort(key=lambda d: (d["cost_usd_per_h"], d["power_w"]))
    front, best = [], math.inf
    for d in pts:
        if d["power_w"] < best - 1e-9:
            front.append(d)
            best = d["power_w"]
    return front


def pareto_front(candidates, workload: ServingWorkload, slo_ttft_s: float, slo_tpot_s: float,
                 max_gpus=None, scales=(0.5, 0.75, 1.0, 1.5, 2.0, 3.0), percentile: int = 90) -> list[dict]:
    """Cost of the cheapest fleet as both SLOs scale together; keeps the non-dominated points
    (tighter SLO and lower cost)."""
    options = [c[0] for c in candidates]
    pts = []
    for s in scales:
        tput = throughput_matrix(candidates, workload, slo_ttft_s * s, slo_tpot_s * s, percentile)
        try:
            cost = solve_fleet(options, tput, workload.bucket_rates_rps(), max_gpus).cost_usd_per_h
        except RoofplanError:
            cost = math.inf
        pts.append(dict(scale=s, slo_ttft_ms=slo_ttft_s * s * 1e3, slo_tpot_ms=slo_tpot_s * s * 1e3, cost_usd_per_h=cost))
    front, best = [], math.inf
    for p in sorted(pts, key=lambda p: p["scale"]):
        p["pareto"] = p["cost_usd_per_h"] < best
        best = min(best, p["cost_usd_per_h"])
        front.append(p)
    return front


def plot_pareto(front: list[dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts = [p for p in front if math.isfinite(p["cost_usd_per_h"])]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([p["slo_tpot_ms"] for p in pts], [p["cost_usd_per_h"] for p in pts], "o-")
    ax.set_xlabel("TPOT SLO (ms); TTFT SLO scaled by the same factor")
    ax.set_ylabel("fleet cost ($/h)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from simulator.report.plots import save_figure
    save_figure(fig, path)
