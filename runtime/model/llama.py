"""Llama-architecture decoder in PyTorch (GQA, RoPE, RMSNorm, SwiGLU), reading and writing the
paged KV pool. Module names mirror Hugging Face's LlamaForCausalLM; q/k/v and gate/up are fused."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import paged_attention
from ..config import ModelConfig
from ..forward_batch import ForwardBatch
from ..kv_pool import TokenToKVPool


class LlamaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class LlamaRotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables; applied HF-style (rotate_half over the two head halves)."""

    def __init__(self, head_dim: int, max_pos: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        t = torch.arange(max_pos, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)  # (P, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (P, hd)
        self.register_buffer("cos", emb.cos().float(), persistent=False)
        self.register_buffer("sin", emb.sin().float(), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        cos = self.cos[positions].unsqueeze(1).to(q.dtype)  # (T, 1, hd)
        sin = self.sin[positions].unsqueeze(1).to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_q, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, (self.n_q + 2 * self.n_kv) * self.hd, bias=False)
        self.o_proj = nn.Linear(self.n_q * self.hd, cfg.hidden_size, bias=False)
        self.scale = self.hd ** -0.5

    def forward(self, x, positions, rope, fb: ForwardBatch, pool: TokenToKVPool):
        T = x.shape[0]
        qkv = self.qkv_proj(x)  # (T, (n_q + 2 n_kv) hd)
        q, k, v = qkv.split([self.n_q * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], -1)
        q = q.view(T, self.n_q, self.hd)
        k = k.view(T, self.n_kv, self.hd)
        v = v.view(T, self.n_kv, self.hd)
        q, k = rope(positions, q, k)
        o = paged_attention(self.layer_id, q, k, v, fb, pool, self.scale)  # (T, n_q, hd)
        return self.o_proj(o.reshape(T, self.n_q * self.hd))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * self.inter, bias=False)
        self.down_proj = nn.Linear(self.inter, cfg.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).split(self.inter, dim=-1)  # (T, F) each
        return self.down_proj(F.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_id)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, positions, rope, fb, pool):
        x = x + self.self_attn(self.input_layernorm(x), positions, rope, fb, pool)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings,
                                               cfg.rope_theta)

    def forward(self, fb: ForwardBatch, pool: TokenToKVPool) -> torch.Tensor:
        x = self.embed_tokens(fb.input_ids)  # (T, D)
        for layer in self.layers:
            x = layer(x, fb.positions, self.rotary_emb, fb, pool)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @torch.inference_mode()
    def forward(self, fb: ForwardBatch, pool: TokenToKVPool, logit_rows: torch.Tensor | None):
        """Run one step; return float32 logits for the rows `logit_rows` of the flat batch
        (all rows when None). Shape (R, vocab)."""
        h = self.model(fb, pool)
        if logit_rows is not None:
            h = h[logit_rows]
        return self.lm_head(h).float()

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load HF-named float32 tensors, fusing q/k/v and gate/up."""
        cfg = self.config
        params = dict(self.named_parameters())
        done = set()
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            qkv = torch.cat([weights[p + f"self_attn.{n}_proj.weight"] for n in "qkv"], 0)
            params[p + "self_attn.qkv_proj.weight"].data.copy_(qkv)
            gu = torch.cat([weights[p + f"mlp.{n}_proj.weight"] for n in ("gate", "up")], 0)
            params[p + "mlp.gate_up_proj.weight"].data.copy_(gu)
            done |= {p + "self_attn.qkv_proj.weight", p + "mlp.gate_up_proj.weight"}
        for name, t in weights.items():
            if name in params and name not in done:
                params[name].data.copy_(t)
                done.add(name)
        if "lm_head.weight" not in weights:
            self.lm_head.weight = self.model.embed_tokens.weight
            done.add("lm_head.weight")
        missing = set(params) - done
        assert not missing, f"weights missing from checkpoint: {sorted(missing)[:5]}"
