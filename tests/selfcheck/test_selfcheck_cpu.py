"""`roofplan selfcheck --device cpu --quick` end to end, as CI runs it: every stage runs, the
report (markdown and JSON) has numbers for every job at every calibration level, and the measured
files are in the measurements/<gpu>/ format (they load through the same readers as the shared
H100 files). One selfcheck per module (about 15 s on a 2-core box); the tests read its output.
Timings on a shared CPU are noisy, so accuracy is not asserted here -- the pipeline is."""
from __future__ import annotations

import json
import math
import os

import pytest
import yaml

from simulator.cli.main import main

torch = pytest.importorskip("torch")

KINDS = {"env", "gemm", "attn_prefill", "attn_decode", "elementwise", "launch", "copy", "nvme", "cpu"}
JOBS = ["decode", "prefill", "train", "lora", "offload-plan"]


@pytest.fixture(scope="module")
def selfcheck(tmp_path_factory):
    import contextlib
    import io
    out = tmp_path_factory.mktemp("selfcheck") / "out"
    buf = io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(buf):
        code = main(["selfcheck", "--device", "cpu", "--quick", "--out", str(out), "--format", "json"])
    assert torch.get_num_threads() == threads            # the selfcheck's 1 thread is not left behind
    return code, json.loads(buf.getvalue()), out


def test_every_stage_ran(selfcheck):
    code, rep, out = selfcheck
    assert code == 0
    assert [s["stage"] for s in rep["stages"]] == ["microbench", "specs", "calibrate", "plan", "run", "validate"]
    assert all(s["status"] == "ok" and s["seconds"] >= 0 for s in rep["stages"]), rep["stages"]
    assert (rep["device"], rep["hardware"], rep["budget"], rep["threads"]) == ("cpu", "cpu-host", "quick", 1)
    assert rep["total_s"] < 300


def test_report_has_numbers_for_every_job_and_level(selfcheck):
    _, rep, out = selfcheck
    assert json.loads((out / "report.json").read_text()) == rep
    assert [j["id"] for j in rep["jobs"]] == JOBS
    for j in rep["jobs"]:
        assert "error" not in j, j
        assert j["measured_s"] > 0
        for lv in ("datasheet", "before", "after"):
            p, e = j["predicted_s"][lv], j["time_error"][lv]
            assert p > 0 and e == pytest.approx(p / j["measured_s"] - 1)
    for j in rep["jobs"][:4]:                       # run jobs: per op class from their traces
        classes = {c["cls"]: c for c in j["classes"]}
        assert {"gemm", "attention"} <= set(classes)
        assert all(c["measured_s"] >= 0 and set(c["predicted_s"]) == {"datasheet", "before", "after"} for c in classes.values())
    train = {c["cls"] for c in rep["jobs"][2]["classes"]}
    assert {"optimizer", "loss"} <= train
    for key in ("time_mape", "class_error_weighted"):
        assert all(math.isfinite(v) and v >= 0 for v in rep["summary"][key].values())
    # the levels are what they say: before is the H100 reference carried to this device's peaks
    assert rep["profiles"]["before"]["fitted_on"] == "h100-sxm"
    assert rep["profiles"]["after"]["path"].endswith("hw/profiles/kernels/cpu-host.yaml")


def test_markdown_report_shows_the_before_after_table(selfcheck):
    _, rep, out = selfcheck
    md = (out / "report.md").read_text()
    assert "| job | model | shape | ran as | measured | datasheet | error | before | error | after | error |" in md
    for j in JOBS:
        assert f"\n| {j} | tiny-llama |" in md
    assert "## Per op class" in md and "## Offload plan" in md and "Time MAPE over the jobs" in md


def test_runs_report_what_applied_on_cpu(selfcheck):
    _, rep, out = selfcheck
    decode = rep["jobs"][0]
    assert decode["applied"]["cuda_graph"] is False and decode["applied"]["device"] == "cpu"
    assert "eager launches" in decode["applied_text"]
    plan = rep["jobs"][4]
    assert plan["applied"]["host_memory"] == "pageable" and plan["applied"]["overlap"] is False
    assert rep["plan"]["rows"][0]["quantity"] == "time per block"


def test_measurements_folder_is_in_the_shared_format(selfcheck, monkeypatch, capsys):
    """microbench.jsonl (every kind; host copies marked as memcpy stand-ins), end_to_end.yaml
    (loads as the shared one and validates with the selfcheck's specs), traces, the plan and its
    run, README.md."""
    from planners.offload_check import PLAN_SCHEMA, RUN_SCHEMA, load_json
    from simulator.calibration.accuracy import load_cases
    from simulator.calibration.calibrate import read_microbench
    from simulator.calibration.trace import load_trace
    _, rep, out = selfcheck
    meas = out / "measurements" / "cpu-host"
    rows = read_microbench(meas / "microbench.jsonl")
    assert KINDS <= {r["kind"] for r in rows}
    host_copies = [r for r in rows if r["kind"] == "copy" and "cpu" in r["src"] + r["dst"]]
    assert {(r["src"], r["dst"]) for r in host_copies} == {("cpu_pinned", "gpu"), ("gpu", "cpu_pinned"),
                                                           ("cpu_pageable", "gpu"), ("gpu", "cpu_pageable")}
    assert all("host memcpy" in r["stand_in"] for r in host_copies)
    assert {r["op"] for r in rows if r["kind"] == "cpu"} == {"copy", "sgemm", "adamw_foreach", "adamw_for_loop", "attention"}
    hw, cases = load_cases(meas / "end_to_end.yaml")
    assert hw == "cpu-host-selfcheck" and [c["group"] for c in cases] == ["decode", "prefill", "train", "lora"]
    for j in JOBS[:4]:
        tr = load_trace(meas / f"trace_{j}.json.gz")
        assert tr.cpu_only and "ProfilerStep#1" in set(tr.segments["name"])
    load_json(str(meas / "plan_offload.json"), "--plan", PLAN_SCHEMA)
    load_json(str(meas / "result_offload-plan.json"), "--result", RUN_SCHEMA)
    readme = (meas / "README.md").read_text()
    assert readme.startswith("# cpu-host measurements") and "## end_to_end.yaml" in readme and "stand_in" in readme
    monkeypatch.setenv("ROOFPLAN_HW_DIR", str(out / "hw"))
    capsys.readouterr()
    assert main(["validate", "--end-to-end", str(meas / "end_to_end.yaml"), "--format", "json"]) == 0
    v = json.loads(capsys.readouterr().out)
    after = {j["id"]: j["predicted_s"]["after"] for j in rep["jobs"]}
    for c in v["cases"]:        # the same predictions as the report's `after`
        assert c["predicted_time_s"] == pytest.approx(after[c["id"].split("-tiny-llama")[0]], rel=1e-9)


def test_calibrated_profile_and_specs_are_valid_and_measured(selfcheck, monkeypatch):
    """The kernel profile was fitted without any fallback (every figure measured on cpu) and the
    machine's specs load through the spec loaders."""
    _, rep, out = selfcheck
    monkeypatch.setenv("ROOFPLAN_HW_DIR", str(out / "hw"))
    from simulator.core.profiles import load_kernel_profile
    from simulator.core.specs import load_hardware
    kp = load_kernel_profile("cpu-host")
    assert kp.fitted_on == "cpu-host" and "Taken from" not in kp.source
    prof = yaml.safe_load((out / "hw" / "profiles" / "kernels" / "cpu-host.yaml").read_text())
    assert set(prof["gemm"]) == {"bf16", "fp32"} and "norm_slowdown" in prof["elementwise"]
    system = load_hardware("cpu-host-selfcheck")
    assert system.cpu.attention_Bps > 0 and system.nvme.read_Bps > 0 and system.host_link.name == "cpu-host-memcpy"


def test_bad_input_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    cases = [(["--out", str(f)], "is a file; give a folder"),
             (["--out", str(full)], "non-empty folder that holds no selfcheck report"),
             (["--out", str(tmp_path / "a"), "--threads", "0"], "--threads must be >= 1"),
             (["--out", str(tmp_path / "b"), "--hardware", "h100-sxm"], "on cpu the device is described by the measurements")]
    if not torch.cuda.is_available():
        cases.append((["--out", str(tmp_path / "c"), "--device", "cuda"], "torch sees no CUDA device"))
    for extra, says in cases:
        argv = ["selfcheck", "--device", "cpu", *extra] if "--device" not in extra else ["selfcheck", *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    assert (full / "keep.txt").read_text() == "mine"
