"""4-bit group-32 weights for the CPU's small-batch decode linears: GGUF's own Q4_0/Q4_1 codes,
scales and offsets, packed once for `cpu_q4_linear.c` (through `cpu_kernels.cpu_q4_linear`).

A weight is `d * c + m` (c its 4-bit code; d, m float16, shared by 32 weights along a row);
`q4_dequantize` is that in float32, the values gguf-py's dequantization gives (bit for bit but
for the sign of a zero: Q4_0's d * (8 - 8) is -0.0 where d < 0, d * 8 - 8 d is +0.0), so a bf16
model's weight is `q4_dequantize(...).bfloat16()` and the kernel multiplies exactly those
weights. `q4_linear_ref` is the plain PyTorch statement of the kernel's contract.
"""

from __future__ import annotations

import numpy as np
import torch

GROUP = 32
GROUP_BYTES = 320  # per 16 output columns x 32 inputs: 16 d, 16 m (float16), 256 code bytes


def q4_from_gguf(type_name: str, raw: np.ndarray) -> tuple[torch.Tensor, ...] | None:
    """A GGUF tensor's rows of Q4_0 or Q4_1 blocks (raw: (N, K/32 * block bytes) uint8) as
    codes (N, K) uint8, d and m (N, K/32) float16; None for other types. Q4_0's `d * (c - 8)`
    becomes m = -8 d (exact, and d * c + m then equals d * (c - 8) in float32)."""
    raw = np.ascontiguousarray(raw)
    n = raw.shape[0]
    if type_name == "Q4_0":
        blocks = raw.reshape(n, -1, 18)
        d = blocks[..., :2].copy().view(np.float16)[..., 0]
        with np.errstate(over="ignore"):
            m = (d.astype(np.float32) * -8).astype(np.float16)
        if not np.isfinite(m).all():
            return None
        qs = blocks[..., 2:]
    elif type_name == "Q4_1":
        blocks = raw.reshape(n, -1, 20)
        d = blocks[..., :2].copy().view(np.float16)[..., 0]
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0]
        qs = blocks[..., 4:]
    else:
        return None
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(n, -1)  # j, then j + 16
    return torch.from_numpy(codes), torch.from_numpy(d.copy()), torch.from_numpy(m.copy())


def q4_dequantize(codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(N, K) float32 weights `d * c + m`."""
    n, k = codes.shape
    w = codes.view(n, k // GROUP, GROUP).float() * d.float().unsqueeze(-1) \
        + m.float().unsqueeze(-1)
    return w.view(n, k)


def pack_q4(codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The kernel's layout (see cpu_q4_linear.c): (N/16, K/32, 320) uint8."""
    n, k = codes.shape
    assert n % 16 == 0 and k % GROUP == 0, "q4 packing needs N % 16 == 0 and K % 32 == 0"
    nb, g = n // 16, k // GROUP

    def per_group(s):  # (N, G) float16 -> (NB, G, 32) bytes, column-minor
        return s.view(nb, 16, g).transpose(1, 2).contiguous().view(torch.uint8)

    c = codes.view(nb, 2, 8, g, 16, 2).permute(0, 3, 4, 1, 2, 5)  # nb, g, kk, half, col, pair
    b = (c[:, :, :, 0] | (c[:, :, :, 1] << 4)).reshape(nb, g, 256)
    return torch.cat([per_group(d), per_group(m), b], dim=-1).contiguous()


def q8_from_gguf(type_name: str, raw: np.ndarray) -> tuple[torch.Tensor, ...] | None:
    """A GGUF tensor's rows of Q8_0 blocks (d float16, 32 signed codes: w = d * c, exact in
    float32) as codes (N, K) int8 and d (N, K/32) float16; None for other types."""
    if type_name != "Q8_0":
        return None
    blocks = np.ascontiguousarray(raw).reshape(raw.shape[0], -1, 34)
    d = blocks[..., :2].copy().view(np.float16)[..., 0]
    codes = blocks[..., 2:].copy().view(np.int8).reshape(raw.shape[0], -1)
    return torch.from_numpy(codes), torch.from_numpy(d)


def q8_dequantize(codes: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """(N, K) float32 weights `d * c`."""
    n, k = codes.shape
    return (codes.view(n, k // GROUP, GROUP).float() * d.float().unsqueeze(-1)).view(n, k)


def pack_q8(codes: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The kernel's 8-bit layout: (N/16, K/32, 544) uint8, per 16 columns and 32 inputs the
    16 d (float16), then 16 B rows of 32 codes (see cpu_q4_linear.c's dequant_brow_q8)."""
    n, k = codes.shape
    assert n % 16 == 0 and k % GROUP == 0, "q8 packing needs N % 16 == 0 and K % 32 == 0"
    nb, g = n // 16, k // GROUP
    scales = d.view(nb, 16, g).transpose(1, 2).contiguous().view(torch.uint8)  # (NB, G, 32)
    c = codes.view(torch.uint8).view(nb, 2, 8, g, 16, 2).permute(0, 3, 4, 1, 2, 5)
    return torch.cat([scales, c.reshape(nb, g, 512)], dim=-1).contiguous()


def q8_linear_ref(x: torch.Tensor, codes: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """x (R, K) bfloat16 -> (R, N) bfloat16 through the bf16-rounded 8-bit weights."""
    return (x.float() @ q8_dequantize(codes, d).bfloat16().float().T).bfloat16()


def q4_linear_ref(x: torch.Tensor, codes: torch.Tensor, d: torch.Tensor,
                  m: torch.Tensor) -> torch.Tensor:
    """x (R, K) bfloat16 -> (R, N) bfloat16: x times the bf16-rounded weights, summed in
    float32 (the kernel sums in another order)."""
    w = q4_dequantize(codes, d, m).bfloat16().float()
    return (x.float() @ w.T).bfloat16()
