"""Predictions against the shared H100 measurements, published memory formulas, invariants."""

from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from simulator.core.errors import RoofplanError
from simulator.core.memory import kv_cache_bytes, training_memory
from simulator.core.models import load_model
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile
from simulator.core.specs import load_hardware
from simulator.core.workload import Job

H100 = load_hardware("h100-sxm")


def job_of(case) -> Job:
    return Job(phase=case["phase"], batch=case["batch"], seq=case.get("seq", 0), context=case.get("context", 0),
               recompute=case.get("recompute", "none"), lora_rank=case.get("lora_rank", 0),
               micro_batch=case.get("micro_batch", 0),
               offload_weights="cpu" if case.get("offload") else "gpu", host_memory=case.get("host_memory", "pinned"),
               overlap=case.get("overlap", True))


# The 18 framework-bound cases the shared file gained on 2026-11-30 (HF eager inference of
# Llama-3.2-1B and 8B prefills, HF training at batch 1 and with recompute, PEFT LoRA, accelerate
# offload). Modelling them is issue 12 ("Model the software, not just the GPU"); until it lands
# they are checked against its acceptance bars in test_framework_bound_cases (xfail).
FRAMEWORK_BOUND = {
    "accelerate-offload-decode-llama-3.1-8b-b1-l512", "train-llama-3.2-1b-b1-s2048-nockpt",
    "train-llama-3.2-1b-b8-s2048-ckpt", "lora-llama-3.1-8b-b1-s2048-ckpt",
    *(f"hf-prefill-llama-3.2-1b-{s}" for s in ("b1-s128", "b1-s512", "b1-s2048", "b1-s8192", "b8-s1024", "b32-s512")),
    *(f"hf-decode-llama-3.2-1b-{s}" for s in ("b1-l512", "b1-l4096", "b16-l512", "b16-l4096", "b64-l512", "b64-l2048")),
    "hf-prefill-llama-3.1-8b-b1-s512", "hf-prefill-llama-3.1-8b-b32-s512",
}


def _cases(end_to_end, groups):
    return [c for c in end_to_end["cases"] if c["group"] in groups and c["id"] not in FRAMEWORK_BOUND]


def _mape(pairs):
    return sum(abs(p / m - 1) for m, p in pairs) / len(pairs)


def test_time_mape_overhead_free_and_offload(end_to_end):
    cases = _cases(end_to_end, ("graph", "offload", "train"))
    pairs = [(c["time_s"], predict(load_model(c["model"]), H100, job_of(c)).time_s) for c in cases]
    assert len(pairs) >= 15
    assert _mape(pairs) <= 0.10
    assert max(abs(p / m - 1) for m, p in pairs) <= 0.15


def test_the_file_holds_the_framework_bound_cases(end_to_end):
    ids = {c["id"] for c in end_to_end["cases"]}
    assert len(end_to_end["cases"]) == 35 and FRAMEWORK_BOUND <= ids


def _framework_errors(end_to_end):
    """(kind, case id, time error) of every framework-bound case with its own executor."""
    out = []
    for c in end_to_end["cases"]:
        if c["id"] not in FRAMEWORK_BOUND and c.get("executor") != "hf-eager":
            continue
        ex = load_executor_profile(c.get("executor", "default"))
        p = predict(load_model(c["model"]), H100, job_of(c), ex, check_memory=False)
        kind = ("accelerate" if c.get("executor") == "accelerate" else "lora" if c.get("lora_rank")
                else "train" if c["phase"] == "train" else "hf-eager")
        out.append((kind, c["id"], p.time_s / c["time_s"] - 1))
    return out


def test_hf_eager_inference_on_models_the_host_model_never_saw(end_to_end):
    """HF eager prefill and decode: the host lane's constants come from the Llama-3.1-8B trace and
    two 8B cases; the 12 Llama-3.2-1B cases are held out. Issue 12's bars: MAPE <= 15%, worst <= 35%
    (2026-11-30: MAPE 3.5%, worst +7.7%; the two fitted 8B cases included)."""
    errs = [e for kind, _, e in _framework_errors(end_to_end) if kind == "hf-eager"]
    assert len(errs) == 15
    assert sum(map(abs, errs)) / len(errs) <= 0.15
    assert max(map(abs, errs)) <= 0.35


def test_hf_training_step_time(end_to_end):
    """HF training (fp32 master, autocast, fused AdamW) on the two lanes; host costs from the
    batch-4 training trace's CPU timeline, no training case fitted. Issue 12's bar: MAPE <= 10%
    (2026-11-30: b4 -1.9%, b1 -4.8% (host-bound), b8 with full recompute +1.5%, MAPE 2.7%)."""
    errs = [e for kind, _, e in _framework_errors(end_to_end) if kind == "train"]
    assert len(errs) == 3
    assert sum(map(abs, errs)) / len(errs) <= 0.10
    assert max(map(abs, errs)) <= 0.10


def test_framework_bound_lora(end_to_end):
    """The PEFT LoRA step within issue 12's 10% (held out: -6.7%, host-bound through the
    checkpoint wrapper's CPU-measured host factor, autocast's adapter casts)."""
    errs = dict((kind, e) for kind, _, e in _framework_errors(end_to_end) if kind == "lora")
    assert abs(errs["lora"]) <= 0.10


def test_accelerate_copy_efficiency_is_fitted_on_its_one_case_and_stated_held_out(end_to_end):
    """accelerate's copies at the microbenchmarked pageable rate miss its one measured case by
    -26.6%; `calibrate --end-to-end` fits its copy efficiency (0.72) on that case, which the
    profile then reproduces. That is in sample, so the expected error every accelerate prediction
    states is the held-out one: -26.6%, the case predicted without its own fit (no other case)."""
    errs = dict((kind, e) for kind, _, e in _framework_errors(end_to_end) if kind == "accelerate")
    assert abs(errs["accelerate"]) <= 0.01
    ex = load_executor_profile("accelerate")
    assert ex.copy_efficiency_scale == pytest.approx(0.7217, abs=1e-4)
    job = Job("decode", batch=1, context=512, offload_weights="cpu", host_memory="pageable", overlap=False)
    ee = predict(load_model("llama-3.1-8b"), H100, job, ex).expected_error
    assert (ee["cases"], ee["time_worst"]) == (1, pytest.approx(0.2664, abs=1e-4))


def test_memory_mape(end_to_end):
    cases = [c for c in _cases(end_to_end, ("graph", "train")) if "peak_memory_bytes" in c]
    pairs = [(c["peak_memory_bytes"], predict(load_model(c["model"]), H100, job_of(c)).peak_memory_bytes) for c in cases]
    assert _mape(pairs) <= 0.10


def test_decode_is_memory_bound_and_weights_dominate():
    p = predict(load_model("llama-3.1-8b"), H100, Job("decode", batch=1, context=512))
    assert p.bound == "memory"
    # reading 16 GB of weights at ~3 TB/s cannot take less than ~5 ms
    assert p.time_s > 16.06e9 / 3.35e12


def test_kv_cache_formula():
    # batch 16 x (4096 + 1) tokens x 128 KiB per token
    j = Job("decode", batch=16, context=4096)
    assert kv_cache_bytes(load_model("llama-3.1-8b"), j) == 16 * 4097 * 131072


def test_training_model_states_18_bytes_per_param():
    # ZeRO paper (Rajbhandari et al. 2020) sec. 3.1: mixed-precision Adam holds 2 B working weights
    # + K = 12 B (fp32 master, m, v) per parameter; the fp32 gradient (4 B) is live when micro-batches
    # accumulate: 18 B in all
    m = load_model("llama-3.2-1b")
    mem = training_memory(m, Job("train", batch=8, seq=512, micro_batch=4), load_executor_profile("default"))
    P = m.params_total()
    assert mem.weights == pytest.approx(2 * P)
    assert mem.optimizer == pytest.approx(12 * P)
    assert mem.gradients == pytest.approx(4 * P)
    # one micro-batch: PyTorch sets .grad to None between steps, the peak (loss backward) has none
    one = training_memory(m, Job("train", batch=4, seq=512, micro_batch=4), load_executor_profile("default"))
    assert one.gradients == 0
    # Megatron keeps a persistent fp32 main_grad buffer
    meg = training_memory(m, Job("train", batch=4, seq=512, micro_batch=4), load_executor_profile("megatron"))
    assert meg.gradients == pytest.approx(4 * P)


def test_full_recompute_saves_memory_costs_time():
    m = load_model("llama-3.2-1b")
    a = predict(m, H100, Job("train", batch=4, seq=2048))
    b = predict(m, H100, Job("train", batch=4, seq=2048, recompute="full"))
    assert b.peak_memory_bytes < 0.7 * a.peak_memory_bytes
    assert b.time_s > a.time_s
    assert b.hardware_flops > b.model_flops == pytest.approx(a.model_flops)


def test_lora_trains_fewer_params_faster():
    m = load_model("llama-3.1-8b")
    full = predict(m, H100, Job("train", batch=1, seq=1024, recompute="full"), check_memory=False)
    lora = predict(m, H100, Job("train", batch=1, seq=1024, lora_rank=16, recompute="full"))
    assert lora.time_s < full.time_s
    assert lora.peak_memory_bytes < 0.4 * full.peak_memory_bytes


def test_lora_trains_the_adapters_peft_counts():
    """PEFT's print_trainable_parameters for Llama-3.1-8B, rank 16 on every linear (q, k, v, o,
    gate, up, down as HF lays them out): 41,943,040; the fused layout of the default executor
    (qkv, o, gate_up, down) has fewer."""
    from simulator.core.ops import trainable_params
    m, job = load_model("llama-3.1-8b"), Job("train", batch=1, seq=2048, lora_rank=16)
    assert trainable_params(m, job, load_executor_profile("hf-eager")) == 41_943_040
    assert trainable_params(m, job, load_executor_profile("default")) == 16 * 32 * (
        (4096 + 6144) + (4096 + 4096) + (4096 + 28672) + (14336 + 4096))


def test_lora_targets_some_linears():
    """PEFT's target_modules: rank 16 on q_proj and v_proj of Llama-3.1-8B trains 16 x 32 x
    ((4096 + 4096) + (4096 + 1024)) = 6,815,744 parameters; only those two inputs keep an fp32
    copy (without autocast); predict and sweep give the same step; a stack that fuses q, k, v
    cannot adapt q alone."""
    from simulator.core.errors import FieldError
    from simulator.core.memory import saved_activation_bytes_per_token_layer
    from simulator.core.ops import trainable_params
    from simulator.sweep import parse_grid, sweep_group
    m, ex = load_model("llama-3.1-8b"), load_executor_profile("hf-eager")
    qv = Job("train", batch=1, seq=2048, lora_rank=16, lora_targets="q_proj,v_proj", recompute="full")
    assert trainable_params(m, qv, ex) == 6_815_744
    full = replace(qv, lora_targets="all-linear")
    plain, bf16 = replace(ex, autocast_weight_casts=False), replace(ex, lora_adapter_dtype="bf16",
                                                                    autocast_weight_casts=False)
    copies = {j.lora_targets: saved_activation_bytes_per_token_layer(m, j, plain, False)
              - saved_activation_bytes_per_token_layer(m, j, bf16, False) for j in (qv, full)}
    assert copies["q_proj,v_proj"] == 4 * 2 * 4096 + 2 * 16 * (4 - 2)
    p_qv, p_all = predict(m, H100, qv, ex), predict(m, H100, full, ex)
    assert p_qv.time_s < p_all.time_s and p_qv.peak_memory_bytes < p_all.peak_memory_bytes
    grid = {"hardware": ["h100-sxm"], "model": ["llama-3.1-8b"], "phase": ["train"], "batch": [1], "seq": [2048],
            "executor": ["hf-eager"], "recompute": ["full"], "lora_rank": [16], "lora_targets": ["q_proj,v_proj"]}
    (group,) = parse_grid(grid)
    cols = sweep_group(group)
    assert cols["time_s"][0] == pytest.approx(p_qv.time_s, rel=1e-9)
    assert cols["peak_memory_bytes"][0] == pytest.approx(p_qv.peak_memory_bytes, rel=1e-9)
    with pytest.raises(FieldError, match="runs q, k, v as one linear"):
        predict(m, H100, replace(qv, lora_targets="q"), load_executor_profile("default"))


def test_lora_backward_is_the_autograd_nodes_peft_runs():
    """Traced on CPU with PEFT 0.21 (fp32 adapters, bf16 base). Without autocast, per adapted
    linear the backward runs ToCopyBackward0 (grad to fp32), AddBackward0's cast of the base
    branch to bf16 and MulBackward0 (* scaling) over the output -- 20 B per element in 3 kernels.
    Under torch.autocast (hf-eager's training), lora_A and lora_B run in bf16: over the output only
    MulBackward0 (4 B, 1 kernel), and the reverse of autocast's three casts (the fp32 input copy,
    A, B). Over the input, either way, ToCopyBackward0 back to bf16 plus the add_ into the input's
    gradient: 12 B in 2 kernels."""
    from simulator.core.step import stage_ops
    m, ex = load_model("llama-3.1-8b"), load_executor_profile("hf-eager")
    job = Job("train", batch=1, seq=2048, lora_rank=16)
    T, f, d, r = 2048, 14336, 4096, 16
    for autocast, out_bytes, out_kernels in ((False, 20, 3), (True, 4, 1)):
        _, bwd = stage_ops(m, job, replace(ex, autocast_weight_casts=autocast), False)
        by = {o.name: o for o in bwd}
        out, inp = by["layer.gate.lora_scale_add.bwd"], by["layer.down.lora_cast_in.bwd"]
        assert (out.bytes, out.kernels) == (out_bytes * T * f, out_kernels)
        assert (inp.bytes, inp.kernels) == (12 * T * f, 2)
        assert ("layer.gate.lora_autocast.bwd" in by) == autocast
    amp = by["layer.gate.lora_autocast.bwd"]
    assert (amp.bytes, amp.kernels) == ((T * d + d * r + r * f) * 6, 3)


def test_checkpointed_layers_cost_the_measured_host_factor():
    """hf-eager's host_recompute_scale is the mean ratio benchmarks/hf_checkpoint_host.py measured
    with transformers and PEFT on CPU (committed in benchmarks/data), and the step model applies it
    to every checkpointed layer's forward, recomputed forward and backward."""
    import json
    from simulator.core.paths import REPO_ROOT
    data = json.loads((REPO_ROOT / "benchmarks" / "data" / "hf_checkpoint_host_cpu.json").read_text())
    ratios = data["ratio"]
    assert set(ratios) == {"full", "frozen", "lora"}
    ex = load_executor_profile("hf-eager")
    assert ex.host_recompute_scale == pytest.approx(sum(ratios.values()) / 3, abs=5e-4) == data["host_recompute_scale"]
    from simulator.core.profiles import load_kernel_profile
    from simulator.core.step import stage_times
    m, f = load_model("llama-3.2-1b"), ex.host_recompute_scale
    job = Job("train", batch=1, seq=256, recompute="full")
    lanes = dict(stage_times(m, H100, job, ex, load_kernel_profile("h100-sxm")).lanes)
    fwd, bwd = lanes["layer_fwd"].H, lanes["layer_bwd"].H
    assert lanes["layer_fwd_ckpt"].H == pytest.approx(f * fwd) and lanes["layer_bwd_ckpt"].H == pytest.approx(f * bwd)
    plain = predict(m, H100, job, replace(ex, host_recompute_scale=1.0), check_memory=False)
    scaled = predict(m, H100, job, ex, check_memory=False)
    assert scaled.host_time_s - plain.host_time_s == pytest.approx((f - 1) * m.n_layers * (2 * fwd + bwd))


@pytest.mark.parametrize("name, job", [
    ("llama-3.1-8b", Job("train", batch=1, seq=2048, lora_rank=16, recompute="full")),
    ("llama-3.2-1b", Job("train", batch=8, seq=2048, micro_batch=2, recompute="selective")),
    ("olmoe-1b-7b", Job("train", batch=2, seq=512, recompute="full")),
])
def test_training_op_table_host_adds_up_to_the_host_lane(name, job):
    """The per-op table (and the Chrome trace drawn from it) charges each training op the host
    time the lanes charge it -- autograd nodes, per-layer work, the checkpoint wrapper's factor,
    the optimizer -- so its host column adds up to host_time_s."""
    p = predict(load_model(name), H100, job, load_executor_profile("hf-eager"), check_memory=False)
    assert p.ops["host_time_s"].sum() == pytest.approx(p.host_time_s, rel=1e-9)


def test_lora_saves_peft_fp32_copy_of_each_adapted_input():
    """PEFT casts each adapted linear's input to the fp32 adapters' dtype and lora_A saves that
    copy for its weight gradient: without recompute a Llama-3.1-8B layer keeps 4 B x (q, k, v,
    gate, up: 5 x 4096 + o: 4096 + down: 14336 input features) per token besides the base's
    activations, 10.2 GB at 2048 tokens over 32 layers (without autocast; under it, autocast's
    bf16 recast of the copy); and the frozen bf16 base keeps the residual stream in bf16 (no
    autocast casts of the layer inputs)."""
    from simulator.core.memory import saved_activation_bytes_per_token_layer
    from simulator.core.ops import layer_forward_ops
    m, ex = load_model("llama-3.1-8b"), load_executor_profile("hf-eager")
    lora = Job("train", batch=1, seq=2048, lora_rank=16)
    bf16 = replace(ex, lora_adapter_dtype="bf16", autocast_weight_casts=False)
    plain = replace(ex, autocast_weight_casts=False)
    extra = (saved_activation_bytes_per_token_layer(m, lora, plain, False)
             - saved_activation_bytes_per_token_layer(m, lora, bf16, False))
    assert extra == 4 * (5 * 4096 + 4096 + 14336) + 7 * 16 * (4 - 2)
    assert extra * 2048 * 32 == pytest.approx(10.2e9, rel=0.01)
    # under autocast (hf-eager) lora_A saves autocast's bf16 recast of that copy instead
    amp = (saved_activation_bytes_per_token_layer(m, lora, ex, False)
           - saved_activation_bytes_per_token_layer(m, lora, bf16, False))
    assert amp == 2 * (5 * 4096 + 4096 + 14336)
    ops = layer_forward_ops(m, lora, ex, False, 1, tokens=2048, batch=1, q_len=2048, kv_len=0, prefix="layer.")
    assert not [o for o in ops if "autocast_cast" in o.name]    # no layer-input casts: the residual is bf16
    full = layer_forward_ops(m, replace(lora, lora_rank=0), ex, False, 1, tokens=2048, batch=1, q_len=2048, kv_len=0,
                             prefix="layer.")
    assert [o for o in full if "autocast_cast" in o.name]


@pytest.mark.parametrize("name", ["llama-3.2-1b", "llama-3.1-8b"])
def test_accelerate_copies_every_weight_and_a_tied_head_twice(name):
    """accelerate.cpu_offload hooks every module with weights and gives its hooks no tied-weights
    map: the embedding and the LM head copy their table each before use, the tied table of
    Llama-3.2-1B twice (2 x 525 MB of its 2.47 GB), at the pageable rate times accelerate's copy
    efficiency."""
    from simulator.core.profiles import load_kernel_profile
    m = load_model(name)
    job = Job("decode", batch=1, context=512, offload_weights="cpu", host_memory="pageable", overlap=False)
    p = predict(m, H100, job, load_executor_profile("accelerate"))
    kp = load_kernel_profile("h100-sxm")
    copied = 2 * (m.params_total() + (m.vocab * m.hidden if m.tie_embeddings else 0))
    rate = kp.h2d_pageable_Bps * load_executor_profile("accelerate").copy_efficiency_scale
    assert p.transfer_time_s == pytest.approx(copied / rate + (m.n_layers + 2) * kp.copy_latency_s)


def test_offload_pageable_slower_than_pinned_and_overlap_helps():
    m = load_model("llama-3.1-8b")
    pinned = predict(m, H100, Job("decode", batch=1, context=512, offload_weights="cpu"))
    pageable = predict(m, H100, Job("decode", batch=1, context=512, offload_weights="cpu", host_memory="pageable"))
    serial = predict(m, H100, Job("decode", batch=1, context=512, offload_weights="cpu", overlap=False))
    assert pageable.time_s > 5 * pinned.time_s
    assert serial.time_s > pinned.time_s
    assert pinned.bound == "transfer"
    resident = predict(m, H100, Job("decode", batch=1, context=512))
    assert pinned.peak_memory_bytes < 0.25 * resident.peak_memory_bytes


def test_tensor_parallel_splits_memory_and_time():
    m = load_model("llama-3.1-70b")
    one = predict(m, load_hardware("dgx-h100"), Job("decode", batch=16, context=2048, tp=2))
    four = predict(m, load_hardware("dgx-h100"), Job("decode", batch=16, context=2048, tp=4))
    assert four.peak_memory_bytes < one.peak_memory_bytes
    assert four.time_s < one.time_s


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 64), context=st.integers(0, 8192), scale=st.floats(1.1, 3.0))
def test_more_bandwidth_never_slower(batch, context, scale):
    from dataclasses import replace
    m = load_model("llama-3.1-8b")
    j = Job("decode", batch=batch, context=context)
    fast = replace(H100, gpu=replace(H100.gpu, hbm_bw_Bps=H100.gpu.hbm_bw_Bps * scale))
    assert predict(m, fast, j).time_s <= predict(m, H100, j).time_s * (1 + 1e-9)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 32), context=st.integers(0, 4096))
def test_bigger_batch_never_less_memory_or_time(batch, context):
    m = load_model("llama-3.1-8b")
    a = predict(m, H100, Job("decode", batch=batch, context=context))
    b = predict(m, H100, Job("decode", batch=batch + 1, context=context))
    assert b.peak_memory_bytes > a.peak_memory_bytes
    assert b.time_s >= a.time_s * (1 - 1e-9)


def test_bad_inputs_one_line():
    m = load_model("llama-3.1-8b")
    with pytest.raises(RoofplanError, match="batch = -1: must be a positive integer"):
        predict(m, H100, Job("decode", batch=-1))
    with pytest.raises(RoofplanError, match="exceeds llama-3.1-8b's limit of 131072"):
        predict(m, H100, Job("decode", batch=1, context=200_000))
    with pytest.raises(RoofplanError, match=r"does not fit: needs .*over by"):
        predict(load_model("llama-3.1-70b"), H100, Job("decode", batch=1, context=512))
    with pytest.raises(RoofplanError, match="seq = 0: phase prefill needs tokens per sequence"):
        predict(m, H100, Job("prefill", batch=1))
    with pytest.raises(RoofplanError, match="t4 has no bf16 support"):
        predict(m, load_hardware("t4"), Job("decode", batch=1, context=16))
