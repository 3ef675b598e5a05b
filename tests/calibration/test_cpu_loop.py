"""The calibration loop on this machine's CPU with a tiny Llama (tests/data/tiny-llama.json):
microbench -> kernel profile of a CPU pseudo-device -> run + trace -> executor profile ->
predict sizes not used for fitting, against measured. Needs torch (skips without it)."""
import json
import shutil

import pytest
import yaml

from simulator import REPO_ROOT
from simulator.cli import main

torch = pytest.importorskip("torch")

TINY = str(REPO_ROOT / "tests" / "data" / "tiny-llama.json")
# CPU timings on a shared 2-core CI box are noisy (other processes steal the cores): the loop
# must land within a factor of 3 of the measured minimum-of-steps time on every held-out size
# (typically within +-50%, see docs/calibration.md)
LOOP_FACTOR = 3.0


def _run(tmp_path, capsys, phase, batch, seq=0, context=0, trace=None):
    argv = ["run", "--model", TINY, "--phase", phase, "--batch", str(batch), "--dtype", "fp32", "--device", "cpu",
            "--steps", "7", "--warmup", "1", "--format", "json"]
    argv += ["--seq", str(seq)] if seq else []
    argv += ["--context", str(context)] if context else []
    argv += ["--trace", str(trace), "--trace-steps", "3"] if trace else []
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cpu_calibration_loop(tmp_path, capsys, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # one thread: steadier timings on a shared CI box
    try:
        # timing on a shared box: a second, freshly calibrated attempt when the first one was
        # disturbed (both attempts' errors are printed)
        for attempt in range(2):
            errors = _loop(tmp_path / f"attempt{attempt}", capsys, monkeypatch)
            print("cpu loop errors:", {k: f"{100 * v:+.0f}%" for k, v in errors.items()})
            if all(1 / LOOP_FACTOR < 1 + e < LOOP_FACTOR for e in errors.values()):
                break
        assert all(1 / LOOP_FACTOR < 1 + e < LOOP_FACTOR for e in errors.values()), errors
    finally:
        torch.set_num_threads(threads)


def _loop(tmp_path, capsys, monkeypatch):
    tmp_path.mkdir()
    hw = tmp_path / "hw"
    shutil.copytree(REPO_ROOT / "hardware_specs", hw)
    monkeypatch.setenv("ROOFPLAN_HW_DIR", str(hw))
    mb = tmp_path / "mb.jsonl"
    assert main(["microbench", "--device", "cpu", "-o", str(mb), "--spec-out", str(hw / "gpus" / "cpu-host.yaml"),
                 "--format", "json"]) == 0
    capsys.readouterr()
    assert main(["calibrate", "--microbench", str(mb), "--hardware", "cpu-host",
                 "-o", str(hw / "profiles" / "kernels" / "cpu-host.yaml"), "--format", "json"]) == 0
    capsys.readouterr()
    trace = tmp_path / "fit.json.gz"
    fit = _run(tmp_path, capsys, "prefill", 2, seq=128, trace=trace)
    assert fit["time_s"] > 0 and min(fit["times_s"]) <= fit["time_s"]
    assert main(["calibrate", "--trace", str(trace), "--hardware", "cpu-host", "--step-time", str(min(fit["times_s"])),
                 "-o", str(hw / "profiles" / "executors" / "cpu-eager.yaml"), "--format", "json"]) == 0
    capsys.readouterr()
    ex = yaml.safe_load((hw / "profiles" / "executors" / "cpu-eager.yaml").read_text())
    assert ex["fused_qkv"] is True and ex["fused_gate_up"] is True and ex["repeat_kv"] is False
    errors = {}
    for phase, batch, seq, context in (("prefill", 1, 64, 0), ("prefill", 4, 256, 0), ("decode", 8, 0, 256)):
        argv = ["predict", "--model", TINY, "--hardware", "cpu-host", "--phase", phase, "--batch", str(batch),
                "--dtype", "fp32", "--executor", "cpu-eager", "--format", "json"]
        argv += ["--seq", str(seq)] if seq else ["--context", str(context)]
        assert main(argv) == 0
        pred = json.loads(capsys.readouterr().out)["time_s"]
        # measured = minimum over all timed steps; other processes only ever add time, so a
        # disturbed round is re-measured (up to 3 rounds of 7 steps)
        best = float("inf")
        for _ in range(3):
            best = min(best, min(_run(tmp_path, capsys, phase, batch, seq, context)["times_s"]))
            if 1 / LOOP_FACTOR < pred / best < LOOP_FACTOR:
                break
        errors[(phase, batch, seq or context)] = pred / best - 1
    return errors
