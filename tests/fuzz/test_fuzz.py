"""Fuzzing in CI (issue 13): every parser and the CLI on a few hundred generated cases, and our
corpus of hand-written malformed inputs through the CLI, each one line on stderr and exit 2.

The strategies and the property are in fuzz_targets.py; benchmarks/fuzz.py runs the same targets
10,000 cases each. Cases here are derandomized, so a failure reproduces run after run.
"""
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_targets as ft
from simulator.cli.main import main

CORPUS = Path(__file__).parent / "corpus"
TARGETS = {t.name: t for t in ft.all_targets()}
EXAMPLES = {"cli": 60, "cli files": 30}      # examples per target; 20 for the rest: ~440 cases in all


@pytest.mark.parametrize("name", list(TARGETS))
def test_parser_refuses_in_one_line_or_returns_a_finite_object(name):
    target = TARGETS[name]

    @settings(max_examples=EXAMPLES.get(name, 20), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        case = data.draw(target.strategy, label="case")
        out = target.run(case)
        assert not out.failed, f"{out.kind} ({out.where}) on {target.describe(case)}:\n{out.detail}"
    run()


def test_a_traceback_a_long_message_and_an_inf_are_failures():
    def boom():
        raise KeyError("x")
    assert ft.run_parser(boom).kind == ft.TRACEBACK
    from simulator.core.errors import RoofplanError

    def wordy():
        raise RoofplanError("x" * 600)
    assert ft.run_parser(wordy).kind == ft.BAD_MESSAGE
    assert ft.run_parser(lambda: {"a": [1.0, float("inf")]}).kind == ft.BAD_OBJECT
    assert ft.run_parser(lambda: {"a": [1.0, 2]}).kind == ft.ACCEPTED


def test_mutations_report_what_changed():
    doc = {"a": 1, "b": {"c": [1, 2]}}
    assert ft.diff(doc, {"a": 1, "b": {"c": [1, 3]}, "d": 0}) == ["b.c[1]: 2 -> 3", "add 'd' = 0"]


# --------------------------------------------------------------------------------------------
# the corpus: (file in corpus/, where it goes, argv, what the one line says). A file with a
# destination is installed in a copy of hardware_specs/ (ROOFPLAN_HW_DIR) under that name; "{file}"
# in argv is the file's path otherwise.

SHOW_GPU = ["hw", "show", "fuzz-gpu"]
PREDICT = ["predict", "--model", "llama-3.2-1b", "--hardware", "h100-sxm", "--phase", "decode", "--context", "128",
           "--format", "json"]

CASES = [
    ("gpu-unknown-field.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "unknown field 'memory_GB' (did you mean: memory_GiB"),
    ("gpu-nan-bandwidth.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "field 'memory_bandwidth_GBps'"),
    ("gpu-negative-memory.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "field 'memory_GiB' must be > 0 (got -80"),
    ("gpu-string-sm-count.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "field 'sm_count' must be a valid integer (got '132')"),
    ("gpu-duplicate-key.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "key 'sm_count' given twice"),
    ("gpu-overflow-memory.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "field 'memory_GiB' is 1e+300, more than a float holds"),
    ("gpu-impossible-date.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "'2024-02-30' is not a valid timestamp"),
    ("gpu-tagged-int.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "'one-hundred' is not a valid int"),
    ("gpu-bool-tag.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "'maybe' is not a valid bool"),
    ("gpu-python-tag.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "could not determine a constructor"),
    ("gpu-list-root.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "expected a YAML mapping of fields, got list"),
    ("gpu-empty.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "fuzz-gpu.yaml"),
    ("gpu-tab-indent.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "malformed YAML"),
    ("gpu-newline-in-key.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "unknown field 'sm\\ncount' (did you mean: sm_count"),
    ("gpu-long-key.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "unknown field 'kkkkkkkkk"),
    ("gpu-two-documents.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "but found another document"),
    ("gpu-zero-peaks.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "field 'peak_dense_TFLOPS'"),
    ("gpu-name-mismatch.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "field 'name' is 'h100-sxm' but the file is named fuzz-gpu.yaml"),
    ("gpu-alias-bomb.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "an alias bomb?"),
    ("gpu-deep-nesting.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "malformed YAML (exceeded maximum nesting depth)"),
    ("gpu-undefined-alias.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "found undefined alias"),
    ("gpu-latin1.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "not UTF-8 text"),
    ("gpu-utf16.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "not UTF-8 text (byte 0)"),
    ("gpu-binary.yaml", "gpus/fuzz-gpu.yaml", SHOW_GPU, "not UTF-8 text"),
    ("gpu-unknown-field.yaml", "gpus/fuzz-gpu.yaml",
     ["predict", "--model", "llama-3.2-1b", "--hardware", "fuzz-gpu", "--phase", "decode"], "unknown field 'memory_GB'"),
    ("link-unknown-type.yaml", "links/fuzz-link.yaml", ["hw", "show", "fuzz-link"], "field 'type' must be 'pcie'"),
    ("system-missing-gpu.yaml", "systems/fuzz-system.yaml", ["hw", "show", "fuzz-system"], "field 'gpu' is missing"),
    ("system-unknown-gpu.yaml", "systems/fuzz-system.yaml", ["hw", "show", "fuzz-system"],
     "unknown gpu 'h100-sxmm' (did you mean: h100-sxm"),
    ("system-float-count.yaml", "systems/fuzz-system.yaml", ["hw", "show", "fuzz-system"], "field 'gpu_count'"),
    ("cpu-zero-cores.yaml", "cpus/fuzz-cpu.yaml", ["hw", "show", "fuzz-cpu"], "field 'cores' must be > 0 (got 0)"),
    ("nvme-string-capacity.yaml", "nvme/fuzz-nvme.yaml", ["hw", "show", "fuzz-nvme"], "field 'capacity_GB'"),
    ("kernels-decreasing-knots.yaml", None, PREDICT + ["--kernel-profile", "{file}"], "'knots_s' must increase"),
    ("kernels-efficiency-above-one.yaml", None, PREDICT + ["--kernel-profile", "{file}"],
     "field 'elementwise.efficiency[0]' must be <= 1"),
    ("kernels-no-bf16.yaml", None, PREDICT + ["--kernel-profile", "{file}"], "needs bf16"),
    ("kernels-overflow-copy.yaml", None, PREDICT + ["--kernel-profile", "{file}"],
     "field 'copy.h2d_pageable_GBps' is 1e+305, more than a float holds"),
    ("executor-op-class-typo.yaml", None, PREDICT + ["--executor", "{file}"], "op class 'gemn' (did you mean: gemm"),
    ("executor-field-typo.yaml", None, PREDICT + ["--executor", "{file}"],
     "unknown field 'host_overhead_per_kernal_us' (did you mean: host_overhead_per_kernel_us"),
    ("executor-workspace-overflow.yaml", None, PREDICT + ["--executor", "{file}"], "field 'workspace_MiB' is 1e+305"),
    ("executor-yes-for-bool.yaml", None, PREDICT + ["--executor", "{file}"], "field 'fused_qkv' must be a valid boolean"),
    ("model-latin1.json", None, PREDICT[:1] + ["--model", "{file}"] + PREDICT[3:], "not UTF-8 text"),
    ("model-nan.json", None, PREDICT[:1] + ["--model", "{file}"] + PREDICT[3:], "NaN is not a number"),
    ("model-huge-number.json", None, PREDICT[:1] + ["--model", "{file}"] + PREDICT[3:], "field 'hidden_size'"),
    ("model-bool-heads.json", None, PREDICT[:1] + ["--model", "{file}"] + PREDICT[3:], "field 'num_attention_heads'"),
    ("model-kv-heads-do-not-divide.json", None, PREDICT[:1] + ["--model", "{file}"] + PREDICT[3:],
     "field 'num_key_value_heads' is 3; it must divide the 4 attention heads"),
    ("model-truncated.json", None, PREDICT[:1] + ["--model", "{file}"] + PREDICT[3:], "malformed JSON"),
    ("model-deep-nesting.json", None, PREDICT[:1] + ["--model", "{file}"] + PREDICT[3:], "nested too deeply"),
    ("model-list-root.json", None, PREDICT[:1] + ["--model", "{file}"] + PREDICT[3:], "expected a JSON object"),
    ("model-empty.json", None, PREDICT[:1] + ["--model", "{file}"] + PREDICT[3:], "malformed JSON"),
    ("model-unknown-type.json", None, PREDICT[:1] + ["--model", "{file}"] + PREDICT[3:], "model_type 'mamba' is not supported"),
    ("grid-binary.yaml", None, ["sweep", "{file}", "-o", "{tmp}/out.csv", "--workers", "1", "--quiet"], "not UTF-8 text"),
    ("grid-empty-list.yaml", None, ["sweep", "{file}", "-o", "{tmp}/out.csv", "--workers", "1", "--quiet"], "field 'tp'"),
    ("grid-unknown-field.yaml", None, ["sweep", "{file}", "-o", "{tmp}/out.csv", "--workers", "1", "--quiet"],
     "unknown field 'batchsize' (did you mean: batch"),
    ("plan-wrong-schema.json", None, ["validate", "--plan", "{file}", "--result", "{file}"], "not roofplan.offload-plan/1"),
    ("end-to-end-list.yaml", None, ["validate", "--end-to-end", "{file}"], "end-to-end-list.yaml"),
    ("workload-shares-mismatch.yaml", None,
     ["plan", "fleet", "--model", "llama-3.1-8b", "--workload", "{file}", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "100"],
     "one more edge than shares"),
    # no file: hostile flag values
    (None, None, ["predict", "--model", "llama-3.2-1b", "--hardware", "h100-sxm", "--phase", "decode", "--batch", "nan"],
     "argument --batch: invalid int value: 'nan'"),
    (None, None, ["predict", "--model", "llama\n3", "--hardware", "h100-sxm", "--phase", "decode"], "unknown model 'llama\\n3'"),
    (None, None, ["predict", "--model", "l" * 5000, "--hardware", "h100-sxm", "--phase", "decode"], "not a usable file name"),
    (None, None, ["plan", "offload", "--model", "opt-30b", "--hardware", "flexgen-t4", "--phase", "decode", "--gpu-memory",
                  "1e300"], "--gpu-memory 1e+300 GiB is more bytes than a float holds"),
    (None, None, ["plan", "offload", "--model", "opt-30b", "--hardware", "flexgen-t4", "--phase", "decode", "--batch",
                  str(2**70)], "--batch 1180591620717411303424: must be 1 to 16,777,216 sequences"),
    (None, None, ["plan", "parallel", "--model", "llama-3.1-8b", "--hardware", "dgx-a100", "--gpus", "8", "--global-batch",
                  str(2**70), "--seq", "2048"], "--global-batch 1180591620717411303424: is more than 16,777,216"),
    (None, None, ["hw"], "roofplan hw: name the action: list, show, check"),
    (None, None, [], "roofplan: name the command"),
]


@pytest.fixture(scope="module")
def hw_copy(tmp_path_factory):
    dst = tmp_path_factory.mktemp("hw") / "hardware_specs"
    shutil.copytree(ft.HW, dst)
    return dst


@pytest.mark.parametrize("file, install, argv, says", CASES,
                         ids=[c[0] or " ".join(c[2])[:40] for c in CASES])
def test_corpus_is_one_line_and_exit_2(file, install, argv, says, hw_copy, tmp_path, monkeypatch, capsys):
    path = None
    if file and install:
        path = hw_copy / install
        shutil.copy(CORPUS / file, path)
        monkeypatch.setenv("ROOFPLAN_HW_DIR", str(hw_copy))
    elif file:
        path = tmp_path / file
        shutil.copy(CORPUS / file, path)
    try:
        rc = main([a.replace("{file}", str(path)).replace("{tmp}", str(tmp_path)) for a in argv])
    finally:
        if install:
            path.unlink()
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("roofplan: error: ") and err.count("\n") == 1, err
    assert len(err) < ft.MAX_MESSAGE + 20, err
    assert says in err, err


def test_the_corpus_is_all_used():
    assert sorted({c[0] for c in CASES if c[0]}) == sorted(p.name for p in CORPUS.iterdir())
