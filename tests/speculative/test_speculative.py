"""Speculative decoding (simulator.core.speculative): the expected-tokens formula, the step's
parts, where it stops paying, and the EAGLE paper's speedups (benchmarks/data/speculative.yaml)."""
from __future__ import annotations

import runpy
from dataclasses import replace

import numpy as np
import pytest

from simulator.core.errors import RoofplanError
from simulator.core.models import load_model
from simulator.core.paths import REPO_ROOT
from simulator.core.predict import predict
from simulator.core.specs import load_hardware
from simulator.core.speculative import (acceptance_for_tokens, crossover_batch, eagle_head, expected_tokens_per_step,
                                        predict_speculative)
from simulator.core.workload import Job

H100 = load_hardware("h100-sxm")


@pytest.fixture(scope="module")
def llama8b():
    return load_model("llama-3.1-8b")


def test_expected_tokens_formula():
    # Leviathan et al. 2023 eq. 1: E = (1 - A^(K+1)) / (1 - A) = 1 + A + ... + A^K
    for a in (0.1, 0.5, 0.8, 0.95):
        for k in (1, 3, 5, 8):
            assert expected_tokens_per_step(a, k) == pytest.approx(sum(a ** i for i in range(k + 1)))
    assert expected_tokens_per_step(1.0, 4) == 5.0                  # every draft accepted: K + 1
    assert expected_tokens_per_step(0.8, 4) == pytest.approx(3.3616)
    assert np.allclose(expected_tokens_per_step(np.array([0.5, 1.0]), 2), [1.75, 3.0])
    assert acceptance_for_tokens(3.3616, 4) == pytest.approx(0.8, abs=1e-9)


def test_verification_is_a_decode_step_with_k_plus_1_queries(llama8b):
    """The verification goes through the decode op list: K + 1 query tokens per sequence; at
    K = 0 it is the plain decode step bit for bit."""
    job = Job("decode", batch=4, context=1000)
    plain, verify = predict(llama8b, H100, job), predict(llama8b, H100, replace(job, spec_tokens=4))
    assert predict(llama8b, H100, replace(job, spec_tokens=0)).time_s == plain.time_s
    gemm = lambda p: p.ops.loc[p.ops["cls"] == "gemm", "flops"].sum()
    assert gemm(verify) == pytest.approx(5 * gemm(plain))           # every linear sees 5x the tokens
    att = lambda p: p.ops.loc[p.ops["name"] == "layer.attention"].iloc[0]
    # FLOPs: 5 queries over 1005 keys vs 1 over 1001; bytes: the cache is read once for all of them
    assert att(verify)["flops"] / att(plain)["flops"] == pytest.approx(5 * 1005 / 1001)
    assert att(verify)["bytes"] / att(plain)["bytes"] < 1.05
    assert verify.time_s < 1.2 * plain.time_s                       # memory-bound at batch 4


def test_step_parts_and_json_fields(llama8b):
    job = Job("decode", batch=1, context=1000, spec_tokens=4)
    s = predict_speculative(llama8b, H100, job, 0.8, load_model("llama-3.2-1b"))
    assert s.time_s == pytest.approx(4 * s.draft.time_s + s.verify.time_s)
    assert s.tokens_per_s == pytest.approx(s.tokens_per_step / s.time_s)
    assert s.draft.model == "llama-3.2-1b" and s.draft.job.spec_tokens == 0
    d = s.as_dict()
    for key in ("spec_tokens_per_step", "tokens_per_s", "spec_speedup", "spec_draft_step_s", "spec_verify_step_s",
                "spec_acceptance", "spec_tokens"):
        assert key in d
    assert d["tokens_per_s"] == s.tokens_per_s and d["time_s"] == s.time_s
    assert s.peak_memory_bytes > s.verify.peak_memory_bytes       # the draft's weights and cache
    with pytest.raises(RoofplanError, match="does not fit"):
        predict_speculative(llama8b, H100, replace(job, batch=512), 0.8, load_model("llama-3.2-1b"))


def test_eagle_head_is_one_target_layer(llama8b):
    head = eagle_head(llama8b)
    assert head.n_layers == 1 and head.vocab == llama8b.vocab and head.hidden == llama8b.hidden
    s = predict_speculative(llama8b, H100, Job("decode", batch=1, context=1000, spec_tokens=4), 0.8)
    assert s.draft.time_s < 0.1 * s.verify.time_s


def test_pays_at_batch_1_hurts_at_large_batch(llama8b):
    """Memory-bound at batch 1 (verification ~ one step, E tokens); compute-bound at a large batch
    (K + 1 times the FLOPs for E kept tokens)."""
    job = Job("decode", batch=1, context=512, spec_tokens=4)
    draft = load_model("llama-3.2-1b")
    assert predict_speculative(llama8b, H100, job, 0.7, draft).speedup > 1.2
    assert predict_speculative(llama8b, H100, replace(job, batch=512), 0.7, draft).speedup < 1.0
    b = crossover_batch(llama8b, H100, job, 0.7, draft)
    assert 8 < b < 512
    assert predict_speculative(llama8b, H100, replace(job, batch=b - 1), 0.7, draft).speedup > 1.0
    assert predict_speculative(llama8b, H100, replace(job, batch=b), 0.7, draft).speedup <= 1.0
    # a better acceptance keeps paying to a larger batch
    assert crossover_batch(llama8b, H100, job, 0.9, draft) > b


def test_eagle_published_speedups():
    """EAGLE (Li et al., ICML 2024) Figure 1, batch 1 on A100: one acceptance fitted to LLaMA2-Chat
    7B, the other points held out, each within 20% (they are within 6%)."""
    bench = runpy.run_path(str(REPO_ROOT / "benchmarks" / "speculative.py"))
    a, rows = bench["rows"]()
    assert 0.6 < a < 0.9
    held_out = [r for r in rows if r.role == "check"]
    assert len(held_out) == 3
    for r in rows:
        assert abs(r.error) < 0.20, r
    for r in held_out:
        assert abs(r.error) < 0.08, r


def test_speculative_step_energy_is_the_whole_step_over_its_tokens():
    """The step's energy is the verification's plus K draft steps' (predict() each), and J/token
    divides it by the batch x E tokens the step gives, not by the batch alone."""
    from simulator.core.models import load_model as _load
    from simulator.core.predict import predict as _predict
    from simulator.core.specs import load_hardware as _hw
    from simulator.core.speculative import draft_plan, predict_speculative
    from simulator.core.workload import Job as _Job
    m, h = _load("llama-3.1-8b"), _hw("h100-sxm")
    job = _Job("decode", batch=8, context=1000, spec_tokens=4)
    sp = predict_speculative(m, h, job, 0.8, check_memory=False)
    verify = _predict(m, h, job, check_memory=False)
    draft = _predict(sp.draft_name and __import__("simulator.core.speculative", fromlist=["eagle_head"]).eagle_head(m),
                     h, draft_plan(job, None), check_memory=False)
    energy = verify.energy.energy_j + 4 * draft.energy.energy_j      # a head runs on the target's GPU
    assert sp.energy["energy_j"] == pytest.approx(energy, rel=1e-12)
    assert sp.energy["energy_j_per_token"] == pytest.approx(energy / (8 * sp.tokens_per_step), rel=1e-12)
    assert sp.as_dict()["energy_j_per_token"] == sp.energy["energy_j_per_token"]
    # E = (1 - 0.8^5) / 0.2 = 3.3616 tokens per sequence: about a third of the verification's J per batch token
    assert sp.tokens_per_step == pytest.approx(3.3616)
    assert sp.energy["energy_j_per_token"] < verify.energy.energy_j_per_token / 2


def test_a_draft_on_fewer_gpus_leaves_the_others_idle_not_free():
    """speculative_energy by hand: a target on 4 GPUs (verify: 8 J of GPU energy in 10 ms) and a
    draft on 1 (0.5 J in 1 ms), K = 3, 75 W idle: E_gpu = 8 + 3 x (0.5 + 3 x 75 W x 1 ms) = 10.175 J
    over 13 ms and 4 GPUs (196 W each), per token over 16 x 2.5 tokens."""
    from simulator.core.speculative import draft_plan, speculative_energy
    from simulator.core.models import load_model as _load
    from simulator.core.specs import load_gpu, system_from_gpu
    from simulator.core.workload import Job as _Job
    job = _Job("decode", batch=16, tp=4, spec_tokens=3)
    e = speculative_energy({"gpu_energy_j": 8.0, "host_energy_j": 0.4}, {"gpu_energy_j": 0.5, "host_energy_j": 0.02},
                           system_from_gpu(load_gpu("h100-sxm"), 4), job, _Job("decode", batch=16), 0.010, 0.001,
                           16 * 2.5, 481.0)
    assert e["gpu_energy_j"] == pytest.approx(10.175)
    assert e["energy_j"] == pytest.approx(10.175 + 0.46)
    assert e["power_w"] == pytest.approx(10.175 / (0.013 * 4))
    assert e["energy_j_per_token"] == pytest.approx(10.635 / 40)
    assert e["co2_g_per_1m_tokens"] == pytest.approx(10.635 / 40 * 1e6 / 3.6e6 * 481)
    # which drafts shard: Llama-3.2-1B's 32 heads split 4 ways; Llama-3.2-3B's 24 do not split 16 ways
    assert draft_plan(_Job("decode", tp=4, spec_tokens=3), _load("llama-3.2-1b")).tp == 4
    assert draft_plan(_Job("decode", tp=16, spec_tokens=3), _load("llama-3.2-3b")).tp == 1
