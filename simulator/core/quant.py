"""Quantized weights: bytes per weight, the GEMM's dtype and the dequantisation cost.

A Job's `weight_dtype` ("" = its compute dtype) sets how the decoder layers' linear weights are
stored; the embedding and the LM head stay in the compute dtype (AWQ, GPTQ and vLLM's fp8 leave
them unquantized). Two kinds of kernel:

  weight-only int8 / int4 (W8A16, W4A16: AWQ, GPTQ and Marlin kernels, Frantar et al. 2024,
      "MARLIN: Mixed-Precision Auto-Regressive Parallel Inference on Large Language Models",
      arXiv 2408.11743): weights read at 1 or 0.5 B per parameter plus one fp16 scale per group
      of 128 input features (2 / 128 = 0.0156 B per parameter: Marlin's "0.125 bits storage
      overhead", its ideal 4 / (1 + 0.125 / 4) = 3.87x at batch 1); activations stay in the
      compute dtype; the multiply runs on the compute dtype's tensor cores after an in-register
      dequantisation that costs DEQUANT_COMPUTE_OVERHEAD of the tensor-core time. That cost
      grows with the batch (it is paid once per 2 M N K), so the speedup is the bytes ratio while
      the GEMM is memory bound and falls to ~1 / (1 + overhead) of bf16 once it is compute bound.
  fp8 W8A8 (GPUs with fp8 tensor cores: Hopper, Ada, Blackwell): weights at 1 B per parameter
      (one scale per tensor or channel: negligible), the GEMM at the fp8 dense peak.

The KV cache's dtype (`kv_dtype`, fp8 halves it) is separate: simulator.core.memory.kv_cache_bytes
and the decode attention's cache read in simulator.core.ops.
"""
from __future__ import annotations

from simulator.core.units import DTYPE_BYTES

WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4")
WEIGHT_ONLY = ("int8", "int4")           # dequantised to the compute dtype inside the GEMM
QUANT_GROUP_SIZE = 128                   # input features per scale (Marlin, AWQ and GPTQ default)
QUANT_SCALE_BYTES = 2                    # one fp16 scale per group
# Tensor-core time added by Marlin's dequantisation once the GEMM is compute bound: fitted to
# Marlin's batch-128 speedup on an A10 (1.55x measured against the 1.64x its own roofline
# "ideal" gives: 1.64 / 1.55 - 1 = 0.06; README of IST-DASLab/marlin, figure assets/peak.png,
# 72k x 18k fp16 x int4 group-128 matrix); batches 1-64 of the same figure are held out
# (tests/quant/test_marlin_curve.py).
DEQUANT_COMPUTE_OVERHEAD = 0.06


def weight_dtype_of(job) -> str:
    """The layer weights' dtype ("" means the compute dtype)."""
    return job.weight_dtype or job.dtype


def is_quantized(job) -> bool:
    """Layer weights stored in another dtype than the compute dtype."""
    return weight_dtype_of(job) != job.dtype


def weight_bytes_per_param(job) -> float:
    """HBM bytes per layer weight: the dtype's bytes, plus for weight-only int formats one
    QUANT_SCALE_BYTES scale per QUANT_GROUP_SIZE weights."""
    wd = weight_dtype_of(job)
    if wd in WEIGHT_ONLY:
        return (
            DTYPE_BYTES[wd]  # the packed integer weight
            + QUANT_SCALE_BYTES / QUANT_GROUP_SIZE  # its share of the group's fp16 scale
        )
    return DTYPE_BYTES[wd]


def gemm_dtype(job) -> str:
    """The tensor-core dtype of the layers' GEMMs: fp8 for W8A8, else the compute dtype
    (weight-only formats are dequantised to it)."""
    return "fp8" if weight_dtype_of(job) == "fp8" and is_quantized(job) else job.dtype


def gemm_kind(job) -> str:
    """Op.kind of a layer GEMM: "dequant" for weight-only int formats (roofline.py adds
    DEQUANT_COMPUTE_OVERHEAD to their compute time), else ""."""
    return "dequant" if weight_dtype_of(job) in WEIGHT_ONLY and is_quantized(job) else ""
