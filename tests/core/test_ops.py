"""Op-list FLOPs against the standard counting formulas (Kaplan et al. 2020; Megatron-LM)."""
import pytest

from simulator.core.models import load_model
from simulator.core.ops import experts_touched, forward_ops, layer_forward_ops
from simulator.core.predict import predict
from simulator.core.profiles import load_executor_profile
from simulator.core.specs import load_hardware
from simulator.core.workload import Job

EX = load_executor_profile("default")


def gemm_flops(ops):
    return sum(o.flops * o.count for o in ops if o.cls == "gemm")


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen2.5-7b", "mistral-7b", "opt-6.7b"])
def test_prefill_gemm_flops_are_2_params_per_token(name):
    # forward GEMM FLOPs = 2 x (non-embedding parameters) x tokens; LM head for the last position only
    m = load_model(name)
    B, S = 2, 1024
    ops = forward_ops(m, Job("prefill", batch=B, seq=S), EX)
    linear_params = m.params_total() - m.embedding_params - m.head_params
    expected = 2 * linear_params * B * S + 2 * m.hidden * m.vocab * B
    assert gemm_flops(ops) == pytest.approx(expected, rel=0.002)   # norms' few params are not GEMMs


def test_causal_attention_flops():
    # B h S^2 (d_qk + d_v) per layer: half of the 4 B h S^2 d of full attention
    m = load_model("llama-3.1-8b")
    ops = forward_ops(m, Job("prefill", batch=1, seq=4096), EX)
    attn = sum(o.flops * o.count for o in ops if o.cls == "attention")
    assert attn == 32 * 32 * 4096**2 * 256


def test_training_flops_six_per_param_token():
    # PaLM (Chowdhery et al. 2022, appendix B), the model-FLOPs convention of MFU: per token
    # 6 N + 12 L H Q S (Kaplan's 6 N plus attention over the full S x S square, as Megatron counts
    # it); tied LM head counted once
    m = load_model("llama-3.2-1b")
    p = predict(m, load_hardware("h100-sxm"), Job("train", batch=4, seq=2048))
    T = 4 * 2048
    N = m.params_total() - m.embedding_params + (m.vocab * m.hidden if m.tie_embeddings else 0)
    L, H, Q, S = 16, 32, 64, 2048
    attn = 12 * L * H * Q * S * T
    assert p.model_flops == pytest.approx(6 * N * T + attn, rel=0.002)


def test_moe_active_flops_and_expert_reads():
    m = load_model("mixtral-8x7b")
    ops = forward_ops(m, Job("decode", batch=1, context=100), EX)
    experts = [o for o in ops if o.name.endswith("experts_gate_up")][0]
    # one token, top-2 of 8 experts: 2 x (4096 x 2 x 14336) multiply-adds
    assert experts.flops == 2 * 2 * 4096 * 2 * 14336
    assert experts_touched(8, 2, 1) == pytest.approx(2.0)
    assert experts_touched(8, 2, 1000) == pytest.approx(8.0)
    # a batch of 64 tokens reads (almost) every expert's weights
    ops64 = forward_ops(m, Job("decode", batch=64, context=100), EX)
    e64 = [o for o in ops64 if o.name.endswith("experts_gate_up")][0]
    assert e64.bytes > 3.9 * experts.bytes


def test_mla_decode_reads_latent_cache():
    m = load_model("deepseek-v3")
    ops = forward_ops(m, Job("decode", batch=8, context=4095, dtype="fp8"), EX)
    attn = [o for o in ops if o.cls == "attention"][0]
    # 8 sequences x 4096 tokens x 576 latent elements x 1 byte (fp8 cache)
    assert attn.bytes >= 8 * 4096 * 576
    assert attn.bytes < 1.1 * 8 * 4096 * 576


def test_kv_heads_replicate_beyond_tp():
    m = load_model("llama-3.1-70b")   # 8 KV heads
    assert m.kv_cache_elems_per_token_layer_per_gpu(8) == 2 * 1 * 128
    assert m.kv_cache_elems_per_token_layer_per_gpu(16) == 2 * 1 * 128   # replicated, not halved
    assert m.kv_cache_elems_per_token_layer_per_gpu(2) == 2 * 4 * 128


def test_expert_parallel_serving():
    from simulator.core.errors import RoofplanError
    m = load_model("mixtral-8x7b")
    tp8 = forward_ops(m, Job("decode", batch=64, context=100, tp=8), EX)
    ep8 = forward_ops(m, Job("decode", batch=64, context=100, tp=8, ep=8), EX)
    e_tp = [o for o in tp8 if o.name.endswith("experts_gate_up")][0]
    e_ep = [o for o in ep8 if o.name.endswith("experts_gate_up")][0]
    # same FLOPs per GPU either way (8 routed pairs... split 8 ways), whole experts instead of slices
    assert e_ep.flops == pytest.approx(e_tp.flops)
    a2a = [o for o in ep8 if o.kind == "all_to_all"]
    assert len(a2a) == 2 and all(o.group == 8 for o in a2a)
    # 64 tokens x top-2 x 4096 x 2 B, this rank's eighth
    assert a2a[0].bytes == 64 * 2 * 4096 * 2 / 8
    assert not any(o.name.endswith("mlp_allreduce") and o.name.startswith("moe") for o in ep8)
    p = predict(m, load_hardware("dgx-h100"), Job("decode", batch=64, context=100, tp=8, ep=8))
    assert p.time_s > 0 and "communication" in p.by_class().index
    with pytest.raises(RoofplanError, match="ep = 3: must divide tp 8"):
        predict(m, load_hardware("dgx-h100"), Job("decode", batch=1, context=100, tp=8, ep=3))
    with pytest.raises(RoofplanError, match="needs a mixture-of-experts model"):
        predict(load_model("llama-3.1-8b"), load_hardware("dgx-h100"), Job("decode", batch=1, tp=2, ep=2))


def test_llama_31_8b_published_gemm_flops_and_kv_write_bytes():
    # Meta's model card: 8.03 B parameters, 128,256 x 4,096 of them the input embedding. Forward
    # GEMM FLOPs per token = 2 x the non-embedding parameters (Kaplan et al. 2020); training runs
    # the (untied) LM head on every position, so it counts in full
    m = load_model("llama-3.1-8b")
    B, S = 2, 512
    fwd = forward_ops(m, Job("train", batch=B, seq=S), EX)
    assert gemm_flops(fwd) / (B * S) == pytest.approx(2 * (8.03e9 - 128256 * 4096), rel=1e-3)
    # KV cache: 2 (K and V) x 8 KV heads x 128 head_dim x 2 B x 32 layers = 128 KiB per token;
    # decode writes one token per sequence (read in bf16, written into the bf16 cache)
    kv = [o for o in forward_ops(m, Job("decode", batch=B, context=100), EX) if o.name.endswith("kv_write")]
    assert len(kv) == 1
    assert kv[0].count * kv[0].flops / B == 2 * 8 * 128 * 32
    assert kv[0].count * kv[0].bytes / B == 2 * 8 * 128 * 2 * 32 * 2 == 2 * 131072


def test_megatron_layer_forward_flops_24bsh2_plus_4bs2h():
    # Narayanan et al. 2021 (the count behind their eq. 3): a GPT layer's forward is 24 B s h^2
    # GEMM FLOPs (qkv 6, o 2, MLP 16 with d_ff = 4h) plus 4 B s^2 h in the unfused attention's two
    # batched GEMMs over the full s x s square (Megatron's executor profile); FlashAttention
    # (default profile) computes the causal half, 2 B s^2 h
    m = load_model("gpt3-175b")
    B, s, h = 2, 2048, 12288
    job = Job("train", batch=B, seq=s)
    kw = dict(tokens=B * s, batch=B, q_len=s, kv_len=0, prefix="layer.")
    mega = layer_forward_ops(m, job, load_executor_profile("megatron"), False, 1, **kw)
    attn = ("layer.attn_qk", "layer.attn_av")
    assert sum(o.flops for o in mega if o.cls == "gemm" and o.name not in attn) == 24 * B * s * h**2
    assert sum(o.flops for o in mega if o.name in attn) == 4 * B * s**2 * h
    flash = layer_forward_ops(m, job, EX, False, 1, **kw)
    assert [o.flops for o in flash if o.cls == "attention"] == [2 * B * s**2 * h]


def test_eager_rmsnorm_reads_an_fp32_residual_without_its_casts():
    """HF's LlamaRMSNorm casts a bf16 input to fp32 and back: 8 kernels, 36 B per element
    (traced: 520 norm kernels for the 65 norms of the 8B inference trace). Under autocast
    training the residual is already fp32: 6 kernels (pow, mean, add, rsqrt, mul, mul weight),
    4 B read + 4 B written by pow, mul and the weight multiply, 4 B read by mean = 28 B (traced:
    198 forward norm kernels for the 33 norms of the Llama-3.2-1B training trace)."""
    from simulator.core.models import load_model
    from simulator.core.ops import forward_ops
    from simulator.core.profiles import load_executor_profile
    from simulator.core.workload import Job
    m, ex = load_model("llama-3.2-1b"), load_executor_profile("hf-eager")
    def norms(job):
        return [o for o in forward_ops(m, job, ex) if o.cls == "norm"]
    infer = norms(Job("prefill", batch=4, seq=2048))
    train = norms(Job("train", batch=4, seq=2048))
    elems = 4 * 2048 * m.hidden
    assert sum(o.kernels * o.count for o in infer) == 33 * 8 and sum(o.kernels * o.count for o in train) == 33 * 6
    # (inference normalises only the last token before the LM head: logits_to_keep=1)
    assert all(o.bytes == 36 * elems for o in infer if o.name != "final_norm") and all(o.bytes == 28 * elems for o in train)
    # a fused norm (Megatron's apex LayerNorm: 1 kernel) has no casts to drop
    mega = load_executor_profile("megatron")
    assert {o.kernels for o in forward_ops(m, Job("train", batch=4, seq=2048), mega) if o.cls == "norm"} == {1}


def test_qwen3_normalises_queries_and_keys_per_head():
    """Qwen3's attention applies q_norm and k_norm (RMSNorms over head_dim) to every query and
    key head before RoPE (HF Qwen3Attention); Llama has none. Qwen3-8B: 32 query heads, 8 K/V
    heads, head_dim 128; HF eager: 8 kernels and 36 B per element each, like the layer norms;
    at tp 2 each rank normalises its own heads."""
    m, ex = load_model("qwen3-8b"), load_executor_profile("hf-eager")
    job = Job("prefill", batch=2, seq=512)
    ops = {o.name: o for o in layer_forward_ops(m, job, ex, False, 1, tokens=1024, batch=2, q_len=512, kv_len=0,
                                                   prefix="layer.")}
    assert (ops["layer.q_norm"].bytes, ops["layer.k_norm"].bytes) == (36 * 1024 * 32 * 128, 36 * 1024 * 8 * 128)
    assert ops["layer.q_norm"].kernels == ops["layer.k_norm"].kernels == 8
    names = list(ops)
    assert names.index("layer.k") < names.index("layer.q_norm") < names.index("layer.rope")
    tp2 = {o.name: o for o in layer_forward_ops(m, Job("prefill", batch=2, seq=512, tp=2), ex, False, 1, tokens=1024,
                                                   batch=2, q_len=512, kv_len=0, prefix="layer.")}
    assert tp2["layer.q_norm"].bytes == ops["layer.q_norm"].bytes / 2
    llama = layer_forward_ops(load_model("llama-3.1-8b"), job, ex, False, 1, tokens=1024, batch=2, q_len=512,
                              kv_len=0, prefix="layer.")
    assert not [o for o in llama if o.name.endswith(("q_norm", "k_norm"))]


def test_hf_eager_issues_the_projections_each_family_defines(tmp_path):
    """HF transformers splits q/k/v and gate/up for Llama-style families (7 GEMMs per layer,
    traced) but its Phi-3 code fuses both (qkv_proj, gate_up_proj: 4) and GPT-2's c_attn fuses
    q/k/v; the executor's `fused_families` says so, the same FLOPs either way."""
    import json
    cfg = {"model_type": "phi3", "hidden_size": 3072, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "intermediate_size": 8192, "vocab_size": 32064,
           "max_position_embeddings": 4096}     # microsoft/Phi-3-mini-4k-instruct config.json
    (tmp_path / "phi3.json").write_text(json.dumps(cfg))
    hf, graph = load_executor_profile("hf-eager"), load_executor_profile("default")
    job = Job("prefill", batch=1, seq=128)

    def gemms(model, ex):
        return [o for o in layer_forward_ops(model, job, ex, False, 1, tokens=128, batch=1, q_len=128, kv_len=0,
                                             prefix="layer.") if o.cls == "gemm"]
    phi3, llama = load_model(str(tmp_path / "phi3.json")), load_model("llama-3.1-8b")
    assert [o.name for o in gemms(phi3, hf)] == ["layer.qkv", "layer.o", "layer.gate_up", "layer.down"]
    assert len(gemms(llama, hf)) == 7 and len(gemms(llama, graph)) == 4
    assert sum(o.flops for o in gemms(phi3, hf)) == sum(o.flops for o in gemms(phi3, graph))
    assert [o.name for o in gemms(load_model("gpt2"), hf)] == ["layer.qkv", "layer.o", "layer.up", "layer.down"]


@pytest.mark.parametrize("executor", ["hf-eager", "default"])
def test_a_layernorm_under_an_eager_stack_is_one_fused_streaming_kernel(executor):
    """OPT's LayerNorm is torch's fused layer_norm (one kernel, 2 B in and 2 B out per bf16
    element), not the stack's eager RMSNorm sequence (8 kernels, 36 B): before, an OPT-6.7B HF
    prefill of 8 x 1024 tokens spent 33 ms of its 194 in norms, now 3 ms."""
    from simulator.core.ops import STREAMING
    H100 = load_hardware("h100-sxm")
    ex = load_executor_profile(executor)
    opt = load_model("opt-6.7b")
    T = 8 * 1024
    norms = [o for o in forward_ops(opt, Job(phase="prefill", batch=8, seq=1024), ex) if o.cls == "norm"]
    # attention and MLP norms over every token, the final norm over the last position of each sequence
    assert [o.name for o in norms] == ["layer.attn_norm", "layer.mlp_norm", "final_norm"]
    for o, tokens in zip(norms, (T, T, 8)):
        assert (o.kernels, o.kind, o.bytes) == (1, STREAMING, 2 * 2 * tokens * opt.hidden)
    p = predict(opt, H100, Job(phase="prefill", batch=8, seq=1024), ex, check_memory=False)
    norm_s = p.ops.loc[p.ops["cls"] == "norm", "gpu_time_s"].sum()
    ideal = 2 * opt.n_layers * 4 * T * opt.hidden / H100.gpu.hbm_bw_Bps
    assert ideal < norm_s < 1.5 * ideal


def test_fused_norm_stacks_keep_their_own_norm_bytes():
    """vLLM's profile (fused norms, norm_kernels 1) describes its LayerNorm kernel itself."""
    ex = load_executor_profile("vllm-v0")
    norms = [o for o in forward_ops(load_model("opt-13b"), Job(phase="prefill", batch=1, seq=512), ex)
             if o.cls == "norm"]
    assert [(o.kind, o.bytes) for o in norms] == [("", ex.norm_bytes_per_elem * t * 5120) for t in (512, 512, 1)]


@pytest.mark.parametrize("name, executor, kernels, elems_moved", [
    ("gpt2", "hf-eager", 8, 18),       # NewGELUActivation: 0.5 *, pow, *, +, *, tanh, +, *
    ("gpt2", "vllm-v1", 1, 2),         # a fused gelu kernel
    ("opt-6.7b", "hf-eager", 1, 2),    # nn.ReLU
    ("llama-3.1-8b", "hf-eager", 2, 5),   # F.silu(gate), * up
])
def test_the_activation_is_its_hf_modules_op_sequence_under_an_eager_stack(name, executor, kernels, elems_moved):
    """HF's GPT-2 MLP runs gelu_new as eight eager kernels over the 4 x hidden intermediate, each
    reading and writing it (10 reads + 8 writes per element): a GPT-2 prefill of 8 x 1024 tokens
    moves 18 x 2 B per element, not 4 B; a stack that fuses the activation runs one kernel."""
    m = load_model(name)
    T = 8 * 1024
    act = [o for o in forward_ops(m, Job(phase="prefill", batch=8, seq=1024), load_executor_profile(executor))
           if o.name == "layer.act_down"]
    assert [(o.kernels, o.bytes) for o in act] == [(kernels, elems_moved * 2 * T * m.ffn_dim)]


def test_an_unknown_activation_is_a_one_line_error(tmp_path):
    import json
    from simulator.core.errors import RoofplanError
    from simulator.core.models import models_root
    cfg = json.loads((models_root() / "llama-3.2-1b.json").read_text()) | {"hidden_act": "gelu_neww"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RoofplanError, match=r"field 'hidden_act' is 'gelu_neww' \(did you mean: gelu_new"):
        load_model(str(tmp_path / "config.json"))


def test_gemma_scales_its_embeddings_and_runs_its_eager_norm_in_ten_kernels():
    """HF Gemma (modeling_gemma.py, transformers 5.17 and 5.24) multiplies the embeddings by its
    sqrt(hidden) buffer cast to bf16 (2 kernels over T x d; a fused stack's 1) and its RMSNorm
    applies (1 + weight.float()) in fp32: LlamaRMSNorm's 8 kernels and 36 B per element plus the
    weight's cast and + 1, 10 kernels and 40 B (both counted in a CPU profile of the modules'
    aten ops). Llama has neither."""
    T = 4 * 512
    job = Job(phase="prefill", batch=4, seq=512)
    hf = load_executor_profile("hf-eager")
    g = load_model("gemma-2b")
    ops = {o.name: o for o in forward_ops(g, job, hf)}
    assert (ops["embed_scale"].kernels, ops["embed_scale"].bytes) == (2, 2 * 2 * T * 2048)   # the buffer's cast, the multiply
    assert (ops["layer.attn_norm"].kernels, ops["layer.attn_norm"].bytes) == (10, 40 * T * 2048)
    vllm = {o.name: o for o in forward_ops(g, job, load_executor_profile("vllm-v1"))}
    assert vllm["embed_scale"].kernels == 1 and vllm["layer.attn_norm"].kernels == 1
    llama = {o.name: o for o in forward_ops(load_model("llama-3.2-1b"), job, hf)}
    assert "embed_scale" not in llama and llama["layer.attn_norm"].kernels == 8


def test_gemma_configs_read_as_transformers_reads_them():
    """Gemma's config.json names no tie_word_embeddings (GemmaConfig ties by default) and its legacy
    hidden_act "gelu" runs as the tanh approximation; its non-embedding parameters are the Gemma
    report's (Gemma Team 2024, Table 2: 1,981,884,416 and 7,751,248,896)."""
    for name, non_embedding in (("gemma-2b", 1_981_884_416), ("gemma-7b", 7_751_248_896)):
        m = load_model(name)
        assert (m.tie_embeddings, m.activation) == (True, "gelu_pytorch_tanh")
        assert m.params_total() - m.embedding_params == non_embedding


def test_granite_issues_its_multipliers_as_kernels(tmp_path):
    """HF Granite (modeling_granite.py, transformers 5.24) multiplies the embeddings by
    embedding_multiplier, each block's output by residual_multiplier before the residual add, and
    divides the logits by logits_scaling: one elementwise kernel each, reading and writing its
    tensor (attention_multiplier is SDPA's scale, no kernel). A Llama of the same shape has none."""
    import json
    from simulator.core.models import models_root
    cfg = json.loads((models_root() / "llama-3.2-1b.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg | {"model_type": "granite", "embedding_multiplier": 12.0,
                                                             "residual_multiplier": 0.22, "logits_scaling": 8.0}))
    granite, llama = load_model(str(tmp_path / "config.json")), load_model("llama-3.2-1b")
    job, ex = Job(phase="prefill", batch=2, seq=256), load_executor_profile("hf-eager")
    T, d, V = 512, 2048, 128256
    g = {o.name: o for o in forward_ops(granite, job, ex)}
    extra = {n: (o.count, o.kernels, o.bytes) for n, o in g.items()
             if n not in {o.name for o in forward_ops(llama, job, ex)}}
    assert extra == {"embed_scale": (1, 1, 2 * 2 * T * d), "layer.residual_add_scale": (16, 1, 2 * 2 * T * d),
                     "layer.residual_add2_scale": (16, 1, 2 * 2 * T * d), "logits_scale": (1, 1, 2 * 2 * 2 * V)}


def test_hf_moe_layers_permute_tokens_around_grouped_gemms():
    """transformers 5.x routes tokens through grouped_mm (integrations/moe.py): sort, gathers,
    histogram and offsets before the expert GEMMs, weighting, inverse permutation and the sum
    after: 10 kernels beyond a fused engine's 3-kernel combine, before the experts' gate/up GEMM,
    moving 5 a bytes per element of the T x top_k routed rows. A fused engine has none."""
    m = load_model("olmoe-1b-7b")
    job = Job(phase="decode", batch=4, context=512)
    hf = [o for o in forward_ops(m, job, load_executor_profile("hf-eager")) if o.name.startswith("moe_layer.")]
    names = [o.name for o in hf]
    (perm,) = [o for o in hf if o.name.endswith("moe_permute")]
    assert names.index("moe_layer.moe_permute") + 1 == names.index("moe_layer.experts_gate_up")
    assert (perm.kernels, perm.count, perm.bytes) == (10, 16, 5 * 2 * 4 * m.top_k * m.hidden)
    assert not [o for o in forward_ops(m, job, load_executor_profile("vllm-v1")) if "moe_permute" in o.name]
