"""The CLI's energy: JSON fields, table rows, a training run, whatif columns; bad input is one line, exit 2."""
import json

import pytest

from simulator.cli.main import main

DECODE = ["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--phase", "decode", "--batch", "16",
          "--context", "512"]


def run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_reports_power_energy_carbon(capsys):
    rc, out, _ = run(capsys, DECODE + ["--format", "json"])
    d = json.loads(out)
    assert rc == 0
    for key in ("power_w", "node_power_w", "energy_j", "energy_j_per_token", "co2_g_per_1m_tokens"):
        assert d[key] > 0, key
    assert d["energy_j"] == pytest.approx(d["power_w"] * d["time_s"])        # one GPU, no host in the spec
    assert d["energy_j_per_token"] == pytest.approx(d["energy_j"] / 16)
    assert d["carbon_g_per_kwh"] == 481
    rc, out, _ = run(capsys, DECODE + ["--format", "json", "--carbon-g-per-kwh", "0"])
    assert json.loads(out)["co2_g_per_1m_tokens"] == 0


def test_table_has_the_energy_line(capsys):
    rc, out, _ = run(capsys, DECODE + ["--format", "table"])
    assert rc == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("power "))
    assert "W per GPU" in line and "J/token" in line and "g CO2e per 1M tokens at 481 g/kWh" in line


def test_training_run_for_a_token_budget(capsys):
    rc, out, _ = run(capsys, ["predict", "--model", "llama-3.2-1b", "--hardware", "h100-sxm", "--phase", "train",
                              "--batch", "4", "--seq", "2048", "--tokens", "1e12", "--format", "json"])
    d = json.loads(out)
    assert rc == 0
    assert d["run"]["steps"] == pytest.approx(1e12 / (4 * 2048), rel=1e-6)
    assert d["run"]["energy_kwh"] == pytest.approx(d["run"]["steps"] * d["energy_j"] / 3.6e6)
    assert d["energy_j_per_sample"] == pytest.approx(d["energy_j"] / 4)
    rc, out, _ = run(capsys, ["predict", "--model", "llama-3.2-1b", "--hardware", "h100-sxm", "--phase", "train",
                              "--batch", "4", "--seq", "2048", "--tokens", "1e12", "--format", "table"])
    assert any(ln.startswith("run of 1e+12 tokens:") and "MWh" in ln and "CO2e" in ln for ln in out.splitlines())


def test_power_cap_slows_a_prefill(capsys):
    base = ["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--phase", "prefill", "--seq", "4096",
            "--format", "json"]
    _, out, _ = run(capsys, base)
    _, capped, _ = run(capsys, base + ["--power-cap", "400"])
    a, b = json.loads(out), json.loads(capped)
    assert b["time_s"] > 1.3 * a["time_s"] and b["power_w"] == pytest.approx(400) and b["power_cap_w"] == 400
    assert b["clock_fraction"] < 0.8


def test_whatif_reports_energy(capsys):
    rc, out, _ = run(capsys, ["whatif", "--model", "llama-3.1-70b", "--hardware", "h100-sxm", "--gpus", "1,4",
                              "--batch", "16", "--context", "2048", "--format", "json"])
    res = json.loads(out)["results"]
    assert rc == 0
    assert res[0]["fits"] is False and res[0]["energy_j_per_token"] is None
    assert res[1]["energy_j_per_token"] > 0 and res[1]["power_w"] > 75


@pytest.mark.parametrize("flags, message", [
    (["--power-cap", "50"], "--power-cap 50: is below the GPU's 75 W idle power; use at least 75 W"),
    (["--power-cap", "-5"], "--power-cap -5.0: must be a positive number of watts per GPU"),
    (["--power-cap", "0"], "--power-cap 0.0: must be a positive number of watts per GPU"),
    (["--power-cap", "nan"], "argument --power-cap: must be a finite number (got nan)"),
    (["--power-cap", "inf"], "argument --power-cap: must be a finite number (got inf)"),
    (["--carbon-g-per-kwh", "-1"], "--carbon-g-per-kwh -1.0: must be a grid intensity >= 0 gCO2/kWh"),
    (["--carbon-g-per-kwh", "nan"], "argument --carbon-g-per-kwh: must be a finite number (got nan)"),
    (["--tokens", "-1"], "--tokens -1.0: must be a positive number of tokens"),
    (["--batch", "256", "--power-cap", "300"], "--power-cap 300: this step still draws"),
])
def test_bad_input_is_one_line_exit_2(capsys, flags, message):
    rc, out, err = run(capsys, DECODE + flags)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("roofplan: error: ") and message in err, err


def test_whatif_bad_cap_is_one_line(capsys):
    rc, out, err = run(capsys, ["whatif", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--gpus", "1",
                                "--power-cap", "-3"])
    assert rc == 2 and err.count("\n") == 1 and "--power-cap -3.0: must be a positive number" in err
