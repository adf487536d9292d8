"""Llama-architecture decoder in PyTorch (GQA, RoPE, RMSNorm, SwiGLU), reading and writing the
paged KV pool. Module names mirror Hugging Face's LlamaForCausalLM; q/k/v and gate/up are fused."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import paged_attention
from ..config import ModelConfig
from ..forward_batch import ForwardBatch
from ..kernels.cpu_kernels import (
    cpu_kernels_available,
    cpu_refine_supports,
    cpu_refine_top_logits,
    cpu_rms_norm,
    cpu_rms_norm_supports,
    cpu_rope_store,
    cpu_rope_store_supports,
    cpu_silu_mul,
)
from ..kv_pool import TokenToKVPool


class LlamaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.cpu_kernel = False  # set by the loader unless --disable-cpu-kernels

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """norm(x); with `residual`, the decoder's residual add first: (norm(x + residual),
        x + residual)."""
        if residual is not None:
            if self.cpu_kernel and cpu_rms_norm_supports(x, self.weight) \
                    and residual.dtype == x.dtype and residual.device.type == "cpu":
                return cpu_rms_norm(x, self.weight, self.eps, residual)  # the lines below, in C
            x = x + residual
            return self(x), x
        if x.is_cuda:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        if self.cpu_kernel and cpu_rms_norm_supports(x, self.weight):
            return cpu_rms_norm(x, self.weight, self.eps)  # the lines below, in C
        # HF's LlamaRMSNorm, op for op: on the CPU torch's rms_norm decomposes into more ops
        # (a 16-row bf16 decode step measured 1.6 ms faster over its 61 norms this way)
        xf = x.float()
        return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)).to(x.dtype) \
            * self.weight


class LlamaRotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables, applied HF-style: x * cos + rotate_half(x) * sin, where
    rotate_half(x) = cat(-x2, x1) over the two head halves. `tables(positions)` gathers them
    once per step; `apply` rotates queries and keys together in three ops, writing
    rotate_half(x) * sin as roll(x, hd/2) * signed_sin with signed_sin = cat(-sin1, sin2)."""

    def __init__(self, head_dim: int, max_pos: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        t = torch.arange(max_pos, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)  # (P, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (P, hd)
        sin = emb.sin()
        sin[:, :head_dim // 2] *= -1
        self.register_buffer("cos", emb.cos().float(), persistent=False)
        self.register_buffer("signed_sin", sin.float(), persistent=False)

    def tables(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos, signed_sin for these positions: (T, 1, hd) each."""
        return (self.cos[positions].unsqueeze(1).to(dtype),
                self.signed_sin[positions].unsqueeze(1).to(dtype))

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        """x: (T, heads, hd) -> rotated copy."""
        return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_q, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, (self.n_q + 2 * self.n_kv) * self.hd, bias=False)
        self.o_proj = nn.Linear(self.n_q * self.hd, cfg.hidden_size, bias=False)
        self.scale = self.hd ** -0.5
        self.cpu_kernel = False  # set by the loader unless --disable-cpu-kernels

    def forward(self, x, rope_tables, fb: ForwardBatch, pool: TokenToKVPool):
        T = x.shape[0]
        qkv = self.qkv_proj(x)  # (T, (n_q + 2 n_kv) hd)
        kbuf, vbuf = pool.k_buffer[self.layer_id], pool.v_buffer[self.layer_id]
        if self.cpu_kernel and cpu_rope_store_supports(qkv, kbuf):
            # the lines below in one C call: RoPE, and K and V into the pool (k, v = None)
            q = cpu_rope_store(qkv, *rope_tables, fb.out_cache_loc, kbuf, vbuf, self.n_q)
            o = paged_attention(self.layer_id, q, None, None, fb, pool, self.scale)
            return self.o_proj(o.reshape(T, self.n_q * self.hd))
        n_qk = (self.n_q + self.n_kv) * self.hd
        qk = LlamaRotaryEmbedding.apply(qkv[:, :n_qk].view(T, self.n_q + self.n_kv, self.hd),
                                        *rope_tables)
        q, k = qk[:, :self.n_q], qk[:, self.n_q:]
        v = qkv[:, n_qk:].view(T, self.n_kv, self.hd)
        o = paged_attention(self.layer_id, q, k, v, fb, pool, self.scale)  # (T, n_q, hd)
        return self.o_proj(o.reshape(T, self.n_q * self.hd))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * self.inter, bias=False)
        self.down_proj = nn.Linear(self.inter, cfg.hidden_size, bias=False)
        self.cpu_kernel = False  # set by the loader unless --disable-cpu-kernels

    def forward(self, x):
        gu = self.gate_up_proj(x)  # (T, 2F)
        if self.cpu_kernel and gu.device.type == "cpu" and gu.dtype == torch.bfloat16 \
                and gu.dim() == 2 \
                and gu.stride(1) == 1 and cpu_kernels_available():
            return self.down_proj(cpu_silu_mul(gu))  # the lines below in one C call
        gate, up = gu.split(self.inter, dim=-1)  # (T, F) each
        return self.down_proj(F.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_id)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, residual, rope_tables, fb, pool):
        """x: this layer's input, or the last layer's output when `residual` holds the stream
        it adds to (None for the first layer). Returns (output, residual stream)."""
        if residual is None:
            h, residual = self.input_layernorm(x), x
        else:
            h, residual = self.input_layernorm(x, residual)
        h, residual = self.post_attention_layernorm(
            self.self_attn(h, rope_tables, fb, pool), residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings,
                                               cfg.rope_theta)
        self.fused = None  # a FusedDecoder (model/fused_decoder.py), set by the loader

    def forward(self, fb: ForwardBatch, pool: TokenToKVPool) -> torch.Tensor:
        x, residual = self.embed_tokens(fb.input_ids), None  # (T, D)
        rope_tables = self.rotary_emb.tables(fb.positions, x.dtype)
        if self.fused is not None and self.fused.applies(fb, x.shape[0], pool):
            return self.fused.run(x, rope_tables, fb, pool)  # the lines below in one C call
        for layer in self.layers:
            x, residual = layer(x, residual, rope_tables, fb, pool)
        return self.norm(x) if residual is None else self.norm(x, residual)[0]


#: logits per row recomputed in float32 when the model runs in 16 bits (see refine_top_logits)
REFINE_TOP_K = 16


def top_k_indices(logits: torch.Tensor, k: int, block: int = 128) -> torch.Tensor:
    """The indices of each row's k largest logits (R, k), in no particular order: the k
    largest lie in the k blocks of `block` logits with the largest maxima, so a top-k over
    block maxima, then over those blocks' k*block logits, finds them (2.2x faster than a
    top-k over a 49k vocabulary on the CPU)."""
    R, V = logits.shape
    if V % block or V // block < k:
        return logits.topk(k, dim=-1).indices
    blocks = logits.view(R, V // block, block).amax(-1).topk(k, dim=-1).indices  # (R, k)
    cand = (blocks.unsqueeze(-1) * block
            + torch.arange(block, device=logits.device)).view(R, k * block)
    return cand.gather(1, logits.gather(1, cand).topk(k, dim=-1).indices)


def refine_top_logits(logits: torch.Tensor, h: torch.Tensor, weight32: torch.Tensor,
                      k: int = REFINE_TOP_K) -> None:
    """In place: each row's k largest logits recomputed in float32 (the hidden state times the
    LM head's float32 weight). A 16-bit LM head rounds its outputs to 8 significant bits, so
    near-ties among the top candidates (greedy decoding's whole decision) come out as exact
    ties or swapped; the rest of the vocabulary cannot win against them, and its rounding
    barely moves a softmax. Costs a top-k and R*k dot products; a float32 LM head over the
    whole vocabulary would cost 3x the bfloat16 one."""
    if 0 < k <= 64 and cpu_refine_supports(logits, h, weight32):
        return cpu_refine_top_logits(logits, h, weight32, k)  # the lines below, in C
    idx = top_k_indices(logits, min(k, logits.shape[-1]))  # (R, k)
    exact = torch.einsum("rkd,rd->rk", weight32[idx], h.float())
    logits.scatter_(1, idx, exact)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.lm_head_fp32: torch.Tensor | None = None  # set when the model runs in 16 bits

    @torch.inference_mode()
    def forward(self, fb: ForwardBatch, pool: TokenToKVPool, logit_rows: torch.Tensor | None):
        """Run one step; return float32 logits for the rows `logit_rows` of the flat batch
        (all rows when None). Shape (R, vocab). In 16 bits, each row's top candidates are
        exact float32 products (`refine_top_logits`)."""
        h = self.model(fb, pool)
        if logit_rows is not None:
            h = h[logit_rows]
        logits = self.lm_head(h).float()
        if self.lm_head_fp32 is not None:
            refine_top_logits(logits, h, self.lm_head_fp32)
        return logits

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
