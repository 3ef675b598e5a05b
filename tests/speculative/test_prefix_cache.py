"""Prefix caching (Job.prefix_hit): the cached share of each prompt skips the forward, attention
still reads its K and V; closed forms on the op list and the step."""
from __future__ import annotations

from dataclasses import replace

import pytest

from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.specs import load_hardware
from simulator.core.speculative import shared_prefix_kv_bytes
from simulator.core.workload import Job

H100 = load_hardware("h100-sxm")
MODEL = load_model("llama-3.1-8b")


def _op(p, name):
    return p.ops.loc[p.ops["name"] == name].iloc[0]


def test_zero_hit_is_the_plain_prefill():
    job = Job("prefill", batch=2, seq=2048)
    assert predict(MODEL, H100, replace(job, prefix_hit=0.0)).time_s == predict(MODEL, H100, job).time_s


def test_cached_tokens_skip_the_linears_and_attention_reads_them():
    B, S, R = 2, 4096, 0.75
    P = int(R * S)                                              # 3072 cached, 1024 computed
    full = predict(MODEL, H100, Job("prefill", batch=B, seq=S))
    hit = predict(MODEL, H100, Job("prefill", batch=B, seq=S, prefix_hit=R))
    assert hit.job.cached_tokens == P and hit.job.query_tokens == S - P
    layer_gemm = lambda p: p.ops.loc[(p.ops["cls"] == "gemm") & p.ops["name"].str.startswith("layer."), "flops"].sum()
    assert layer_gemm(hit) == pytest.approx(layer_gemm(full) * (S - P) / S)
    # attention FLOPs: B h S_q (S_q + 2P) (d_qk + d_v) per layer, against B h S^2 (d_qk + d_v)
    q = S - P
    assert _op(hit, "layer.attention")["flops"] / _op(full, "layer.attention")["flops"] == \
        pytest.approx(q * (q + 2 * P) / S ** 2)
    # the cached prefix's K and V are read: more attention bytes than a prefill of the new tokens alone
    short = predict(MODEL, H100, Job("prefill", batch=B, seq=q))
    assert _op(hit, "layer.attention")["bytes"] > _op(short, "layer.attention")["bytes"]
    assert short.time_s < hit.time_s < full.time_s


def test_prefill_time_falls_with_the_hit_rate():
    times = [predict(MODEL, H100, Job("prefill", batch=1, seq=4096, prefix_hit=r)).time_s
             for r in (0.0, 0.25, 0.5, 0.75, 0.9)]
    assert all(a > b for a, b in zip(times, times[1:]))
    assert times[2] / times[0] == pytest.approx(0.5, abs=0.05)   # GEMM-dominated at 4k tokens: ~(1 - R)


def test_shared_prefix_is_stored_once():
    job = Job("prefill", batch=8, seq=1000, prefix_hit=0.6)
    per_token = predict(MODEL, H100, Job("prefill", batch=1, seq=1)).memory.kv_cache
    assert shared_prefix_kv_bytes(MODEL, job) == pytest.approx(per_token * (8 * 400 + 600))
    assert predict(MODEL, H100, job).memory.kv_cache == pytest.approx(per_token * 8 * 1000)


def test_unfused_attention_widens_the_square():
    """An executor with unfused attention (Megatron) scores S x (S + P) for S new queries."""
    from simulator.core.profiles import load_executor_profile
    ex = load_executor_profile("megatron")
    S, R = 2048, 0.5
    full = predict(MODEL, H100, Job("prefill", batch=1, seq=S), ex)
    hit = predict(MODEL, H100, Job("prefill", batch=1, seq=S, prefix_hit=R), ex)
    q, P = S // 2, S // 2
    assert _op(hit, "layer.attn_qk")["flops"] / _op(full, "layer.attn_qk")["flops"] == pytest.approx(q * (q + P) / S ** 2)
    assert hit.time_s < full.time_s
