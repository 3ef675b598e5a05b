"""Chunked prefill (Job.chunk_tokens, Job.chunk_context): a decode step of B sequences that also
prefills N prompt tokens of one more request in the same forward. Closed forms on the op list,
invariants of the step, predict == predict_many."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from simulator.core.memory import kv_cache_bytes
from simulator.core.models import load_model
from simulator.core.predict import predict, predict_many
from simulator.core.specs import load_hardware
from simulator.core.workload import Job

H100 = load_hardware("h100-sxm")
MODEL = load_model("llama-3.1-8b")
B, C = 16, 4096
DECODE = Job("decode", batch=B, context=C)


def _op(p, name):
    return p.ops.loc[p.ops["name"] == name].iloc[0]


def test_no_chunk_is_the_plain_decode_exactly():
    plain = predict(MODEL, H100, DECODE)
    zero = predict(MODEL, H100, replace(DECODE, chunk_tokens=0, chunk_context=0))
    assert zero.time_s == plain.time_s and zero.peak_memory_bytes == plain.peak_memory_bytes
    assert zero.ops.equals(plain.ops)
    assert not plain.ops["name"].str.contains("chunk").any()


@pytest.mark.parametrize("n", [64, 512, 2048])
def test_cheaper_than_decode_plus_separate_prefill_dearer_than_decode(n):
    """The chunk shares the step's weight reads: cheaper than the decode step plus a prefill of the
    chunk's N tokens, but it is more work than the decode alone."""
    alone = predict(MODEL, H100, DECODE).time_s
    prefill = predict(MODEL, H100, Job("prefill", batch=1, seq=n)).time_s
    mixed = predict(MODEL, H100, replace(DECODE, chunk_tokens=n)).time_s
    assert alone < mixed < alone + prefill


def test_gemm_flops_and_bytes_by_hand():
    """Every linear sees B + N tokens once: FLOPs 2 (B + N) K N_out, bytes the weights once plus
    (B + N) (K + N_out) activations; the LM head scores B + 1 positions (the chunk's last)."""
    n = 512
    p = predict(MODEL, H100, replace(DECODE, chunk_tokens=n))
    T, d, a = B + n, MODEL.hidden, 2
    qkv_out = (MODEL.n_heads + 2 * MODEL.n_kv_heads) * MODEL.head_dim
    qkv = _op(p, "layer.qkv")
    layers = MODEL.n_layers
    assert qkv["flops"] == pytest.approx(layers * 2 * T * d * qkv_out)
    assert qkv["bytes"] == pytest.approx(layers * (d * qkv_out * a + T * (d + qkv_out) * a))
    down = _op(p, "layer.down")
    f = MODEL.ffn_dim
    assert down["flops"] == pytest.approx(layers * 2 * T * f * d)
    assert down["bytes"] == pytest.approx(layers * (f * d * a + T * (f + d) * a))
    head = _op(p, "lm_head")
    V = MODEL.vocab
    assert head["flops"] == pytest.approx(2 * (B + 1) * d * V)
    assert head["bytes"] == pytest.approx((d * V + (B + 1) * (d + V)) * a)


def test_attention_is_the_decode_plus_a_prefill_of_the_chunk():
    """The B sequences' decode attention is unchanged; the chunk's N queries attend causally to
    themselves and to its M earlier tokens: FLOPs h N (N + 2M) (d_qk + d_v) per layer."""
    n, m = 512, 1024
    plain = predict(MODEL, H100, DECODE)
    mixed = predict(MODEL, H100, replace(DECODE, chunk_tokens=n, chunk_context=m))
    assert _op(mixed, "layer.attention")["flops"] == _op(plain, "layer.attention")["flops"]
    assert _op(mixed, "layer.attention")["bytes"] == _op(plain, "layer.attention")["bytes"]
    hd = MODEL.head_dim
    assert _op(mixed, "layer.chunk_attention")["flops"] == pytest.approx(
        MODEL.n_layers * MODEL.n_heads * n * (n + 2 * m) * 2 * hd)
    # the M earlier tokens' K and V are read from the cache
    no_ctx = predict(MODEL, H100, replace(DECODE, chunk_tokens=n))
    assert _op(mixed, "layer.chunk_attention")["bytes"] - _op(no_ctx, "layer.chunk_attention")["bytes"] == \
        pytest.approx(MODEL.n_layers * m * 2 * MODEL.n_kv_heads * hd * 2)


def test_kv_memory_adds_the_chunks_request():
    n, m = 512, 1024
    job = replace(DECODE, chunk_tokens=n, chunk_context=m)
    per_token = kv_cache_bytes(MODEL, Job("prefill", seq=1))
    assert kv_cache_bytes(MODEL, job) - kv_cache_bytes(MODEL, DECODE) == pytest.approx((m + n) * per_token)
    assert predict(MODEL, H100, job).memory.kv_cache == pytest.approx(kv_cache_bytes(MODEL, job))


def test_large_chunk_approaches_a_prefill_of_chunk_plus_batch_tokens():
    n = 16384
    mixed = predict(MODEL, H100, replace(DECODE, context=512, chunk_tokens=n)).time_s
    prefill = predict(MODEL, H100, Job("prefill", batch=1, seq=n + B)).time_s
    assert mixed == pytest.approx(prefill, rel=0.03)


def test_tokens_per_s_counts_the_decode_tokens():
    p = predict(MODEL, H100, replace(DECODE, chunk_tokens=256))
    assert p.tokens_per_s == pytest.approx(B / p.time_s)


def test_predict_many_agrees():
    job = replace(DECODE, chunk_tokens=384, chunk_context=128)
    batches, contexts = np.array([1, 8, 64]), np.array([256, 2048, 8192])
    many = predict_many(MODEL, H100, job, batch=batches[:, None], context=contexts[None, :])
    for i, b in enumerate(batches):
        for j, c in enumerate(contexts):
            one = predict(MODEL, H100, replace(job, batch=int(b), context=int(c)), with_ops=False)
            assert many.time_s[i, j] == pytest.approx(one.time_s, rel=1e-12)
            assert many.peak_memory_bytes[i, j] == pytest.approx(one.peak_memory_bytes, rel=1e-12)


def test_moe_and_mla_models_run():
    """MoE routing sees B + N tokens; an MLA chunk attends with expanded per-head keys (the
    prefill path) while the decode attends over the latent."""
    for name in ("mixtral-8x7b", "deepseek-v3"):
        model = load_model(name)
        plain = predict(model, H100, Job("decode", batch=4, context=1024), check_memory=False)
        mixed = predict(model, H100, Job("decode", batch=4, context=1024, chunk_tokens=256), check_memory=False)
        assert mixed.time_s > plain.time_s
        assert mixed.ops["name"].str.endswith("chunk_attention").any()
