"""The CLI contract: predict's json fields, exit code 2 with one line for bad input."""
import json

import pytest

from simulator.cli.main import field_error_message, flag_of, main
from simulator.core.errors import FieldError


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_json_contract(capsys):
    code, out, _ = run(capsys, "predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--phase", "decode",
                       "--batch", "16", "--context", "512", "--format", "json")
    assert code == 0
    d = json.loads(out)
    assert {"time_s", "peak_memory_bytes", "time_by_class_s", "bound"} <= set(d)
    assert d["bound"] == "memory" and 0.005 < d["time_s"] < 0.02


def test_predict_csv_and_table(capsys):
    code, out, _ = run(capsys, "predict", "--model", "llama-3.2-1b", "--hardware", "h100-sxm", "--phase", "prefill",
                       "--batch", "2", "--seq", "512", "--format", "csv")
    assert code == 0 and out.splitlines()[0].startswith("model,hardware,phase,") and len(out.splitlines()) == 2
    code, out, _ = run(capsys, "predict", "--model", "llama-3.2-1b", "--hardware", "h100-sxm", "--phase", "train",
                       "--batch", "2", "--seq", "512", "--format", "table")
    assert code == 0 and "MFU" in out and "peak memory" in out


def test_offload_flag(capsys):
    code, out, _ = run(capsys, "predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--phase", "decode",
                       "--offload", "weights=cpu", "--host-memory", "pageable", "--format", "json")
    d = json.loads(out)
    assert code == 0 and d["bound"] == "transfer" and d["transfer_time_s"] > 1.0


@pytest.mark.parametrize("argv,msg", [
    (["predict", "--model", "llama-9b", "--hardware", "h100-sxm", "--phase", "decode"], "unknown model 'llama-9b'"),
    (["predict", "--model", "llama-3.1-8b", "--hardware", "h1000", "--phase", "decode"], "unknown hardware 'h1000'"),
    (["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--phase", "decode", "--batch", "-4"], "--batch -4: must be a positive integer"),
    (["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--phase", "decode", "--context", "999999"], "exceeds"),
    (["predict", "--model", "llama-3.1-405b", "--hardware", "h100-sxm", "--phase", "decode"], "does not fit"),
    (["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--phase", "decode", "--offload", "kv=disk"], "--offload kv=disk"),
    (["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--phase", "fly"], "invalid choice"),
])
def test_bad_input_exit_2_one_line(capsys, argv, msg):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv,line", [
    (["--phase", "decode", "--tp", "3"],
     "roofplan: error: --tp 3: does not divide llama-3.1-8b's 32 attention heads / 8 KV heads; use a divisor"),
    (["--phase", "train", "--seq", "128", "--batch", "8", "--micro-batch", "3"],
     "roofplan: error: --micro-batch 3: does not divide batch 8; use a divisor of batch"),
])
def test_field_error_spelled_as_flag(capsys, argv, line):
    """The library names the field; the CLI prints it as the flag that sets it, on one line."""
    code, out, err = run(capsys, "predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", *argv)
    assert code == 2 and out == "" and err == line + "\n"


def test_library_error_names_the_field():
    from simulator.core.models import load_model
    from simulator.core.workload import Job, validate_job
    with pytest.raises(FieldError) as e:
        validate_job(Job("decode", tp=3), load_model("llama-3.1-8b"))
    assert e.value.field == "tp" and e.value.value == 3
    assert str(e.value).startswith("tp = 3: does not divide") and "--" not in str(e.value)
    with pytest.raises(FieldError) as e:
        validate_job(Job("train", seq=128, batch=8, micro_batch=3), load_model("llama-3.1-8b"))
    assert e.value.field == "micro_batch" and str(e.value).startswith("micro_batch = 3: does not divide batch 8")


def test_flag_table():
    assert flag_of("micro_batch") == "--micro-batch" and flag_of("kv_dtype") == "--kv-dtype"
    assert flag_of("gpu_mem_bytes") == "--gpu-memory" and flag_of("max_gpus") == "--max-per-type"
    e = FieldError("offload_weights", "disk", "unknown", "use gpu or cpu")
    assert field_error_message(e) == "--offload weights=disk: unknown; use gpu or cpu"
    # a command without the flag (the value came from a file) keeps the library's spelling
    assert field_error_message(FieldError("tp", 3, "bad"), options={"--model", "--gpus"}) == "tp = 3: bad"
    assert field_error_message(FieldError("tp", 3, "bad"), options={"--tp"}) == "--tp 3: bad"


def test_whatif_flagship(capsys):
    code, out, _ = run(capsys, "whatif", "--model", "llama-3.1-70b", "--hardware", "h100-sxm,a100-sxm-80gb",
                       "--gpus", "1,2,4,8", "--batch", "16", "--context", "2048", "--format", "json")
    d = json.loads(out)["results"]
    assert code == 0 and len(d) == 8
    one_h100 = d[0]
    assert one_h100["gpus"] == 1 and not one_h100["fits"]          # 141 GB of weights
    h100 = {r["gpus"]: r for r in d if r["hardware"] == "h100-sxm"}
    a100 = {r["gpus"]: r for r in d if r["hardware"] == "a100-sxm-80gb"}
    assert h100[8]["time_s"] < h100[2]["time_s"]
    assert h100[4]["time_s"] < a100[4]["time_s"]                   # more HBM bandwidth


def test_hw_and_models_listing(capsys):
    code, out, _ = run(capsys, "hw", "show", "h100-sxm", "--format", "json")
    assert code == 0 and json.loads(out)["sm_count"] == 132
    code, out, _ = run(capsys, "models", "--format", "json")
    assert code == 0 and any(m["name"] == "deepseek-v3" for m in json.loads(out))


def test_predict_csv_is_the_json_result_as_one_record(capsys):
    """--format csv carries the step time and memory as raw SI numbers (one record), the same as JSON."""
    import csv
    import io
    import json
    argv = ["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--phase", "decode", "--batch", "16",
            "--context", "512"]
    assert main(argv + ["--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert main(argv + ["--format", "csv"]) == 0
    (row,) = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert float(row["time_s"]) == d["time_s"] and float(row["peak_memory_bytes"]) == d["peak_memory_bytes"]
    assert float(row["memory_bytes.kv_cache"]) == d["memory_bytes"]["kv_cache"] and row["bound"] == d["bound"]


@pytest.mark.parametrize("argv, msg", [
    (["--hardware", "100000xh100-sxm", "--phase", "decode"], "--hardware 100000xh100-sxm: a node of bare GPUs holds 1 to 8"),
    (["--hardware", "h100-sxm", "--phase", "decode", "--tp", "8", "--pp", "4"], "n_gpus = 32: the plan needs 32 GPUs"),
])
def test_a_bare_gpu_is_one_node_of_at_most_eight(argv, msg, capsys):
    assert main(["predict", "--model", "llama-3.1-8b", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, msg", [
    (["--phase", "decode", "--seq", "512"], "--seq 512: a decode step has no prompt"),
    (["--phase", "prefill", "--seq", "512", "--context", "100"], "--context 100: applies to decode"),
    (["--phase", "train", "--seq", "512", "--offload", "weights=cpu"], "--offload weights=cpu: weight streaming"),
])
def test_flags_a_phase_does_not_use_are_refused(argv, msg, capsys):
    assert main(["predict", "--model", "llama-3.2-1b", "--hardware", "h100-sxm", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_json_output_is_strict_json(capsys):
    """JSON has no NaN or Infinity: missing numbers are null (validate's groups without memory)."""
    import json
    from simulator.core.paths import REPO_ROOT
    e2e = REPO_ROOT.parent / "shared" / "measurements" / "h100-sxm" / "end_to_end.yaml"
    if not e2e.is_file():
        pytest.skip("shared measurements not beside the repo")
    assert main(["validate", "--end-to-end", str(e2e), "--format", "json"]) == 0

    def refuse(name):
        raise ValueError(f"bare {name} in JSON output")
    d = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert d["groups"]["offload"]["memory_mape"] is None


def test_missing_specs_folder_is_one_line(monkeypatch, capsys, tmp_path):
    """An installed copy without hardware_specs/ (a plain `pip install .`) says where it looked,
    instead of listing no hardware."""
    monkeypatch.setenv("ROOFPLAN_HW_DIR", str(tmp_path / "nowhere"))
    assert main(["hw", "list"]) == 2
    err = capsys.readouterr().err
    assert "nowhere not found" in err and "ROOFPLAN_HW_DIR" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["plan", "fleet", "--model", "llama-3.1-8b", "--workload", "chat", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "40",
     "--rate", "nan"],
    ["plan", "offload", "--model", "opt-30b", "--hardware", "flexgen-t4", "--phase", "decode", "--gpu-memory", "inf"],
])
def test_non_finite_numbers_are_refused_by_the_parser(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "must be a finite number" in err and err.count("\n") == 1


def test_a_bad_plot_name_is_refused_before_any_work(capsys, monkeypatch):
    """--plot f.txt was refused only after the fleet ILP had been solved (22 s): now the parser
    refuses it and the planner never runs."""
    import planners.fleet
    monkeypatch.setattr(planners.fleet, "plan_fleet", lambda *a, **k: pytest.fail("the planner ran"))
    assert main(["plan", "fleet", "--model", "llama-3.1-8b", "--workload", "chat", "--slo-ttft-ms", "1000",
                 "--slo-tpot-ms", "40", "--plot", "f.txt"]) == 2
    assert "--plot: f.txt: use a .png, .svg or .pdf name" in capsys.readouterr().err


@pytest.mark.parametrize("extra, says", [
    (["--recompute", "full"], "--recompute full: applies to phase train only (phase is decode)"),
    (["--micro-batch", "2"], "--micro-batch 2: applies to phase train only (phase is decode)"),
    (["--zero", "1"], "--zero 1: applies to phase train only (phase is decode)"),
    (["--no-overlap"], "--no-overlap: applies to weights streamed from host memory only; add --offload weights=cpu or drop it"),
    (["--host-memory", "pageable"], "--host-memory pageable: applies to weights streamed from host memory only; add "
                                    "--offload weights=cpu or drop it"),
])
def test_flags_a_decode_would_ignore_are_refused(extra, says, capsys):
    """A flag the phase or plan ignores would leave the user believing it was applied."""
    from simulator.cli.main import main
    argv = ["predict", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--phase", "decode", "--batch", "4",
            "--context", "512", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"roofplan: error: {says}\n"
    # with an offload, the transfer flags apply and are taken
    if "--offload" in says:
        assert main(argv + ["--offload", "weights=cpu", "--format", "json"]) == 0
