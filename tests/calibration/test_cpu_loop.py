"""The calibration loop on this machine's CPU with a tiny Llama (tests/data/tiny-llama.json):
microbench -> kernel profile of a CPU pseudo-device -> run + trace -> executor profile ->
predict sizes not used for fitting, against measured. Needs torch (skips without it)."""
import json
import shutil

import pytest
import yaml

from simulator.core.paths import REPO_ROOT
from simulator.cli.main import main

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


def test_run_modes_write_traces(tmp_path, capsys):
    """Every executor mode runs on cpu and leaves a trace that the ingestion reads back."""
    from simulator.calibration.trace import load_trace
    cases = [("train", ["--seq", "32", "--lora-rank", "4", "--recompute", "full"]),
             ("decode", ["--context", "16", "--offload", "weights=cpu", "--no-overlap"]),
             ("prefill", ["--seq", "16", "--offload", "weights=cpu"])]
    for phase, extra in cases:
        t = tmp_path / f"{phase}.json.gz"
        r = tmp_path / f"{phase}.json"
        assert main(["run", "--model", TINY, "--phase", phase, "--batch", "2", "--dtype", "fp32", "--steps", "1",
                     "--warmup", "0", "--trace-steps", "1", "--trace", str(t), "--result", str(r), "--format", "json", *extra]) == 0
        capsys.readouterr()
        res = json.loads(r.read_text())
        assert res["phase"] == phase and res["time_s"] > 0 and res["params"] > 3e6
        tr = load_trace(t)
        assert list(tr.segments["name"]) == ["ProfilerStep#1"]
        names = set(tr.cpu_ops["name"])
        assert {"layer0", "layer3"} <= names
        if "--offload" in extra:
            assert {"h2d layer0", "h2d layer3"} <= names
        if phase == "train":
            assert {"train.forward", "train.backward", "train.optimizer"} <= names
            assert "optimizer" in set(tr.kernels["cls"]) and "gemm" in set(tr.kernels["cls"])


@pytest.mark.parametrize("argv, msg", [
    (["run", "--model", TINY, "--phase", "prefill", "--device", "cuda", "--seq", "8"], "no CUDA device"),
    (["run", "--model", TINY, "--phase", "prefill"], "--seq 0: phase prefill needs"),
    (["run", "--model", TINY, "--phase", "train", "--seq", "8", "--offload", "weights=cpu"], "weight streaming is modelled for prefill and decode"),
    (["run", "--model", "deepseek-v3", "--phase", "prefill", "--seq", "8"], "builds dense decoders"),
])
def test_run_bad_input(argv, msg, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(argv) == 2
    assert msg in capsys.readouterr().err
