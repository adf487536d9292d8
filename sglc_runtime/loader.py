"""Load a Llama-family checkpoint (GGUF file or Hugging Face folder) into a config and tensors."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .config import ModelConfig
from .errors import ModelLoadError

logger = logging.getLogger(__name__)

# GGUF tensor name -> Hugging Face parameter name ({i} is the layer index).
_GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's interleaved-RoPE row permutation so HF's rotate_half RoPE applies."""
    out_dim = w.shape[0]
    return w.reshape(n_head, out_dim // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_config(reader) -> ModelConfig:
    """Read a ModelConfig from GGUF metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "mistral"):
        raise ModelLoadError(f"GGUF architecture {arch!r} is not supported (llama family only)")
    p = arch + "."
    n_head = int(_field(reader, p + "attention.head_count"))
    hidden = int(_field(reader, p + "embedding_length"))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    return ModelConfig(
        vocab_size=int(_field(reader, p + "vocab_size", len(tokens.data))),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, p + "feed_forward_length")),
        num_hidden_layers=int(_field(reader, p + "block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=int(_field(reader, p + "attention.head_count_kv", n_head)),
        head_dim=int(_field(reader, p + "rope.dimension_count", hidden // n_head)),
        rope_theta=float(_field(reader, p + "rope.freq_base", 10000.0)),
        rms_norm_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon", 1e-5)),
        max_position_embeddings=int(_field(reader, p + "context_length", 4096)),
        tie_word_embeddings=not has_output,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
        name=str(_field(reader, "general.name", arch)),
    )


def load_gguf(path: Path, cache: bool = True) -> tuple[ModelConfig, dict[str, torch.Tensor],
                                                      object]:
    """Read config, dequantized float32 weights (HF names and layout) and the reader itself.
    With `cache` (and SGLC_DEQUANT_CACHE not "0") the float32 weights are read from, or
    written to, the cache's dequantized/ folder (`_dequant_cache_path`)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # gguf raises bare ValueError/struct errors on bad files
        raise ModelLoadError(f"{path} is not a readable GGUF file: {e}") from e
    cfg = gguf_config(reader)
    cache = cache and os.environ.get("SGLC_DEQUANT_CACHE", "1") != "0"
    cached = _dequant_cache_path(path)
    if cache and cached.exists():
        from safetensors.torch import load_file

        return cfg, load_file(str(cached)), reader
    weights = _dequantize_all(reader, path, cfg)
    if cache:
        _save_dequant_cache(weights, cached)
    return cfg, weights, reader


_PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_GROUP32_4BIT = ("Q4_0", "Q4_1", "Q4_K")  # every 32 weights share one scale and offset


def gguf_projections_are_4bit(path: Path) -> bool:
    """Whether every decoder projection of a GGUF file is stored in a 4-bit format whose
    weights are `scale * code + offset` per group of 32 (int4.quantize_int4 then reproduces
    the codes exactly: repacking them loses nothing)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path} is not a readable GGUF file: {e}") from e
    types = [t.tensor_type.name for t in reader.tensors
             if t.name.startswith("blk.") and t.name.split(".")[2] in _PROJECTIONS]
    return bool(types) and all(t in _GROUP32_4BIT for t in types)


def gguf_q4_projections(reader, cfg: ModelConfig) -> dict[str, tuple] | None:
    """The decoder projections' own 4-bit codes, scales and offsets (`q4_linear.q4_from_gguf`:
    codes (N, K) uint8, d and m (N, K/32) float16), under their HF names with rows in HF's
    order, when every projection is Q4_0 or Q4_1; otherwise None. Their `q4_dequantize` is
    the float32 weight `load_gguf` returns (bit for bit but for the sign of a zero)."""
    from .kernels.q4_linear import q4_from_gguf

    out = {}
    for t in reader.tensors:
        parts = t.name.split(".", 2)
        if t.name.startswith("blk.") and parts[2].split(".")[0] in _PROJECTIONS:
            q4 = q4_from_gguf(t.tensor_type.name, t.data)
            if q4 is None:
                logger.info("%s is %s: 4-bit decode linears read Q4_0/Q4_1 blocks only (torch's "
                            "int4 path instead)", t.name, t.tensor_type.name)
                return None
            heads = {"attn_q.weight": cfg.num_attention_heads,
                     "attn_k.weight": cfg.num_key_value_heads}.get(parts[2])
            if heads:  # the rows of every part follow the weight's RoPE row order
                q4 = tuple(torch.from_numpy(np.ascontiguousarray(_unpermute_rope(a.numpy(), heads)))
                           for a in q4)
            out[f"model.layers.{parts[1]}.{_GGUF_TO_HF[parts[2]]}"] = q4
    return out or None


def gguf_q8_head(reader) -> tuple | None:
    """The LM head's own Q8_0 codes and scales (`q4_linear.q8_from_gguf`; output.weight, else
    the tied token_embd.weight), or None when it is stored otherwise."""
    from .kernels.q4_linear import q8_from_gguf

    by_name = {t.name: t for t in reader.tensors}
    t = by_name.get("output.weight", by_name.get("token_embd.weight"))
    return None if t is None else q8_from_gguf(t.tensor_type.name, t.data)


def _dequant_cache_path(path: Path) -> Path:
    """Dequantizing in numpy takes ~20 s; the float32 result (538 MB for the default model's
    93 MB file) is cached beside other models, keyed by the GGUF file's identity (path, size,
    mtime): a later load reads it in ~1 s."""
    import hashlib

    from .model_source import cache_dir

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "dequantized" / f"{path.stem}-{key[:16]}.safetensors"


def _save_dequant_cache(weights: dict[str, torch.Tensor], target: Path) -> None:
    try:
        from safetensors.torch import save_file
    except ImportError:
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        save_file(weights, str(tmp))
        tmp.replace(target)
    except OSError as e:  # a read-only or full cache only costs speed
        logger.warning("could not cache dequantized weights at %s: %s", target, e)
        return
    logger.info("cached the dequantized float32 weights (%.0f MB) at %s for faster loads "
                "(--disable-dequant-cache or SGLC_DEQUANT_CACHE=0 skips it)",
                target.stat().st_size / 1e6, target)


def _dequantize_all(reader, path: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    import gguf

    weights: dict[str, torch.Tensor] = {}
    for t in tqdm(reader.tensors, desc="Dequantizing GGUF", unit="tensor", leave=False,
                  disable=None):
        if t.name.startswith("blk."):
            _, idx, rest = t.name.split(".", 2)
            if rest not in _GGUF_TO_HF:
                continue
            name = f"model.layers.{idx}.{_GGUF_TO_HF[rest]}"
        elif t.name in _GGUF_TO_HF:
            name = _GGUF_TO_HF[t.name]
        else:
            continue
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise ModelLoadError(f"{path}: tensor {t.name} has unsupported type "
                                 f"{t.tensor_type.name}") from e
        arr = np.asarray(arr, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
        if rest_is(t.name, "attn_q.weight"):
            arr = _unpermute_rope(arr, cfg.num_attention_heads)
        elif rest_is(t.name, "attn_k.weight"):
            arr = _unpermute_rope(arr, cfg.num_key_value_heads)
        weights[name] = torch.from_numpy(np.array(arr, dtype=np.float32, order="C"))
    return weights


def rest_is(name: str, suffix: str) -> bool:
    return name.startswith("blk.") and name.endswith("." + suffix)


def hf_config(folder: Path) -> ModelConfig:
    """Read a ModelConfig from a Hugging Face config.json."""
    c = json.loads((folder / "config.json").read_text())
    archs = c.get("architectures") or []
    if c.get("model_type") not in ("llama", "mistral") and not any("Llama" in a for a in archs):
        raise ModelLoadError(f"{folder}: model_type {c.get('model_type')!r} is not llama-family")
    n_head = c["num_attention_heads"]
    scaling = c.get("rope_scaling") or (c.get("rope_parameters") or {})
    if scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise ModelLoadError(f"{folder}: RoPE scaling {scaling.get('rope_type')!r} is not "
                             "supported")
    eos = c.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
    return ModelConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=n_head, num_key_value_heads=c.get("num_key_value_heads", n_head),
        head_dim=c.get("head_dim") or c["hidden_size"] // n_head,
        rope_theta=(c.get("rope_parameters") or {}).get("rope_theta", c.get("rope_theta", 1e4)),
        rms_norm_eps=c.get("rms_norm_eps", 1e-5),
        max_position_embeddings=c.get("max_position_embeddings", 4096),
        tie_word_embeddings=c.get("tie_word_embeddings", False),
        bos_token_id=c.get("bos_token_id"), eos_token_ids=eos_ids, name=folder.name)


def load_hf_folder(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read config and float32 weights from a folder of safetensors files."""
    from safetensors.torch import load_file

    cfg = hf_config(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} holds no .safetensors files")
    weights = {}
    for f in tqdm(files, desc="Loading safetensors", leave=False, disable=None):
        weights.update({k: v.float() for k, v in load_file(str(f)).items()})
    return cfg, weights
