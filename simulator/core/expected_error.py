"""How far a prediction is expected to be off, for how well its inputs are calibrated.

Two levels make the calibration of a prediction:
  kernels    measured: the kernel profile was fitted on this GPU's microbenchmarks
             carried:  another GPU's curves, carried by ideal time (simulator.core.profiles)
             datasheet: no curves at all, the plain roofline (`--kernel-profile datasheet`)
  framework  measured: the executor profile was fitted on this GPU (its `fitted_on`)
             carried:  fitted on another GPU
             code:     taken from the framework's code and papers, never fitted (e.g. megatron)
The error of each level comes from the validation tables in
hardware_specs/profiles/expected_error.yaml, written by `python benchmarks/expected_error.py
--write` from predictions against measurements (and re-checked by the tests); the closest
pooled row of the kernels level answers when a combination was never measured, and says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator

from simulator.core.errors import did_you_mean
from simulator.core.profiles import DATASHEET, ExecutorProfile, KernelProfile, _profiles_dir
from simulator.core.schema import NonNegative, PosInt, Strict, Text, check, read_yaml
from simulator.core.specs import System

KERNEL_LEVELS = ("measured", "carried", "datasheet")
FRAMEWORK_LEVELS = ("measured", "carried", "code")
KINDS = ("inference", "train")


class Level(Strict):
    """One row: the error of predictions at a calibration level against measurements."""
    time_mape: NonNegative
    time_worst: NonNegative
    cases: PosInt
    source: Text


def _key_problem(key: str) -> str:
    """What is wrong with a row key, '' when it is kernels/framework[/executor[/kind]] or kernels/*."""
    parts = key.split("/")
    if parts[0] not in KERNEL_LEVELS:
        return f"names kernels level '{parts[0]}'{did_you_mean(parts[0], KERNEL_LEVELS)}; one of {', '.join(KERNEL_LEVELS)}"
    if not 2 <= len(parts) <= 4 or not all(parts) or (parts[1] == "*" and len(parts) > 2):
        return "is not kernels/framework[/executor[/inference|train]] or kernels/* (pooled)"
    if parts[1] != "*" and parts[1] not in FRAMEWORK_LEVELS:
        return f"names framework level '{parts[1]}'{did_you_mean(parts[1], FRAMEWORK_LEVELS)}; one of {', '.join(FRAMEWORK_LEVELS)}"
    if len(parts) == 4 and parts[3] not in KINDS:
        return f"names kind '{parts[3]}'{did_you_mean(parts[3], KINDS)}; one of {', '.join(KINDS)}"
    return ""


def _level_keys(levels: dict) -> dict:
    for key in levels:
        if _key_problem(key):
            raise ValueError(f"row '{key}' {_key_problem(key)}")
    return levels


class ExpectedErrorTable(Strict):
    source: Text
    levels: Annotated[dict[str, dict], AfterValidator(_level_keys)]    # each a Level, checked one by one


@dataclass(frozen=True)
class ExpectedError:
    kernels: str
    framework: str
    time_mape: float          # mean absolute relative error of step times at this level
    time_worst: float         # the largest seen
    cases: int
    source: str               # which measurements, and whether this exact level was measured

    def as_dict(self) -> dict:
        return {"kernels": self.kernels, "framework": self.framework, "time_mape": self.time_mape,
                "time_worst": self.time_worst, "cases": self.cases, "source": self.source}


def calibration_level(system: System, kp: KernelProfile, ex: ExecutorProfile) -> tuple[str, str]:
    gpu = system.gpu.name
    kernels = "datasheet" if kp.fitted_on == DATASHEET else "measured" if kp.fitted_on == gpu else "carried"
    framework = "code" if not ex.fitted_on else "measured" if ex.fitted_on == gpu else "carried"
    return kernels, framework


@lru_cache(maxsize=4)
def _table(path: str) -> dict[str, Level]:
    """The rows of the table at `path`, checked by ExpectedErrorTable."""
    fix = "regenerate it with `python benchmarks/expected_error.py --write`"
    t = check(ExpectedErrorTable, read_yaml(path, "expected-error table"), path, fix=fix)
    return {key: check(Level, row, f"{path} levels.{key}", fix=fix) for key, row in t.levels.items()}


def table_path():
    return _profiles_dir("") / "expected_error.yaml"


UNMEASURED_WEIGHT_DTYPES = ("int8", "int4")   # weight-only GEMMs: no profile has microbenchmarks of them


def expected_error(system: System, kp: KernelProfile, ex: ExecutorProfile, phase: str = "decode",
                   weight_dtype: str = "") -> ExpectedError | None:
    """The validated error of the calibration level of (system, kernel profile, executor): the
    row for this executor at this level, else any executor at this level, else the nearest less
    calibrated kernels level measured (None when the table is missing). Weight-only int8/int4
    GEMMs are at best `carried`: their time is the compute dtype's measured curves applied to the
    quantized bytes (simulator.core.quant), not a measurement of those kernels."""
    path = table_path()
    if not path.is_file():
        return None
    rows = _table(str(path))
    kernels, framework = calibration_level(system, kp, ex)
    if weight_dtype in UNMEASURED_WEIGHT_DTYPES and kernels == "measured":
        kernels = "carried"
    kind = "train" if phase == "train" else "inference"
    keys = [f"{kernels}/{framework}/{ex.name}/{kind}", f"{kernels}/{framework}/{ex.name}", f"{kernels}/{framework}"]
    # then everything measured at this kernels level (pooled), then less calibrated kernels
    keys += [f"{k}/*" for k in KERNEL_LEVELS[KERNEL_LEVELS.index(kernels):]]
    for key in keys:
        if key in rows:
            r = rows[key]
            exact = key.startswith(f"{kernels}/{framework}")
            note = "" if exact else f"; level {kernels}/{framework} not measured, nearest measured: {key}"
            return ExpectedError(kernels, framework, r.time_mape, r.time_worst, r.cases, r.source + note)
    return None
