"""fp8 KV cache: half the cache bytes in memory (a larger batch fits) and in decode attention."""
import pytest

from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile, load_kernel_profile
from simulator.core.specs import load_hardware
from simulator.core.workload import Job

H100 = load_hardware("h100-sxm")
EX = load_executor_profile("default")
KP = load_kernel_profile("h100-sxm")
MODEL = load_model("llama-3.1-8b")
# Llama-3.1-8B: 32 layers x 8 KV heads x 128 x (K, V) = 65,536 cache elements per token
ELEMS_PER_TOKEN = 32 * 8 * 128 * 2


def test_fp8_kv_fits_a_batch_bf16_does_not():
    # batch 72 at 8k context: 72 x 8193 x 65,536 x 2 B = 72 GiB of bf16 cache + 15 GiB of weights > 80 GiB
    bf16 = predict(MODEL, H100, Job("decode", batch=72, context=8192), EX, KP, check_memory=False)
    fp8 = predict(MODEL, H100, Job("decode", batch=72, context=8192, kv_dtype="fp8"), EX, KP)
    assert not bf16.fits and fp8.fits
    assert bf16.memory.kv_cache == 72 * 8193 * ELEMS_PER_TOKEN * 2
    assert fp8.memory.kv_cache == 72 * 8193 * ELEMS_PER_TOKEN * 1


def test_fp8_kv_halves_decode_attention_traffic_and_time():
    bf16 = predict(MODEL, H100, Job("decode", batch=32, context=4096), EX, KP).by_class().loc["attention"]
    fp8 = predict(MODEL, H100, Job("decode", batch=32, context=4096, kv_dtype="fp8"), EX, KP).by_class().loc["attention"]
    assert fp8.bytes / bf16.bytes == pytest.approx(0.5, abs=0.01)    # the query and output stay bf16
    assert fp8.time_s / bf16.time_s == pytest.approx(0.5, abs=0.1)
