"""Quantized jobs through every front end: predict() and predict_many() give the same numbers."""
import numpy as np
import pytest

from simulator.core.models import load_model
from simulator.core.predict import predict, predict_many
from simulator.core.profiles import load_executor_profile, load_kernel_profile
from simulator.core.specs import load_hardware
from simulator.core.workload import Job

DGX = load_hardware("dgx-h100")
KP = load_kernel_profile("h100-sxm")


@pytest.mark.parametrize("model_name,exe,tp", [("llama-3.1-8b", "default", 1), ("llama-3.1-70b", "hf-eager", 4),
                                               ("mixtral-8x7b", "default", 2)])
@pytest.mark.parametrize("weight_dtype,kv_dtype", [("int4", ""), ("int8", "fp8"), ("fp8", "fp8"), ("", "fp8")])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_predict_many_equals_predict(model_name, exe, tp, weight_dtype, kv_dtype, phase):
    model, ex = load_model(model_name), load_executor_profile(exe)
    job = Job(phase, tp=tp, weight_dtype=weight_dtype, kv_dtype=kv_dtype)
    B = np.array([1, 7, 64, 256])
    sizes = dict(seq=np.array([[300], [2048]])) if phase == "prefill" else dict(context=np.array([[0], [4000]]))
    many = predict_many(model, DGX, job, B, executor=ex, kernels=KP, **sizes)
    key, vals = next(iter(sizes.items()))
    for i, v in enumerate(vals[:, 0]):
        for k, b in enumerate(B):
            p = predict(model, DGX, Job(phase, batch=int(b), tp=tp, weight_dtype=weight_dtype, kv_dtype=kv_dtype,
                                        **{key: int(v)}), ex, KP, check_memory=False)
            assert many.time_s[i, k] == pytest.approx(p.time_s, rel=1e-9)
            assert many.peak_memory_bytes[i, k] == pytest.approx(p.peak_memory_bytes, rel=1e-9)
            assert bool(many.fits[i, k]) == p.fits and str(many.bound[i, k]) == p.bound
