"""Fit a KernelProfile to microbenchmarks (microbench.jsonl: one JSON object per line, `kind`
gemm | attn_prefill | attn_decode | elementwise | copy | cpu | launch | nvme | skip | env;
simulator/executor/microbench.py writes them).

Every fit minimises squared log-time error (relative error, so 6 us and 20 ms kernels weigh the
same) with scipy's bounded least squares. Efficiency curves have knots at 1 us .. 10 ms of ideal
time; a knot with no data near it takes the value of its neighbour.

No figure is invented: each field of the profile (FIGURES) comes from the rows that measure it,
or, when they are missing, from a fallback profile the caller names (`--fallback-profile`), and
the profile's `source` lists every field so taken; without one, the fit is refused in one line
naming each missing kind of row (and the reason a `skip` row gives). Not from microbenchmarks:
`elementwise.eager_slowdown` (memory-bound kernels inside a real model vs the contiguous
microbenchmarks, fitted to a trace; absent = 1.0) -- the one difference between the shipped
h100-sxm.yaml and its regeneration from measurements/h100-sxm/microbench.jsonl.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, ConfigDict

from simulator.core.errors import RoofplanError, did_you_mean
from simulator.core.schema import Name, PosInt, Positive, Strict, check, read_text, short
from simulator.core.ops import EAGER_NORM_CAST_BYTES
from simulator.core.specs import GPU, Link
from simulator.core.units import DTYPE_BYTES

KNOTS_S = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


# --------------------------------------------------------------------------------------------
# microbenchmark records: the fields each fit reads are required, typed and finite; the derived
# ones a recording script adds (tflops, GBps, tag, ...) pass through unread


def _dtype(v: str) -> str:
    if v not in DTYPE_BYTES:
        raise ValueError(f"names dtype '{v}'{did_you_mean(v, DTYPE_BYTES)}; one of {', '.join(DTYPE_BYTES)}")
    return v


Dtype = Annotated[str, AfterValidator(_dtype)]
Place = Literal["gpu", "cpu_pinned", "cpu_pageable"]


class _Record(Strict):
    model_config = ConfigDict(extra="allow")
    kind: str


class _Env(_Record):
    gpu: str = ""              # the device name (torch.cuda.get_device_name), checked against --hardware
    gemm_base_dtype: Dtype = "bf16"   # the dtype whose GEMM curves are fitted in full; the others are scaled from it


class _Gemm(_Record):
    M: PosInt
    N: PosInt
    K: PosInt
    dtype: Dtype
    time_s: Positive


class _AttnPrefill(_Record):
    B: PosInt
    Hq: PosInt
    S: PosInt
    D: PosInt
    Hkv: PosInt | None = None
    causal: bool = True
    dtype: Dtype = "bf16"      # the peak the fit divides by is this dtype's, as the core times it
    time_s: Positive
    fwd_bwd_time_s: Positive | None = None


class _AttnDecode(_Record):
    kv_bytes: Positive
    time_s: Positive


class _Elementwise(_Record):
    op: Name
    T: PosInt
    H: PosInt
    dtype: Dtype = "bf16"
    time_s: Positive


class _Copy(_Record):
    src: Place
    dst: Place
    bytes: PosInt
    time_s: Positive


class _Launch(_Record):
    op: Name
    time_s: Positive


class _Nvme(_Record):
    op: Literal["read", "write"]
    bytes: PosInt
    time_s: Positive


class _Skip(_Record):
    what: Name                 # the kind of measurement not taken ("copy cpu_pinned", "nvme", "gemm fp8")
    reason: Name


class _Cpu(_Record):
    op: Name


class _CpuAdam(_Cpu):
    params_per_s: Positive


class _CpuCopy(_Cpu):
    GBps_rw: Positive


class _CpuGemm(_Cpu):
    tflops: Positive


class _CpuAttention(_Cpu):
    kv_bytes: Positive
    time_s: Positive


RECORDS = {"env": _Env, "gemm": _Gemm, "attn_prefill": _AttnPrefill, "attn_decode": _AttnDecode,
           "elementwise": _Elementwise, "copy": _Copy, "launch": _Launch, "cpu": _Cpu, "nvme": _Nvme, "skip": _Skip}
CPU_RECORDS = {"adamw_foreach": _CpuAdam, "adamw_for_loop": _CpuAdam, "copy": _CpuCopy, "sgemm": _CpuGemm,
               "attention": _CpuAttention}


def _check_record(r, where: str) -> dict:
    """One microbenchmark line, checked against the schema of its kind (one line naming the
    file:line and the field otherwise)."""
    if not isinstance(r, dict) or "kind" not in r:
        raise RoofplanError(f"{where}: each line needs a 'kind' field ({', '.join(k for k in RECORDS if k != 'env')})")
    kind = r["kind"]
    if kind not in RECORDS:
        raise RoofplanError(f"{where}: unknown kind {short(kind)}{did_you_mean(str(kind), RECORDS)}; "
                            f"one of {', '.join(RECORDS)}")
    for key, v in r.items():       # derived fields too: a nan anywhere says the measurement failed
        if isinstance(v, float) and not math.isfinite(v):
            raise RoofplanError(f"{where}: field '{key}' is {v}, not a finite number; re-run the measurement "
                                "or delete the line")
    schema = CPU_RECORDS.get(r.get("op"), _Cpu) if kind == "cpu" else RECORDS[kind]
    check(schema, r, where, fix="see the fields of each kind in simulator/calibration/calibrate.py")
    return r


def read_microbench(path: str | Path) -> list[dict]:
    """The records of a microbenchmark file, each checked (see RECORDS); the file must be UTF-8.
    The whole file is parsed before any record is checked (a syntax error is reported first)."""
    p = Path(path)
    lines = read_text(p, "microbenchmark file").splitlines()
    parsed = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            parsed.append((i, json.loads(line)))
        except json.JSONDecodeError as e:
            raise RoofplanError(f"{p}:{i}: malformed JSON ({e.msg}); one JSON object per line") from None
        except RecursionError:
            raise RoofplanError(f"{p}:{i}: nested too deeply; one flat JSON object per line") from None
    rows = [_check_record(r, f"{p}:{i}") for i, r in parsed]
    if not any(r["kind"] not in ("env", "skip") for r in rows):
        raise RoofplanError(f"{p}: no measurements in the file")
    return rows


def recorded_devices(rows: list[dict]) -> list[str]:
    """Device names of the env records (the GPU the file was recorded on)."""
    return sorted({r["gpu"] for r in rows if r["kind"] == "env" and r.get("gpu")})


def _curve(values) -> dict:
    return {"knots_s": list(KNOTS_S), "efficiency": [round(float(min(max(v, 0.02), 1.0)), 4) for v in values]}


def _interp(eff, t):
    return np.interp(np.log10(np.maximum(t, 1e-12)), np.log10(KNOTS_S), eff)


SMOOTHING = 0.3   # weight of the prior that neighbouring knots have similar efficiency


def _least_squares(fun, x0, lb, ub, curves=()):
    """Bounded least squares on `fun`'s residuals plus a smoothness prior on each curve's knots
    (slices of x): without it, knots with little data swing to the bounds."""
    from scipy.optimize import least_squares

    def residuals(x):
        r = [fun(x)]
        for sl in curves:
            r.append(SMOOTHING * np.diff(np.log(x[sl])))
        return np.concatenate(r)
    return least_squares(residuals, x0, bounds=(lb, ub)).x


def fit_gemm(rows: list[dict], peak: float, bw: float, out_bytes: float) -> tuple[dict, float]:
    """GEMM model t = t0 + (t_c^p + t_m^p)^(1/p); returns (yaml dict, MAPE on the rows)."""
    M = np.array([r["M"] for r in rows], float)
    N = np.array([r["N"] for r in rows], float)
    K = np.array([r["K"] for r in rows], float)
    t = np.array([r["time_s"] for r in rows], float)
    inb = DTYPE_BYTES[rows[0]["dtype"]]
    F = 2 * M * N * K
    B = inb * (M * K + K * N) + out_bytes * M * N
    tci, tmi = F / peak, B / bw
    nk = len(KNOTS_S)

    def model(x):
        t0, p, ec, em = x[0] * 1e-6, x[1], x[2:2 + nk], x[2 + nk:]
        tc = tci / _interp(ec, tci)
        tm = tmi / _interp(em, tmi)
        return t0 + (tc ** p + tm ** p) ** (1 / p)

    x0 = np.r_[5.0, 4.0, [0.7] * nk, [0.8] * nk]
    lb = np.r_[0.0, 1.0, [0.02] * 2 * nk]
    ub = np.r_[30.0, 20.0, [1.0] * 2 * nk]
    x = _least_squares(lambda x: np.log(model(x) / t), x0, lb, ub,
                       curves=(slice(2, 2 + nk), slice(2 + nk, 2 + 2 * nk)))
    err = float(np.mean(np.abs(model(x) / t - 1)))
    return ({"overhead_us": round(float(x[0]), 3), "smoothness": round(float(x[1]), 3),
             "compute": _curve(x[2:2 + nk]), "memory": _curve(x[2 + nk:])}, err)


def fit_gemm_scaled(rows, peak, bw, out_bytes, base: dict) -> tuple[dict, float]:
    """Another dtype with few measurements: the bf16 curves' shape, scaled (compute efficiency
    x s_c, memory efficiency x s_m) with its own overhead -- 3 parameters, not 12."""
    M = np.array([r["M"] for r in rows], float)
    N = np.array([r["N"] for r in rows], float)
    K = np.array([r["K"] for r in rows], float)
    t = np.array([r["time_s"] for r in rows], float)
    inb = DTYPE_BYTES[rows[0]["dtype"]]
    tci = 2 * M * N * K / peak
    tmi = (inb * (M * K + K * N) + out_bytes * M * N) / bw
    ec = np.array(base["compute"]["efficiency"])
    em = np.array(base["memory"]["efficiency"])
    p = base["smoothness"]

    def model(x):
        tc = tci / np.minimum(_interp(ec, tci) * x[1], 1.0)
        tm = tmi / np.minimum(_interp(em, tmi) * x[2], 1.0)
        return x[0] * 1e-6 + (tc ** p + tm ** p) ** (1 / p)

    x = _least_squares(lambda x: np.log(model(x) / t), np.r_[5.0, 1.0, 1.0], np.r_[0.0, 0.05, 0.5], np.r_[30.0, 2.0, 1.5])
    err = float(np.mean(np.abs(model(x) / t - 1)))
    return ({"overhead_us": round(float(x[0]), 3), "smoothness": p,
             "compute": _curve(np.minimum(ec * x[1], 1.0)), "memory": _curve(np.minimum(em * x[2], 1.0))}, err)


def attention_peak(gpu: GPU, dtype: str) -> float:
    """The peak an attention op of `dtype` is timed against, as simulator.core.roofline does."""
    return gpu.peak_flops(dtype if dtype in gpu.peak_flops_by_dtype else "fp16")


def fit_attention_prefill(rows, peak):
    """`peak`: FLOP/s, one for all rows or an array of one per row (each row's dtype)."""
    B = np.array([r["B"] for r in rows], float)
    H = np.array([r["Hq"] for r in rows], float)
    S = np.array([r["S"] for r in rows], float)
    D = np.array([r["D"] for r in rows], float)
    t = np.array([r["time_s"] for r in rows], float)
    F = 2 * B * H * S * S * D
    nk = len(KNOTS_S)

    # flash attention's efficiency is flat in size once causal waste (diag/S) is counted:
    # one plateau, one launch overhead
    def model(x):
        return x[0] * 1e-6 + F * (1 + x[1] / S) / (peak * x[2])

    x = _least_squares(lambda x: np.log(model(x) / t), np.r_[5.0, 200.0, 0.6],
                       np.r_[0.0, 0.0, 0.05], np.r_[20.0, 4096.0, 1.0])
    x = np.r_[x[:2], [x[2]] * nk]
    bwd = [r["fwd_bwd_time_s"] / r["time_s"] - 1 for r in rows if r.get("fwd_bwd_time_s")]
    # the backward ratio of long sequences (the kernel, not its launch overhead)
    ratio = float(np.median(sorted(bwd)[len(bwd) // 2:])) if bwd else 2.5
    err = float(np.mean(np.abs(model(x) / t - 1)))
    return ({"overhead_us": round(float(x[0]), 3), "diag_tokens": round(float(x[1]), 1),
             "backward_ratio": round(ratio, 3), **_curve(x[2:])}, err)


def fit_memory_curve(byts, t, bw, overhead_free=False):
    nk = len(KNOTS_S)
    byts, t = np.asarray(byts, float), np.asarray(t, float)
    tmi = byts / bw

    def model(x):
        return x[0] * 1e-6 + tmi / _interp(x[1:], tmi)

    x = _least_squares(lambda x: np.log(model(x) / t), np.r_[5.0, [0.7] * nk],
                       np.r_[0.0, [0.02] * nk], np.r_[50.0, [1.0] * nk], curves=(slice(1, 1 + nk),))
    return float(x[0]), x[1:], float(np.mean(np.abs(model(x) / t - 1)))


# traffic of the measured elementwise ops, bytes per element at bf16 (scaled by the record's dtype,
# as simulator.core.ops scales them)
ELEMENTWISE_BYTES = {"add": 6.0, "silu_mul": 10.0}
NORM_BYTES_PER_ELEM = 36.0   # eager fp32 RMSNorm of bf16 x: cast 6, pow 8, mean 4, mul 8, cast 6, mul weight 4
NORM_MIN_ELEMS = 2**24       # norms at least this large: launches do not matter
SMALL_COPY_BYTES = 2**20     # a pinned copy this small gives the copy latency


def _elementwise_bytes(r: dict) -> float:
    return ELEMENTWISE_BYTES[r["op"]] * DTYPE_BYTES[r.get("dtype", "bf16")] / 2 * r["T"] * r["H"]


def _norm_bytes(r: dict) -> float:
    """The eager RMSNorm's traffic as simulator.core.ops counts it: 36 B per bf16 element; an
    fp32 input has no casts (36 - EAGER_NORM_CAST_BYTES = 28 B)."""
    per_elem = NORM_BYTES_PER_ELEM - EAGER_NORM_CAST_BYTES if r.get("dtype") == "fp32" else NORM_BYTES_PER_ELEM
    return per_elem * r["T"] * r["H"]


# Every field of a kernel profile that microbenchmarks give: (figure, section, fields, the rows
# that measure it, the `skip` records that explain their absence: `what` prefixes). GEMMs are
# not listed: a kernel profile without measured bf16 GEMMs is refused outright.
FIGURES = (
    ("attention_prefill", "attention_prefill", ("overhead_us", "diag_tokens", "knots_s", "efficiency"),
     "attn_prefill rows", ("attn",)),
    ("attention_prefill.backward_ratio", "attention_prefill", ("backward_ratio",),
     "attn_prefill rows with fwd_bwd_time_s", ("attn",)),
    ("attention_decode", "attention_decode", ("overhead_us", "knots_s", "efficiency"), "attn_decode rows", ("attn",)),
    ("elementwise", "elementwise", ("knots_s", "efficiency"),
     "elementwise add/silu_mul or copy gpu->gpu rows", ("elementwise", "copy gpu")),
    ("elementwise.kernel_overhead_us", "elementwise", ("kernel_overhead_us",), "launch tiny_add rows", ("launch",)),
    ("elementwise.norm_slowdown", "elementwise", ("norm_slowdown",),
     f"elementwise rmsnorm_eager rows of >= 2^{int(math.log2(NORM_MIN_ELEMS))} elements", ("elementwise",)),
    ("copy.h2d_pinned_efficiency", "copy", ("h2d_pinned_efficiency",), "copy cpu_pinned->gpu rows", ("copy", "h2d")),
    ("copy.d2h_pinned_efficiency", "copy", ("d2h_pinned_efficiency",), "copy gpu->cpu_pinned rows", ("copy", "d2h")),
    ("copy.h2d_pageable_GBps", "copy", ("h2d_pageable_GBps",), "copy cpu_pageable->gpu rows", ("copy", "h2d")),
    ("copy.d2h_pageable_GBps", "copy", ("d2h_pageable_GBps",), "copy gpu->cpu_pageable rows", ("copy", "d2h")),
    ("copy.latency_us", "copy", ("latency_us",), f"copy cpu_pinned->gpu rows of <= {SMALL_COPY_BYTES // 2**20} MiB",
     ("copy", "h2d")),
    ("cpu.adam_params_per_s", "cpu", ("adam_params_per_s",), "cpu adamw_foreach rows", ("cpu",)),
)


def _measured(rows: list[dict]) -> dict[str, bool]:
    """Which FIGURES the rows can give."""
    def has(kind, **eq):
        return any(r["kind"] == kind and all(r.get(k) == v for k, v in eq.items()) for r in rows)
    ap = [r for r in rows if r["kind"] == "attn_prefill"]
    return {
        "attention_prefill": bool(ap),
        "attention_prefill.backward_ratio": any(r.get("fwd_bwd_time_s") for r in ap),
        "attention_decode": has("attn_decode"),
        "elementwise": any(r["kind"] == "elementwise" and r["op"] in ELEMENTWISE_BYTES for r in rows) or has("copy", src="gpu", dst="gpu"),
        "elementwise.kernel_overhead_us": has("launch", op="tiny_add"),
        "elementwise.norm_slowdown": any(r["kind"] == "elementwise" and r["op"] == "rmsnorm_eager"
                                         and r["T"] * r["H"] >= NORM_MIN_ELEMS for r in rows),
        "copy.h2d_pinned_efficiency": has("copy", src="cpu_pinned", dst="gpu"),
        "copy.d2h_pinned_efficiency": has("copy", src="gpu", dst="cpu_pinned"),
        "copy.h2d_pageable_GBps": has("copy", src="cpu_pageable", dst="gpu"),
        "copy.d2h_pageable_GBps": has("copy", src="gpu", dst="cpu_pageable"),
        "copy.latency_us": any(r["kind"] == "copy" and r["src"] == "cpu_pinned" and r["dst"] == "gpu"
                               and r["bytes"] <= SMALL_COPY_BYTES for r in rows),
        "cpu.adam_params_per_s": has("cpu", op="adamw_foreach"),
    }


def _skip_reasons(rows: list[dict], prefixes: tuple[str, ...]) -> list[str]:
    return [f"{r['what']}: {r['reason']}" for r in rows if r["kind"] == "skip" and str(r["what"]).startswith(prefixes)]


def missing_figures(rows: list[dict]) -> list[tuple[str, str, list[str]]]:
    """(figure, the rows it needs, what the file's skip records say) for every FIGURES entry the
    rows cannot give."""
    have = _measured(rows)
    return [(fig, need, _skip_reasons(rows, why)) for fig, _, _, need, why in FIGURES if not have[fig]]


def refuse_missing(missing, fix_flag: str = "--fallback-profile") -> None:
    """One line naming every missing figure and the rows it needs."""
    parts = []
    for fig, need, skipped in missing:
        parts.append(f"{fig} (needs {need}" + (f"; skipped: {'; '.join(dict.fromkeys(skipped))}" if skipped else "") + ")")
    raise RoofplanError(f"the microbenchmarks cannot give {', '.join(parts)}; measure them (roofplan microbench "
                        f"--device cuda) or pass {fix_flag} P to take them from kernel profile P, which the profile's "
                        "source then names")


def _fill_from(prof: dict, missing, fallback: tuple[str, dict]) -> str:
    """Copy the missing figures' fields from the fallback profile (name, its YAML mapping);
    returns the sentence for `source`."""
    name, fb = fallback
    figs = {fig for fig, _, _ in missing}
    for fig, section, fields, _, _ in FIGURES:
        if fig not in figs:
            continue
        src = fb.get(section) or {}
        dst = prof.setdefault(section, {})
        for f in fields:
            if f in src:
                dst[f] = src[f]
    why = "; ".join(f"{fig} (no {need}" + (f": {skipped[0]}" if skipped else "") + ")" for fig, need, skipped in missing)
    return f"Taken from kernel profile {name} (--fallback-profile), not measured here: {why}."


def _order(prof: dict) -> dict:
    """Sections and fields in the order of the shipped profiles (fields filled from a fallback last otherwise)."""
    order = {"attention_prefill": ("overhead_us", "diag_tokens", "backward_ratio", "knots_s", "efficiency"),
             "attention_decode": ("overhead_us", "knots_s", "efficiency"),
             "elementwise": ("knots_s", "efficiency", "kernel_overhead_us", "norm_slowdown", "eager_slowdown"),
             "copy": ("h2d_pinned_efficiency", "d2h_pinned_efficiency", "h2d_pageable_GBps", "d2h_pageable_GBps", "latency_us"),
             "cpu": ("copy_GBps", "sgemm_TFLOPS", "adam_params_per_s")}
    out = {}
    for k in ("name", "kind", "hardware", "source", "gemm", "attention_prefill", "attention_decode", "elementwise", "copy", "cpu"):
        if k in prof:
            v = prof[k]
            out[k] = {f: v[f] for f in order[k] if f in v} | v if k in order else v
    return out


def fit_kernel_profile(rows: list[dict], gpu: GPU, host_link: Link, source: str,
                       fallback: tuple[str, dict] | None = None) -> tuple[dict, dict]:
    """Fit every curve the rows allow; returns (profile yaml dict, fit errors by part). A figure
    the rows cannot give (FIGURES) is taken from `fallback` = (name, profile mapping) and named
    in `source`, or refused (refuse_missing) when there is none."""
    errors: dict[str, float] = {}
    bw = gpu.hbm_bw_Bps
    prof: dict = {"name": gpu.name, "kind": "kernel-profile", "hardware": gpu.name, "source": source, "gemm": {}}
    gemm = [r for r in rows if r["kind"] == "gemm"]
    if not gemm:
        raise RoofplanError("the microbenchmarks have no 'gemm' rows; a kernel profile needs bf16 GEMMs")
    base_dt = next((r.get("gemm_base_dtype", "bf16") for r in rows if r["kind"] == "env"), "bf16")
    base = [r for r in gemm if r["dtype"] == base_dt]
    if len(base) < 8 or base_dt not in gpu.peak_flops_by_dtype or (base_dt != "bf16" and "bf16" not in {r["dtype"] for r in gemm}):
        raise RoofplanError(f"the microbenchmarks need at least 8 {base_dt} GEMM rows of several shapes"
                            + (" and bf16 rows" if base_dt != "bf16" else ""))
    missing = missing_figures(rows)
    if missing and fallback is None:
        refuse_missing(missing)
    out_bytes = lambda dt: 4 if dt in ("fp32", "tf32") else 2
    prof["gemm"][base_dt], errors[f"gemm.{base_dt}"] = fit_gemm(base, gpu.peak_flops(base_dt), bw, out_bytes(base_dt))
    for dt in sorted({r["dtype"] for r in gemm} - {base_dt}):
        rs = [r for r in gemm if r["dtype"] == dt]
        if dt in gpu.peak_flops_by_dtype and len(rs) >= 3:
            prof["gemm"][dt], errors[f"gemm.{dt}"] = fit_gemm_scaled(rs, gpu.peak_flops(dt), bw, out_bytes(dt), prof["gemm"][base_dt])
    prof["gemm"] = {dt: prof["gemm"][dt] for dt in sorted(prof["gemm"], key=lambda d: (d != "bf16", d))}
    ap = [r for r in rows if r["kind"] == "attn_prefill"]
    if ap:
        peaks = np.array([attention_peak(gpu, r.get("dtype", "bf16")) for r in ap])
        prof["attention_prefill"], errors["attention_prefill"] = fit_attention_prefill(ap, peaks)
    ad = [r for r in rows if r["kind"] == "attn_decode"]
    if ad:
        t0, eff, errors["attention_decode"] = fit_memory_curve([r["kv_bytes"] for r in ad], [r["time_s"] for r in ad], bw)
        prof["attention_decode"] = {"overhead_us": round(t0, 3), **_curve(eff)}
    # elementwise: the large sizes give bandwidth (small eager sizes are host-launch bound)
    ew = [r for r in rows if r["kind"] == "elementwise" and r.get("op") in ELEMENTWISE_BYTES]
    d2d = [r for r in rows if r["kind"] == "copy" and r["src"] == "gpu" and r["dst"] == "gpu"]
    byts = [_elementwise_bytes(r) for r in ew] + [r["bytes"] * 2 for r in d2d]
    ts = [r["time_s"] for r in ew] + [r["time_s"] for r in d2d]
    launch = [r["time_s"] for r in rows if r["kind"] == "launch" and r.get("op") == "tiny_add"]
    ewp = prof["elementwise"] = {}
    if byts:
        _, eff, errors["elementwise"] = fit_memory_curve(byts, ts, bw)
        ewp.update(_curve(eff))
    if launch:
        ewp["kernel_overhead_us"] = round(float(launch[0] * 1e6), 3)
    # eager RMSNorm: measured time over the streaming-kernel prediction for its counted traffic
    # (_norm_bytes), at sizes where launches do not matter
    norms = [r for r in rows if r["kind"] == "elementwise" and r.get("op") == "rmsnorm_eager" and r["T"] * r["H"] >= NORM_MIN_ELEMS]
    if norms and byts:
        ratios = [r["time_s"] / (_norm_bytes(r) / bw / _interp(eff, _norm_bytes(r) / bw)) for r in norms]
        ewp["norm_slowdown"] = round(float(np.median(ratios)), 4)
    cp = [r for r in rows if r["kind"] == "copy" and "cpu" in (r["src"] + r["dst"])]

    def big(src, dst):
        rs = sorted((r for r in cp if r["src"] == src and r["dst"] == dst), key=lambda r: r["bytes"])
        return rs[-1] if rs else None

    copy = prof["copy"] = {}
    for key, (src, dst) in {"h2d_pinned": ("cpu_pinned", "gpu"), "d2h_pinned": ("gpu", "cpu_pinned")}.items():
        r = big(src, dst)
        if r:
            rate = r["bytes"] / r["time_s"]
            if rate > host_link.bw_Bps:
                raise RoofplanError(f"copy {src}->{dst} of {r['bytes']} bytes ran at {rate / 1e9:.1f} GB/s, above the "
                                    f"{host_link.bw_Bps / 1e9:g} GB/s of {gpu.name}'s host link {host_link.name}; "
                                    f"give {gpu.name}'s spec the host link this machine has (host_link:)")
            copy[f"{key}_efficiency"] = round(rate / host_link.bw_Bps, 4)
    for key, (src, dst) in {"h2d_pageable": ("cpu_pageable", "gpu"), "d2h_pageable": ("gpu", "cpu_pageable")}.items():
        r = big(src, dst)
        if r:
            copy[f"{key}_GBps"] = round(r["bytes"] / r["time_s"] / 1e9, 3)
    small = [r for r in cp if r["src"] == "cpu_pinned" and r["dst"] == "gpu" and r["bytes"] <= SMALL_COPY_BYTES]
    if small and "h2d_pinned_efficiency" in copy:
        r = small[0]
        copy["latency_us"] = round(max(0.0, r["time_s"] - r["bytes"] / (host_link.bw_Bps * copy["h2d_pinned_efficiency"])) * 1e6, 3)
    cpu = {}
    for r in rows:
        if r["kind"] == "cpu" and r.get("op") == "adamw_foreach":
            cpu["adam_params_per_s"] = round(float(r["params_per_s"]), 0)
        if r["kind"] == "cpu" and r.get("op") == "copy":
            cpu["copy_GBps"] = round(float(r["GBps_rw"]), 2)
        if r["kind"] == "cpu" and r.get("op") == "sgemm":
            cpu["sgemm_TFLOPS"] = round(float(r["tflops"]), 3)
    if cpu:
        prof["cpu"] = cpu
    if missing:
        prof["source"] = f"{source}. {_fill_from(prof, missing, fallback)}"
    return _order(prof), errors
