"""Predicted (an offload plan, schema roofplan.offload-plan/1) vs measured (`roofplan run --plan`
result, schema roofplan.plan-run/1): whole-block time, prefill and decode time, throughput.

error = measured / predicted - 1 (positive: the run was slower than predicted). The plan's
prediction counts a whole generation (prefill of the block + gen_len - 1 decode steps, plus the
embedding and LM head), which is what `roofplan run --plan` times. Pure: no torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from simulator.core.errors import RoofplanError
from simulator.core.schema import Finite, Name, NonNegative, NonNegInt, PosInt, Positive, Strict, check, read_json, short

PLAN_SCHEMA = "roofplan.offload-plan/1"
RUN_SCHEMA = "roofplan.plan-run/1"
Fraction01 = Field(ge=0, le=1)


class Tiers(Strict):
    """Fractions of one tensor class on each tier; they add up to 1."""
    gpu: float = Fraction01
    cpu: float = Fraction01
    nvme: float = Fraction01

    @model_validator(mode="after")
    def _sum(self):
        if abs(self.gpu + self.cpu + self.nvme - 1) > 1e-3:
            raise ValueError(f"gpu + cpu + nvme is {self.gpu + self.cpu + self.nvme:.4g}; the fractions must add up to 1")
        return self


class PlanWorkload(Strict):
    prompt_len: PosInt | None                          # None for training plans
    gen_len: PosInt | None
    seq: PosInt | None = None
    batch: PosInt


class PlanSchedule(Strict):
    gpu_batch_size: PosInt
    num_gpu_batches: PosInt
    block_size: PosInt
    order: Literal["zig-zag", "layer-by-layer"] = "zig-zag"


class PlanPlacement(Strict):
    weights: Tiers
    kv_cache: Tiers | None = None                      # inference plans
    activations: Tiers | None = None
    optimizer_states: Tiers | None = None              # training plans
    checkpoints: Tiers | None = None


class OptimizerStep(Strict):
    gpu: float = Fraction01
    cpu: float = Fraction01


class PlanPredicted(Strict):
    time_s: Positive
    tokens_per_s: NonNegative
    latency_s: NonNegative | None = None
    prefill_s: NonNegative
    decode_s: NonNegative
    model_tflops_per_s: NonNegative | None = None
    hardware_tflops_per_s: NonNegative | None = None


class PlanStage(Strict):
    stage: Name
    count: NonNegInt
    layer_time_s: NonNegative
    resources_s: dict[str, NonNegative]
    utilisation: dict[str, NonNegative]
    binds: Name


class OffloadPlanFile(Strict):
    """`roofplan plan offload --format json` (roofplan.offload-plan/1): what `run --plan` executes
    and `validate --plan` compares; a hand edit is checked field by field."""
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, allow_inf_nan=False)   # JSON has no tuples
    schema_: Literal["roofplan.offload-plan/1"] = Field(alias="schema")
    model: Name
    hardware: Name
    phase: Literal["prefill", "decode", "train"]
    dtype: Name
    objective: Name
    workload: PlanWorkload
    schedule: PlanSchedule
    placement: PlanPlacement
    attention: Literal["gpu", "cpu"] | None = None
    optimizer_step: OptimizerStep | None = None
    pinned_buffer_bytes: NonNegative = 0.0
    memory_bytes: dict[str, NonNegative]
    predicted: PlanPredicted
    stages: list[PlanStage] = Field(min_length=1)
    binds: Name
    solver: dict


class PlanRunFile(Strict):
    """`roofplan run --plan P --result R` (roofplan.plan-run/1): the fields `validate --plan` reads
    (the executor also records the device, placement and timings it really used)."""
    model_config = ConfigDict(extra="allow", strict=False, frozen=True, allow_inf_nan=False)
    schema_: Literal["roofplan.plan-run/1"] = Field(alias="schema")
    model: Name
    phase: Literal["prefill", "decode"]
    schedule: PlanSchedule
    time_s: Positive
    prefill_s: NonNegative
    decode_s: NonNegative
    tokens_per_s: NonNegative
    times_s: list[Finite] = []


def load_json(path: str, what: str, schema: str) -> dict:
    """A plan (`schema` PLAN_SCHEMA) or a run result (RUN_SCHEMA), checked; one line naming the flag,
    the file and the field otherwise."""
    p = Path(path)
    writer = ("roofplan plan offload ... --format json" if schema == PLAN_SCHEMA
              else "roofplan run --plan P --result R")
    if not p.is_file():
        raise RoofplanError(f"{what} {path} does not exist; give the file written by {writer}")
    d = read_json(p, what=f"{what} file")
    if not isinstance(d, dict) or d.get("schema") != schema:
        got = short(d.get("schema")) if isinstance(d, dict) else type(d).__name__
        raise RoofplanError(f"{what} {path} has schema {got}, not {schema}; write it with {writer}")
    check(OffloadPlanFile if schema == PLAN_SCHEMA else PlanRunFile, d, f"{what} {path}", fix=f"regenerate it with {writer}")
    return d


def compare(plan: dict, result: dict) -> dict:
    """Rows of predicted vs measured and the plan's binding resource."""
    if result.get("phase") != plan.get("phase") or result.get("schedule", {}).get("block_size") != plan["schedule"]["block_size"]:
        raise RoofplanError(f"the result ({result.get('phase')}, block {result.get('schedule', {}).get('block_size')}) "
                            f"is not a run of this plan ({plan['phase']}, block {plan['schedule']['block_size']}); "
                            f"run roofplan run --plan on the same plan file")
    pr = plan["predicted"]
    rows = [("time per block", pr["time_s"], result["time_s"], "s")]
    if plan["phase"] == "decode":
        # the plan's prefill_s / decode_s are layer steps only; the rest (embedding, LM head) is
        # split by the stages' share so the two parts add up to time_s
        layers = pr["prefill_s"] + pr["decode_s"]
        scale = pr["time_s"] / layers if layers else 1.0
        rows += [("prefill", pr["prefill_s"] * scale, result["prefill_s"], "s"),
                 ("decode", pr["decode_s"] * scale, result["decode_s"], "s")]
    rows.append(("throughput", pr["tokens_per_s"], result["tokens_per_s"], "tokens/s"))
    out = [{"quantity": q, "predicted": p, "measured": m, "unit": u, "error": m / p - 1 if p else None}
           for q, p, m, u in rows]
    stages = [{"stage": s["stage"], "binds": s["binds"], "layer_time_s": s["layer_time_s"],
               "utilisation": s["utilisation"]} for s in plan["stages"]]
    return {"model": plan["model"], "hardware": plan["hardware"], "device": result.get("device_name"),
            "rows": out, "binds": plan["binds"], "stages": stages,
            "placement": {"planned": plan["placement"], "executed": result.get("placement")}}
