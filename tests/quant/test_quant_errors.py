"""Bad quantization input: one line naming the field (the CLI spells it as its flag), exit 2."""
import pytest

from simulator.cli.main import main
from simulator.core.errors import FieldError
from simulator.core.models import load_model
from simulator.core.predict import predict, predict_many
from simulator.core.specs import load_hardware
from simulator.core.workload import Job

MODEL = load_model("llama-3.1-8b")


@pytest.mark.parametrize("gpu", ["a100-sxm-80gb", "t4", "v100-sxm-32gb"])
def test_fp8_weights_refused_on_gpus_without_fp8(gpu):
    dtype = "bf16" if gpu.startswith("a100") else "fp16"      # T4 and V100 have no bf16 either
    job = Job("decode", batch=4, context=128, dtype=dtype, weight_dtype="fp8")
    for call in (lambda: predict(MODEL, load_hardware(gpu), job),
                 lambda: predict_many(MODEL, load_hardware(gpu), job, [1, 4], context=[128])):
        with pytest.raises(FieldError) as e:
            call()
        assert e.value.field == "weight_dtype" and "no fp8" in str(e.value)


@pytest.mark.parametrize("gpu", ["h100-sxm", "h200", "b200", "l40s", "l4"])
def test_fp8_weights_run_on_gpus_with_fp8(gpu):
    assert predict(MODEL, load_hardware(gpu), Job("decode", context=128, weight_dtype="fp8"), check_memory=False).time_s > 0


def test_cli_fp8_on_a100_one_line_exit_2(capsys):
    code = main(["predict", "--model", "llama-3.1-8b", "--hardware", "a100-sxm-80gb", "--phase", "decode",
                 "--weight-dtype", "fp8"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--weight-dtype fp8" in err and "a100-sxm-80gb has no fp8" in err


@pytest.mark.parametrize("job,msg", [
    (Job("train", seq=128, weight_dtype="int4"), "prefill and decode"),
    (Job("decode", weight_dtype="int4", offload_weights="cpu"), "host memory"),
    (Job("decode", weight_dtype="int2"), "unknown"),
])
def test_weight_dtype_field_errors(job, msg):
    with pytest.raises(FieldError) as e:
        predict(MODEL, load_hardware("h100-sxm"), job)
    assert e.value.field == "weight_dtype" and msg in str(e.value)


def test_cli_unknown_weight_dtype_exit_2(capsys):
    assert main(["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--phase", "decode",
                 "--weight-dtype", "nf4"]) == 2
