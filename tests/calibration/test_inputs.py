"""Bad measurement inputs through the CLI: each is exit 2 with one line on stderr that names the
file and the field (or event, or line), and no profile is written (issue 13).

Traces are tiny synthetic ones built in tmp_path (calib_helpers.synthetic_events); the real
shared files are read only where a real file must still load."""
import copy
import gzip
import json

import pytest

from simulator.cli.main import main

from calib_helpers import synthetic_events, write_trace


def run_bad(argv, capsys, *names):
    """Run the CLI, expect exit 2 and one stderr line containing every one of `names`."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("roofplan: error: ") and err.count("\n") == 1, err
    for n in names:
        assert str(n) in err, (n, err)
    return err


def calibrate_trace(trace, out):
    return ["calibrate", "--trace", str(trace), "--hardware", "h100-sxm", "-o", str(out)]


def validate_trace(trace, model="llama-3.2-1b", phase="prefill", *extra):
    return [str(a) for a in ("validate", "--trace", trace, "--model", model, "--hardware", "h100-sxm", "--phase", phase,
                             *extra)]


def _first_kernel(d) -> int:
    return next(i for i, e in enumerate(d["traceEvents"]) if e.get("cat") == "kernel")


# --------------------------------------------------------------------------------------------
# traces: events with no time, a negative time, or no number at all


@pytest.mark.parametrize("edit, says", [
    (lambda e: e.pop("dur"), "has no 'dur'"),
    (lambda e: e.update(dur=-301.0), "negative duration (dur -301 us)"),
    (lambda e: e.update(dur="12"), "not a finite number (got '12')"),
    (lambda e: e.update(dur=float("nan")), "not a finite number (got nan)"),
    (lambda e: e.pop("ts"), "has no numeric 'ts'"),
])
def test_kernel_without_a_sound_duration_is_refused(tmp_path, capsys, edit, says):
    d = synthetic_events()
    i = _first_kernel(d)
    edit(d["traceEvents"][i])
    t = write_trace(tmp_path / "t.json", d, gz=False)
    out = tmp_path / "prof.yaml"
    run_bad(calibrate_trace(t, out), capsys, t.name, f"event {i} 'nvjet_sm90", says, "export_chrome_trace")
    assert not out.exists()
    run_bad(validate_trace(t), capsys, t.name, f"event {i} ", says)


def test_cpu_op_with_negative_duration_is_refused(tmp_path, capsys):
    d = synthetic_events()
    i = next(i for i, e in enumerate(d["traceEvents"]) if e.get("name") == "aten::linear")
    d["traceEvents"][i]["dur"] = -5
    t = write_trace(tmp_path / "t.json.gz", d)
    out = tmp_path / "prof.yaml"
    run_bad(calibrate_trace(t, out), capsys, t.name, f"event {i} 'aten::linear' (cpu_op)", "negative duration")
    assert not out.exists()


def test_events_the_reader_does_not_use_need_no_duration(tmp_path):
    """Instant events, flow ends and categories roofplan does not read (python_function, Trace)
    carry no duration of interest: they are skipped, not refused."""
    from simulator.calibration.trace import load_trace
    d = synthetic_events()
    d["traceEvents"] += [{"ph": "i", "cat": "cpu_instant_event", "name": "mark", "ts": 5},
                         {"ph": "X", "cat": "python_function", "name": "f", "ts": 5},
                         {"ph": "X", "cat": "Trace", "name": "PyTorch Profiler", "ts": 5, "dur": -1}]
    assert len(load_trace(write_trace(tmp_path / "t.json.gz", d)).kernels) == 14


@pytest.mark.parametrize("raw, says", [
    (b'{"traceEvents": [{"ph": "X", "cat": "kern', "not valid JSON"),
    (b"", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"[1, 2, 3]", "no events"),
    (b'{"traceEvents": {"a": 1}}', "no 'traceEvents' list"),
    (b'"a string"', "no 'traceEvents' list"),
])
def test_truncated_or_garbage_trace_is_one_line(tmp_path, capsys, raw, says):
    t = tmp_path / "bad.json"
    t.write_bytes(raw)
    out = tmp_path / "prof.yaml"
    run_bad(calibrate_trace(t, out), capsys, "bad.json", says)
    assert not out.exists()
    gz = tmp_path / "bad.json.gz"
    gz.write_bytes(gzip.compress(raw)[:-4] if raw else b"\x1f\x8b")
    run_bad(calibrate_trace(gz, out), capsys, "bad.json.gz")
    assert not out.exists()


# a value of another type in every place a field can be
GARBAGE = ("x", None, True, [[1, "a"]], float("inf"))


def test_garbage_fields_are_never_a_traceback(tmp_path):
    """Every field of the linear, mm and kernel events replaced by values of other types: load_trace,
    layer_structure and check_job either read the trace or say one line, never raise anything but
    RoofplanError (deterministic sweep)."""
    from simulator.calibration.trace import load_trace
    from simulator.calibration.trace_fit import layer_structure
    from simulator.calibration.validate import check_job
    from simulator.core.errors import RoofplanError
    from simulator.core.models import load_model
    from simulator.core.workload import Job
    m, job = load_model("llama-3.2-1b"), Job("prefill", batch=8, seq=512)
    base = synthetic_events()
    places = [(i, k) for i, e in enumerate(base["traceEvents"]) for k in e if i in (1, 2, 3)]
    places += [(i, ("args", k)) for i, e in enumerate(base["traceEvents"][1:4], 1) for k in e.get("args", {})]
    for n, (i, key) in enumerate(places):
        for value in GARBAGE:
            d = copy.deepcopy(base)
            e = d["traceEvents"][i]
            if isinstance(key, tuple):
                e["args"][key[1]] = value
            else:
                e[key] = value
            p = tmp_path / f"g{n}.json"
            p.write_text(json.dumps(d))
            try:
                t = load_trace(p)
                for fn, fn_args in ((layer_structure, (t,)), (check_job, (t, t.segments["name"].iloc[-1], m, job))):
                    try:
                        fn(*fn_args)
                    except RoofplanError as err:
                        assert "\n" not in str(err)
            except RoofplanError as err:
                assert "\n" not in str(err) and p.name in str(err)


# --------------------------------------------------------------------------------------------
# traces of another model or phase


def forward_events(hidden=1024, ffn=4096, vocab=32000, layers=2, batch=2, seq=16, backward=False):
    """One profiler step of a small unfused Llama-like forward (q, k, v, o, gate, up, down per
    layer, then the LM head), each aten::linear launching one GEMM kernel; `backward` adds an
    autograd node after it. Shapes as record_shapes writes them."""
    ev, t, ext = [], 1000.0, 1
    linears = [(hidden, hidden)] * 4 + [(ffn, hidden)] * 2 + [(hidden, ffn)]
    calls = [w for _ in range(layers) for w in linears] + [(vocab, hidden)]
    for n, k in calls:
        s = 1 if (n, k) == (vocab, hidden) else seq
        ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::linear", "pid": 1, "tid": 1, "ts": t, "dur": 8,
                   "args": {"External id": ext, "Input Dims": [[batch, s, k], [n, k], []],
                            "Input type": ["c10::BFloat16", "c10::BFloat16", ""]}})
        ev.append({"ph": "X", "cat": "kernel", "name": "nvjet_sm90_tst_128x128", "pid": 0, "tid": 7, "ts": t + 5,
                   "dur": 4.0, "args": {"External id": ext, "correlation": ext, "stream": 7}})
        t, ext = t + 10, ext + 1
    if backward:
        ev.append({"ph": "X", "cat": "cpu_op", "name": "autograd::engine::evaluate_function: MmBackward0", "pid": 1,
                   "tid": 1, "ts": t, "dur": 8, "args": {"External id": ext}})
        ev.append({"ph": "X", "cat": "kernel", "name": "nvjet_sm90_tst_128x128", "pid": 0, "tid": 7, "ts": t + 5,
                   "dur": 4.0, "args": {"External id": ext, "correlation": ext, "stream": 7}})
        t += 10
    ev.insert(0, {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#0", "pid": 1, "tid": 1, "ts": 990,
                  "dur": t - 990})
    return {"traceEvents": ev, "deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3"}]}


@pytest.fixture
def tiny_model(tmp_path):
    """An HF config with the shapes of forward_events()."""
    cfg = {"model_type": "llama", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 2,
           "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 4096,
           "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
    p = tmp_path / "tiny" / "config.json"
    p.parent.mkdir()
    p.write_text(json.dumps(cfg))
    return p


def test_a_trace_of_its_own_model_and_phase_is_compared(tmp_path, tiny_model, capsys):
    t = write_trace(tmp_path / "fwd.json.gz", forward_events())
    assert main(validate_trace(t, tiny_model, "prefill", "--batch", "2", "--seq", "16", "--format", "json")) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["summary"]["segment"] == "ProfilerStep#0" and cap.err == ""
    tb = write_trace(tmp_path / "train.json.gz", forward_events(backward=True))
    assert main(validate_trace(tb, tiny_model, "train", "--batch", "2", "--seq", "16", "--format", "json")) == 0


@pytest.mark.parametrize("trace_kw, model, phase, says", [
    # the case: a training trace validated as decode of another model
    (dict(hidden=2048, ffn=8192, vocab=128256, layers=16, backward=True), "llama-3.1-8b", "decode",
     "looks like a training step (1 backward ops) of a model with hidden 2048, ffn 8192, vocab 128256, 16 layers "
     "(llama-3.2-1b), not a decode step of llama-3.1-8b (hidden 4096, ffn 14336, vocab 128256, 32 layers); "
     "pass --model llama-3.2-1b --phase train"),
    (dict(backward=True), "llama-3.1-8b", "decode", "(no model roofplan knows), not a decode step of llama-3.1-8b "
                                                    "(hidden 4096, ffn 14336, vocab 128256, 32 layers); "
                                                    "pass the --model the trace recorded, --phase train"),
    (dict(backward=True), "TINY", "prefill", "looks like a training step (1 backward ops), not a prefill step; "
                                             "pass --phase train"),
    (dict(), "TINY", "train", "looks like a prefill (16 tokens per sequence, no backward ops), not a train step; "
                              "pass --phase prefill"),
    (dict(), "TINY", "decode", "looks like a prefill (16 tokens per sequence, no backward ops), not a decode step"),
    (dict(seq=1), "TINY", "prefill", "looks like a decode step (1 token per sequence), not a prefill step; "
                                     "pass --phase decode"),
    (dict(layers=3), "TINY", "prefill", "looks like a model with hidden 1024, ffn 4096, vocab 32000, 3 layers "
                                        "(no model roofplan knows), not tiny (hidden 1024, ffn 4096, vocab 32000, "
                                        "2 layers); pass the --model the trace recorded"),
    (dict(vocab=32768), "TINY", "prefill", "vocab 32768"),
    (dict(ffn=2048), "TINY", "prefill", "ffn 2048"),
    (dict(hidden=2048, ffn=8192, vocab=128256, layers=16), "llama-3.1-8b", "prefill",
     "(llama-3.2-1b), not llama-3.1-8b (hidden 4096, ffn 14336, vocab 128256, 32 layers); pass --model llama-3.2-1b"),
])
def test_a_trace_of_another_model_or_phase_is_refused(tmp_path, tiny_model, capsys, trace_kw, model, phase, says):
    t = write_trace(tmp_path / "other.json.gz", forward_events(**trace_kw))
    model = tiny_model if model == "TINY" else model
    sizes = ["--batch", "2"] + (["--seq", "16"] if phase != "decode" else ["--context", "16"])
    run_bad(validate_trace(t, model, phase, *sizes), capsys, "other.json.gz", "(segment ProfilerStep#0)", says)


def test_a_trace_without_shapes_warns_that_the_model_is_unchecked(tmp_path, tiny_model, capsys):
    d = forward_events()
    for e in d["traceEvents"]:
        e.get("args", {}).pop("Input Dims", None)
    t = write_trace(tmp_path / "noshapes.json.gz", d)
    assert main(validate_trace(t, "llama-3.1-8b", "prefill", "--seq", "16", "--format", "json")) == 0
    err = capsys.readouterr().err
    assert err.startswith("roofplan: warning: trace ") and "cannot check that it is of llama-3.1-8b" in err
    assert "record_shapes=True" in err and err.count("\n") == 1


# --------------------------------------------------------------------------------------------
# microbenchmark files


MB_LINES = [
    {"kind": "env", "gpu": "NVIDIA H100 80GB HBM3", "sms": 132},
    {"kind": "gemm", "M": 4096, "N": 4096, "K": 4096, "dtype": "bf16", "tag": "square", "time_s": 0.000195,
     "tflops": 704.8},
    {"kind": "copy", "src": "cpu_pinned", "dst": "gpu", "bytes": 1048576, "time_s": 2.86e-05, "GBps": 36.65},
    {"kind": "cpu", "op": "adamw_foreach", "params": 1000000, "time_s": 0.01, "params_per_s": 1e8},
]


def write_mb(path, lines=MB_LINES, raw=None):
    path.write_text("".join((raw.get(i) if raw and i in raw else json.dumps(r)) + "\n" for i, r in enumerate(lines)))
    return path


def calibrate_mb(mb, out, hardware="h100-sxm"):
    return ["calibrate", "--microbench", str(mb), "--hardware", hardware, "-o", str(out)]


def test_microbench_of_another_gpu_is_refused(tmp_path, capsys):
    mb, out = write_mb(tmp_path / "mb.jsonl"), tmp_path / "k.yaml"
    run_bad(calibrate_mb(mb, out, "a100-sxm-80gb"), capsys, "--hardware a100-sxm-80gb: ",
            "mb.jsonl was recorded on NVIDIA H100 80GB HBM3; use h100-sxm")
    assert not out.exists()
    other = write_mb(tmp_path / "b200.jsonl", [{**MB_LINES[0], "gpu": "NVIDIA B299"}] + MB_LINES[1:])
    run_bad(calibrate_mb(other, out), capsys, "b200.jsonl was recorded on NVIDIA B299; use the hardware it was recorded on")
    assert not out.exists()


@pytest.mark.parametrize("line, record, says", [
    (2, {k: v for k, v in MB_LINES[1].items() if k != "time_s"}, "field 'time_s' is missing"),
    (2, {**MB_LINES[1], "time_s": float("nan")}, "field 'time_s' is nan"),
    (2, {**MB_LINES[1], "tflops": float("inf")}, "field 'tflops' is inf"),
    (2, {**MB_LINES[1], "time_s": -0.001}, "time_s"),
    (2, {**MB_LINES[1], "M": 4096.5}, "'M'"),
    (2, {**MB_LINES[1], "dtype": "bf61"}, "names dtype 'bf61' (did you mean: bf16"),
    (2, {**MB_LINES[1], "kind": "gem"}, "unknown kind 'gem' (did you mean: gemm"),
    (3, {**MB_LINES[2], "src": "cpu_pined"}, "'src'"),
    (4, {k: v for k, v in MB_LINES[3].items() if k != "params_per_s"}, "field 'params_per_s' is missing"),
    (2, ["gemm"], "needs a 'kind' field"),
])
def test_bad_microbench_record_names_its_line(tmp_path, capsys, line, record, says):
    lines = list(MB_LINES)
    lines[line - 1] = record
    mb, out = write_mb(tmp_path / "mb.jsonl", lines), tmp_path / "k.yaml"
    run_bad(calibrate_mb(mb, out), capsys, f"mb.jsonl:{line}: ", says)
    assert not out.exists()


def test_microbench_nan_as_json_constant(tmp_path, capsys):
    """json.dumps writes NaN / Infinity bare; they are parsed, then refused as values."""
    mb = write_mb(tmp_path / "mb.jsonl", raw={1: json.dumps(MB_LINES[1]).replace("0.000195", "NaN")})
    run_bad(calibrate_mb(mb, tmp_path / "k.yaml"), capsys, "mb.jsonl:2: field 'time_s' is nan")


@pytest.mark.parametrize("flag", ["--microbench", "--end-to-end"])
def test_non_utf8_measurement_files_are_one_line(tmp_path, capsys, flag):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes('{"kind": "env", "gpu": "caf\u00e9"}\n'.encode("latin-1"))
    out = tmp_path / "p.yaml"
    if flag == "--microbench":
        argv = calibrate_mb(bad, out)
    else:
        argv = calibrate_trace(write_trace(tmp_path / "t.json.gz", synthetic_events()), out) + [flag, str(bad)]
    run_bad(argv, capsys, "latin1.txt: not UTF-8 text")
    assert not out.exists()
    if flag == "--end-to-end":
        run_bad(["validate", "--end-to-end", str(bad)], capsys, "latin1.txt: not UTF-8 text")


def test_nothing_is_written_when_a_later_input_is_bad(tmp_path, capsys):
    """--microbench with --trace: a bad trace leaves neither the kernel profile nor the executor one."""
    mb = write_mb(tmp_path / "mb.jsonl")
    d = synthetic_events()
    d["traceEvents"][_first_kernel(d)]["dur"] = -1
    t = write_trace(tmp_path / "t.json.gz", d)
    k, out = tmp_path / "k.yaml", tmp_path / "e.yaml"
    run_bad(["calibrate", "--microbench", mb, "--trace", t, "--kernels-out", k, "--hardware", "h100-sxm", "-o", out],
            capsys, "t.json.gz", "negative duration")
    assert not k.exists() and not out.exists()


# --------------------------------------------------------------------------------------------
# --step-time


@pytest.mark.parametrize("value, says", [("nan", "must be a finite number"), ("inf", "must be a finite number"),
                                          ("-inf", "must be a finite number"), ("-0.1", "must be > 0"),
                                          ("0", "must be > 0")])
def test_step_time_must_be_a_positive_number(tmp_path, capsys, value, says):
    t = write_trace(tmp_path / "t.json.gz", synthetic_events())
    out = tmp_path / "e.yaml"
    run_bad(calibrate_trace(t, out) + [f"--step-time={value}"], capsys, "--step-time", says)
    assert not out.exists()


def test_step_time_is_checked_by_the_library_too():
    """A nan reaching fit_executor_profile from Python once became `host_overhead_per_kernel_us: .nan`."""
    from simulator.calibration.trace_fit import fit_executor_profile
    from simulator.core.errors import FieldError
    for v in (float("nan"), float("inf"), -1.0, 0.0):
        with pytest.raises(FieldError, match="step_time_s = .*: must be a finite number of seconds > 0"):
            fit_executor_profile([], None, None, "x", v)


def test_flags_that_need_a_trace_are_refused_without_one(tmp_path, capsys):
    mb, out = write_mb(tmp_path / "mb.jsonl"), tmp_path / "k.yaml"
    run_bad(calibrate_mb(mb, out) + ["--step-time", "0.1"], capsys, "--step-time", "pass it with --trace T")
    run_bad(calibrate_mb(mb, out) + ["--end-to-end", str(mb)], capsys, "--end-to-end", "pass it with --trace T")
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# step-times files (calibrate --step-times)


def _yaml_file(path, d):
    import yaml
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


STEP_TIMES = {
    "hardware": "a100-sxm-80gb", "dtype": "fp16", "source": "test",
    "engines": {"e": {"description": "an engine", "executor": {"fused_qkv": True},
                      "measurements": [{"model": "opt-13b", "tp": 1, "role": "fit",
                                        "prefill": [[32, 19.4], [512, 65.6]], "decode": [[8, 256, 21.5]]}]}}}


def test_the_real_step_times_file_loads():
    from simulator.calibration.step_fit import read_step_times
    from simulator.core.paths import REPO_ROOT
    for engine in ("distserve", "vllm-v0"):
        head, pts = read_step_times(REPO_ROOT / "benchmarks/data/distserve/a100-step-times.yaml", engine)
        assert head["hardware"] == "a100-sxm-80gb" and len(pts) > 30


def _step_times(edit):
    d = copy.deepcopy(STEP_TIMES)
    edit(d)
    return d


def m0(d):
    return d["engines"]["e"]["measurements"][0]


@pytest.mark.parametrize("edit, says", [
    (lambda d: d.update(sorce=d.pop("source")), "unknown field 'sorce' (did you mean: source?)"),
    (lambda d: d["engines"]["e"].update(measurments=d["engines"]["e"].pop("measurements")),
     "st.yaml engines.e: unknown field 'measurments' (did you mean: measurements?)"),
    (lambda d: d.pop("hardware"), "field 'hardware' is missing"),
    (lambda d: m0(d).pop("model"), "engines.e: field 'measurements[0].model' is missing"),
    (lambda d: m0(d).update(tp="1"), "engines.e: field 'measurements[0].tp'"),
    (lambda d: m0(d).update(tp=1.5), "engines.e: field 'measurements[0].tp'"),
    (lambda d: m0(d).update(role="held-out"), "engines.e: field 'measurements[0].role'"),
    (lambda d: m0(d)["prefill"][1].__setitem__(1, float("nan")), "engines.e: field 'measurements[0].prefill[1][1]'"),
    (lambda d: m0(d)["decode"][0].__setitem__(2, float("inf")), "engines.e: field 'measurements[0].decode[0][2]'"),
    (lambda d: m0(d)["decode"].__setitem__(0, [8.5, 256, 21.5]),
     "engines.e.measurements[0].decode: [8.5, 256, 21.5] is not [batch, context, ms > 0]"),
    (lambda d: m0(d)["prefill"].__setitem__(0, [32, -1]), "prefill: [32, -1] is not [tokens, ms > 0]"),
    (lambda d: d.update(dtype="fp61"), "names dtype 'fp61'"),
    (lambda d: d["engines"]["e"]["executor"].update(fused_qvk=True), "fused_qvk"),
])
def test_bad_step_times_file_is_one_line(tmp_path, capsys, edit, says):
    f, out = _yaml_file(tmp_path / "st.yaml", _step_times(edit)), tmp_path / "e.yaml"
    run_bad(["calibrate", "--step-times", f, "--engine", "e", "--hardware", "a100-sxm-80gb", "-o", out],
            capsys, "st.yaml", says)
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# end-to-end case files (validate --end-to-end, calibrate --end-to-end)


CASE = {"id": "decode-b1", "group": "graph", "model": "llama-3.2-1b", "phase": "decode", "batch": 1, "context": 512,
        "executor": "default", "time_s": 0.002, "peak_memory_bytes": 3e9, "source": "test"}


def test_the_real_end_to_end_file_loads(h100_dir):
    from simulator.calibration.accuracy import load_cases
    hw, cases = load_cases(h100_dir / "end_to_end.yaml")
    assert hw == "h100-sxm" and len(cases) == 35


def test_a_good_end_to_end_file_is_compared(tmp_path, capsys):
    f = _yaml_file(tmp_path / "e2e.yaml", {"hardware": "h100-sxm", "measured": "2026-11-22", "cases": [CASE]})
    assert main(["validate", "--end-to-end", str(f), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["all"]["cases"] == 1


@pytest.mark.parametrize("edit, says", [
    (lambda d: d["cases"][0].update(time=d["cases"][0].pop("time_s")), "unknown field 'cases[0].time' (did you mean: time_s"),
    (lambda d: d.update(hardwre=d.pop("hardware")), "unknown field 'hardwre' (did you mean: hardware?)"),
    (lambda d: d["cases"][0].pop("model"), "field 'cases[0].model' is missing"),
    (lambda d: d["cases"][0].update(time_s=float("nan")), "cases[0].time_s"),
    (lambda d: d["cases"][0].update(time_s=-0.1), "cases[0].time_s"),
    (lambda d: d["cases"][0].update(batch=1.5), "cases[0].batch"),
    (lambda d: d["cases"][0].update(batch="16"), "cases[0].batch"),
    (lambda d: d["cases"][0].update(overlap="yes"), "cases[0].overlap"),
    (lambda d: d["cases"][0].update(phase="decoding"), "cases[0].phase"),
    (lambda d: d["cases"][0].update(peak_memory_bytes=float("inf")), "cases[0].peak_memory_bytes"),
    (lambda d: d.update(cases=[]), "cases"),
    (lambda d: d["cases"].append(dict(d["cases"][0])), "case id 'decode-b1' is given twice"),
])
def test_bad_end_to_end_file_is_one_line(tmp_path, capsys, edit, says):
    d = {"hardware": "h100-sxm", "cases": [dict(CASE)]}
    edit(d)
    f = _yaml_file(tmp_path / "e2e.yaml", d)
    run_bad(["validate", "--end-to-end", f], capsys, "e2e.yaml", says)
    # calibrate reads the cases before fitting anything: nothing is written
    t, out = write_trace(tmp_path / "t.json.gz", synthetic_events()), tmp_path / "p.yaml"
    run_bad(calibrate_trace(t, out) + ["--end-to-end", f], capsys, "e2e.yaml", says)
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# hardware_specs/profiles/expected_error.yaml (read by every prediction)


@pytest.mark.parametrize("edit, says", [
    (lambda d: d["levels"]["measured/*"].update(time_mape=float("nan")), "levels.measured/*: field 'time_mape'"),
    (lambda d: d["levels"]["measured/*"].update(time_mape="4%"), "levels.measured/*: field 'time_mape'"),
    (lambda d: d["levels"]["measured/*"].update(cases=0), "levels.measured/*: field 'cases'"),
    (lambda d: d["levels"]["measured/*"].update(time_mpe=d["levels"]["measured/*"].pop("time_mape")),
     "levels.measured/*: unknown field 'time_mpe' (did you mean: time_mape"),
    (lambda d: d["levels"]["measured/*"].pop("source"), "levels.measured/*: field 'source' is missing"),
    (lambda d: d["levels"].update({"mesured/measured": d["levels"]["measured/*"]}),
     "row 'mesured/measured' names kernels level 'mesured' (did you mean: measured"),
    (lambda d: d["levels"].update({"measured/fitted": d["levels"]["measured/*"]}), "framework level 'fitted'"),
    (lambda d: d["levels"].update({"measured/measured/default/serving": d["levels"]["measured/*"]}), "kind 'serving'"),
    (lambda d: d.update(levls=d.pop("levels")), "unknown field 'levls' (did you mean: levels?)"),
])
def test_bad_expected_error_table_is_one_line(tmp_path, capsys, monkeypatch, edit, says):
    import shutil
    import yaml
    from simulator.core.paths import REPO_ROOT
    hw = tmp_path / "hw"
    shutil.copytree(REPO_ROOT / "hardware_specs", hw)
    monkeypatch.setenv("ROOFPLAN_HW_DIR", str(hw))
    table = hw / "profiles" / "expected_error.yaml"
    d = yaml.safe_load(table.read_text())
    edit(d)
    _yaml_file(table, d)
    run_bad(["predict", "--model", "llama-3.2-1b", "--hardware", "h100-sxm", "--phase", "decode", "--context", "512"],
            capsys, "expected_error.yaml", says)
