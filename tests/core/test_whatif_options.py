"""`roofplan whatif` with quantization, prefix caching, chunked prefill and speculative decoding:
every row is `roofplan predict` of the same configuration at that GPU count (one cost model), and
bad flags are one line."""
import json

import pytest

from simulator.cli.main import main

REL = 1e-12


def _json(capsys, *argv):
    assert main([*argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


CASES = [
    # (model, phase and sizes, options)
    ("llama-3.1-8b", ["--phase", "decode", "--batch", "16", "--context", "2048"],
     ["--weight-dtype", "int4", "--kv-dtype", "fp8"]),
    ("llama-3.1-8b", ["--phase", "decode", "--batch", "64", "--context", "1024"], ["--weight-dtype", "fp8"]),
    ("llama-3.1-70b", ["--phase", "prefill", "--batch", "4", "--seq", "4096"],
     ["--prefix-hit", "0.6", "--weight-dtype", "int8"]),
    ("llama-3.1-8b", ["--phase", "decode", "--batch", "8", "--context", "4000"],
     ["--chunk-tokens", "512", "--chunk-context", "1536", "--kv-dtype", "fp8"]),
    ("llama-3.1-70b", ["--phase", "decode", "--batch", "4", "--context", "2048"],
     ["--spec-tokens", "4", "--spec-acceptance", "0.75", "--draft-model", "llama-3.2-1b", "--weight-dtype", "fp8"]),
    ("llama-3.1-8b", ["--phase", "decode", "--batch", "32", "--context", "512"],
     ["--spec-tokens", "3", "--spec-acceptance", "0.6"]),
]


@pytest.mark.parametrize("model, sizes, options", CASES)
def test_whatif_rows_equal_predict(capsys, model, sizes, options):
    gpus = [1, 4] if model == "llama-3.1-8b" else [2, 4]
    obj = _json(capsys, "whatif", "--model", model, "--hardware", "h100-sxm,l40s", "--gpus", ",".join(map(str, gpus)),
                *sizes, *options)
    assert len(obj["results"]) == 4
    spec = "--spec-tokens" in options
    for r in obj["results"]:
        assert "error" not in r, r
        p = _json(capsys, "predict", "--model", model, "--hardware", r["hardware"], "--tp", str(r["gpus"]), *sizes,
                  *options)
        for k in ("time_s", "tokens_per_s", "peak_memory_bytes"):
            assert r[k] == pytest.approx(p[k], rel=REL), k
        assert r["bound"] == p["bound"]
        if r["usd_per_gpu_h"] and r["fits"]:
            assert r["usd_per_1m_tokens"] == pytest.approx(r["usd_per_gpu_h"] * r["gpus"] / 3600 / p["tokens_per_s"]
                                                           * 1e6, rel=REL)
        if spec:    # the speculative step: predict_speculative's fields, its energy the whole step's
            for k in ("spec_tokens_per_step", "spec_speedup", "spec_plain_tokens_per_s"):
                assert r[k] == pytest.approx(p[k], rel=REL), k
            assert r["spec_draft"] == p["spec_draft"]
        if r["fits"]:
            for k in ("power_w", "energy_j", "energy_j_per_token", "co2_g_per_1m_tokens"):
                assert r[k] == pytest.approx(p[k], rel=REL), k
    if spec:
        assert obj["results"][0]["spec_tokens_per_step"] == pytest.approx(
            (1 - float(options[3]) ** (int(options[1]) + 1)) / (1 - float(options[3])), rel=1e-12)


def test_whatif_speculative_does_not_fit_is_a_row_not_an_error(capsys):
    """70B + a 1B draft at tp 1 on an 80 GB GPU: listed as not fitting (predict would refuse it)."""
    obj = _json(capsys, "whatif", "--model", "llama-3.1-70b", "--hardware", "h100-sxm", "--gpus", "1,4",
                "--batch", "8", "--context", "1024", "--spec-tokens", "2", "--spec-acceptance", "0.7",
                "--draft-model", "llama-3.2-1b")
    one, four = obj["results"]
    assert not one["fits"] and one["usd_per_1m_tokens"] is None and one["peak_memory_bytes"] > 80e9
    assert four["fits"] and four["spec_speedup"] > 1


def test_whatif_fp8_weights_on_an_a100_is_that_row(capsys):
    assert main(["whatif", "--model", "llama-3.1-8b", "--hardware", "h100-sxm,a100-sxm-80gb", "--gpus", "1",
                 "--weight-dtype", "fp8", "--context", "100", "--format", "json"]) == 0
    h100, a100 = json.loads(capsys.readouterr().out)["results"]
    assert "error" not in h100
    assert a100["error"] == ("--weight-dtype fp8: a100-sxm-80gb has no fp8 tensor cores (W8A8 needs them); use int8 "
                             "or int4 (weight-only), or a GPU with fp8 such as h100-sxm or l40s")


@pytest.mark.parametrize("flags, message", [
    (["--spec-tokens", "3", "--spec-acceptance", "1.5"], "--spec-acceptance 1.5: must be a per-token acceptance rate "
                                                         "in (0, 1]"),
    (["--spec-tokens", "3", "--spec-acceptance", "0"], "--spec-acceptance 0.0: must be a per-token acceptance rate"),
    (["--spec-tokens", "3"], "--spec-tokens needs --spec-acceptance A (the per-token acceptance rate in (0, 1])"),
    (["--spec-acceptance", "0.5"], "--spec-acceptance needs --spec-tokens K (speculative decoding)"),
    (["--spec-tokens", "3", "--spec-acceptance", "0.5", "--draft-model", "mistral-7b"],
     "--draft-model mistral-7b: has a vocabulary of 32,000 tokens but llama-3.1-8b has 128,256"),
    (["--weight-dtype", "int3"], "argument --weight-dtype: invalid choice: 'int3'"),
])
def test_whatif_bad_option_flags_are_one_line(capsys, flags, message):
    rc = main(["whatif", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--context", "100", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
