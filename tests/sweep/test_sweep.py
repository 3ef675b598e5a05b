"""The vectorised sweep path must give the scalar predict()'s numbers, config by config."""
import itertools
import re
from dataclasses import replace

import numpy as np
import pytest

from simulator.errors import RoofplanError
from simulator.models import load_model
from simulator.predict import predict
from simulator.profiles import list_profiles, load_executor_profile, load_kernel_profile
from simulator.specs import load_hardware
from simulator.sweep import predict_many, sweep_group, parse_grid, Group
from simulator.workload import Job

# dense GQA, MoE, MLA + MoE, MHA with a plain MLP (gpt2: 12 heads, so tp 8 is refused)
MODELS = ["llama-3.1-8b", "llama-3.1-70b", "mixtral-8x7b", "deepseek-v3", "gpt2"]
GPUS = ["h100-sxm", "a100-sxm-80gb"]
BATCH = np.array([1, 16, 64])[:, None]
CTX = np.array([0, 511, 1000])[None, :]
SEQ = np.array([1, 128, 1000])[None, :]


def _cases():
    for m, hw, phase, tp, pp in itertools.product(MODELS, GPUS, ("decode", "prefill"), (1, 8), (1, 3)):
        yield m, hw, phase, tp, pp, "gpu", "default"
    for m, hw, phase in itertools.product(("llama-3.1-8b", "mixtral-8x7b"), GPUS, ("decode", "prefill")):
        yield m, hw, phase, 1, 1, "cpu", "default"
    # every other shipped executor profile (host overhead per kernel, unfused attention, ...)
    for ex in sorted(set(list_profiles("executors")) - {"default"}):
        for phase, tp in itertools.product(("decode", "prefill"), (1, 4)):
            yield "llama-3.1-8b", "h100-sxm", phase, tp, 1, "gpu", ex


@pytest.mark.parametrize("m,hw,phase,tp,pp,offload,executor", list(_cases()))
def test_vectorised_equals_scalar(m, hw, phase, tp, pp, offload, executor):
    model, system = load_model(m), load_hardware(hw)
    ex, kp = load_executor_profile(executor), load_kernel_profile(system.gpu.name)
    job = Job(phase=phase, tp=tp, pp=pp, offload_weights=offload)
    sizes = dict(batch=BATCH, context=CTX) if phase == "decode" else dict(batch=BATCH, seq=SEQ)
    try:
        many = predict_many(model, system, job, executor=ex, kernels=kp, **sizes)
    except RoofplanError as e:
        # the structure is invalid: the scalar path must refuse it too, with the same message
        with pytest.raises(RoofplanError, match=re.escape(str(e)[:40])):
            predict(model, system, replace(job, batch=1, seq=1 if phase == "prefill" else 0), ex, kp, check_memory=False)
        return
    n = 0
    for i, b in enumerate(BATCH[:, 0]):
        for j in range(3):
            s = int(SEQ[0, j]) if phase == "prefill" else 0
            c = int(CTX[0, j]) if phase == "decode" else 0
            p = predict(model, system, replace(job, batch=int(b), seq=s, context=c), ex, kp, check_memory=False)
            assert many.time_s[i, j] == pytest.approx(p.time_s, rel=1e-9)
            assert many.tokens_per_s[i, j] == pytest.approx(p.tokens_per_s, rel=1e-9)
            assert many.peak_memory_bytes[i, j] == pytest.approx(p.peak_memory_bytes, rel=1e-9)
            assert many.transfer_time_s[i, j] == pytest.approx(p.transfer_time_s, rel=1e-9, abs=1e-15)
            assert bool(many.fits[i, j]) == p.fits
            assert many.bound[i, j] == p.bound
            n += 1
    assert n == 9
