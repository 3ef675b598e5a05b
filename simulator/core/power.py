"""Power, energy and carbon of a step: what one predicted step costs in joules beside seconds and
dollars. `step_energy` is the one energy model: predict() calls it on every step and stores the
result on the Prediction (`Prediction.energy`), so predict, whatif, sweeps and planners all read
the same numbers; `clock_under_cap` is the one power-cap model, also applied inside predict().

One GPU over one step (per GPU, SI units): an energy roofline (Choi, Bedard, Fowler, Vuduc, "A
roofline model of energy", IPDPS 2013) over an idle floor, with the SM-clock domain under DVFS:

  E(f)   = P_idle T(f)                                    the board at idle, all step long
         + f^(gamma - 1) (P_c f0 t_c + e_flop F           SM-clock domain: compute-bound time, FLOPs
                          + (e_byte - e_hbm) B)           and moving bytes on chip (L2, NoC, SMs)
         + e_hbm B                                        the HBM stacks (their clock is not capped)
  T(f)   = t_c f0 / f + (T - t_c)                        compute-bound time scales with the clock
  P      = E / T, at most the board's TDP

  t_c      compute-bound kernel time of this GPU (Prediction.time_by_resource["compute"])
  F, B     FLOPs executed and HBM bytes moved by this GPU (the op list the time came from)
  T - t_c  memory-bound kernels, collectives, host gaps, bubbles, exposed transfers: none of
           them runs faster or slower with the SM clock (memory-bound phases barely move under
           frequency and power caps: POLCA, Patel et al. ASPLOS 2024; Splitwise, ISCA 2024)
  f        the SM clock as a fraction of boost; f0 the clock the predicted times hold at: the
           GPU's default, the highest clock whose power fits its TDP (1 when the step draws less)

Constants per GPU from its spec and four dimensionless numbers fitted on H100 (`H100_FIT`):
  P_c    = k_compute (TDP - P_idle)        extra power of compute-bound time
  e_flop = k_flop (TDP - P_idle) / peak    joules per FLOP (peak: dense, the step's dtype)
  e_byte = k_byte (TDP - P_idle) / HBM bw  joules per HBM byte, on chip and in the stacks
  e_hbm  = E_HBM_J_PER_BYTE                the part spent in the DRAM stacks (literature figure)
  gamma                                    SM-domain energy per operation ~ f^(gamma - 1) (V^2 falls
                                           with the clock under DVFS)
so a k is "the share of the board's dynamic range that resource adds at 100% utilisation": the
brief's P = P_idle + sum_r u_r (P_r - P_idle) with u_r the utilisation of FLOPs, HBM bandwidth
and compute-bound time. Fit: benchmarks/energy.py (`fit_constants`, `fit_gamma`) on
benchmarks/data/energy.yaml: ML.ENERGY v3.0 measured H100 power of Llama-3.1-8B (1 GPU) and 70B
(4 GPUs) decode under vLLM at every other batch size (the rest held out), Splitwise's prefill at
the 700 W TDP, and Splitwise's 70%-power-capped DGX-H100 (prefill x1.30) for gamma.

Power cap C (`clock_under_cap`, `clocks_under_cap` on arrays): the highest clock f <= f0 with
E(f)/T(f) <= C (a bisection to the last bit of f, the same for one step and for arrays).
A compute-bound prefill slows by f0/f; a memory-bound decode keeps its time and sheds the
SM-domain energy (FLOPs, on-chip data movement), and a cap it already draws less than costs
nothing (Splitwise: token phase x1.00 at 70% power). A cap below idle, or one the step still
exceeds at MIN_CLOCK_FRACTION of its clock, is refused (one line naming the least cap that fits).

Host (per node): CPUs at idle plus the share of a core each GPU's host lane keeps busy
(Prediction.host_time_s), NVMe drives at idle, and the rest of the node (`other_power_W`: fans,
NICs, switches, DRAM) from the system spec; a bare GPU has no host. A job using fewer GPUs than a
node holds is charged that share of the host. Energy per token divides by the tokens the step
produces (decode: one per sequence; prefill: the prompt tokens; train: all tokens, and J/sample
per sequence); carbon = energy x grid intensity (default `DEFAULT_CARBON_G_PER_KWH`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulator.core.errors import FieldError, RoofplanError
from simulator.core.specs import GPU, System

J_PER_KWH = 3.6e6

DEFAULT_CARBON_G_PER_KWH = 481.0
CARBON_SOURCE = ("world average of electricity generation in 2023, 481 gCO2e/kWh (life-cycle), Ember "
                 "Global Electricity Review 2024, https://ember-climate.org/insights/research/global-electricity-review-2024/")

# the lowest clock the cap model goes to, as a fraction of the default: below about half the clock
# memory-bound kernels slow down too (L2 and load issue run on the SM clock), which the model does
# not represent, so a cap that needs a lower clock is refused. Splitwise's 70% cap needs 0.54-0.67.
MIN_CLOCK_FRACTION = 0.5

# the clock root finders: halvings of the bracket (2^-52 of it: the last bit of a clock fraction),
# and the lowest default clock the model represents for a step far over its TDP
BISECTIONS = 52
DEFAULT_CLOCK_FLOOR = 0.05

# joules per byte spent in the HBM stacks themselves (array, TSVs, PHY): ~3.9 pJ/bit for HBM2, the
# baseline O'Connor et al. ("Fine-Grained DRAM", MICRO 2017, NVIDIA) halve; an ESTIMATE applied to
# every GPU's memory (GDDR costs more per bit): it only splits e_byte into clock-independent and
# clock-dependent parts, so it matters under a power cap alone
E_HBM_J_PER_BYTE = 3.9e-12 * 8


@dataclass(frozen=True)
class PowerFit:
    """Dimensionless constants of the power model (module doc); `source` says what they were fitted to."""
    k_compute: float
    k_flop: float
    k_byte: float
    gamma: float
    source: str


# `python benchmarks/energy.py --fit` prints these; tests/energy/test_fit.py refits and compares
H100_FIT = PowerFit(
    k_compute=1.4954, k_flop=0.6387, k_byte=0.9844, gamma=1.2507,
    source="fitted on h100-sxm: ML.ENERGY v3.0 measured power of Llama-3.1-8B/70B served by vLLM 0.11.1 (12 of "
           "23 concurrencies, the rest held out; each the steady state of the vllm-v1 engine profile's mixed steps) "
           "and Splitwise's prompt phase at TDP (k_*); Splitwise's 70% power cap, Llama-2-70B TP8 2048-token "
           "prefill x1.30 (gamma); benchmarks/data/energy.yaml")

# a spec without idle_W: the H100/A100 measured idle shares of TDP (75/700, 63/400; Splitwise), averaged
IDLE_SHARE_ESTIMATE = 0.13

# a CPU spec without idle_W: an estimate, not a measurement -- server CPUs with C-states enabled
# idle at roughly a quarter to a third of TDP in package power; measure with RAPL/turbostat
CPU_IDLE_SHARE_ESTIMATE = 0.3


# ---------------------------------------------------------------------------------------------
# one GPU


@dataclass(frozen=True)
class GpuPower:
    """The power model of one GPU for one dtype (SI units)."""
    idle_w: float
    tdp_w: float
    compute_w: float          # P_c
    j_per_flop: float         # e_flop
    j_per_byte: float         # e_byte
    gamma: float
    j_per_byte_hbm: float = E_HBM_J_PER_BYTE   # e_hbm <= e_byte
    idle_estimated: bool = False

    @classmethod
    def of(cls, gpu: GPU, dtype: str = "bf16", fit: PowerFit = H100_FIT) -> "GpuPower":
        if gpu.tdp_w <= 0:      # tdp_W 0: not in the spec; every power figure scales with it
            raise RoofplanError(f"{gpu.name} has no TDP in its spec, so its power (and a cap on it) cannot be modelled; "
                                f"add tdp_W with its source to hardware_specs/gpus/{gpu.name}.yaml")
        idle = gpu.idle_w if gpu.idle_w is not None else IDLE_SHARE_ESTIMATE * gpu.tdp_w
        dynamic = gpu.tdp_w - idle
        return cls(idle_w=idle, tdp_w=gpu.tdp_w, compute_w=fit.k_compute * dynamic,
                   j_per_flop=fit.k_flop * dynamic / gpu.peak_flops(dtype),
                   j_per_byte=fit.k_byte * dynamic / gpu.hbm_bw_Bps, gamma=fit.gamma,
                   j_per_byte_hbm=min(E_HBM_J_PER_BYTE, fit.k_byte * dynamic / gpu.hbm_bw_Bps),
                   idle_estimated=gpu.idle_w is None)


@dataclass(frozen=True)
class Activity:
    """What one GPU does in one step, as predicted (seconds, FLOPs, bytes; arrays broadcast)."""
    time_s: object            # T: the step's wall time
    compute_s: object         # t_c: compute-bound kernel time
    flops: object             # F
    hbm_bytes: object         # B


def step_time_at(act: Activity, clock: float, default_clock: float = 1.0):
    """T(f): the step's time at clock f when the prediction holds at f0 (module doc)."""
    return act.compute_s * default_clock / clock + (act.time_s - act.compute_s)


def gpu_energy_j(act: Activity, gp: GpuPower, clock: float = 1.0, default_clock: float = 1.0):
    """E(f): joules one GPU spends on one step at clock f (module doc), before any TDP clip."""
    scale = clock ** (gp.gamma - 1.0)
    return (gp.idle_w * step_time_at(act, clock, default_clock)
            + scale * (gp.compute_w * default_clock * act.compute_s + gp.j_per_flop * act.flops
                       + (gp.j_per_byte - gp.j_per_byte_hbm) * act.hbm_bytes)
            + gp.j_per_byte_hbm * act.hbm_bytes)


def gpu_power_w(act: Activity, gp: GpuPower, clock: float = 1.0, default_clock: float = 1.0):
    """E(f) / T(f), unclipped: what the model says the board would draw at clock f."""
    return gpu_energy_j(act, gp, clock, default_clock) / step_time_at(act, clock, default_clock)


def _bisect_rising(excess, lo, hi):
    """The largest f in [lo, hi] with excess(f) <= 0 for an excess rising in f, elementwise over
    arrays (excess(lo) <= 0 < excess(hi) assumed): BISECTIONS halvings, to the last bit of f. One
    root finder for predict() and the vectorised sweeps, so both give the same clock."""
    lo, hi = np.array(lo, float), np.array(hi, float)
    for _ in range(BISECTIONS):
        mid = 0.5 * (lo + hi)
        over = excess(mid) > 0
        hi = np.where(over, mid, hi)
        lo = np.where(over, lo, mid)
    return lo


def default_clock(act: Activity, gp: GpuPower):
    """f0: the clock (fraction of boost) the GPU holds under its TDP: 1 when the step draws less,
    else the clock at which it draws exactly the TDP (the times are calibrated there: measured
    GPUs already ran under their default limit). Arrays in `act` give an array."""
    def excess(f):   # the calibrated time is the time at f, whatever f is
        return gpu_energy_j(act, gp, f, f) / act.time_s - gp.tdp_w
    shape = np.shape(excess(1.0))
    f0 = np.ones(shape)
    over = excess(np.ones(shape)) > 0
    if np.any(over):
        lo = DEFAULT_CLOCK_FLOOR   # a step the model puts this far over its TDP: pinned at the floor
        pinned = over & (excess(np.full(shape, lo)) > 0)
        f0 = np.where(pinned, lo, np.where(over, _bisect_rising(excess, np.full(shape, lo), np.ones(shape)), 1.0))
    return float(f0) if not shape else f0


def check_cap(cap_w: float | None) -> float | None:
    """A board power limit must be a positive, finite number of watts (None: no cap)."""
    if cap_w is not None and not (math.isfinite(cap_w) and cap_w > 0):
        raise FieldError("power_cap_w", cap_w, "must be a positive number of watts per GPU")
    return cap_w


def cap_floor_error(cap_w: float, floor_w: float) -> FieldError:
    """The refusal of a cap a step still exceeds at its lowest modelled clock (`floor_w` watts)."""
    return FieldError("power_cap_w", f"{cap_w:g}", f"this step still draws {floor_w:.0f} W per GPU at half its "
                      f"default clock, the lowest the power model goes (a memory-bound step sheds little power "
                      f"with the clock)", f"use at least {math.ceil(floor_w)} W")


def check_cap_above_idle(gp: GpuPower, cap_w: float) -> None:
    """A cap below the board's idle power is refused whatever the step (one FieldError)."""
    check_cap(cap_w)
    if cap_w < gp.idle_w:
        raise FieldError("power_cap_w", f"{cap_w:g}", f"is below the GPU's {gp.idle_w:.0f} W idle power",
                         f"use at least {math.ceil(gp.idle_w)} W (TDP {gp.tdp_w:.0f} W)")


def clocks_under_cap(act: Activity, gp: GpuPower, cap_w: float):
    """(f0, f, floor_w), elementwise over the arrays of `act`: the default clock, the highest clock
    f <= f0 whose power fits `cap_w`, and where no clock down to MIN_CLOCK_FRACTION x f0 fits, f =
    nan and floor_w the power at that lowest clock (else nan). A cap below idle raises."""
    check_cap_above_idle(gp, cap_w)
    f0 = np.asarray(default_clock(act, gp), float)
    def excess(f):
        return gpu_power_w(act, gp, f, f0) - cap_w
    shape = np.shape(excess(f0))
    f0 = np.broadcast_to(f0, shape)
    f, floor = np.array(f0, float), np.full(shape, np.nan)
    over = excess(f0) > 0
    if np.any(over):
        lo = MIN_CLOCK_FRACTION * f0
        at_lo = gpu_power_w(act, gp, lo, f0)
        refused = over & (at_lo - cap_w > 0)
        floor = np.where(refused, at_lo, np.nan)
        solved = _bisect_rising(excess, lo, f0)
        f = np.where(refused, np.nan, np.where(over, solved, f0))
    return f0, f, floor


def clock_under_cap(act: Activity, gp: GpuPower, cap_w: float) -> tuple[float, float]:
    """(f0, f) of one step: the default clock and the highest clock whose power fits `cap_w` (<= f0).
    Raises a FieldError naming `power_cap_w` for a cap below idle or below the step's floor."""
    f0, f, floor = clocks_under_cap(act, gp, cap_w)
    if np.isnan(f):
        raise cap_floor_error(cap_w, float(floor))
    return float(f0), float(f)


# ---------------------------------------------------------------------------------------------
# host


@dataclass(frozen=True)
class HostPower:
    """Watts of one node's host at a given load: CPUs, NVMe, the rest."""
    cpu_w: float = 0.0
    nvme_w: float = 0.0
    other_w: float = 0.0
    notes: tuple[str, ...] = ()

    @property
    def total_w(self) -> float:
        return self.cpu_w + self.nvme_w + self.other_w


def host_power(system: System, busy_cores=0.0) -> HostPower:
    """One node's host: each CPU at idle + (TDP - idle) x its busy share of cores; NVMe drives at
    idle; the system's other_power_W. Missing figures are left out and named in `notes`. An array
    of `busy_cores` gives arrays of watts."""
    notes = []
    cpu_w = 0.0
    if system.cpu is not None and system.cpu_count:
        cpu = system.cpu
        if cpu.tdp_w is None:
            notes.append(f"host CPUs not counted: {cpu.name} has no tdp_W in its spec")
        else:
            idle = cpu.idle_w if cpu.idle_w is not None else CPU_IDLE_SHARE_ESTIMATE * cpu.tdp_w
            if cpu.idle_w is None:
                notes.append(f"{cpu.name} idle power estimated at {CPU_IDLE_SHARE_ESTIMATE:.0%} of its TDP")
            load = np.minimum(1.0, np.asarray(busy_cores, float) / (cpu.cores * system.cpu_count))
            cpu_w = system.cpu_count * (idle + (cpu.tdp_w - idle) * load)
            cpu_w = float(cpu_w) if not np.ndim(cpu_w) else cpu_w
    else:
        notes.append(f"no host CPU in the {system.name} spec: GPUs only")
    nvme_w = 0.0
    if system.nvme is not None and system.nvme_count:
        if system.nvme.idle_w is None:
            notes.append(f"NVMe not counted: {system.nvme.name} has no idle_W in its spec")
        else:
            nvme_w = system.nvme_count * system.nvme.idle_w
    return HostPower(cpu_w, nvme_w, system.other_power_w or 0.0, tuple(notes))


# ---------------------------------------------------------------------------------------------
# a step, a run


@dataclass(frozen=True)
class StepEnergy:
    """Power and energy of one step (SI units). power_w: average per GPU; node_power_w: a node's
    GPUs in the job plus their share of its host; energy_j: one step, all GPUs and hosts."""
    power_w: float
    node_power_w: float
    energy_j: float
    energy_j_per_token: float
    co2_g_per_1m_tokens: float
    carbon_g_per_kwh: float
    gpu_energy_j: float           # all GPUs
    host_energy_j: float          # all hosts' shares
    clock_fraction: float = 1.0   # SM clock relative to the default (f / f0); < 1 under a cap
    power_cap_w: float | None = None
    energy_j_per_sample: float | None = None   # train: per sequence
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        d = {"power_w": self.power_w, "node_power_w": self.node_power_w, "energy_j": self.energy_j,
             "energy_j_per_token": self.energy_j_per_token, "co2_g_per_1m_tokens": self.co2_g_per_1m_tokens,
             "carbon_g_per_kwh": self.carbon_g_per_kwh, "gpu_energy_j": self.gpu_energy_j,
             "host_energy_j": self.host_energy_j, "clock_fraction": self.clock_fraction,
             "power_cap_w": self.power_cap_w}
        if self.energy_j_per_sample is not None:
            d["energy_j_per_sample"] = self.energy_j_per_sample
        return d


def co2_g(energy_j, carbon_g_per_kwh: float):
    """Grams of CO2e for `energy_j` joules drawn from a grid of the given intensity."""
    return energy_j / J_PER_KWH * carbon_g_per_kwh


def check_carbon(carbon_g_per_kwh: float) -> float:
    if not math.isfinite(carbon_g_per_kwh) or carbon_g_per_kwh < 0:
        raise FieldError("carbon_g_per_kwh", carbon_g_per_kwh, "must be a grid intensity >= 0 gCO2/kWh",
                         f"e.g. {DEFAULT_CARBON_G_PER_KWH:g}, the 2023 world average (Ember)")
    return carbon_g_per_kwh


def step_energy_arrays(act: Activity, system: System, dtype: str, n_gpus: int, tokens, host_time_s,
                       clock=(1.0, 1.0), carbon_g_per_kwh: float = DEFAULT_CARBON_G_PER_KWH,
                       power_cap_w: float | None = None, samples=None) -> tuple[dict, tuple[str, ...]]:
    """step_energy over arrays (one element per configuration; `act`, `tokens`, `host_time_s` and
    the clocks (f0, f) broadcast): ({StepEnergy field: array}, notes). predict() and
    predict_many() both come through here, so a sweep row's energy is predict()'s."""
    check_carbon(carbon_g_per_kwh)
    gp = GpuPower.of(system.gpu, dtype)
    f0, f = (np.asarray(c, float) for c in clock)
    notes = [f"{system.gpu.name} idle power estimated at {IDLE_SHARE_ESTIMATE:.0%} of TDP"] if gp.idle_estimated else []
    T = np.asarray(act.time_s, float)
    # act.time_s holds at clock f; the model's E at clock f given the times at f0 -> rebase: the
    # compute-bound time at f0 is act.compute_s f / f0
    at_f0 = Activity(time_s=T - act.compute_s + act.compute_s * f / f0, compute_s=act.compute_s * f / f0,
                     flops=act.flops, hbm_bytes=act.hbm_bytes)
    power = np.minimum(gpu_power_w(at_f0, gp, f, f0), gp.tdp_w)
    if power_cap_w is not None:
        power = np.minimum(power, power_cap_w)
    per_node = min(n_gpus, system.gpu_count)
    nodes = n_gpus / per_node
    with np.errstate(invalid="ignore", divide="ignore"):
        busy = np.where(T > 0, per_node * np.minimum(1.0, np.asarray(host_time_s, float) / T), 0.0)
    host = host_power(system, busy_cores=busy)
    notes += list(host.notes)
    host_share = host.total_w * per_node / system.gpu_count
    gpu_j = power * T * n_gpus
    host_j = host_share * T * nodes
    energy = gpu_j + host_j
    tokens = np.asarray(tokens, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_token = np.where(tokens != 0, energy / np.where(tokens != 0, tokens, 1.0), np.nan)
        per_sample = None if samples is None else np.where(np.asarray(samples) != 0, energy / samples, np.nan)
    out = {"power_w": power, "node_power_w": power * per_node + host_share, "energy_j": energy,
           "energy_j_per_token": per_token, "co2_g_per_1m_tokens": co2_g(per_token * 1e6, carbon_g_per_kwh),
           "gpu_energy_j": gpu_j, "host_energy_j": host_j, "clock_fraction": f / f0}
    if per_sample is not None:
        out["energy_j_per_sample"] = per_sample
    shape = np.broadcast_shapes(*(np.shape(v) for v in out.values()))
    return {k: np.broadcast_to(v, shape) for k, v in out.items()}, tuple(notes)


def step_energy(act: Activity, system: System, dtype: str, n_gpus: int, tokens: float, host_time_s: float,
                clock: tuple[float, float] = (1.0, 1.0), carbon_g_per_kwh: float = DEFAULT_CARBON_G_PER_KWH,
                power_cap_w: float | None = None, samples: float | None = None) -> StepEnergy:
    """Energy of one step of `n_gpus` GPUs doing `act` each (the busiest GPU's activity stands
    for all) on `system` nodes. `clock` is (f0, f) from `clock_under_cap` (the times in `act`
    already hold at f); `host_time_s` is one GPU's host lane (CPU seconds issuing its ops)."""
    a, notes = step_energy_arrays(act, system, dtype, n_gpus, tokens, host_time_s, clock, carbon_g_per_kwh,
                                  power_cap_w, samples if samples else None)
    v = {k: float(x) for k, x in a.items()}
    return StepEnergy(power_w=v["power_w"], node_power_w=v["node_power_w"], energy_j=v["energy_j"],
                      energy_j_per_token=v["energy_j_per_token"], co2_g_per_1m_tokens=v["co2_g_per_1m_tokens"],
                      carbon_g_per_kwh=carbon_g_per_kwh, gpu_energy_j=v["gpu_energy_j"],
                      host_energy_j=v["host_energy_j"], clock_fraction=v["clock_fraction"], power_cap_w=power_cap_w,
                      energy_j_per_sample=v.get("energy_j_per_sample"), notes=notes)


@dataclass(frozen=True)
class RunEnergy:
    """A whole run of `tokens` tokens made of identical steps (training for a token budget)."""
    tokens: float
    steps: float
    time_s: float
    energy_j: float
    co2_g: float

    @property
    def energy_kwh(self) -> float:
        return self.energy_j / J_PER_KWH

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "steps": self.steps, "time_s": self.time_s, "energy_j": self.energy_j,
                "energy_kwh": self.energy_kwh, "co2_g": self.co2_g}


def run_energy(step: StepEnergy, step_time_s: float, tokens_per_step: float, tokens: float) -> RunEnergy:
    """`tokens` / tokens_per_step steps of `step` (the last one counted whole)."""
    if not math.isfinite(tokens) or tokens <= 0:
        raise FieldError("tokens", tokens, "must be a positive number of tokens", "e.g. 1e12")
    steps = math.ceil(tokens / tokens_per_step)
    energy = steps * step.energy_j
    return RunEnergy(tokens=tokens, steps=steps, time_s=steps * step_time_s, energy_j=energy,
                     co2_g=float(co2_g(energy, step.carbon_g_per_kwh)))


# ---------------------------------------------------------------------------------------------
# fitting (benchmarks/energy.py, tests/energy)


def _unclipped(act: Activity, gpu: GPU, dtype: str, k: np.ndarray) -> float:
    gp = GpuPower.of(gpu, dtype, PowerFit(*k, gamma=H100_FIT.gamma, source=""))
    return float(gpu_power_w(act, gp))


def fit_constants(measured: list[tuple[Activity, GPU, str, float]], at_tdp: list[tuple[Activity, GPU, str]],
                  start=(1.0, 1.0, 1.0)) -> tuple[float, float, float]:
    """(k_compute, k_flop, k_byte) by least squares on the relative error of min(E/T, TDP) against
    measured watts per GPU, with each step in `at_tdp` (measured at its TDP) held at or above it."""
    from scipy.optimize import least_squares

    def residuals(k):
        r = [(min(_unclipped(a, g, d, k), g.tdp_w) - w) / w for a, g, d, w in measured]
        r += [min(_unclipped(a, g, d, k) - g.tdp_w, 0.0) / g.tdp_w for a, g, d in at_tdp]
        return r
    sol = least_squares(residuals, np.asarray(start, float), bounds=([0.0] * 3, [10.0] * 3))
    return tuple(float(x) for x in sol.x)


def capped_time_ratio(act: Activity, gpu: GPU, dtype: str, fit: PowerFit, cap_w: float) -> float:
    """T(f) / T(f0) under a cap (the time a capped step takes over the default's)."""
    gp = GpuPower.of(gpu, dtype, fit)
    f0, f = clock_under_cap(act, gp, cap_w)
    return float(step_time_at(act, f, f0) / act.time_s)


def fit_gamma(points: list[tuple[Activity, GPU, str, float, float]], k: tuple[float, float, float]) -> float:
    """gamma such that the capped/uncapped time ratios of `points` (act, gpu, dtype, cap W,
    measured ratio) match in least squares (scipy, bounded to 1 <= gamma <= 4)."""
    from scipy.optimize import minimize_scalar

    def loss(g):
        fit = PowerFit(*k, gamma=g, source="")
        return sum((capped_time_ratio(a, gpu, d, fit, cap) - r) ** 2 for a, gpu, d, cap, r in points)
    return float(minimize_scalar(loss, bounds=(1.0, 4.0), method="bounded", options={"xatol": 1e-6}).x)


__all__ = ["PowerFit", "H100_FIT", "GpuPower", "Activity", "HostPower", "StepEnergy", "RunEnergy",
           "DEFAULT_CARBON_G_PER_KWH", "CARBON_SOURCE", "gpu_energy_j", "gpu_power_w", "step_time_at",
           "default_clock", "check_cap", "check_cap_above_idle", "clock_under_cap", "clocks_under_cap", "cap_floor_error",
           "host_power", "step_energy", "step_energy_arrays", "run_energy", "co2_g", "check_carbon",
           "fit_constants", "fit_gamma", "capped_time_ratio"]
