"""A GPU spec without a TDP (tdp_W: 0, "not in the spec", as `microbench --spec-out` writes for a CPU
used as the device) gets no power figures, and a power cap on it is refused, not ignored."""
import dataclasses

import pytest

from simulator.core.errors import RoofplanError
from simulator.core.models import load_model
from simulator.core.predict import predict, predict_many
from simulator.core.specs import load_gpu, system_from_gpu
from simulator.core.workload import Job


@pytest.fixture(scope="module")
def no_tdp():
    return system_from_gpu(dataclasses.replace(load_gpu("h100-sxm"), tdp_w=0.0, idle_w=None))


def test_no_tdp_means_no_energy(no_tdp):
    m, job = load_model("llama-3.2-1b"), Job("decode", batch=8, context=512)
    assert predict(m, no_tdp, job).energy is None
    assert predict_many(m, no_tdp, job, batch=[8]).energy == {}


def test_a_cap_on_a_gpu_without_tdp_is_refused(no_tdp):
    m, job = load_model("llama-3.2-1b"), Job("decode", batch=8, context=512, power_cap_w=300.0)
    for run in (lambda: predict(m, no_tdp, job), lambda: predict_many(m, no_tdp, job, batch=[8])):
        with pytest.raises(RoofplanError, match="has no TDP in its spec, so its power .* cannot be modelled"):
            run()
