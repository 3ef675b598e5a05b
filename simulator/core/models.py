"""Transformer model descriptions from Hugging Face `config.json` fields.

`load_model("llama-3.1-8b")` reads the project's copy in workloads/models/; `load_model(path)`
reads any HF config.json. The result is a frozen `ModelConfig` that normalises the families we
know (Llama/Mistral/Qwen2/Qwen3 dense and GQA; Mixtral/Qwen3-MoE/OLMoE/DeepSeek MoE; DeepSeek MLA;
OPT and GPT-2/3 with LayerNorm, biases and learned positions). Parameter counts come from the
per-layer weight shapes (`layer_linears`), the same shapes the op lists use.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from simulator.core.paths import data_dir
from simulator.core.errors import RoofplanError, clip, did_you_mean
from simulator.core.schema import Name, NonNegInt, PosInt, check, is_file, read_json


def models_root() -> Path:
    return data_dir("ROOFPLAN_MODELS_DIR", "workloads", "models")


# Hugging Face activations (transformers activations.py, ACT2FN) as eager PyTorch runs them, one
# kernel per tensor op: name -> (kernels, elements read + written per input element). A stack that
# fuses its activation runs FUSED_ACTIVATION. GPT-2's gelu_new is
# 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * pow(x, 3)))): 0.5 *, pow, 0.044715 *, x +,
# sqrt(2 / pi) *, tanh, 1 +, * = 8 kernels, 10 reads + 8 writes.
FUSED_ACTIVATION = (1, 2)
HF_ACTIVATIONS = {
    "silu": FUSED_ACTIVATION, "swish": FUSED_ACTIVATION, "relu": FUSED_ACTIVATION,
    "gelu": FUSED_ACTIVATION, "gelu_pytorch_tanh": FUSED_ACTIVATION,   # F.gelu, F.gelu(approximate="tanh")
    "tanh": FUSED_ACTIVATION, "sigmoid": FUSED_ACTIVATION, "mish": FUSED_ACTIVATION,
    "gelu_10": (2, 4),        # F.gelu, clip
    "quick_gelu": (3, 7),     # 1.702 *, sigmoid, x *
    "gelu_python": (5, 11),   # x * 0.5, x / sqrt(2), erf, 1 +, *
    "gelu_new": (8, 18),
    "gelu_fast": (9, 21),     # 0.5 x * (1 + tanh(x * 0.7978845608 * (1 + 0.044715 * x * x)))
}


@dataclass(frozen=True)
class Linear:
    """One weight matrix y = x W (+ b): `d_in` x `d_out`, `count` copies (experts)."""
    name: str
    d_in: int
    d_out: int
    bias: bool = False
    count: int = 1            # experts hold `count` copies; a token uses `active` of them
    active: int = 1
    moe: bool = False         # routed expert weights (tokens pick top-k)

    @property
    def params(self) -> int:
        return self.count * (self.d_in * self.d_out + (self.d_out if self.bias else 0))

    @property
    def adaptable(self) -> bool:
        """LoRA can adapt it (PEFT's all-linear): every linear but routed experts and the router."""
        return not self.moe and self.name != "router"

    @property
    def active_params(self) -> int:
        return self.active * (self.d_in * self.d_out + (self.d_out if self.bias else 0))


@dataclass(frozen=True)
class ModelConfig:
    name: str
    family: str                      # HF model_type
    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int                     # dense MLP intermediate size
    vocab: int
    max_positions: int
    tie_embeddings: bool
    gated_mlp: bool                  # SwiGLU-style gate*up (3 matrices) vs plain up/down (2)
    norm: str                        # rms | layer
    activation: str = "silu"         # the MLP's HF activation (hidden_act / activation_function)
    qkv_bias: bool = False           # Qwen2: bias on q, k, v only
    linear_bias: bool = False        # OPT/GPT: bias on every linear
    learned_positions: int = 0       # rows of a learned position table (OPT adds 2)
    qk_norm: str | None = None       # None | head (Qwen3: per head_dim) | full (OLMoE)
    # scalings some families' code applies as kernels of their own (transformers 5.24):
    embed_scale_kernels: int = 0     # embeddings x a constant, kernels under an eager stack (Gemma 2: its
                                     # 0-d sqrt(hidden) buffer cast, then the multiply; Granite 1:
                                     # x embedding_multiplier); a fused stack multiplies once
    residual_scale: bool = False     # each block's output x residual_multiplier before the add (Granite)
    logits_scale: bool = False       # logits / logits_scaling (Granite)
    norm_offset: bool = False        # RMSNorm weight applied as (1 + w) in fp32 (GemmaRMSNorm)
    # mixture of experts
    n_experts: int = 0
    top_k: int = 0
    expert_ffn_dim: int = 0
    n_shared_experts: int = 0
    shared_ffn_dim: int = 0
    n_dense_layers: int = 0          # leading layers that keep a dense MLP (DeepSeek first_k_dense_replace)
    router_bias: bool = False
    # multi-head latent attention (DeepSeek-V2/V3)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_dim: int = 0
    qk_rope_dim: int = 0
    v_head_dim: int = 0
    source: str = ""

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers if self.is_moe else 0

    @property
    def attention_kind(self) -> str:
        if self.is_mla:
            return "mla"
        return "mha" if self.n_kv_heads == self.n_heads else ("mqa" if self.n_kv_heads == 1 else "gqa")

    # ---- weights ---------------------------------------------------------------------------

    def attention_linears(self) -> list[Linear]:
        d, h, kv, hd = self.hidden, self.n_heads, self.n_kv_heads, self.head_dim
        if self.is_mla:
            qk = self.qk_nope_dim + self.qk_rope_dim
            q = ([Linear("q_a", d, self.q_lora_rank), Linear("q_b", self.q_lora_rank, h * qk)]
                 if self.q_lora_rank else [Linear("q", d, h * qk)])
            return q + [
                Linear("kv_a", d, self.kv_lora_rank + self.qk_rope_dim),
                Linear("kv_b", self.kv_lora_rank, h * (self.qk_nope_dim + self.v_head_dim)),
                Linear("o", h * self.v_head_dim, d),
            ]
        b = self.qkv_bias or self.linear_bias
        return [Linear("qkv", d, (h + 2 * kv) * hd, bias=b),
                Linear("o", h * hd, d, bias=self.linear_bias)]

    def mlp_linears(self, moe: bool) -> list[Linear]:
        d = self.hidden
        if not moe:
            f = self.ffn_dim
            if self.gated_mlp:
                return [Linear("gate_up", d, 2 * f), Linear("down", f, d)]
            return [Linear("up", d, f, bias=self.linear_bias), Linear("down", f, d, bias=self.linear_bias)]
        e, k, f = self.n_experts, self.top_k, self.expert_ffn_dim
        out = [Linear("router", d, e, bias=False),
               Linear("experts_gate_up", d, 2 * f, count=e, active=k, moe=True),
               Linear("experts_down", f, d, count=e, active=k, moe=True)]
        if self.n_shared_experts:
            fs = self.shared_ffn_dim * self.n_shared_experts
            out += [Linear("shared_gate_up", d, 2 * fs), Linear("shared_down", fs, d)]
        return out

    def layer_linears(self, moe: bool) -> list[Linear]:
        return self.attention_linears() + self.mlp_linears(moe)

    def norm_params_per_layer(self) -> int:
        per_norm = self.hidden * (2 if self.norm == "layer" else 1)
        n = 2 * per_norm
        if self.qk_norm == "head":
            n += 2 * self.head_dim
        elif self.qk_norm == "full":
            n += self.n_heads * self.head_dim + self.n_kv_heads * self.head_dim
        if self.is_mla:
            n += self.kv_lora_rank + (self.q_lora_rank or 0)
        return n

    def layer_params(self, moe: bool, active: bool = False) -> int:
        lin = sum(l.active_params if active else l.params for l in self.layer_linears(moe))
        extra = self.n_experts if (moe and self.router_bias) else 0
        return lin + self.norm_params_per_layer() + extra

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden + self.learned_positions * self.hidden

    @property
    def head_params(self) -> int:
        """LM head (0 when tied to the embedding) plus the final norm."""
        final_norm = self.hidden * (2 if self.norm == "layer" else 1)
        return final_norm + (0 if self.tie_embeddings else self.vocab * self.hidden)

    def params_total(self) -> int:
        dense = self.n_layers - self.n_moe_layers
        return (self.embedding_params + self.head_params
                + dense * self.layer_params(False) + self.n_moe_layers * self.layer_params(True))

    def params_active(self) -> int:
        """Parameters one token touches (routed experts counted top_k times, not n_experts)."""
        dense = self.n_layers - self.n_moe_layers
        return (self.embedding_params + self.head_params
                + dense * self.layer_params(False) + self.n_moe_layers * self.layer_params(True, active=True))

    # ---- caches ------------------------------------------------------------------------------

    def kv_cache_elems_per_token_layer(self) -> int:
        """Cached elements per token per layer: K and V for every KV head, or MLA's latent + rope key."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_dim
        return 2 * self.n_kv_heads * self.head_dim

    def kv_cache_elems_per_token_layer_per_gpu(self, tp: int) -> int:
        """This GPU's share under tensor parallelism: KV heads split over ranks, replicated
        once tp exceeds their number (each rank keeps at least one); MLA's latent is replicated."""
        if self.is_mla:
            return self.kv_cache_elems_per_token_layer()
        return 2 * max(1, self.n_kv_heads // tp) * self.head_dim

    def kv_cache_bytes_per_token(self, dtype_bytes: float) -> float:
        return self.n_layers * self.kv_cache_elems_per_token_layer() * dtype_bytes


# ------------------------------------------------------------------------------------------------
# loading


def _get(cfg: dict, path: Path, *keys: str, default: Any = ..., kind=int):
    """First present key of `keys`; a missing required field is a one-line error naming the file."""
    for k in keys:
        if k in cfg and cfg[k] is not None:
            v = cfg[k]
            if kind is int and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise RoofplanError(f"{path}: field '{k}' must be a non-negative integer (got {v!r})")
            return v
    if default is ...:
        raise RoofplanError(f"{path}: field '{keys[0]}' is missing; copy it from the model's HF config.json")
    return default


MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3")
_Size = PosInt | None          # a dimension or count the model needs > 0 (null: not given)
_Count = NonNegInt | None      # may be 0 (no shared experts, no dense layers, no q compression)


class HFConfigFile(BaseModel):
    """The fields of a Hugging Face config.json roofplan reads, typed and ranged; every other field
    of the file (there are dozens: rope scaling, token ids, dropout...) is the model's own business."""
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    model_type: Name
    hidden_size: _Size = None
    n_embd: _Size = None
    num_hidden_layers: _Size = None
    n_layer: _Size = None
    num_attention_heads: _Size = None
    n_head: _Size = None
    num_key_value_heads: _Size = None
    head_dim: _Size = None
    intermediate_size: _Size = None
    n_inner: _Size = None
    ffn_dim: _Size = None
    vocab_size: _Size = None
    max_position_embeddings: _Size = None
    n_positions: _Size = None
    word_embed_proj_dim: _Size = None
    tie_word_embeddings: bool | None = None
    attention_bias: bool | None = None
    enable_bias: bool | None = None
    mlp_bias: bool | None = None
    num_local_experts: _Size = None
    num_experts: _Size = None
    n_routed_experts: _Size = None
    num_experts_per_tok: _Size = None
    moe_intermediate_size: _Size = None
    n_shared_experts: _Count = None
    first_k_dense_replace: _Count = None
    decoder_sparse_step: _Size = None
    moe_layer_freq: _Size = None
    q_lora_rank: _Count = None
    kv_lora_rank: _Size = None
    qk_nope_head_dim: _Size = None
    qk_rope_head_dim: _Size = None
    v_head_dim: _Size = None
    hidden_act: Name | None = None
    activation_function: Name | None = None


# families whose HF config class ties the LM head to the embedding when config.json says nothing
# (transformers 5.24: GemmaConfig.tie_word_embeddings = True; Llama, Mistral, Qwen2/3, Phi-3,
# Granite and the MoE configs default to False; GPT-2 and OPT, parsed apart, to True)
TIED_BY_DEFAULT = ("gemma",)


def _activation(cfg: dict, path: Path, default: str) -> str:
    """The MLP activation the config names (hidden_act, GPT-2/OPT's activation_function), else the
    family's HF default; one that HF_ACTIVATIONS lacks is an error. Gemma takes the legacy "gelu"
    of its official configs as "gelu_pytorch_tanh", as transformers 5.24's configuration_gemma.py
    does (5.17 ran it as the exact gelu: one kernel either way); the hidden_activation key some of
    those configs carry is read by no family roofplan parses."""
    for key in ("hidden_act", "activation_function"):
        name = cfg.get(key)
        if name is not None:
            if name not in HF_ACTIVATIONS:
                raise RoofplanError(f"{path}: field '{key}' is {clip(repr(name))}{did_you_mean(name, HF_ACTIVATIONS)}; "
                                    f"roofplan models the Hugging Face activations {', '.join(HF_ACTIVATIONS)}")
            return "gelu_pytorch_tanh" if (name == "gelu" and cfg.get("model_type") == "gemma") else name
    return default


def parse_hf_config(cfg: Any, name: str, path: Path) -> ModelConfig:
    """A ModelConfig from a Hugging Face config.json, checked: booleans are booleans, sizes are
    positive, query heads split evenly over KV heads, an MoE routes each token to at most its
    experts. Each problem is one line naming the file and the field."""
    if not isinstance(cfg, dict):
        raise RoofplanError(f"{path}: expected a JSON object (a Hugging Face config.json)")
    check(HFConfigFile, cfg, path, fix="copy it from the model's HF config.json")
    m = _parse_hf_config(cfg, name, path)
    for attr, field in (("hidden", "hidden_size"), ("n_layers", "num_hidden_layers"), ("n_heads", "num_attention_heads"),
                        ("vocab", "vocab_size"), ("max_positions", "max_position_embeddings"), ("head_dim", "head_dim")):
        if getattr(m, attr) <= 0:
            raise RoofplanError(f"{path}: field '{field}' is {clip(getattr(m, attr))}; it must be a positive integer")
    if not m.is_mla and not (1 <= m.n_kv_heads <= m.n_heads and m.n_heads % m.n_kv_heads == 0):
        raise RoofplanError(f"{path}: field 'num_key_value_heads' is {clip(m.n_kv_heads)}; it must divide the "
                            f"{m.n_heads} attention heads (grouped-query attention)")
    if m.ffn_dim <= 0 and m.n_moe_layers < m.n_layers:
        raise RoofplanError(f"{path}: field 'intermediate_size' is {clip(m.ffn_dim)}; it must be a positive integer")
    if m.family in MOE_TYPES and not (m.n_experts >= 1 and 1 <= m.top_k <= m.n_experts and m.expert_ffn_dim > 0):
        raise RoofplanError(f"{path}: an MoE config needs experts >= 1, 1 <= experts per token <= experts and a "
                            f"positive expert MLP size (got {clip(m.n_experts)} experts, {clip(m.top_k)} "
                            f"per token, {clip(m.expert_ffn_dim)} wide)")
    return m


def _parse_hf_config(cfg: Any, name: str, path: Path) -> ModelConfig:
    if not isinstance(cfg, dict):
        raise RoofplanError(f"{path}: expected a JSON object (a Hugging Face config.json)")
    mt = cfg.get("model_type")
    if not mt:
        raise RoofplanError(f"{path}: field 'model_type' is missing; copy it from the model's HF config.json")
    g = lambda *k, **kw: _get(cfg, path, *k, **kw)  # noqa: E731
    known = ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "granite", "mixtral", "qwen3_moe", "olmoe",
             "deepseek_v3", "deepseek_v2", "opt", "gpt2")
    if mt not in known:
        raise RoofplanError(f"{path}: model_type '{mt}' is not supported; supported: {', '.join(known)}")

    if mt in ("gpt2",):
        d = g("n_embd", "hidden_size")
        return ModelConfig(
            name=name, family=mt, hidden=d, n_layers=g("n_layer", "num_hidden_layers"),
            n_heads=g("n_head", "num_attention_heads"), n_kv_heads=g("n_head", "num_attention_heads"),
            head_dim=d // g("n_head", "num_attention_heads"), ffn_dim=g("n_inner", default=4 * d),
            vocab=g("vocab_size"), max_positions=g("n_positions", "max_position_embeddings"),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", True)), gated_mlp=False, norm="layer",
            activation=_activation(cfg, path, "gelu_new"), linear_bias=True, learned_positions=g("n_positions", "max_position_embeddings"),
            source=str(cfg.get("_source", path)),
        )
    if mt == "opt":
        d = g("hidden_size")
        if cfg.get("word_embed_proj_dim", d) != d:
            raise RoofplanError(f"{path}: OPT with word_embed_proj_dim != hidden_size (opt-350m) is not supported; use another model")
        n_pos = g("max_position_embeddings")
        return ModelConfig(
            name=name, family=mt, hidden=d, n_layers=g("num_hidden_layers"),
            n_heads=g("num_attention_heads"), n_kv_heads=g("num_attention_heads"),
            head_dim=d // g("num_attention_heads"), ffn_dim=g("ffn_dim"), vocab=g("vocab_size"),
            max_positions=n_pos, tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            gated_mlp=False, norm="layer", activation=_activation(cfg, path, "relu"),
            linear_bias=bool(cfg.get("enable_bias", True)),
            learned_positions=n_pos + 2,  # OPTLearnedPositionalEmbedding offsets by 2
            source=str(cfg.get("_source", path)),
        )

    d = g("hidden_size")
    n_heads = g("num_attention_heads")
    common = dict(
        name=name, family=mt, hidden=d, n_layers=g("num_hidden_layers"), n_heads=n_heads,
        n_kv_heads=g("num_key_value_heads", default=n_heads),
        head_dim=g("head_dim", default=d // n_heads), ffn_dim=g("intermediate_size"),
        vocab=g("vocab_size"), max_positions=g("max_position_embeddings"),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", mt in TIED_BY_DEFAULT)), gated_mlp=True, norm="rms",
        activation=_activation(cfg, path, "gelu_pytorch_tanh" if mt == "gemma" else "silu"),
        qkv_bias=bool(cfg.get("attention_bias", mt in ("qwen2", "qwen2_moe"))),
        source=str(cfg.get("_source", path)),
    )
    if mt in ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "granite"):
        if mt == "qwen3":
            common["qk_norm"] = "head"
        return ModelConfig(**common, embed_scale_kernels={"gemma": 2, "granite": 1}.get(mt, 0), norm_offset=(mt == "gemma"),
                           residual_scale=(mt == "granite"), logits_scale=(mt == "granite"))
    if mt == "mixtral":
        return ModelConfig(**common, n_experts=g("num_local_experts"), top_k=g("num_experts_per_tok"),
                           expert_ffn_dim=g("intermediate_size"))
    if mt == "qwen3_moe":
        if cfg.get("mlp_only_layers") or g("decoder_sparse_step", default=1) != 1:
            raise RoofplanError(f"{path}: qwen3_moe with mlp_only_layers or decoder_sparse_step != 1 is not supported")
        return ModelConfig(**{**common, "qk_norm": "head"}, n_experts=g("num_experts"),
                           top_k=g("num_experts_per_tok"), expert_ffn_dim=g("moe_intermediate_size"))
    if mt == "olmoe":
        return ModelConfig(**{**common, "qk_norm": "full"}, n_experts=g("num_experts"),
                           top_k=g("num_experts_per_tok"), expert_ffn_dim=g("intermediate_size"))
    if mt in ("deepseek_v3", "deepseek_v2"):
        if g("moe_layer_freq", default=1) != 1:
            raise RoofplanError(f"{path}: moe_layer_freq != 1 is not supported")
        common["head_dim"] = g("v_head_dim")
        return ModelConfig(
            **common, n_experts=g("n_routed_experts"), top_k=g("num_experts_per_tok"),
            expert_ffn_dim=g("moe_intermediate_size"), n_shared_experts=g("n_shared_experts", default=0),
            shared_ffn_dim=g("moe_intermediate_size"), n_dense_layers=g("first_k_dense_replace", default=0),
            router_bias=(mt == "deepseek_v3"),  # e_score_correction_bias
            q_lora_rank=g("q_lora_rank", default=0), kv_lora_rank=g("kv_lora_rank"),
            qk_nope_dim=g("qk_nope_head_dim"), qk_rope_dim=g("qk_rope_head_dim"), v_head_dim=g("v_head_dim"),
        )
    raise RoofplanError(f"{path}: model_type '{mt}' is not supported; supported: {', '.join(known)}")


def list_models() -> list[str]:
    return sorted(p.stem for p in models_root().glob("*.json"))


@lru_cache(maxsize=256)
def _load_cached(path_str: str, name: str, mtime: float) -> ModelConfig:
    path = Path(path_str)
    cfg = read_json(path, what="model config")
    return parse_hf_config(cfg, name, path)


def load_model(name_or_path: str) -> ModelConfig:
    """A model by zoo name (workloads/models/<name>.json) or by path to an HF config.json."""
    path = Path(name_or_path)
    if path.suffix == ".json" or os.sep in name_or_path:
        if not is_file(path) and path.is_dir():
            path = path / "config.json"
        if not is_file(path):
            raise RoofplanError(f"model config {clip(path)} not found; give a zoo name or a path to an HF config.json")
        name = path.parent.name if path.name == "config.json" else path.stem
    else:
        path = models_root() / f"{name_or_path}.json"
        if not is_file(path):
            raise RoofplanError(
                f"unknown model '{clip(name_or_path)}'{did_you_mean(name_or_path, list_models())}; "
                "see `roofplan models` or give a path to an HF config.json"
            )
        name = name_or_path
    return _load_cached(str(path.resolve()), name, path.stat().st_mtime)
