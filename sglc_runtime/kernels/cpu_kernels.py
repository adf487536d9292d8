"""The CPU kernels in C for bfloat16 on AVX-512-BF16 CPUs: paged decode attention reading the
KV pool in place (`cpu_decode_attention.c`), RMSNorm (`cpu_rms_norm.c`), RoPE with the K/V
store (`cpu_rope_store.c`), SwiGLU (`cpu_silu_mul.c`) and, where AMX runs too, linears over
4-bit and 8-bit weights (`cpu_q4_linear.c`, a library of its own, `cpu_q4_linear_available()`).
Built once per machine by `kernel_build.py`, loaded with ctypes and called on tensors' data
pointers. Where the CPU lacks the instructions, or no compiler or no writable
cache is there, `cpu_kernels_available()` is False and the PyTorch paths run. References:
`decode_attention_ref` (decode_attention.py) and `LlamaRMSNorm`'s PyTorch path (model/llama.py).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch

from .kernel_build import cpu_flags, load

logger = logging.getLogger(__name__)

_HERE = Path(__file__).parent
_SOURCES = tuple(_HERE / f for f in ("cpu_decode_attention.c", "cpu_rms_norm.c",
                                      "cpu_rope_store.c", "cpu_silu_mul.c",
                                      "cpu_refine_logits.c"))
# a library of its own: a compiler without AMX intrinsics (GCC < 11) loses only this one;
# it holds the other kernels too, for the decoder driver (cpu_decoder.c) that runs them all
_Q4_SOURCES = (_HERE / "cpu_q4_linear.c", _HERE / "cpu_q4_avx512.c", _HERE / "cpu_decoder.c",
               *_SOURCES)
_P, _I, _I64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_SIGNATURES = {
    "bf16_decode_attention": ([_P, _P, _P, _P, _I64, _P, _P, _I, _I, _I, _I, _I64,
                               ctypes.c_float, _I], ctypes.c_int),
    "bf16_decode_attention_lse": ([_P, _P, _P, _P, _I64, _P, _P, _P, _I, _I, _I, _I, _I64,
                                   ctypes.c_float, _I], ctypes.c_int),
    "bf16_rms_norm": ([_P, _I64, _P, _P, _I64, _I64, _I, ctypes.c_float, _P, _P, _I], None),
    "bf16_rope_store": ([_P, _I64, _I64, _I, _I, _I, _P, _P, _P, _P, _P, _I64, _I64, _P, _I],
                        ctypes.c_int),
    "bf16_silu_mul": ([_P, _I64, _I64, _I64, _P, _I], None),
    "f32_refine_top_logits": ([_P, _I64, _I64, _P, _I64, _P, _I, _I, _I], None),
    "f32_argmax_rows": ([_P, _I64, _I64, _P, _I], None),
}
_Q4_SIGNATURES = {
    "bf16_q4_linear": ([_P, _I64, _P, _P, _I64, _I64, _I64, _I64, _I, _I, _I], ctypes.c_int),
    "q4_amx_init": ([], ctypes.c_int),
    "q4_amx_selftest": ([], ctypes.c_int),
    "q4_use_amx": ([_I], ctypes.c_int),
    "decoder_scratch_elems": ([_I64, _I, _I, _I, _I, _I], _I64),
    "bf16_decoder_forward": ([_P, _I64, _I, _I, _I, _I, _I, _I, _P, _P, _P, _I64, _I64, _P, _P,
                              _P, _P, _I64, _P, _P, ctypes.c_float, ctypes.c_float, _P, _P, _P,
                              _I], ctypes.c_int),
    "decoder_parts": ([], _I),
}


@functools.cache
def _library():
    return load("cpu_kernels", _SOURCES, _SIGNATURES)


@functools.cache
def _q4_library():
    return load("cpu_q4_linear", _Q4_SOURCES, _Q4_SIGNATURES)


def cpu_kernels_available() -> bool:
    """Whether this machine runs the kernels (AVX-512-BF16 and a C compiler; built once)."""
    return _library() is not None


def cpu_decode_shape_ok(n_q: int, n_kv: int, hd: int) -> bool:
    """The decode kernel's head shapes: head_dim a multiple of 32 up to 256, at most 64 query
    heads in groups over the KV heads."""
    return hd % 32 == 0 and hd <= 256 and n_q <= 64 and n_q % n_kv == 0


def cpu_decode_supports(q: torch.Tensor, k_buf: torch.Tensor) -> bool:
    """Whether the decode kernel takes this call: bfloat16 CPU tensors of its head shapes."""
    return (q.device.type == "cpu" and q.dtype == k_buf.dtype == torch.bfloat16
            and cpu_decode_shape_ok(q.shape[1], k_buf.shape[1], q.shape[2])
            and cpu_kernels_available())


def _decode_inputs(q, k_buf, v_buf, kv_indices, kv_lens):
    """The decode kernels' q, slot table and lengths as they read them (contiguous int64)."""
    hd = q.shape[2]
    assert k_buf.stride()[1:] == (hd, 1) and v_buf.stride() == k_buf.stride(), "pool layout"
    idx = kv_indices.to(torch.int64)
    idx = idx if idx.stride(1) == 1 else idx.contiguous()
    lens = kv_lens.to(torch.int64).contiguous()
    assert not q.shape[0] or int(lens.max()) <= idx.shape[1], "kv_lens longer than kv_indices"
    return q.contiguous(), idx, lens


def cpu_decode_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                         kv_indices: torch.Tensor, kv_lens: torch.Tensor,
                         scale: float) -> torch.Tensor:
    """q: (b, n_q, hd); k_buf, v_buf: (slots, n_kv, hd); kv_indices: (b, L) slots (the first
    kv_lens[i] of row i are read); kv_lens: (b,). Returns (b, n_q, hd) bfloat16. Check
    `cpu_decode_supports` first."""
    b, n_q, hd = q.shape
    q, idx, lens = _decode_inputs(q, k_buf, v_buf, kv_indices, kv_lens)
    out = torch.empty_like(q)
    rc = _library().bf16_decode_attention(
        q.data_ptr(), k_buf.data_ptr(), v_buf.data_ptr(), idx.data_ptr(), idx.stride(0),
        lens.data_ptr(), out.data_ptr(), b, n_q, k_buf.shape[1], hd, k_buf.stride(0), scale,
        torch.get_num_threads())
    assert rc == 0, "cpu_decode_attention: unsupported shapes (check cpu_decode_supports)"
    return out


def cpu_decode_attention_lse(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                             kv_indices: torch.Tensor, kv_lens: torch.Tensor,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`cpu_decode_attention`'s attention with float32 results for a cascade's merge: the
    output (b, n_q, hd), unrounded, and each head's log-sum-exp of scaled scores (b, n_q)."""
    b, n_q, hd = q.shape
    q, idx, lens = _decode_inputs(q, k_buf, v_buf, kv_indices, kv_lens)
    out = torch.empty(b, n_q, hd, dtype=torch.float32)
    lse = torch.empty(b, n_q, dtype=torch.float32)
    rc = _library().bf16_decode_attention_lse(
        q.data_ptr(), k_buf.data_ptr(), v_buf.data_ptr(), idx.data_ptr(), idx.stride(0),
        lens.data_ptr(), out.data_ptr(), lse.data_ptr(), b, n_q, k_buf.shape[1], hd,
        k_buf.stride(0), scale, torch.get_num_threads())
    assert rc == 0, "cpu_decode_attention_lse: unsupported shapes (check cpu_decode_supports)"
    return out, lse


def cpu_rms_norm_supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """bfloat16 CPU rows (last dim contiguous) and a bfloat16 weight of that width."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.bfloat16
            and x.dim() == 2 and x.stride(1) == 1 and weight.is_contiguous()
            and weight.shape == (x.shape[1],) and cpu_kernels_available())


def cpu_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None):
    """HF's RMSNorm of rows x (T, D) bfloat16 (the same float32 steps; the sum of squares in
    another order, so a value can differ by one bfloat16 step); check
    `cpu_rms_norm_supports`. With `residual` (T, D) bf16: (norm(x + residual), x + residual),
    the sum rounded to bf16 as torch's add rounds it."""
    out = torch.empty(x.shape, dtype=x.dtype)
    res = summed = None
    if residual is not None:
        assert residual.shape == x.shape and residual.dtype == torch.bfloat16
        res, summed = residual.contiguous(), torch.empty(x.shape, dtype=x.dtype)
    _library().bf16_rms_norm(x.data_ptr(), x.stride(0), weight.data_ptr(), out.data_ptr(),
                             out.stride(0), x.shape[0], x.shape[1], eps,
                             None if res is None else res.data_ptr(),
                             None if summed is None else summed.data_ptr(),
                             torch.get_num_threads())
    return out if residual is None else (out, summed)


@functools.cache
def cpu_q4_linear_available() -> bool:
    """Whether the 4-bit linear runs here: the kernels build (AVX-512-BF16). It multiplies with
    AMX where that runs (`_amx_granted`), with AVX-512's vdpbf16ps elsewhere
    (`cpu_q4_linear_isa`); SGLC_CPU_Q4_ISA=avx512 in the environment, or `set_cpu_q4_isa`,
    forces AVX-512 (tests run the path of CPUs without AMX on one with it)."""
    lib = _q4_library()
    if lib is None:
        return False
    want = os.environ.get("SGLC_CPU_Q4_ISA", "amx")
    if want not in ("amx", "avx512"):
        from ..errors import InvalidRequestError

        raise InvalidRequestError(f"SGLC_CPU_Q4_ISA must be 'amx' or 'avx512', got {want!r}")
    lib.q4_use_amx(int(want == "amx" and _amx_granted()))
    return True


@functools.cache
def _amx_granted() -> bool:
    """The CPU lists AMX-BF16, a child process multiplied a tile correctly (a VM that
    advertises AMX but faults on it kills only the child), and Linux granted this process the
    tile state."""
    lib = _q4_library()
    if lib is None or not {"amx_tile", "amx_bf16"} <= cpu_flags():
        return False
    probe = f"import ctypes, sys; sys.exit(ctypes.CDLL({lib._name!r}).q4_amx_selftest())"
    try:
        rc = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                            timeout=60, check=False).returncode
    except (OSError, subprocess.SubprocessError):
        rc = -1
    if rc != 0:
        logger.warning("AMX is listed but did not run (probe exit %s): the 4-bit linears "
                       "multiply with AVX-512", rc)
        return False
    return lib.q4_amx_init() == 0


def cpu_q4_linear_isa() -> str | None:
    """The instruction set the 4-bit linear multiplies with now: "amx", "avx512", or None
    where it does not run here."""
    if not cpu_q4_linear_available():
        return None
    return "amx" if _q4_library().q4_use_amx(-1) else "avx512"


def set_cpu_q4_isa(isa: str) -> str | None:
    """Choose the 4-bit linear's instruction set for this process: "amx" (where it runs; the
    default) or "avx512" (the path of CPUs without AMX: tests run it on one with). Returns the
    set now used, None where the kernel does not run here."""
    if isa not in ("amx", "avx512"):
        raise ValueError(f"set_cpu_q4_isa: isa must be 'amx' or 'avx512', got {isa!r}")
    if not cpu_q4_linear_available():
        return None
    _q4_library().q4_use_amx(int(isa == "amx" and _amx_granted()))
    return cpu_q4_linear_isa()


def cpu_q4_linear(x: torch.Tensor, packed: torch.Tensor, n: int,
                  out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """x (R, K) bfloat16 rows (last dim contiguous) times 4-bit weights packed by
    `q4_linear.pack_q4` (or 8-bit ones by `pack_q8`: the packing's last dimension says which)
    -> (R, n) bfloat16, or float32 sums unrounded with out_dtype=torch.float32; the contract is
    `q4_linear.q4_linear_ref` (`q8_linear_ref`). Check `cpu_q4_linear_available()` first."""
    assert out_dtype in (torch.bfloat16, torch.float32)
    if not cpu_q4_linear_available():  # (also what grants this process AMX: never skip it)
        raise RuntimeError("cpu_q4_linear: the 4-bit kernel does not run here (no AVX-512-BF16)")
    rows, k = x.shape
    assert x.dtype == torch.bfloat16 and x.stride(1) == 1, "q4 linear takes bf16 rows"
    bits = {320: 4, 544: 8}.get(packed.shape[-1])
    if bits is None or packed.shape[:2] != (n // 16, k // 32) or k % 32 or n % 16:
        raise ValueError(f"cpu_q4_linear: packed weights {tuple(packed.shape)} do not match "
                         f"x of width {k} and {n} outputs")  # (no assert: -O drops it)
    y = torch.empty((rows, n), dtype=out_dtype)
    rc = _q4_library().bf16_q4_linear(x.data_ptr(), x.stride(0), packed.data_ptr(), y.data_ptr(),
                                      y.stride(0), rows, n, k, bits, out_dtype == torch.float32,
                                      torch.get_num_threads())
    assert rc == 0, "cpu_q4_linear: unsupported shapes"
    return y


def cpu_decoder_available() -> bool:
    """Whether `cpu_decoder_forward` runs here (where the 4-bit linear does)."""
    return cpu_kernels_available() and cpu_q4_linear_available()


def cpu_decoder_forward(x: torch.Tensor, weights: torch.Tensor, bits: torch.Tensor,
                        kv: torch.Tensor, k_buf: torch.Tensor, cos: torch.Tensor,
                        signed_sin: torch.Tensor, slots: torch.Tensor,
                        kv_indices: torch.Tensor, kv_lens: torch.Tensor,
                        final_norm: torch.Tensor, n_q: int, inter: int, eps: float,
                        scale: float, times: torch.Tensor | None = None) -> torch.Tensor:
    """A Llama decoder's layers over embeddings x (T, D) bf16 in one call (cpu_decoder.c):
    weights (layers, 6) int64 addresses of each layer's packed qkv, o, gate_up, down and its
    two norm weights, bits (layers, 4) int32 the packings' code widths, kv (layers, 2) the pool
    buffers' addresses (k_buf: one of them, for the shapes), cos / signed_sin (T, hd) bf16,
    slots (T,) the new tokens' KV slots, kv_indices / kv_lens every row's padded attention.
    Returns the final norm (T, D) bf16. The caller (model/fused_decoder.py) vouches for the
    addresses; shapes are checked here and in C. times: None, or float64 (DECODER_PARTS,) to
    which each part's seconds are added (see cpu_decoder.c)."""
    T, D = x.shape
    n_layers, (n_slots, n_kv, hd) = weights.shape[0], k_buf.shape
    assert x.dtype == cos.dtype == signed_sin.dtype == final_norm.dtype == torch.bfloat16
    assert x.is_contiguous() and cos.shape == signed_sin.shape == (T, hd)
    assert weights.shape == (n_layers, 6) and bits.shape == (n_layers, 4) and \
        kv.shape == (n_layers, 2) and k_buf.stride()[1:] == (hd, 1)
    assert slots.shape == (T,) and kv_lens.shape == (T,) and kv_indices.shape[0] == T
    slots = slots.to(torch.int64).contiguous()
    idx = kv_indices.to(torch.int64)
    idx = idx if idx.stride(1) == 1 else idx.contiguous()
    lens = kv_lens.to(torch.int64).contiguous()
    assert not T or int(lens.max()) <= idx.shape[1], "kv_lens longer than kv_indices"
    lib = _q4_library()
    assert times is None or (times.dtype == torch.float64 and times.is_contiguous()
                             and times.numel() == lib.decoder_parts())
    scratch = torch.empty(lib.decoder_scratch_elems(T, D, n_q, n_kv, hd, inter),
                          dtype=torch.bfloat16)
    out = torch.empty((T, D), dtype=torch.bfloat16)
    rc = lib.bf16_decoder_forward(
        x.data_ptr(), T, n_layers, D, n_q, n_kv, hd, inter, weights.data_ptr(),
        bits.data_ptr(), kv.data_ptr(), k_buf.stride(0), n_slots, cos.data_ptr(),
        signed_sin.data_ptr(), slots.data_ptr(), idx.data_ptr(), idx.stride(0), lens.data_ptr(),
        final_norm.data_ptr(), eps, scale, out.data_ptr(), scratch.data_ptr(),
        None if times is None else times.data_ptr(), torch.get_num_threads())
    if rc == 2:
        raise IndexError(f"cpu_decoder_forward: KV slots outside the pool's {n_slots}")
    assert rc == 0, f"cpu_decoder_forward: unsupported shapes (code {rc})"
    return out


def cpu_rope_store_supports(qkv: torch.Tensor, k_buf: torch.Tensor) -> bool:
    """bfloat16 CPU rows of a fused q/k/v projection (last dim contiguous) and a bf16 pool."""
    return (qkv.device.type == "cpu" and qkv.dtype == k_buf.dtype == torch.bfloat16
            and qkv.dim() == 2 and qkv.stride(1) == 1 and k_buf.shape[2] % 2 == 0
            and cpu_kernels_available())


def cpu_rope_store(qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor,
                   slots: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                   n_q: int) -> torch.Tensor:
    """RoPE on qkv's queries and keys (cos, signed_sin: the (T, 1, hd) bf16 tables of
    `LlamaRotaryEmbedding.tables`), the rotated keys and the values written to the pool at
    `slots`; returns the rotated queries (T, n_q, hd). The same values as
    `LlamaRotaryEmbedding.apply` then `TokenToKVPool.set_kv`; check
    `cpu_rope_store_supports` first."""
    T, (n_kv, hd) = qkv.shape[0], k_buf.shape[1:]
    assert qkv.shape[1] == (n_q + 2 * n_kv) * hd and k_buf.stride() == v_buf.stride()
    assert k_buf.stride()[1:] == (hd, 1), "pool layout"
    assert cos.dtype == signed_sin.dtype == torch.bfloat16, "bf16 RoPE tables"
    cos, signed_sin = cos.reshape(T, hd).contiguous(), signed_sin.reshape(T, hd).contiguous()
    slots = slots.to(torch.int64).contiguous()
    q = torch.empty((T, n_q, hd), dtype=torch.bfloat16)
    rc = _library().bf16_rope_store(qkv.data_ptr(), qkv.stride(0), T, n_q, n_kv, hd,
                                    cos.data_ptr(), signed_sin.data_ptr(), q.data_ptr(),
                                    k_buf.data_ptr(), v_buf.data_ptr(), k_buf.stride(0),
                                    k_buf.shape[0], slots.data_ptr(), torch.get_num_threads())
    if rc:
        raise IndexError(f"cpu_rope_store: KV slots outside the pool's {k_buf.shape[0]}")
    return q


def cpu_silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of bf16 rows (T, 2F) (gate then up, last dim contiguous) -> (T, F), as
    torch's silu and mul compute it (exp512.h's exp, not torch's Sleef: a value can be one
    bf16 step apart, and results below bf16's normal range come out 0)."""
    T, F2 = gate_up.shape
    assert gate_up.dtype == torch.bfloat16 and gate_up.stride(1) == 1 and F2 % 2 == 0
    out = torch.empty((T, F2 // 2), dtype=torch.bfloat16)
    _library().bf16_silu_mul(gate_up.data_ptr(), gate_up.stride(0), T, F2 // 2, out.data_ptr(),
                             torch.get_num_threads())
    return out


def cpu_refine_supports(logits: torch.Tensor, h: torch.Tensor, weight32: torch.Tensor) -> bool:
    """float32 CPU logits (R, V) contiguous, bf16 hidden rows, a contiguous float32 weight."""
    return (logits.device.type == "cpu" and logits.dtype == torch.float32
            and logits.dim() == 2 and logits.is_contiguous() and h.dtype == torch.bfloat16
            and h.dim() == 2 and h.stride(1) == 1 and weight32.dtype == torch.float32
            and weight32.is_contiguous() and weight32.shape == (logits.shape[1], h.shape[1])
            and h.shape[0] == logits.shape[0] and cpu_kernels_available())


def cpu_refine_top_logits(logits: torch.Tensor, h: torch.Tensor, weight32: torch.Tensor,
                          k: int) -> None:
    """In place: each row's k (<= 64) largest logits recomputed as float32 products of h's row
    and weight32's rows (cpu_refine_logits.c; `model.llama.refine_top_logits` is the
    reference). Check `cpu_refine_supports` first."""
    assert 0 < k <= 64
    R, V = logits.shape
    _library().f32_refine_top_logits(logits.data_ptr(), R, V, h.data_ptr(), h.stride(0),
                                     weight32.data_ptr(), h.shape[1], k,
                                     torch.get_num_threads())


def cpu_argmax_rows(logits: torch.Tensor) -> torch.Tensor | None:
    """Each row's argmax (R,) int64 of float32 CPU logits (R, V), as `logits.max(-1).indices`
    (the first of equal maxima; a NaN's index where a row has one), in one C pass per row;
    None where the C kernels do not run here or the tensor is another kind."""
    if not (logits.device.type == "cpu" and logits.dtype == torch.float32
            and logits.dim() == 2 and logits.is_contiguous() and logits.shape[1] > 0
            and cpu_kernels_available()):
        return None
    out = torch.empty(logits.shape[0], dtype=torch.int64)
    _library().f32_argmax_rows(logits.data_ptr(), logits.shape[0], logits.shape[1],
                               out.data_ptr(), torch.get_num_threads())
    return out
