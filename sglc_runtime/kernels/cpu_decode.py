"""The CPU paged decode-attention kernel (`cpu_decode_attention.c`) for bfloat16 KV pools:
compiled once per machine with the system C compiler into the sglc cache (explicit AVX-512-BF16
flags, never -march=native, which can fault on VMs that advertise AMX), loaded with ctypes and
called on tensors' data pointers. Where the CPU lacks AVX-512-BF16 or no compiler is found,
`cpu_decode_available()` is False and decode attention stays on PyTorch (gather + SDPA).
Contract: `decode_attention_ref` in decode_attention.py."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_SRC = Path(__file__).with_name("cpu_decode_attention.c")
_FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma",
          "-fopenmp", "-fno-math-errno", "-shared", "-fPIC"]
_NEEDS = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "fma"}
_P, _I = ctypes.c_void_p, ctypes.c_int
_ARGTYPES = [_P, _P, _P, _P, ctypes.c_int64, _P, _P, _I, _I, _I, _I, ctypes.c_int64,
             ctypes.c_float, _I]


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _build(out: Path) -> bool:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        logger.warning("no C compiler found (set CC): CPU decode attention stays on PyTorch")
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        so = Path(tmp) / out.name
        proc = subprocess.run([cc, *_FLAGS, str(_SRC), "-o", str(so), "-lm"],
                              capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            os.replace(so, out)  # atomic: engines building at once each see a whole file
            return True
    logger.warning("the CPU decode-attention kernel did not compile (%s): decode attention "
                   "stays on PyTorch", (proc.stderr.strip().splitlines() or ["?"])[-1])
    return False


@functools.cache
def _library():
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64") \
            or not _NEEDS <= _cpu_flags() or not _SRC.is_file():
        return None
    from ..model_source import cache_dir

    key = hashlib.sha256(_SRC.read_bytes() + " ".join(_FLAGS).encode()).hexdigest()[:16]
    out = cache_dir() / "kernels" / f"cpu_decode_attention_{key}.so"
    if not out.exists() and not _build(out):
        return None
    try:
        lib = ctypes.CDLL(str(out))
    except OSError as e:
        logger.warning("could not load %s (%s): decode attention stays on PyTorch", out, e)
        return None
    lib.bf16_decode_attention.argtypes = _ARGTYPES
    lib.bf16_decode_attention.restype = ctypes.c_int
    return lib


def cpu_decode_available() -> bool:
    """Whether this machine runs the kernel (AVX-512-BF16 and a C compiler, built once)."""
    return _library() is not None


def cpu_decode_supports(q: torch.Tensor, k_buf: torch.Tensor) -> bool:
    """Whether the kernel takes this call: bfloat16 CPU tensors, head_dim a multiple of 32 up
    to 256, at most 64 query heads in groups over the KV heads."""
    n_q, hd = q.shape[1], q.shape[2]
    return (q.device.type == "cpu" and q.dtype == k_buf.dtype == torch.bfloat16
            and hd % 32 == 0 and hd <= 256 and n_q <= 64 and n_q % k_buf.shape[1] == 0
            and cpu_decode_available())


def cpu_decode_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                         kv_indices: torch.Tensor, kv_lens: torch.Tensor,
                         scale: float) -> torch.Tensor:
    """q: (b, n_q, hd); k_buf, v_buf: (slots, n_kv, hd); kv_indices: (b, L) int64 slots (the
    first kv_lens[i] of row i are read, each >= 1); kv_lens: (b,). Returns (b, n_q, hd)
    bfloat16. Check `cpu_decode_supports` first."""
    b, n_q, hd = q.shape
    assert k_buf.stride()[1:] == (hd, 1) and v_buf.stride() == k_buf.stride(), "pool layout"
    q = q.contiguous()
    idx = kv_indices.to(torch.int64)
    idx = idx if idx.stride(1) == 1 else idx.contiguous()
    lens = kv_lens.to(torch.int64).contiguous()
    out = torch.empty_like(q)
    rc = _library().bf16_decode_attention(
        q.data_ptr(), k_buf.data_ptr(), v_buf.data_ptr(), idx.data_ptr(), idx.stride(0),
        lens.data_ptr(), out.data_ptr(), b, n_q, k_buf.shape[1], hd, k_buf.stride(0), scale,
        torch.get_num_threads())
    assert rc == 0, "cpu_decode_attention: unsupported shapes (check cpu_decode_supports)"
    return out
