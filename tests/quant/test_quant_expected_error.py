"""A quantized prediction states the calibration it really has: no profile measured int8/int4
weight-only GEMMs, so their expected error is the `carried` level's, not the measured one's."""
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile
from simulator.core.specs import load_hardware
from simulator.core.workload import Job


def test_int4_weights_are_carried_not_measured():
    m, hw, ex = load_model("llama-3.1-8b"), load_hardware("h100-sxm"), load_executor_profile("default")
    plain = predict(m, hw, Job("decode", batch=8, context=1024), ex).expected_error
    int4 = predict(m, hw, Job("decode", batch=8, context=1024, weight_dtype="int4"), ex).expected_error
    fp8 = predict(m, hw, Job("decode", batch=8, context=1024, weight_dtype="fp8"), ex).expected_error
    assert plain["kernels"] == "measured" and fp8["kernels"] == "measured"    # the H100 profile has fp8 GEMM curves
    assert int4["kernels"] == "carried" and int4["time_mape"] > plain["time_mape"]
