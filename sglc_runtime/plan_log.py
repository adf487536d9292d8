"""What the engine runs, said once at start (info): the CPU features seen, the dtype, the C
kernels and the instruction set they multiply with, the path each linear takes by row count,
attention, and what is off and why."""

from __future__ import annotations

import logging

import torch

from .kernels.cpu_kernels import cpu_decoder_available, cpu_kernels_available, cpu_q4_linear_isa
from .kernels.kernel_build import _NEEDS, cpu_flags

logger = logging.getLogger("sglc_runtime.engine")

_SHOWN = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_features() -> str:
    """The instruction sets the CPU lists that the engine's paths depend on."""
    flags = cpu_flags()
    seen = [f for f in _SHOWN if f in flags]
    return " ".join(seen) if seen else "none of " + " ".join(_SHOWN)


def _linear_path(lin, cpu: bool) -> str:
    """Row ranges of one projection (model/int4.py's wrappers, packed_linear.py's)."""
    from .model.int4 import Int4DecodeLinear, Q8DecodeHead
    from .model.packed_linear import PackedLinear

    def dense(m) -> str:
        return "oneDNN (weights packed at load)" if isinstance(m, PackedLinear) else \
            "torch F.linear"

    if isinstance(lin, Q8DecodeHead):
        top = "any" if lin.max_rows > 1 << 40 else f"1-{lin.max_rows}"
        return f"rows {top}: the file's Q8_0 codes, 8-bit kernel ({cpu_q4_linear_isa()}); " \
            f"more: {dense(lin.head)}"
    if not isinstance(lin, Int4DecodeLinear):
        return dense(lin) if cpu else "torch F.linear"
    parts, lo = [], 1
    if lin.max_rows:
        parts.append(f"rows 1-{lin.max_rows}: torch's int4 (weights requantized)")
        lo = lin.max_rows + 1
    if lin.q4_max_rows >= lo:
        top = "and up" if lin.q4_max_rows > 1 << 40 else f"-{lin.q4_max_rows}"
        parts.append(f"rows {lo}{top}: the file's 4-bit codes, 4-bit kernel "
                     f"({cpu_q4_linear_isa()})")
        lo = lin.q4_max_rows + 1
    if lo < 1 << 40:
        parts.append(f"rows {lo}+: {dense(lin.linear)}")
    return "; ".join(parts)


def _linears_fixed_order(layer) -> bool:
    """Whether every projection runs the 4-bit kernel at every row count."""
    from .model.int4 import Int4DecodeLinear

    projs = (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
             layer.mlp.down_proj)
    return all(isinstance(p, Int4DecodeLinear) and p.q4 is not None and p.max_rows == 0
               and p.q4_max_rows > 1 << 40 for p in projs)


def log_plan(cfg, model, attention) -> None:
    """One block of info lines about what this engine runs (cfg: the resolved EngineConfig)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    cpu = cfg.device == "cpu"
    lines = [f"device {cfg.device}, dtype {str(cfg.dtype).replace('torch.', '')}, "
             f"{torch.get_num_threads()} threads"]
    off = []
    if cpu:
        lines.append(f"CPU features: {cpu_features()}")
        if cfg.disable_cpu_kernels:
            off.append("C kernels (--disable-cpu-kernels)")
        elif not cpu_kernels_available():
            missing = sorted(_NEEDS - cpu_flags())
            off.append("C kernels (" + (f"the CPU lacks {' '.join(missing)}" if missing else
                                        "no C compiler or no writable cache: see the warning "
                                        "above") + ")")
        isa = cpu_q4_linear_isa()
        if isa == "avx512" and {"amx_tile", "amx_bf16"} - cpu_flags():
            off.append("AMX (not on this CPU: the 4-bit kernel multiplies with AVX-512)")
    layer = model.model.layers[0]
    lines.append("linears: " + _linear_path(layer.self_attn.qkv_proj, cpu))
    lines.append("LM head: " + _linear_path(model.lm_head, cpu) +
                 ("; top-16 logits recomputed in float32" if model.lm_head_fp32 is not None
                  else ""))
    fused = model.model.fused
    if fused is not None:
        lines.append(f"fused decoder: steps of {fused.min_rows}+ rows whose attention is all "
                     f"padded one-query rows, in calls of up to {fused.max_rows} rows")
    elif cpu and cpu_decoder_available() and cfg.dtype == torch.bfloat16:
        off.append("fused decoder (a projection has no 4-bit packing: the file is not "
                   "Q4_0/Q4_1 throughout, or --quantization none)")
    det = attention.is_deterministic(cfg.device)
    lines.append(f"attention: {attention.name}" +
                 (", decode rows through the C kernel" if getattr(attention, "cpu_kernel", False)
                  and cpu_kernels_available() else "") +
                 (", every query through it (deterministic inference)" if det else ""))
    if cfg.enable_deterministic_inference and not det:
        off.append("deterministic inference (needs bf16 on the CPU with the C kernels: rows "
                   "may still depend on their batch here)")
    elif det and not _linears_fixed_order(layer):
        off.append("deterministic inference for the linears (no 4-bit packing of the file's "
                   "own codes: oneDNN's sums depend on the rows in a call)")
    if off:
        lines.append("off: " + "; ".join(off))
    for line in lines:
        logger.info("%s", line)
