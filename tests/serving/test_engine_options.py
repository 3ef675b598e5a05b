"""Serving tables under EngineOptions: every option goes through the same predict() a `roofplan
predict` with the same flags runs (one cost model), and the KV accounting follows the option."""
from __future__ import annotations

import pytest

import simulator.serving.simulate as sv
from simulator.core.errors import FieldError
from simulator.core.memory import kv_cache_bytes
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.speculative import predict_speculative
from simulator.core.specs import load_hardware
from simulator.core.workload import Job


@pytest.fixture(scope="module")
def llama8b_h100():
    return load_model("llama-3.1-8b"), load_hardware("h100-sxm")


def test_quantized_tables_are_predict(llama8b_h100):
    m, h = llama8b_h100
    t = sv.step_tables(m, h, tp=1, options=sv.EngineOptions(weight_dtype="fp8", kv_dtype="fp8"))
    job = Job("decode", batch=16, context=2048, weight_dtype="fp8", kv_dtype="fp8")
    assert float(t.decode_time(16, 2048)) == pytest.approx(predict(m, h, job, check_memory=False).time_s, rel=1e-9)
    pre = predict(m, h, Job("prefill", seq=2048, weight_dtype="fp8", kv_dtype="fp8"), check_memory=False)
    assert float(t.prefill_time(2048)) == pytest.approx(pre.time_s, rel=1e-9)
    # an fp8 cache holds twice the bf16 tokens per byte: 8B's 128 KiB per token becomes 64 KiB
    assert t.kv_bytes_per_token == kv_cache_bytes(m, Job("decode", batch=1, kv_dtype="fp8")) == 65536


def test_prefix_hit_prefills_the_uncached_part_and_shares_the_prefix(llama8b_h100):
    m, h = llama8b_h100
    t = sv.step_tables(m, h, tp=1, options=sv.EngineOptions(prefix_hit=0.5))
    assert float(t.prefill_time(2048)) == pytest.approx(
        predict(m, h, Job("prefill", seq=2048, prefix_hit=0.5), check_memory=False).time_s, rel=1e-9)
    # a request of 1000 prompt + 300 output tokens reserves 500 + 300; the 500-token prefix is held once
    assert float(t.kv_tokens(1000, 300)) == 800
    assert t.shared_prefix_tokens([1000]) == 500


def test_speculative_decode_table_is_time_per_token(llama8b_h100):
    m, h = llama8b_h100
    o = sv.EngineOptions(spec_tokens=3, spec_acceptance=0.7)
    t = sv.step_tables(m, h, tp=1, options=o)
    sp = predict_speculative(m, h, Job("decode", batch=4, context=2048, spec_tokens=3), 0.7, check_memory=False)
    # E = (1 - 0.7^4) / 0.3 = 2.533 tokens per step
    assert sp.tokens_per_step == pytest.approx(2.533, abs=1e-3)
    assert float(t.decode_time(4, 2048)) == pytest.approx(sp.time_s / sp.tokens_per_step, rel=1e-9)
    # the EAGLE head's one layer of weights comes off the KV budget, and its one layer of cache
    # adds 1/32 to every token's KV bytes
    plain = sv.step_tables(m, h, tp=1)
    assert t.kv_bytes_per_token == plain.kv_bytes_per_token * 33 / 32
    head = plain.kv_bytes_per_token * plain.kv_budget_tokens - t.kv_bytes_per_token * t.kv_budget_tokens
    assert head == pytest.approx(predict(m, h, Job("decode"), check_memory=False).memory.weights / m.n_layers, rel=1e-6)


@pytest.mark.parametrize("opts, field", [
    (dict(prefix_hit=1.0), "prefix_hit"),
    (dict(spec_tokens=3), "spec_acceptance"),
    (dict(spec_tokens=3, spec_acceptance=1.5), "spec_acceptance"),
    (dict(spec_acceptance=0.7), "spec_tokens"),
])
def test_bad_options_name_the_field(llama8b_h100, opts, field):
    with pytest.raises(FieldError) as e:
        sv.step_tables(*llama8b_h100, tp=1, options=sv.EngineOptions(**opts))
    assert e.value.field == field


def test_a_draft_model_prefills_the_prompt_too(llama8b_h100):
    """With a draft model the prompt is prefilled twice before the first token: the target's
    prefill plus the draft's (its own KV cache), each predict()'s."""
    m, h = llama8b_h100
    draft = load_model("llama-3.2-1b")
    t = sv.step_tables(m, h, tp=1, options=sv.EngineOptions(spec_tokens=3, spec_acceptance=0.7, draft=draft))
    job = Job("prefill", seq=2048)
    both = predict(m, h, job, check_memory=False).time_s + predict(draft, h, job, check_memory=False).time_s
    assert float(t.prefill_time(2048)) == pytest.approx(both, rel=1e-9)


@pytest.mark.parametrize("flags, says", [
    (["--kv-dtype", "fp4"], "--kv-dtype fp4: unknown"),
    (["--dtype", "fp99"], "--dtype fp99: not supported"),
    (["--tp", "3"], "--tp 3: does not divide"),
])
def test_serve_checks_the_job_before_any_table(capsys, flags, says):
    """The KV budget is computed before any predict() call: the job is validated first (a KV dtype
    roofplan does not know was a KeyError traceback)."""
    from simulator.cli.main import main
    rc = main(["serve", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--workload", "chat", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and says in err, err
