"""Op lists: FLOPs and HBM bytes of every kernel a step runs, per GPU.

A decoder layer is the same op sequence for every family; the model's `Linear` shapes, the
attention kind (MHA/GQA/MLA) and the MoE routing change the numbers. Each op family has its own
function below (formula and source in its docstring); `layer_forward_ops` concatenates them in
the order a layer issues its kernels. Ops that repeat per layer carry `count = layers on this
GPU`. Conventions:
  * GEMM FLOPs = 2 M N K; bytes = inputs + weights + outputs, once each (weights re-read from
    HBM every step: they do not fit in L2).
  * Causal attention FLOPs = B h S^2 (d_qk + d_v)  (half of the full S x S square).
  * Elementwise, norm and copy ops count one FLOP per element they produce unless stated.
  * Backward = 2x the forward GEMM FLOPs (input and weight gradients); frozen weights (LoRA)
    skip the weight gradient.
Every size may be a numpy array (the vectorised sweep passes arrays of batch, seq and context):
the formulas only multiply and add them, never branch on them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

from simulator.core.constants import ADAM_FLOPS, ADAM_TRAFFIC_BYTES, LOSS_BYTES_PER_LOGIT, RECAST_TRAFFIC_BYTES
from simulator.core.errors import FieldError
from simulator.core.models import FUSED_ACTIVATION, HF_ACTIVATIONS, Linear, ModelConfig
from simulator.core.profiles import ExecutorProfile
from simulator.core.quant import gemm_dtype, gemm_kind, is_quantized, weight_bytes_per_param
from simulator.core.units import DTYPE_BYTES
from simulator.core.workload import ALL_LINEAR, Job, linear_parts, lora_target_names

OP_CLASSES = ("gemm", "attention", "norm", "elementwise", "embedding", "loss", "optimizer",
              "copy", "communication")
# Op.kind of a memory-bound op that is one contiguous streaming kernel, the kind the microbenchmarks
# time (the decode KV append by torch.cat, torch's fused layer_norm): no in-model slowdown
STREAMING = "streaming"
LORA_IN, LORA_OUT = "lora_in", "lora_out"   # PEFT's cast of an adapted input; its scale-add-cast of the output

# Cross-entropy over the vocabulary in fp32 (HF upcasts the bf16 logits before the loss). Forward
# bytes per logit: constants.LOSS_BYTES_PER_LOGIT = 2 + 4 + 4 (the bf16 logits read, fp32 values
# written and read back); backward: 4 + 4 + 4 + 2 (fp32 log-probabilities and gradient read and
# written, the bf16 gradient of the logits written). FLOPs per logit are approximate counts of
# the log-softmax (max, subtract, exp, sum, log) and of its gradient (softmax minus one-hot,
# scale, cast).
LOSS_BWD_BYTES_PER_LOGIT = 4.0 + 4.0 + 4.0 + 2.0
LOSS_FWD_FLOPS_PER_LOGIT = 5.0
LOSS_BWD_FLOPS_PER_LOGIT = 3.0
# fused AdamW launches: one kernel per 2e8 parameters (the multi-tensor apply works through the
# parameter list in chunks; an approximation of the launch count, not a measured constant)
ADAM_PARAMS_PER_KERNEL = 2e8

ATTENTION_PROJECTIONS = ("qkv", "q", "k", "v", "q_a", "q_b", "kv_a", "kv_b", "o")
DOWN_PROJECTIONS = ("down", "experts_down", "shared_down")   # row-parallel; their input is the activation
# linears whose input the autocast casts (in the attention block / the MLP block)
ATTENTION_CAST_INPUTS = frozenset({"qkv", "q", "k", "v", "q_a", "kv_a"})
MLP_CAST_INPUTS = frozenset({"gate_up", "gate", "up"})
MOE_CAST_INPUTS = frozenset({"router"})


@dataclass(frozen=True)
class Op:
    name: str
    cls: str             # one of OP_CLASSES
    flops: float         # per instance
    bytes: float         # HBM bytes read + written per instance
    count: int = 1       # instances per step
    kernels: int = 1     # kernel launches per instance
    pass_: str = "fwd"   # fwd | bwd | opt
    kind: str = ""       # sub-kind the time model needs: attn_prefill | attn_decode | allreduce ...
    dtype: str = "bf16"
    seq: int = 0         # attention: query length (causal waste ~ diag/seq)
    group: int = 0       # communication: ranks in the collective (0 = the tensor-parallel group)


def experts_touched(n_experts: int, top_k: int, tokens: int) -> float:
    """Expected distinct experts hit by `tokens` tokens each routed to top_k of n (uniform routing)."""
    if n_experts == 0:
        return 0.0
    return n_experts * (1.0 - (1.0 - top_k / n_experts) ** tokens)


def split_tp(lin: Linear, tp: int) -> tuple[int, int]:
    """Megatron split: column-parallel for up/qkv projections, row-parallel for o/down."""
    if tp == 1 or lin.name == "router":
        return lin.d_in, lin.d_out
    if lin.name in ("o", "down", "experts_down", "shared_down"):
        return lin.d_in // tp, lin.d_out
    return lin.d_in, lin.d_out // tp


def lora_math_dtype(ex: ExecutorProfile, job: Job) -> str:
    """The dtype of PEFT's adapter math (its two GEMMs, scale and add): the adapters' own, or the
    compute dtype under torch.autocast (a stack that trains in it: autocast_weight_casts), which
    casts the GEMMs' fp32 inputs and weights down."""
    return job.dtype if ex.autocast_weight_casts else ex.lora_adapter_dtype


def residual_bytes(ex: ExecutorProfile, job: Job) -> float:
    """Bytes per element of the residual stream: autocast training with fp32 parameters keeps it
    in fp32 (the executor's train_residual_bytes); LoRA freezes the base in the compute dtype, so
    the embedding output and every residual add stay in it, as in inference."""
    if job.phase == "train" and not job.lora_rank:
        return ex.train_residual_bytes
    return DTYPE_BYTES[job.dtype]


def _linears(model: ModelConfig, moe: bool, ex: ExecutorProfile) -> list[Linear]:
    """The layer's linears as the executor issues them: q/k/v and gate/up split unless it fuses
    them (for every model, or for this model's family: `fused_families`)."""
    out = []
    fused_qkv = ex.fused_qkv or f"{model.family}.qkv" in ex.fused_families
    fused_gate_up = ex.fused_gate_up or f"{model.family}.gate_up" in ex.fused_families
    for lin in model.layer_linears(moe):
        if lin.name == "qkv" and not fused_qkv:
            hd = model.head_dim
            out += [Linear("q", lin.d_in, model.n_heads * hd, lin.bias),
                    Linear("k", lin.d_in, model.n_kv_heads * hd, lin.bias),
                    Linear("v", lin.d_in, model.n_kv_heads * hd, lin.bias)]
        elif lin.name == "gate_up" and not fused_gate_up:
            f = lin.d_out // 2
            out += [Linear("gate", lin.d_in, f), Linear("up", lin.d_in, f)]
        else:
            out.append(lin)
    return out


# --------------------------------------------------------------------------------------------
# one decoder layer, one op family per function


@dataclass(frozen=True)
class LayerCall:
    """The arguments of one `layer_forward_ops` call and the per-GPU sizes every op family of
    the layer reads. `tokens`, `batch`, `q_len` and `kv_len` may be numpy arrays."""
    model: ModelConfig
    job: Job
    ex: ExecutorProfile
    moe: bool
    count: int       # layers of this kind on this GPU
    tokens: int      # tokens through the layer: batch x q_len (+ a decode step's prefill chunk)
    batch: int       # sequences
    q_len: int       # query tokens per sequence (1 in decode)
    kv_len: int      # decode: tokens already in the KV cache
    prefix: str      # op-name prefix ("layer.", "moe_layer.")

    @property
    def tp(self) -> int:
        return self.job.tp

    @property
    def ep(self) -> int:
        """Expert-parallel ranks (1 in a dense layer)."""
        return self.job.ep if self.moe else 1

    @property
    def act_bytes(self) -> float:
        """Bytes per activation element (the compute dtype)."""
        return DTYPE_BYTES[self.job.dtype]

    @property
    def weight_bytes(self) -> float:
        """Bytes per layer weight element: the compute dtype's, or the job's weight_dtype with
        its group scales (simulator.core.quant.weight_bytes_per_param)."""
        return weight_bytes_per_param(self.job) if is_quantized(self.job) else DTYPE_BYTES[self.job.dtype]

    @property
    def residual_bytes(self) -> float:
        """Bytes per element of the residual stream (`residual_bytes`)."""
        return residual_bytes(self.ex, self.job)

    @property
    def heads(self) -> int:
        """Query heads on this GPU (Megatron splits heads over tp ranks)."""
        return max(1, self.model.n_heads // self.tp)

    @property
    def kv_heads(self) -> int:
        """K/V heads on this GPU: split over tp ranks, replicated once tp exceeds their number;
        MLA expands its latent to one K/V per query head."""
        return max(1, self.model.n_kv_heads // self.tp) if not self.model.is_mla else self.heads

    @cached_property
    def linears(self) -> list[Linear]:
        """The layer's weight matrices as this executor issues them (fused or split q/k/v and gate/up)."""
        return _linears(self.model, self.moe, self.ex)


def _elementwise_op(c: LayerCall, name: str, elems, bytes_per_elem, kernels: int = 1) -> Op:
    """A memory-bound op over `elems` elements: one FLOP and `bytes_per_elem` HBM bytes each."""
    return Op(f"{c.prefix}{name}", "elementwise", elems, elems * bytes_per_elem, c.count, kernels, dtype=c.job.dtype)


EAGER_NORM_CAST_KERNELS = 2        # x.float() and .to(input_dtype) of an eager RMSNorm
EAGER_NORM_CAST_BYTES = 6 + 6 - 4  # per element: the casts (2 + 4, 4 + 2 B) less the fp32 weight multiply's extra 4 B
GEMMA_NORM_EXTRA_KERNELS = 2       # weight.float() and 1.0 + of GemmaRMSNorm
GEMMA_NORM_EXTRA_BYTES = 4         # its weight product reads and writes fp32 (8 B) where Llama's cast writes bf16 first


def _norm_op(name: str, model: ModelConfig, job: Job, ex: ExecutorProfile, tokens, count: int,
             residual_bytes: float | None = None, width: int | None = None) -> Op:
    """One RMSNorm / LayerNorm over `tokens` x `width` elements (default the hidden size: the layer
    norms and the final norm; the query/key norms pass their projection's width).
    An eager RMSNorm (HF LlamaRMSNorm: x.float(), pow, mean, add, rsqrt, mul, .to(input_dtype),
    weight *) reads an fp32 residual (training under autocast) without its two casts: 6 kernels
    and 28 B per element instead of 8 and 36 (both traced: 198 norm kernels for 33 norms in the
    Llama-3.2-1B training trace, 520 for 65 in the 8B inference trace). A LayerNorm (GPT-2, OPT)
    under such an eager stack is torch's fused layer_norm, one streaming kernel at 2 x the
    residual's bytes per element; a stack with fused norms (norm_kernels 1) gives its own bytes."""
    width = model.hidden if width is None else width
    flops = (
        4.0  # FLOPs per element: square, mean, scale by the reciprocal root, weight multiply
        * tokens  # T: tokens normalised
        * width  # elements normalised per token
    )
    if model.norm != "rms" and ex.eager_modules:
        # a LayerNorm is torch's fused layer_norm whatever the stack's eager RMSNorm sequence: one
        # kernel reading the input and writing the output once (at the residual's width in training)
        r = residual_bytes or DTYPE_BYTES[job.dtype]
        return Op(name, "norm", flops, 2 * r * tokens * width, count, 1, kind=STREAMING, dtype=job.dtype)
    per_elem = ex.norm_bytes_per_elem * DTYPE_BYTES[job.dtype] / 2   # the profile counts them at bf16
    kernels = ex.norm_kernels if model.norm == "rms" else 1   # LayerNorm: one fused kernel
    if residual_bytes == 4 and model.norm == "rms" and kernels > EAGER_NORM_CAST_KERNELS + 4:
        per_elem, kernels = ex.norm_bytes_per_elem - EAGER_NORM_CAST_BYTES, kernels - EAGER_NORM_CAST_KERNELS
    if model.norm_offset and ex.eager_modules:
        # GemmaRMSNorm multiplies by (1.0 + weight.float()) in fp32 before the cast back: the
        # weight's cast and + 1 (d elements, two more kernels) and an fp32 product instead of
        # LlamaRMSNorm's bf16 one (transformers 5.24 modeling_gemma.py)
        per_elem, kernels = per_elem + GEMMA_NORM_EXTRA_BYTES, kernels + GEMMA_NORM_EXTRA_KERNELS
    bytes_ = (
        per_elem  # HBM bytes per element of the executor's norm kernels
        * tokens  # T: tokens normalised
        * width  # elements normalised per token
    )
    return Op(name, "norm", flops, bytes_, count, kernels, dtype=job.dtype)


def norm_ops(c: LayerCall, name: str) -> list[Op]:
    """Pre-attention / pre-MLP norm: ~4 FLOPs per element (square, mean, rsqrt scale, weight);
    HBM bytes and kernels from the executor profile. HF transformers' eager RMSNorm is 8 kernels
    (x.float(), pow, mean, add, rsqrt, mul, to(bf16), mul weight) moving 36 B per bf16 element
    (executor profile default.yaml / hf-eager.yaml); apex's fused LayerNorm is one kernel reading
    and writing the element once, 4 B (megatron.yaml)."""
    return [_norm_op(f"{c.prefix}{name}", c.model, c.job, c.ex, c.tokens, c.count, c.residual_bytes)]


def qk_norm_ops(c: LayerCall) -> list[Op]:
    """Query and key norms before RoPE (Qwen3: an RMSNorm over each head's head_dim, OLMoE: over
    the whole projection; the same elements either way): two norms of the executor's kind (HF's
    q_norm and k_norm modules are eager RMSNorms, 8 kernels each) over T x h x d_head and
    T x h_kv x d_head elements of this rank."""
    if not c.model.qk_norm:
        return []
    return [_norm_op(f"{c.prefix}{name}", c.model, c.job, c.ex, c.tokens, c.count, width=heads * c.model.head_dim)
            for name, heads in (("q_norm", c.heads), ("k_norm", c.kv_heads))]


def autocast_cast_ops(c: LayerCall, inputs: frozenset) -> list[Op]:
    """torch.autocast casts: training keeps the residual stream in fp32 (r bytes) and every
    linear in `inputs` that reads it first casts its input to the compute dtype (a bytes): one
    kernel per linear, reading r and writing a bytes per element (PyTorch autocast; the
    executor's train_residual_bytes: 4 for HF/PyTorch, 2 for Megatron's bf16 residual, no casts).
    Elements = linears x tokens x hidden."""
    n_linears = sum(1 for lin in c.linears if lin.name in inputs)
    if c.residual_bytes == c.act_bytes or not n_linears:
        return []
    elems = (
        n_linears  # one cast per linear that reads the residual stream
        * c.tokens  # T: tokens through the layer
        * c.model.hidden  # d: hidden size
    )
    bytes_per_elem = (
        c.residual_bytes  # read the fp32 residual
        + c.act_bytes  # write the compute-dtype copy
    )
    return [_elementwise_op(c, f"autocast_cast_{'_'.join(sorted(inputs))[:12]}", elems, bytes_per_elem, n_linears)]


def _dense_gemm_cost(c: LayerCall, k_in: int, n_out: int):
    """(FLOPs, bytes) of tokens x k_in @ k_in x n_out: GEMM FLOPs = 2 M N K; the weights read
    once, the input read and the output written once."""
    flops = (
        2.0  # FLOPs per multiply-add
        * c.tokens  # M
        * k_in  # K
        * n_out  # N
    )
    weights = (
        k_in  # K: input features on this rank
        * n_out  # N: output features on this rank
        * c.weight_bytes  # bytes per weight element
    )
    activations = (
        c.tokens  # T: tokens through the layer
        * (k_in + n_out)  # read the input row, write the output row
        * c.act_bytes  # bytes per activation element
    )
    return flops, weights + activations


def _expert_gemm_cost(c: LayerCall, lin: Linear, k_in: int, n_out: int):
    """(FLOPs, bytes) of a routed-expert GEMM on this rank (Switch Transformer, Fedus et al. 2021;
    GShard, Lepikhin et al. 2020): each token runs top_k experts, so FLOPs = 2 (T k / ep) K N for
    the token-expert pairs on this rank under balanced routing; the weights of every expert the
    batch touches are read (`experts_touched`, uniform routing), and each pair reads its input
    and writes its output."""
    routed = (
        c.tokens  # T: tokens through the layer
        * lin.active  # top_k experts per token
        / c.ep  # pairs spread evenly over the expert-parallel ranks
    )
    touched = experts_touched(lin.count, lin.active, c.tokens) / c.ep   # distinct experts on this rank
    flops = (
        2.0  # FLOPs per multiply-add
        * routed  # M: token-expert pairs
        * k_in  # K
        * n_out  # N
    )
    weights = (
        touched  # experts whose weights this batch reads
        * k_in  # K: input features on this rank
        * n_out  # N: output features on this rank
        * c.weight_bytes  # bytes per weight element
    )
    activations = (
        routed  # token-expert pairs on this rank
        * (k_in + n_out)  # read the input row, write the output row
        * c.act_bytes  # bytes per activation element
    )
    return flops, weights + activations


def lora_adapter_ops(c: LayerCall, lin: Linear) -> list[Op]:
    """The ops PEFT adds beside a frozen linear (Hu et al. 2021; peft.tuners.lora.layer.Linear.forward:
    result = base(x); x = x.to(adapter dtype); result = result + lora_B(lora_A(x)) * scaling;
    result.to(base dtype)), with the adapters in the executor's `lora_adapter_dtype` (PEFT keeps
    them in fp32 by default: autocast_adapter_dtype=True): the input cast, two small GEMMs
    (2 T r k_in and 2 T r n_out FLOPs), and scale, add and cast back over the output, in the
    adapter math dtype (`lora_math_dtype`). Under torch.autocast the GEMMs cast the fp32 input
    copy and both adapter weights back to the compute dtype first (3 more kernels), and the
    output chain stays in the compute dtype (no cast back)."""
    k_in, n_out = split_tp(lin, c.tp)
    r = c.job.lora_rank
    a = c.act_bytes
    ad = DTYPE_BYTES[c.ex.lora_adapter_dtype]
    mdt = lora_math_dtype(c.ex, c.job)
    g = DTYPE_BYTES[mdt]
    T = c.tokens
    name = f"{c.prefix}{lin.name}.lora"
    ops = []
    if ad != a:
        ops.append(Op(f"{name}_cast_in", "elementwise", T * k_in, T * k_in * (a + ad), c.count, 1, kind=LORA_IN,
                      dtype=c.job.dtype))
    if g != ad:
        # autocast: lora_A's fp32 input and both fp32 adapter weights cast down (a reverse cast each back)
        ops.append(Op(f"{name}_autocast", "elementwise", T * k_in, (T * k_in + k_in * r + r * n_out) * (ad + g),
                      c.count, 3, kind="cast", dtype=c.job.dtype))
    ops.append(Op(f"{name}_A", "gemm",
                  2.0 * T * r * k_in,  # FLOPs: T x k_in times k_in x r
                  (T * k_in + k_in * r + T * r) * g,  # x, A, x A in the adapter math dtype
                  c.count, kind="lora", dtype=mdt))
    ops.append(Op(f"{name}_B", "gemm",
                  2.0 * T * r * n_out,  # FLOPs: T x r times r x n_out
                  (T * r + r * n_out + T * n_out) * g,  # x A, B, its output
                  c.count, kind="lora", dtype=mdt))
    cast_back = g != a   # .to(base dtype) is a no-op when the math ran in the base's dtype
    ops.append(Op(f"{name}_scale_add", "elementwise", 2.0 * T * n_out,
                  T * n_out * (
                      2 * g  # * scaling: read and write the adapter output
                      + (a + 2 * g)  # base + adapter, promoted to the math dtype
                      + ((g + a) if cast_back else 0)),  # cast the sum back to the base dtype
                  c.count, 3 if cast_back else 2, kind=LORA_OUT, dtype=c.job.dtype))
    return ops


def adapted_linears(model: ModelConfig, moe: bool, ex: ExecutorProfile, targets: str = ALL_LINEAR) -> list[Linear]:
    """The linears PEFT wraps with LoRA adapters, as this executor issues them: those `targets`
    names (Job.lora_targets; all-linear: every one but the routed experts and the router). A
    target that names part of a linear this stack fuses (q of its qkv) cannot be adapted alone."""
    names = None if targets == ALL_LINEAR else lora_target_names(targets)
    out = []
    for lin in (lin for lin in _linears(model, moe, ex) if lin.adaptable):
        parts = linear_parts(lin.name)
        if names is None or names.issuperset(parts):
            out.append(lin)
        elif names.intersection(parts):
            raise FieldError("lora_targets", targets, f"the {ex.name} stack runs {', '.join(parts)} as one "
                             f"linear ({lin.name})", f"target all of {', '.join(parts)} or none")
    return out


def with_lora(c: LayerCall, ops: list[Op]) -> list[Op]:
    """`ops` with PEFT's adapter ops after each linear `adapted_linears` picks for the job's
    lora_targets."""
    if not c.job.lora_rank:
        return ops
    adapted = {lin.name: lin for lin in adapted_linears(c.model, c.moe, c.ex, c.job.lora_targets)}
    out = []
    for op in ops:
        out.append(op)
        short = op.name[len(c.prefix):]
        if op.cls == "gemm" and short in adapted:
            out += lora_adapter_ops(c, adapted[short])
    return out


def _gemm_op(c: LayerCall, lin: Linear) -> Op:
    """One linear layer on this GPU: Megatron's tensor-parallel split (Shoeybi et al. 2019:
    q/k/v, gate/up column-parallel, o/down row-parallel; experts split tp / ep ways, each of the ep
    ranks holding n_experts / ep whole experts), plus the LoRA adapters when training them (not
    on experts or the router)."""
    k_in, n_out = split_tp(lin, c.tp // c.ep if lin.moe else c.tp)
    if lin.moe:
        flops, bytes_ = _expert_gemm_cost(c, lin, k_in, n_out)
    else:
        flops, bytes_ = _dense_gemm_cost(c, k_in, n_out)
    if is_quantized(c.job):   # fp8 W8A8 on fp8 tensor cores; int8/int4 dequantised (simulator.core.quant)
        return Op(f"{c.prefix}{lin.name}", "gemm", flops, bytes_, c.count, kind=gemm_kind(c.job), dtype=gemm_dtype(c.job))
    return Op(f"{c.prefix}{lin.name}", "gemm", flops, bytes_, c.count, dtype=c.job.dtype)


def attention_projection_ops(c: LayerCall) -> list[Op]:
    """The projections before attention: fused qkv (or q, k, v when the executor splits them) of
    width (h + 2 h_kv) d_head; MLA (DeepSeek-V2, Liu et al. 2024, sec. 2.1): q_a, q_b (or q),
    kv_a to the kv_lora_rank latent + rope key, kv_b up to per-head keys and values. GEMM FLOPs =
    2 M N K, column-parallel over tp (Shoeybi et al. 2019); LoRA adapters in `_gemm_op`."""
    ops = []
    for lin in c.linears:
        if lin.name == "o":
            break
        if lin.name in ATTENTION_PROJECTIONS:
            ops.append(_gemm_op(c, lin))
    return ops


def output_projection_ops(c: LayerCall) -> list[Op]:
    """The attention output projection o (h d_v -> hidden): GEMM FLOPs = 2 M N K, row-parallel over
    tp (Shoeybi et al. 2019: its partial sums are all-reduced after it)."""
    return [_gemm_op(c, lin) for lin in c.linears if lin.name == "o"]


def rotary_embedding_ops(c: LayerCall) -> list[Op]:
    """RoPE (RoFormer, Su et al. 2021) on the queries and keys: elements = T (h + h_kv) d_head;
    MLA rotates only the decoupled rope part, one key shared by all heads: T (h + 1) d_rope
    (DeepSeek-V2 sec. 2.1.3). HBM bytes and kernels per element from the executor (HF
    rotate_half: x cos, neg, cat, x sin, add for q and for k, 10 kernels and 20 B per element;
    Megatron's fused kernel: 2 kernels, 8 B). Learned absolute positions (GPT-2/3, OPT) have none."""
    if c.model.learned_positions:
        return []
    rope_dim = c.model.qk_rope_dim if c.model.is_mla else c.model.head_dim
    rotated_heads = (
        c.heads  # queries
        + (1 if c.model.is_mla else c.kv_heads)  # keys (MLA: the one shared rope key)
    )
    elems = (
        c.tokens  # T: tokens through the layer
        * rotated_heads  # heads rotated per token
        * rope_dim  # rotated dimensions per head
    )
    return [_elementwise_op(c, "rope", elems, c.ex.rope_bytes_per_elem, c.ex.rope_kernels)]


def kv_cache_write_ops(c: LayerCall) -> list[Op]:
    """Inference: write the new tokens' K and V (MLA: the latent and rope key) into the cache,
    e_kv = model.kv_cache_elems_per_token_layer_per_gpu(tp) elements per token: read them in the
    compute dtype, write them in the cache dtype. An executor that appends by torch.cat (HF
    DynamicCache, `kv_cache_concat`) instead copies the whole cache in decode: read the L cached
    tokens, write L + 1. Training keeps no cache."""
    if c.job.phase == "train":
        return []
    kv_elems = c.model.kv_cache_elems_per_token_layer_per_gpu(c.tp)
    elems = (
        c.tokens  # T: tokens through the layer
        * kv_elems  # K/V elements per token on this rank
    )
    if not (c.ex.kv_cache_concat and c.job.phase == "decode"):
        bytes_per_elem = (
            c.act_bytes  # read the new K/V
            + c.job.kv_bytes_per_elem  # write them into the cache
        )
        return [_elementwise_op(c, "kv_write", elems, bytes_per_elem, 2)]   # K and V
    cache_copy = (
        c.batch  # B: sequences
        * kv_elems  # K/V elements per token on this rank
        * (2 * c.kv_len + 1)  # read the L cached tokens, write L + 1
        * c.job.kv_bytes_per_elem  # bytes per cache element
    )
    new_tokens = (
        c.tokens  # T: tokens through the layer
        * kv_elems  # K/V elements per token on this rank
        * c.act_bytes  # read the new K/V
    )
    return [Op(f"{c.prefix}kv_write", "elementwise", elems, cache_copy + new_tokens, c.count, 2, kind=STREAMING,
               dtype=c.job.dtype)]


def _attention_head_dims(model: ModelConfig, phase: str) -> tuple[int, int]:
    """(d_qk, d_v) per head. MLA decode attends over the latent with W_UK absorbed into the query
    and W_UV into the output (DeepSeek-V2 sec. 2.1.2): d_qk = kv_lora_rank + d_rope, d_v =
    kv_lora_rank; MLA prefill expands per-head keys (d_nope + d_rope) and values (d_v)."""
    if model.is_mla and phase == "decode":
        return model.kv_lora_rank + model.qk_rope_dim, model.kv_lora_rank
    if model.is_mla:
        return model.qk_nope_dim + model.qk_rope_dim, model.v_head_dim
    return model.head_dim, model.head_dim


def decode_attention_ops(c: LayerCall) -> list[Op]:
    """Decode attention, q = q_len queries per sequence (1; 1 + K when a speculative step verifies
    K drafted tokens) over L = kv_len + q keys: FLOPs = 2 B q h L (d_qk + d_v) (QK^T and AV; the
    causal mask among the q new tokens is ignored, q << L); bytes = the KV cache read once, B L
    e_kv in the cache dtype (x the executor's attn_decode_traffic_scale: a paged kernel that
    moves more than the cache once), plus the queries read and the outputs written (2 B q h d_v)."""
    d_qk, d_v = _attention_head_dims(c.model, c.job.phase)
    keys = c.kv_len + c.q_len   # L: the cached tokens and the new ones
    flops = (
        2.0  # FLOPs per multiply-add
        * c.batch  # B: sequences
        * c.q_len  # q: queries per sequence
        * c.heads  # h: query heads on this rank
        * keys  # L: keys per query
        * (d_qk + d_v)  # QK^T, then AV
    )
    cache = (
        c.batch  # B: sequences
        * keys  # L: keys per query
        * c.model.kv_cache_elems_per_token_layer_per_gpu(c.tp)  # e_kv: cached elements per token on this rank
        * c.job.kv_bytes_per_elem  # bytes per cache element
        * c.ex.attn_decode_traffic_scale  # HBM bytes moved per byte of cache (1: read once)
    )
    query_out = (
        2  # read the query, write the output
        * c.batch * c.q_len  # B q: the sequences' queries (not a prefill chunk's tokens beside them)
        * c.heads  # h: query heads on this rank
        * d_v  # d_v: value dimensions per head
        * c.act_bytes  # bytes per activation element
    )
    return [Op(f"{c.prefix}attention", "attention", flops, cache + query_out, c.count,
               kind="attn_decode", dtype=c.job.dtype)]


def repeat_kv_ops(c: LayerCall) -> list[Op]:
    """HF eager `repeat_kv` (`ex.repeat_kv`): with fewer K/V heads than query heads, K and V are
    copied to one per query head before attention: 2 T h d elements, read and written."""
    if not (c.ex.repeat_kv and c.kv_heads < c.heads):
        return []
    d_qk, _ = _attention_head_dims(c.model, c.job.phase)
    elems = (
        2  # K and V
        * c.tokens  # T: tokens through the layer
        * c.heads  # h: query heads on this rank
        * d_qk  # d_qk: query/key dimensions per head
    )
    bytes_per_elem = (
        2  # read and write
        * c.act_bytes  # bytes per activation element
    )
    return [_elementwise_op(c, "repeat_kv", elems, bytes_per_elem, 2)]


def flash_attention_ops(c: LayerCall) -> list[Op]:
    """Fused causal attention over S = q_len tokens per sequence (FlashAttention-2, Dao 2023):
    FLOPs = B h S^2 (d_qk + d_v), half of the full square's 2 B h S^2 (d_qk + d_v); bytes = Q, K,
    V read and O written once, T (h (d_qk + d_v) + 2 h_kv d_qk), the scores stay on chip.
    With P = kv_len cached prefix tokens (prefix caching) the S new queries also attend to all P:
    FLOPs = B h S (S + 2P) (d_qk + d_v), and the P cached K, V are read from the cache."""
    d_qk, d_v = _attention_head_dims(c.model, c.job.phase)
    S = c.q_len
    flops = (
        c.batch  # B: sequences
        * c.heads  # h: query heads on this rank
        * S  # S: tokens per sequence
        * (S + 2 * c.kv_len)  # S: keys of the causal half, 2P: the cached prefix seen by every query
        * (d_qk + d_v)  # QK^T and AV; the causal half of 2 (d_qk + d_v)
        * 1.0  # as a float
    )
    per_token = (
        c.heads * (d_qk + d_v)  # read Q, write O
        + 2 * c.kv_heads * d_qk  # read K and V
    )
    bytes_ = (
        c.tokens  # T: tokens through the layer
        * per_token  # elements read and written per token
        * c.act_bytes  # bytes per activation element
    ) + (
        c.batch  # B: sequences
        * c.kv_len  # P: cached prefix tokens (0 without prefix caching)
        * 2 * c.kv_heads * d_qk  # their K and V
        * c.job.kv_bytes_per_elem  # bytes per cache element
    )
    return [Op(f"{c.prefix}attention", "attention", flops, bytes_, c.count, kind="attn_prefill",
               dtype=c.job.dtype, seq=S)]


def unfused_attention_ops(c: LayerCall) -> list[Op]:
    """Unfused attention as Megatron-LM (2021) runs it (`ex.attn_score_bytes_per_elem` > 0): two
    batched GEMMs over the full S x S square, attn_qk FLOPs = 2 B h S^2 d_qk and attn_av FLOPs =
    2 B h S^2 d_v, and the B h S^2 scores materialised in HBM for scale-mask-softmax and dropout
    (attn_scores: 3 kernels, the profile's bytes per score element, the s^2 term of Korthikanti
    et al. 2022). A cached prefix of P = kv_len tokens (prefix caching) widens the square to
    S x (S + P) and its K, V are read from the cache."""
    d_qk, d_v = _attention_head_dims(c.model, c.job.phase)
    S = c.q_len
    keys = S + c.kv_len   # the new tokens and the cached prefix
    qk_flops = (
        2.0  # FLOPs per multiply-add
        * c.batch  # B: sequences
        * c.heads  # h: query heads on this rank
        * S  # queries
        * keys  # keys (the full square)
        * d_qk  # d_qk: query/key dimensions per head
    )
    qk_bytes = (
        c.tokens  # T: tokens through the layer
        * (c.heads + c.kv_heads)  # read Q and K
        * d_qk  # d_qk: query/key dimensions per head
        * c.act_bytes  # bytes per activation element
    ) + c.batch * c.kv_len * c.kv_heads * d_qk * c.job.kv_bytes_per_elem   # the cached prefix's K
    scores = (
        c.batch  # B: sequences
        * c.heads  # h: query heads on this rank
        * S  # S: tokens per sequence
        * keys  # keys per query
    )
    av_flops = (
        2.0  # FLOPs per multiply-add
        * c.batch  # B: sequences
        * c.heads  # h: query heads on this rank
        * S  # queries
        * keys  # keys (the full square)
        * d_v  # d_v: value dimensions per head
    )
    av_bytes = (
        c.tokens  # T: tokens through the layer
        * (c.heads + c.kv_heads)  # read V, write O
        * d_v  # d_v: value dimensions per head
        * c.act_bytes  # bytes per activation element
    ) + c.batch * c.kv_len * c.kv_heads * d_v * c.job.kv_bytes_per_elem   # the cached prefix's V
    return [
        Op(f"{c.prefix}attn_qk", "gemm", qk_flops, qk_bytes, c.count, dtype=c.job.dtype),
        _elementwise_op(c, "attn_scores", scores, c.ex.attn_score_bytes_per_elem, 3),
        Op(f"{c.prefix}attn_av", "gemm", av_flops, av_bytes, c.count, dtype=c.job.dtype),
    ]


def attention_core_ops(c: LayerCall) -> list[Op]:
    """Attention itself: decode over the KV cache (and a prefill chunk's attention beside it,
    `chunk_attention_ops`), or (prefill, training) repeat_kv where the executor materialises it,
    then flash or unfused attention."""
    if c.job.phase == "decode":
        return decode_attention_ops(c) + chunk_attention_ops(c)
    core = unfused_attention_ops(c) if c.ex.attn_score_bytes_per_elem else flash_attention_ops(c)
    return repeat_kv_ops(c) + core


def chunk_attention_ops(c: LayerCall) -> list[Op]:
    """Chunked prefill (Agrawal et al. 2024, Sarathi-Serve; vLLM V1, SGLang): the N =
    job.chunk_tokens prompt tokens of one more request go through the decode step's linears with
    its B tokens (`forward_ops`: T = B + N), and their attention is that of a prefill of N tokens
    with the M = job.chunk_context tokens of earlier chunks cached: N queries against M + N keys,
    causal within the chunk, FLOPs = h N (N + 2M) (d_qk + d_v), the M cached K, V read from the
    cache (the prefill path: `flash_attention_ops` or the executor's unfused attention, MLA
    expanded per head). Ops named chunk_*; none without a chunk."""
    if not c.job.chunk_tokens:
        return []
    N = c.job.chunk_tokens
    chunk = replace(c, job=replace(c.job, phase="prefill"), tokens=N, batch=1, q_len=N, kv_len=c.job.chunk_context,
                    prefix=f"{c.prefix}chunk_")
    return attention_core_ops(chunk)


def tensor_parallel_allreduce_ops(c: LayerCall, block: str) -> list[Op]:
    """The all-reduce after the row-parallel o (block "attn") and down (block "mlp") projections
    (Shoeybi et al. 2019: 2 per layer forward), T x hidden activations. Pure expert parallelism
    (ep = tp) needs no MLP all-reduce: the combine all-to-all already sums the experts. With
    sequence parallelism (Korthikanti et al. 2022, sec. 4.2.2) the same volume moves as an
    all-gather + reduce-scatter, and the norms and residual adds run on T / tp tokens; the
    training step model applies that to these ops."""
    if not c.tp > 1 or (block == "mlp" and c.ep > 1 and c.ep == c.tp):
        return []
    bytes_ = (
        c.tokens  # T: tokens through the layer
        * c.model.hidden  # d: hidden size
        * c.act_bytes  # bytes per activation element
    )
    return [Op(f"{c.prefix}{block}_allreduce", "communication", 0.0, bytes_, c.count, kind="allreduce")]


def residual_add_ops(c: LayerCall, name: str) -> list[Op]:
    """x + f(x) on T x hidden elements: read the residual (r bytes) and the block's output (a),
    write the residual (r); r = 4 under autocast training with an fp32 residual stream. Granite
    first multiplies the block's output by residual_multiplier: one more kernel, read and write a."""
    elems = (
        c.tokens  # T: tokens through the layer
        * c.model.hidden  # d: hidden size
    )
    bytes_per_elem = (
        c.act_bytes  # read the block output
        + 2 * c.residual_bytes  # read and write the residual stream
    )
    scale = [_elementwise_op(c, f"{name}_scale", elems, 2 * c.act_bytes)] if c.model.residual_scale else []
    return scale + [_elementwise_op(c, name, elems, bytes_per_elem)]


def router_topk_ops(c: LayerCall) -> list[Op]:
    """MoE router's softmax and top-k selection over the n_experts logits of each token: 4
    kernels moving 4 a bytes per logit (T n_experts elements)."""
    elems = (
        c.tokens  # T: tokens through the layer
        * c.model.n_experts  # router logits per token
    )
    return [_elementwise_op(c, "router_topk", elems, 4 * c.act_bytes, 4)]


def activation_ops(c: LayerCall, down: Linear) -> list[Op]:
    """The activation before a down projection, on its input (this rank's intermediate columns x
    tokens, top_k / ep of them for experts): one fused kernel, read + write, or under an eager
    stack its Hugging Face module's op sequence (GPT-2's gelu_new: 8 kernels moving 18 elements
    per element; models.HF_ACTIVATIONS); gated (SwiGLU, Shazeer 2020) act(gate) * up adds the
    multiply, 1 kernel and 2 reads + 1 write per element."""
    features = down.d_in // (c.tp // c.ep if down.moe else c.tp)
    rows = c.tokens * c.model.top_k / c.ep if down.moe else c.tokens   # token-expert pairs / tokens
    elems = (
        features  # this rank's intermediate columns
        * rows  # tokens (experts: token-expert pairs on this rank)
    )
    kernels, moved = HF_ACTIVATIONS[c.model.activation] if c.ex.eager_modules else FUSED_ACTIVATION
    if c.model.gated_mlp:
        kernels, moved = kernels + 1, moved + 3   # * up: read both, write the product
    return [_elementwise_op(c, f"act_{down.name}", elems, moved * c.act_bytes, kernels)]


MOE_PERMUTE_BYTES_PER_ELEM = 5   # x a, per element of the routed rows: gather in (2), weighting and gather back
                                 # (2 + 2) and the sum's read of the rows (1), less the combine's 2


def moe_permute_ops(c: LayerCall) -> list[Op]:
    """An eager stack's token permutation around the routed experts (transformers 5.x grouped_mm
    experts, integrations/moe.py: sort the token-expert pairs by expert, gather their rows and
    weights, cast, histogram and prefix-sum the group offsets; after the experts, weight the rows,
    build and apply the inverse permutation, sum each token's rows): ex.moe_permute_kernels
    kernels beyond the combine's, moving MOE_PERMUTE_BYTES_PER_ELEM x a bytes per element of the
    T k / ep routed rows x hidden. A fused engine's permutation lives in its MoE kernels (0)."""
    if not (c.moe and c.ex.moe_permute_kernels):
        return []
    elems = (
        c.tokens  # T: tokens through the layer
        * c.model.top_k / c.ep  # routed rows per token on this rank
        * c.model.hidden  # d: hidden size
    )
    return [_elementwise_op(c, "moe_permute", elems, MOE_PERMUTE_BYTES_PER_ELEM * c.act_bytes, c.ex.moe_permute_kernels)]


def moe_combine_ops(c: LayerCall) -> list[Op]:
    """Weighted sum of each token's top_k expert outputs: T k hidden elements, read and written
    (3 kernels)."""
    elems = (
        c.tokens  # T: tokens through the layer
        * c.model.top_k  # k: experts per token
        * c.model.hidden  # d: hidden size
    )
    return [_elementwise_op(c, "moe_combine", elems, 2 * c.act_bytes, 3)]


def mlp_ops(c: LayerCall) -> list[Op]:
    """The MLP block: dense gate/up (or up) -> activation -> down; in an MoE layer (Switch,
    Fedus et al. 2021; GShard, Lepikhin et al. 2020) the router (top-k, then its GEMM), the routed
    experts' gate/up -> activation -> down, shared experts (DeepSeek) the same way, and the combine
    of the top_k outputs. GEMMs in `_gemm_op` (2 M N K, Megatron split)."""
    ops = router_topk_ops(c) if c.moe else []
    for lin in c.linears:
        if lin.name in ATTENTION_PROJECTIONS:
            continue
        if lin.name == "experts_gate_up":
            ops += moe_permute_ops(c)
        if lin.name in DOWN_PROJECTIONS:
            ops += activation_ops(c, lin)
        ops.append(_gemm_op(c, lin))
    if c.moe:
        ops += moe_combine_ops(c)
    return ops


def expert_parallel_all_to_all_ops(c: LayerCall) -> list[Op]:
    """Expert parallelism (GShard, Lepikhin et al. 2020): dispatch each token's top_k copies to
    the experts' ranks and combine them back, two all-to-alls among the ep ranks; bytes are this
    rank's send buffer, T k hidden / ep."""
    if not c.ep > 1:
        return []
    return [Op(f"{c.prefix}{name}", "communication", 0.0, _all_to_all_bytes(c), c.count, kind="all_to_all",
               group=c.ep)
            for name in ("moe_dispatch", "moe_combine_a2a")]


def _all_to_all_bytes(c: LayerCall):
    """This rank's send buffer of one expert-parallel all-to-all."""
    return (
        c.tokens  # T: tokens through the layer
        * c.model.top_k  # one copy per routed expert
        * c.model.hidden  # d: hidden size
        * c.act_bytes  # bytes per activation element
        / c.ep  # this rank's share of the copies
    )


def layer_forward_ops(model: ModelConfig, job: Job, ex: ExecutorProfile, moe: bool, count: int,
                      tokens: int, batch: int, q_len: int, kv_len: int, prefix: str) -> list[Op]:
    """Forward ops of one decoder layer on one GPU (tensor-parallel shard of `job.tp`), in the
    order the layer issues them."""
    c = LayerCall(model, job, ex, moe, count, tokens, batch, q_len, kv_len, prefix)
    return with_lora(c, (
        norm_ops(c, "attn_norm")
        + autocast_cast_ops(c, ATTENTION_CAST_INPUTS)
        + attention_projection_ops(c)
        + qk_norm_ops(c)
        + rotary_embedding_ops(c)
        + kv_cache_write_ops(c)
        + attention_core_ops(c)
        + output_projection_ops(c)
        + tensor_parallel_allreduce_ops(c, "attn")
        + residual_add_ops(c, "residual_add")
        + norm_ops(c, "mlp_norm")
        + autocast_cast_ops(c, MOE_CAST_INPUTS if moe else MLP_CAST_INPUTS)
        + mlp_ops(c)
        + expert_parallel_all_to_all_ops(c)
        + tensor_parallel_allreduce_ops(c, "mlp")
        + residual_add_ops(c, "residual_add2")
    ))


# --------------------------------------------------------------------------------------------
# the model: embedding, layers, head


def embedding_ops(model: ModelConfig, job: Job, ex: ExecutorProfile, tokens) -> list[Op]:
    """Token embedding lookup: a gather, no FLOPs; each token reads its table row and writes the
    activation, 2 x hidden elements. (Learned position rows, where a model has them, are not
    counted separately.) Gemma and Granite then scale the embeddings (sqrt(hidden), the
    embedding_multiplier): an elementwise multiply reading and writing them, under an eager stack
    as HF issues it (Gemma casts its 0-d scale buffer first: `model.embed_scale_kernels`)."""
    elems = (
        tokens  # rows: tokens
        * model.hidden  # d: hidden size
    )
    a = DTYPE_BYTES[job.dtype]
    ops = [Op("embedding", "embedding", 0.0, elems * 2 * a, 1, 1, dtype=job.dtype)]   # read the row, write the activation
    if model.embed_scale_kernels:
        kernels = model.embed_scale_kernels if ex.eager_modules else 1
        ops.append(Op("embed_scale", "elementwise", elems, elems * 2 * a, 1, kernels, dtype=job.dtype))
    return ops


def lm_head_ops(model: ModelConfig, job: Job, ex: ExecutorProfile, tokens) -> list[Op]:
    """Final norm and the LM head over `tokens` positions: the norm as the layers' (`norm_ops`);
    the head a GEMM, FLOPs = 2 M N K with N = vocab / tp (column-parallel vocabulary, Shoeybi
    et al. 2019), the d x V / tp weights read once, the input read and the logits written once."""
    d = model.hidden
    v = model.vocab // job.tp   # this rank's vocabulary columns
    a = DTYPE_BYTES[job.dtype]
    flops = (
        2.0  # FLOPs per multiply-add
        * tokens  # M
        * d  # K
        * v  # N
    )
    elems = (
        d * v  # weights
        + tokens * (d + v)  # read the hidden states, write the logits
    )
    ops = [
        _norm_op("final_norm", model, job, ex, tokens, 1, residual_bytes(ex, job)),
        Op("lm_head", "gemm", flops, elems * a, 1, dtype=job.dtype),
    ]
    if model.logits_scale:   # Granite: logits / logits_scaling, one kernel reading and writing them
        ops.append(Op("logits_scale", "elementwise", tokens * v, 2 * tokens * v * a, 1, 1, dtype=job.dtype))
    return ops


def forward_ops(model: ModelConfig, job: Job, ex: ExecutorProfile, layers: int | None = None,
                batch: int | None = None, embed: bool = True, head: bool = True) -> list[Op]:
    """Forward ops on one GPU: embedding, `layers` decoder layers, final norm and LM head."""
    B = job.batch if batch is None else batch
    q_len = job.query_tokens   # decode 1 (+ speculative tokens), prefill the uncached prompt
    T = B * q_len + job.chunk_tokens   # decode: and a prefill chunk's tokens (chunked prefill)
    n_layers = model.n_layers if layers is None else layers
    ops: list[Op] = []
    if embed:
        ops += embedding_ops(model, job, ex, T)
    n_moe = min(model.n_moe_layers, n_layers) if model.is_moe else 0
    n_dense = n_layers - n_moe
    kw = dict(tokens=T, batch=B, q_len=q_len, kv_len=job.context if job.phase == "decode" else job.cached_tokens)
    if n_dense:
        ops += layer_forward_ops(model, job, ex, False, n_dense, prefix="layer.", **kw)
    if n_moe:
        ops += layer_forward_ops(model, job, ex, True, n_moe, prefix="moe_layer.", **kw)
    if head:
        # prefill: logits of the last position only; decode: every query (1, or 1 + K to verify
        # K speculative tokens) and a prefill chunk's last token; training: every position
        rows = {"prefill": B, "decode": B * q_len + (1 if job.chunk_tokens else 0)}.get(job.phase, T)
        ops += lm_head_ops(model, job, ex, rows)
    return ops


def backward_ops(fwd: list[Op], job: Job, ex: ExecutorProfile) -> list[Op]:
    """Backward of a forward op list: GEMMs 2x (1x when weights are frozen), attention by the
    profile's ratio (applied in the time model via kind), memory-bound ops the executor's
    backward_memory_ratio x their forward traffic (2 in theory: read the saved input and the
    incoming gradient, write one gradient; eager autograd with fp32 norms and gradient
    accumulation moves more -- the executor profile carries the fitted value). PEFT's adapter
    chains have the autograd nodes traced from its code (`lora_adapter_ops`)."""
    memory_ratio = ex.backward_memory_ratio
    a, ad, g = DTYPE_BYTES[job.dtype], DTYPE_BYTES[ex.lora_adapter_dtype], DTYPE_BYTES[lora_math_dtype(ex, job)]
    out = []
    for op in fwd:
        if op.cls == "gemm":
            frozen = job.lora_rank > 0 and op.kind != "lora"     # the adapters themselves train
            mult = 1.0 if frozen else 2.0
            out.append(Op(op.name + ".bwd", "gemm", op.flops * mult, op.bytes * mult, op.count, 2 if not frozen else 1,
                          "bwd", dtype=op.dtype))
        elif op.cls == "attention":
            out.append(Op(op.name + ".bwd", "attention", op.flops * 2.5, op.bytes * 2, op.count, 1, "bwd",
                          "attn_prefill_bwd", op.dtype, op.seq))
        elif op.cls == "communication":
            out.append(Op(op.name + ".bwd", op.cls, 0.0, op.bytes, op.count, 1, "bwd", op.kind))
        elif op.cls == "embedding":
            out.append(Op(op.name + ".bwd", "embedding", 0.0, op.bytes * 2, op.count, 3, "bwd", dtype=op.dtype))
        elif op.kind == LORA_IN:
            # ToCopyBackward0 back to the input dtype, then add_ into the input's gradient (the
            # base linear's): 2 kernels, (ad + a) + 3 a bytes per input element (op.flops of them)
            out.append(Op(op.name + ".bwd", op.cls, op.flops, op.flops * (ad + 4 * a), op.count, 2, "bwd", op.kind,
                          op.dtype))
        elif op.kind == LORA_OUT:
            # the grad of .to(base dtype) back to the math dtype, the add's cast of the base
            # branch's grad (both only when the dtypes differ), and * scaling: (a + g) + (g + a)
            # + 2 g bytes per output element (op.flops / 2 of them) in 3 kernels, or 2 g in 1
            n, casts = op.flops / 2, g != a
            out.append(Op(op.name + ".bwd", op.cls, op.flops, n * ((2 * a + 4 * g) if casts else 2 * g), op.count,
                          3 if casts else 1, "bwd", op.kind, op.dtype))
        elif op.kind == "cast":
            # a cast's gradient is the reverse cast: the same bytes, one kernel per tensor
            out.append(Op(op.name + ".bwd", op.cls, op.flops, op.bytes, op.count, op.kernels, "bwd", op.kind, op.dtype))
        else:
            out.append(Op(op.name + ".bwd", op.cls, op.flops * 2, op.bytes * memory_ratio, op.count,
                          max(1, round(op.kernels * memory_ratio / 2)), "bwd", op.kind, op.dtype))
    return out


def trainable_params(model: ModelConfig, job: Job, ex: ExecutorProfile) -> float:
    """Parameters the optimizer updates (per model replica, before TP/PP/ZeRO sharding): all of
    them, or with LoRA rank x (in + out) for each linear PEFT adapts as the executor lays the
    modules out (`adapted_linears`: HF Llama's q, k, v, o, gate, up, down each; the fused qkv and
    gate_up of a fused stack once). Llama-3.1-8B at rank 16 under HF: 41,943,040, what PEFT's
    print_trainable_parameters reports."""
    if not job.lora_rank:
        return float(model.params_total())

    def per_layer(moe: bool) -> int:
        return sum(job.lora_rank * (lin.d_in + lin.d_out) for lin in adapted_linears(model, moe, ex, job.lora_targets))
    n_moe = model.n_moe_layers
    return float((model.n_layers - n_moe) * per_layer(False) + (n_moe * per_layer(True) if n_moe else 0))


def loss_ops(model: ModelConfig, job: Job, tokens: int) -> list[Op]:
    """Cross-entropy over this rank's vocabulary, tokens x vocab / tp logits: fp32 upcast of the
    logits, log-softmax and NLL, then their backward (HF computes the loss in fp32). Bytes per
    logit: forward constants.LOSS_BYTES_PER_LOGIT (2 + 4 + 4), backward LOSS_BWD_BYTES_PER_LOGIT
    (4 + 4 + 4 + 2); 3 kernels each."""
    logits = (
        tokens  # rows: tokens
        * (model.vocab // job.tp)  # this rank's vocabulary shard
    )
    return [
        Op("loss.upcast_softmax", "loss", LOSS_FWD_FLOPS_PER_LOGIT * logits, logits * LOSS_BYTES_PER_LOGIT, 1, 3),
        Op("loss.softmax_bwd", "loss", LOSS_BWD_FLOPS_PER_LOGIT * logits, logits * LOSS_BWD_BYTES_PER_LOGIT, 1, 3,
           "bwd"),
    ]


def optimizer_ops(model: ModelConfig, job: Job, params_on_gpu: float) -> list[Op]:
    """Fused AdamW over fp32 master weights: read p, g, m, v; write p, m, v (ADAM_TRAFFIC_BYTES =
    28 B and ADAM_FLOPS = 12 per parameter), plus the bf16 working copy of the weights that mixed
    precision recasts each step (RECAST_TRAFFIC_BYTES = 6 B per parameter: read 4, write 2);
    sources in simulator.core.constants."""
    kernels = max(1, math.ceil(params_on_gpu / ADAM_PARAMS_PER_KERNEL))
    return [
        Op("optimizer.adamw", "optimizer", ADAM_FLOPS * params_on_gpu, ADAM_TRAFFIC_BYTES * params_on_gpu, 1,
           kernels, "opt", dtype="fp32"),
        Op("optimizer.cast_weights", "elementwise", params_on_gpu, RECAST_TRAFFIC_BYTES * params_on_gpu, 1,
           kernels, "opt", dtype="fp32"),
    ]
