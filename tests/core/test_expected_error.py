"""Every prediction states its expected error for its calibration level, from measurements."""
import json
import sys

import pytest
import yaml

from simulator.cli.main import main
from simulator.core.expected_error import calibration_level, table_path
from simulator.core.models import load_model
from simulator.core.paths import REPO_ROOT
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile, load_kernel_profile
from simulator.core.specs import load_hardware
from simulator.core.workload import Job


def test_the_shipped_table_is_what_the_measurements_give(h100_dir):
    """hardware_specs/profiles/expected_error.yaml = `python benchmarks/expected_error.py --write`."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import expected_error as bench
    shipped = yaml.safe_load(table_path().read_text())["levels"]
    fresh = bench.levels()
    assert set(fresh) == set(shipped)
    for key, row in fresh.items():
        for k in ("time_mape", "time_worst"):
            assert row[k] == pytest.approx(shipped[key][k], abs=1e-4), key
        assert row["cases"] == shipped[key]["cases"]


@pytest.mark.parametrize("hardware, kernel_profile, executor, level", [
    ("h100-sxm", None, "default", ("measured", "measured")),
    ("h100-sxm", None, "hf-eager", ("measured", "measured")),
    ("a100-sxm-80gb", None, "distserve", ("carried", "measured")),
    ("a100-sxm-80gb", None, "megatron", ("carried", "code")),
    ("h100-sxm", "datasheet", "default", ("datasheet", "measured")),
])
def test_levels(hardware, kernel_profile, executor, level):
    system = load_hardware(hardware)
    kp = load_kernel_profile(system.gpu.name, kernel_profile)
    assert calibration_level(system, kp, load_executor_profile(executor)) == level


def test_less_calibration_means_a_larger_expected_error():
    m = load_model("llama-3.1-8b")
    job = Job("decode", batch=16, context=512)
    h100, a100 = load_hardware("h100-sxm"), load_hardware("a100-sxm-80gb")
    measured = predict(m, h100, job).expected_error
    carried = predict(m, a100, job).expected_error
    datasheet = predict(m, h100, job, kernels=load_kernel_profile("h100-sxm", "datasheet")).expected_error
    assert (measured["kernels"], carried["kernels"], datasheet["kernels"]) == ("measured", "carried", "datasheet")
    assert measured["time_mape"] < carried["time_mape"] < datasheet["time_mape"]
    assert "not measured" in carried["source"] and "not measured" not in measured["source"]


def test_json_and_table_carry_it(capsys):
    argv = ["predict", "--model", "llama-3.2-1b", "--hardware", "h100-sxm", "--phase", "decode", "--context", "512",
            "--executor", "hf-eager"]
    assert main(argv + ["--format", "json"]) == 0
    e = json.loads(capsys.readouterr().out)["expected_error"]
    assert e["kernels"] == e["framework"] == "measured" and 0 < e["time_mape"] < 0.15 and e["cases"] >= 10
    assert main(argv + ["--format", "table"]) == 0
    assert "expected error:" in capsys.readouterr().out
