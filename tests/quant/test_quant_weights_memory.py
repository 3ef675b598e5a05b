"""Quantized weight bytes and the unchanged default (simulator.core.quant, simulator.core.memory)."""
import pytest

from simulator.core.memory import inference_memory
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile, load_kernel_profile
from simulator.core.specs import load_hardware
from simulator.core.workload import Job

EX = load_executor_profile("default")
KP = load_kernel_profile("h100-sxm")
H100 = load_hardware("h100-sxm")
L70 = load_model("llama-3.1-70b")

# Llama-3.1-70B by hand (config.json: hidden 8192, 80 layers, 64 heads, 8 KV heads of 128,
# intermediate 28672, vocabulary 128256, untied embedding)
LINEARS_PER_LAYER = 8192 * (8192 + 2 * 1024 + 8192) + 3 * 8192 * 28672    # q, k, v, o; gate, up, down
EMBED_AND_HEAD = 2 * 128256 * 8192
INT4_BYTES = 0.5 + 2 / 128       # 4-bit weight + one fp16 scale per group of 128


def test_llama_70b_int4_weights_by_hand():
    want = 80 * LINEARS_PER_LAYER * INT4_BYTES + EMBED_AND_HEAD * 2      # embedding and head stay bf16
    got = inference_memory(L70, Job("decode", weight_dtype="int4"), EX).weights
    assert got == pytest.approx(want, rel=1e-4)      # norms (bf16 here, 0.52 B in the model): 2 MB of 39.5 GB
    assert got / 1e9 == pytest.approx(39.50, abs=0.01)


def test_llama_70b_fp8_and_int8_weights_by_hand():
    fp8 = inference_memory(L70, Job("decode", weight_dtype="fp8"), EX).weights
    int8 = inference_memory(L70, Job("decode", weight_dtype="int8"), EX).weights
    assert fp8 == pytest.approx(80 * LINEARS_PER_LAYER * 1 + EMBED_AND_HEAD * 2, rel=1e-4)
    assert int8 == pytest.approx(80 * LINEARS_PER_LAYER * (1 + 2 / 128) + EMBED_AND_HEAD * 2, rel=1e-4)
    # split over tp 4: a quarter on each GPU
    assert inference_memory(L70, Job("decode", weight_dtype="int4", tp=4), EX).weights == pytest.approx(
        inference_memory(L70, Job("decode", weight_dtype="int4"), EX).weights / 4)


def test_int4_70b_fits_one_h100_and_bf16_does_not():
    job = Job("decode", batch=1, context=1024)
    assert not predict(L70, H100, job, EX, KP, check_memory=False).fits
    assert predict(L70, H100, Job("decode", batch=1, context=1024, weight_dtype="int4"), EX, KP).fits


@pytest.mark.parametrize("phase,sizes", [("decode", dict(batch=8, context=2048)), ("prefill", dict(batch=2, seq=512))])
def test_weight_dtype_equal_to_dtype_is_the_default_prediction(phase, sizes):
    model = load_model("llama-3.1-8b")
    a = predict(model, H100, Job(phase, **sizes), EX, KP).as_dict()
    b = predict(model, H100, Job(phase, weight_dtype="bf16", **sizes), EX, KP).as_dict()
    assert a == b


def test_gemm_bytes_and_time_follow_the_weights():
    model = load_model("llama-3.1-8b")
    bf16 = predict(model, H100, Job("decode", batch=1, context=512), EX, KP)
    int4 = predict(model, H100, Job("decode", batch=1, context=512, weight_dtype="int4"), EX, KP)
    fp8 = predict(model, H100, Job("decode", batch=1, context=512, weight_dtype="fp8"), EX, KP)
    g = {k: p.by_class().loc["gemm"] for k, p in (("bf16", bf16), ("int4", int4), ("fp8", fp8))}
    assert g["int4"].flops == g["bf16"].flops                  # the same multiply, dequantised to bf16
    assert g["int4"].bytes < 0.4 * g["bf16"].bytes             # layer weights at 0.52 B, the bf16 head
    assert g["fp8"].bytes < 0.6 * g["bf16"].bytes
    assert int4.time_s < fp8.time_s < bf16.time_s              # batch 1 decode: memory bound
