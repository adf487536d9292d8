"""Paged KV memory at page size 1: a token-slot allocator over flat per-layer K/V buffers,
and the `req_to_token` table that maps each request's positions to its slots."""

from __future__ import annotations

import ctypes
import mmap

import torch

MADV_HUGEPAGE = 14  # <sys/mman.h> on Linux


def advise_huge_pages(buf: torch.Tensor) -> bool:
    """Asks Linux to back a large CPU tensor's (untouched) memory with 2 MB pages. The pool's
    slots are first written one token at a time all over its buffers: with 4 KB pages each
    write into a fresh page faults (a few microseconds on a VM; with 2 MB pages 512x fewer).
    Transparent huge pages in "madvise" mode (a common default) need exactly this call; in
    "always" mode it changes nothing, in "never" mode or elsewhere it fails harmlessly."""
    if buf.device.type != "cpu" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    page = mmap.PAGESIZE
    start = -(-buf.data_ptr() // page) * page  # whole pages inside the tensor
    end = (buf.data_ptr() + buf.numel() * buf.element_size()) // page * page
    if end - start < 2 * 1024 * 1024:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start),
                            MADV_HUGEPAGE) == 0
    except (OSError, AttributeError):
        return False


class TokenToKVPool:
    """Flat K/V buffers of `size` token slots per layer; slot 0 is a scratch slot never handed out.

    `alloc(n)` returns n free slot indices (or None when too few are free); `free(idx)` returns
    them. Who owns a slot (a running request or the radix cache) is tracked by the caller.
    """

    def __init__(self, size: int, num_layers: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: str):
        self.size = size
        # (S+1, n_kv, hd) each; only slot 0 must be finite (masked padding reads it)
        self.k_buffer = [torch.empty(size + 1, num_kv_heads, head_dim, dtype=dtype, device=device)
                         for _ in range(num_layers)]
        self.v_buffer = [torch.empty_like(k) for k in self.k_buffer]
        self.huge_page_buffers = sum(advise_huge_pages(b) for b in self.k_buffer + self.v_buffer)
        for buf in self.k_buffer + self.v_buffer:
            buf[0].zero_()
        self.device = device
        self._kv_pointers: torch.Tensor | None = None
        self._free = torch.arange(1, size + 1, dtype=torch.int64)
        self._num_free = size

    def num_free(self) -> int:
        return self._num_free

    def free_slots(self) -> torch.Tensor:
        """The free slot indices (a view; for invariant checks)."""
        return self._free[:self._num_free]

    def alloc(self, n: int) -> torch.Tensor | None:
        if n > self._num_free:
            return None
        out = self._free[self._num_free - n:self._num_free].clone()
        self._num_free -= n
        return out

    def free(self, idx: torch.Tensor) -> None:
        n = idx.numel()
        if n == 0:
            return
        assert self._num_free + n <= self.size, "KV pool double free"
        self._free[self._num_free:self._num_free + n] = idx.to(torch.int64).cpu()
        self._num_free += n

    def kv_pointers(self) -> torch.Tensor:
        """(layers, 2) int64: each layer's K and V buffer addresses (for C kernels that walk
        all layers; the buffers never move)."""
        if self._kv_pointers is None:
            self._kv_pointers = torch.tensor(
                [[k.data_ptr(), v.data_ptr()] for k, v in zip(self.k_buffer, self.v_buffer)],
                dtype=torch.int64)
        return self._kv_pointers

    def set_kv(self, layer: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k_buffer[layer][loc] = k
        self.v_buffer[layer][loc] = v


class ReqToTokenPool:
    """`req_to_token[row, pos]` is the KV slot of position `pos` of the request holding `row`."""

    def __init__(self, max_reqs: int, max_context: int, device: str):
        self.req_to_token = torch.zeros(max_reqs, max_context, dtype=torch.int64, device=device)
        self._free_rows = list(range(max_reqs - 1, -1, -1))

    def num_free(self) -> int:
        return len(self._free_rows)

    def alloc(self) -> int | None:
        return self._free_rows.pop() if self._free_rows else None

    def free(self, row: int) -> None:
        assert row not in self._free_rows, f"req_to_token row {row} freed twice"
        self._free_rows.append(row)
