"""A lean decoder in plain PyTorch, built from a ModelConfig with random weights (no hub).

Llama family: RMSNorm (eager fp32, as HF), RoPE (rotate_half), GQA attention through SDPA
(enable_gqa), SwiGLU MLP with fused gate_up and fused qkv matmuls. OPT/GPT-2 style: LayerNorm,
learned positions, plain MLP (GELU), biases. A static KV cache [B, kv_heads, max_len, d] per
layer is written in place, so a decode step has fixed shapes (CUDA-graph capturable).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from simulator.core.models import ModelConfig
from simulator.core.ops import adapted_linears
from simulator.core.profiles import load_executor_profile
from simulator.core.workload import ALL_LINEAR
from simulator.executor.fits import check_dense_decoder

# the cost model's linears of the default (fused) layout -> this decoder's modules
DECODER_LINEAR = {"qkv": "qkv", "o": "o", "gate_up": "up", "up": "up", "down": "down"}


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class LoRALinear(nn.Module):
    """y = x W^T + (x A^T) B^T * (alpha / r), base frozen; B starts at zero (LoRA, Hu et al. 2021)."""
    def __init__(self, base: nn.Linear, rank: int, alpha: float = 16.0):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.a = nn.Parameter(torch.randn(rank, base.in_features, device=base.weight.device) / math.sqrt(base.in_features))
        self.b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.a), self.b) * self.scale


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, h, kv, hd = cfg.hidden, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.h, self.kv, self.hd = h, kv, hd
        rms = cfg.norm == "rms"
        self.attn_norm = RMSNorm(d) if rms else nn.LayerNorm(d)
        self.mlp_norm = RMSNorm(d) if rms else nn.LayerNorm(d)
        self.qkv = nn.Linear(d, (h + 2 * kv) * hd, bias=cfg.qkv_bias or cfg.linear_bias)
        self.o = nn.Linear(h * hd, d, bias=cfg.linear_bias)
        self.gated = cfg.gated_mlp
        f = cfg.ffn_dim
        self.up = nn.Linear(d, 2 * f if self.gated else f, bias=cfg.linear_bias)
        self.down = nn.Linear(f, d, bias=cfg.linear_bias)
        self.rope = cfg.learned_positions == 0

    def forward(self, x, cos, sin, k_cache, v_cache, pos0: int, attend=None):
        """`attend(q, k, v, k_cache, v_cache, pos0)` -> [B, h, T, d] replaces the cache write and
        SDPA below (the plan executor attends over a host-resident cache with it)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).split([self.h * self.hd, self.kv * self.hd, self.kv * self.hd], dim=-1)
        q = q.view(B, T, self.h, self.hd).transpose(1, 2)
        k = k.view(B, T, self.kv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.kv, self.hd).transpose(1, 2)
        if self.rope:
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        a = (attend or self.attend)(q, k, v, k_cache, v_cache, pos0)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, self.h * self.hd))
        u = self.up(self.mlp_norm(x))
        if self.gated:
            g, u = u.chunk(2, dim=-1)
            u = F.silu(g) * u
        else:
            u = F.gelu(u)
        return x + self.down(u)


    def attend(self, q, k, v, k_cache, v_cache, pos0: int):
        """Write k, v into the static cache (if any) and attend over positions [0, pos0 + T)."""
        T = q.shape[2]
        if k_cache is not None:
            k_cache[:, :, pos0:pos0 + T] = k
            v_cache[:, :, pos0:pos0 + T] = v
            k, v = k_cache[:, :, :pos0 + T], v_cache[:, :, :pos0 + T]
        return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=self.kv != self.h)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, max_len: int):
        super().__init__()
        check_dense_decoder(cfg)
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        self.pos = nn.Embedding(cfg.learned_positions or 1, cfg.hidden) if cfg.learned_positions else None
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.hidden) if cfg.norm == "rms" else nn.LayerNorm(cfg.hidden)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        hd = cfg.head_dim
        inv = 1.0 / (500000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        ang = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
        emb = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def rope(self, pos0: int, T: int, dtype):
        return self.cos[pos0:pos0 + T].to(dtype), self.sin[pos0:pos0 + T].to(dtype)

    def head(self, x, last_only: bool):
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))

    def embed_tokens(self, ids, pos0: int):
        x = self.embed(ids)
        if self.pos is not None:
            x = x + self.pos(torch.arange(pos0, pos0 + ids.shape[1], device=ids.device) % self.pos.num_embeddings)
        return x


def apply_lora(model: Decoder, rank: int, targets: str = ALL_LINEAR) -> list[nn.Parameter]:
    """Freeze every weight; wrap the linears of the decoder layers that `targets` names (Job's
    lora_targets) with a LoRA adapter: the cost model's choice for this decoder's fused layout
    (the default executor: qkv, o, gate_up as `up`, down)."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = [DECODER_LINEAR[lin.name] for lin in adapted_linears(model.cfg, False, load_executor_profile("default"),
                                                                   targets)]
    params = []
    for blk in model.layers:
        for name in wrapped:
            lora = LoRALinear(getattr(blk, name), rank)
            setattr(blk, name, lora)
            params += [lora.a, lora.b]
    return params
