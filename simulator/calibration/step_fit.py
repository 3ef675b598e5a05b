"""Fit an executor profile to a serving engine's measured step times.

A serving engine (vLLM, DistServe, TensorRT-LLM, ...) is rarely traced kernel by kernel; what its
authors publish is the time of one iteration: a prefill of n prompt tokens, a decode step of B
sequences with ctx cached tokens each. `fit_step_times` takes such points for one or more
(model, TP) and fits three executor parameters against the GPU's kernel profile, everything else
in the model fixed:

  gemm_efficiency_scale          the engine's GEMMs vs the kernel profile (compute-bound prefill)
  attn_decode_efficiency_scale   its decode attention (paged KV) vs the profile, on HBM bandwidth
  host_overhead_per_step_us      host time per iteration the GPU waits for (scheduler, sampler)
  host_overhead_per_kernel_us    host time to issue one kernel (eager Python engines are host-bound
                                 at small batch and high TP: the step time stops shrinking with TP)

by bounded least squares on log(predicted / measured). Points marked `role: check` are not fitted and are
reported as held-out error.

Step-times file (YAML):
  hardware: a100-sxm-80gb
  dtype: fp16
  source: where the numbers come from
  engines:
    <engine>:
      description: ...
      executor: {fused_qkv: true, norm_kernels: 1, ...}   # structure known from the engine's code
      measurements:
        - {model: opt-13b, tp: 1, role: fit,               # role: fit | check
           prefill: [[tokens, ms], ...], decode: [[batch, context, ms], ...]}
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, Field

from simulator.core.errors import FieldError, RoofplanError, did_you_mean
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import ExecutorProfile, KernelProfile, executor_fields, load_executor_profile, parse_executor_profile
from simulator.core.schema import Finite, Name, PosInt, Strict, Text, check, read_yaml
from simulator.core.specs import system_from_gpu
from simulator.core.units import DTYPE_BYTES
from simulator.core.workload import Job

FITTED = ("gemm_efficiency_scale", "attn_decode_efficiency_scale", "host_overhead_per_step_us",
          "host_overhead_per_kernel_us")
BOUNDS = ((0.3, 3.0), (0.1, 3.0), (0.0, 1e5), (0.0, 500.0))


@dataclasses.dataclass(frozen=True)
class StepPoint:
    model: str
    tp: int
    phase: str          # prefill | decode
    batch: int
    tokens: int         # prompt tokens (prefill) or cached context per sequence (decode)
    time_s: float
    role: str           # fit | check


def _dtype(v: str) -> str:
    if v not in DTYPE_BYTES:
        raise ValueError(f"names dtype '{v}'{did_you_mean(v, DTYPE_BYTES)}; one of {', '.join(DTYPE_BYTES)}")
    return v


Row = list[Finite]      # [tokens, ms] or [batch, context, ms]: shape and ranges checked in read_step_times


class StepMeasurements(Strict):
    """The points of one (model, TP): prefill [tokens, ms], decode [batch, context, ms]."""
    model: Name
    tp: PosInt
    role: Literal["fit", "check"] = "fit"
    prefill: list[Row] = []
    decode: list[Row] = []


class StepEngine(Strict):
    description: Text | None = None
    executor: dict[str, Any] | None = None     # structural ExecutorProfile fields, checked by profiles.executor_fields
    fit_note: Text | None = None       # a sentence for the fitted profile's source
    measurements: Annotated[list[StepMeasurements], Field(min_length=1)]


class StepTimesFile(Strict):
    """A step-times file (format in the module docstring)."""
    hardware: Name
    dtype: Annotated[str, AfterValidator(_dtype)]
    source: Text
    engines: Annotated[dict[Name, dict], Field(min_length=1)]    # each a StepEngine (checked one by one, so
                                                                 # a typo inside one gets its did-you-mean)


def _whole(v: float) -> bool:
    return v > 0 and float(v).is_integer()


def read_step_times(path: str | Path, engine: str) -> tuple[dict, list[StepPoint]]:
    """(file header + engine entry, points) of one engine in a step-times file, the whole file
    checked by StepTimesFile first (unknown fields, types, finite numbers, required fields)."""
    p = Path(path)
    if not p.is_file():
        raise RoofplanError(f"step-times file {p} not found")
    d = read_yaml(p, "step-times file")
    where = str(p)
    fix = "see simulator/calibration/step_fit.py for the format"
    check(StepTimesFile, d, where, fix=fix)
    engines = d["engines"]
    for name, e in engines.items():
        check(StepEngine, e, f"{where} engines.{name}", fix=fix)
    if engine not in engines:
        raise FieldError("engine", engine, f"{where} has no such engine", f"use one of {', '.join(engines)}")
    e = engines[engine]
    pts = []
    for i, m in enumerate(e["measurements"]):
        w = f"{where} engines.{engine}.measurements[{i}]"
        role = m.get("role", "fit")
        for row in m.get("prefill") or []:
            if len(row) != 2 or not _whole(row[0]) or row[1] <= 0:
                raise RoofplanError(f"{w}.prefill: {row} is not [tokens, ms > 0] (tokens a whole number > 0)")
            pts.append(StepPoint(m["model"], int(m["tp"]), "prefill", 1, int(row[0]), row[1] / 1e3, role))
        for row in m.get("decode") or []:
            if len(row) != 3 or not (_whole(row[0]) and _whole(row[1])) or row[2] <= 0:
                raise RoofplanError(f"{w}.decode: {row} is not [batch, context, ms > 0] (batch and context whole "
                                    "numbers > 0)")
            pts.append(StepPoint(m["model"], int(m["tp"]), "decode", int(row[0]), int(row[1]), row[2] / 1e3, role))
    if not any(q.role == "fit" for q in pts):
        raise RoofplanError(f"{where}: engine '{engine}' has no measurements with role: fit")
    return {**{k: d[k] for k in ("hardware", "dtype", "source")}, **e}, pts


def _structure(entry: dict, where: str) -> ExecutorProfile:
    """default.yaml with the engine's structural fields, host costs zeroed."""
    fields = entry.get("executor") or {}
    fitted = [k for k in fields if k in FITTED]
    if fitted:
        raise RoofplanError(f"{where}: '{fitted[0]}' is fitted here; remove it from the file")
    return dataclasses.replace(load_executor_profile("default"), name="fit", description=entry.get("description", ""),
                              **executor_fields(fields, where))


def predict_points(points: list[StepPoint], gpu, ex: ExecutorProfile, kp: KernelProfile, dtype: str) -> np.ndarray:
    out = []
    models = {}
    for q in points:
        m = models.setdefault(q.model, load_model(q.model))
        job = (Job("prefill", batch=1, seq=q.tokens, dtype=dtype, tp=q.tp) if q.phase == "prefill"
               else Job("decode", batch=q.batch, context=q.tokens, dtype=dtype, tp=q.tp))
        out.append(predict(m, system_from_gpu(gpu, q.tp), job, executor=ex, kernels=kp, check_memory=False).time_s)
    return np.array(out)


def fit_step_times(path: str | Path, engine: str, gpu, kp: KernelProfile) -> tuple[dict, dict]:
    """(executor profile as YAML dict, report) fitted to one engine's step times on `gpu`."""
    from scipy.optimize import least_squares
    head, pts = read_step_times(path, engine)
    if head["hardware"] != gpu.name:
        raise FieldError("hardware", gpu.name, f"{path} was measured on {head['hardware']}", f"use {head['hardware']}")
    base = _structure(head, f"{path} engines.{engine}.executor")
    fit = [q for q in pts if q.role == "fit"]
    meas = np.array([q.time_s for q in fit])
    dtype = head["dtype"]

    def profile(x) -> ExecutorProfile:
        return dataclasses.replace(base, gemm_efficiency_scale=x[0], attn_decode_efficiency_scale=x[1],
                                   host_overhead_per_step_s=x[2] * 1e-6, host_overhead_per_kernel_s=x[3] * 1e-6)

    res = least_squares(lambda x: np.log(predict_points(fit, gpu, profile(x), kp, dtype) / meas),
                        x0=(1.0, 1.0, 1000.0, 20.0), bounds=tuple(zip(*BOUNDS)), x_scale=(0.1, 0.1, 1000.0, 10.0), diff_step=1e-3)
    ex = profile(res.x)
    report = {"engine": engine, "hardware": gpu.name, "kernel_profile": kp.name,
              **{k: round(float(v), 1 if k.endswith("_us") else 4) for k, v in zip(FITTED, res.x)}}
    for role in ("fit", "check"):
        sel = [q for q in pts if q.role == role]
        if not sel:
            continue
        err = predict_points(sel, gpu, ex, kp, dtype) / np.array([q.time_s for q in sel]) - 1
        report[f"{role}_points"] = len(sel)
        report[f"{role}_mape_pct"] = round(float(np.mean(np.abs(err))) * 100, 1)
        report[f"{role}_worst_pct"] = round(float(err[np.argmax(np.abs(err))]) * 100, 1)
        report[f"{role}_models"] = sorted({f"{q.model} tp{q.tp}" for q in sel})
    prof = {"description": head.get("description") or f"{engine} serving engine",
            **(head.get("executor") or {}),
            **{k: report[k] for k in FITTED}, "fitted_on": gpu.name}
    checked = (f"; held out ({', '.join(report['check_models'])}): MAPE {report['check_mape_pct']}%, worst {report['check_worst_pct']}%"
               if "check_points" in report else "")
    prof["source"] = (f"fitted by `roofplan calibrate --step-times {Path(path).name} --engine {engine} --hardware {gpu.name}` "
                      f"(kernel profile {kp.name}) to {report['fit_points']} step times of {', '.join(report['fit_models'])}: "
                      f"MAPE {report['fit_mape_pct']}%, worst {report['fit_worst_pct']}%{checked}. "
                      + (f"{head['fit_note']} " if head.get("fit_note") else "") + f"Measurements: {head['source']}")
    parse_executor_profile(prof, Path(f"{engine}.yaml"))      # the written profile must load
    return prof, report
