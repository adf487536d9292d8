"""Decode linears per step at the default model's shapes, side by side: the 30 decoder layers'
four projections (distinct random weights per layer, so they stream from memory as in a real
step) through oneDNN-packed bf16 linears, torch's packed int4 matmul and the 4-bit kernel
(kernels/cpu_q4_linear.c: AMX where it runs, and its AVX-512 path on every AVX-512-BF16 CPU);
the LM head bf16 vs the kernel's 8-bit path; and the C decode attention kernel against gather +
SDPA. Interleaved, median of the runs; the machine's CPU is in the result.
Run: python benchmarks/bench_cpu_quant_linear.py [--reps 7]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, median_ms, save

from sglc_runtime.kernels.cpu_kernels import (
    cpu_decode_attention,
    cpu_kernels_available,
    cpu_q4_linear,
    cpu_q4_linear_available,
    cpu_q4_linear_isa,
    set_cpu_q4_isa,
)
from sglc_runtime.kernels.q4_linear import pack_q4, pack_q8, q4_dequantize, q8_dequantize
from sglc_runtime.model.int4 import Int4DecodeLinear
from sglc_runtime.model.packed_linear import PackedLinear

PROJ = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # qkv, o, gate_up, down (out, in)
LAYERS, VOCAB = 30, 49152
ROWS = [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192]


def kernel_fns(fn, what: str) -> dict:
    """The kernel's runs by instruction set: AMX where it runs, AVX-512 everywhere it builds."""
    if not cpu_q4_linear_available():
        return {}
    isas = ["avx512"] if cpu_q4_linear_isa() == "avx512" else ["amx", "avx512"]

    def on(isa):
        def run():
            set_cpu_q4_isa(isa)
            fn()
        return run
    fns = {f"{what} kernel ({isa})": on(isa) for isa in isas}
    set_cpu_q4_isa(isas[0])
    return fns


def bench_decoder(reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    layers = []
    for _ in range(LAYERS):
        for n, k in PROJ:
            codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
            d = (torch.rand(n, k // 32, generator=g) * 0.01 + 1e-3).half()
            m = (-torch.rand(n, k // 32, generator=g) * 0.05).half()
            lin = torch.nn.Linear(k, n, bias=False)
            lin.weight.data = q4_dequantize(codes, d, m).bfloat16()
            i4 = Int4DecodeLinear(lin, max_rows=1 << 20, bf16_out=True)
            layers.append((n, k, PackedLinear(lin), i4, pack_q4(codes, d, m)))
    out = {}
    for rows in ROWS:
        xs = {k: torch.randn(rows, k, generator=g).bfloat16() for k in (576, 1536)}
        fns = {"bf16 (oneDNN)": lambda: [p(xs[k]) for n, k, p, _, _ in layers],
               "torch int4": lambda: [i(xs[k]) for n, k, _, i, _ in layers]}
        fns.update(kernel_fns(lambda: [cpu_q4_linear(xs[k], q, n) for n, k, _, _, q in layers],
                              "4-bit"))
        out[rows] = median_ms(fns, reps)
        print("decoder linears", rows, {k: round(v, 2) for k, v in out[rows].items()}, flush=True)
    return out


def bench_head(reps: int) -> dict:
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(-128, 128, (VOCAB, 576), generator=g, dtype=torch.int8)
    d = (torch.rand(VOCAB, 18, generator=g) * 0.01 + 1e-4).half()
    lin = torch.nn.Linear(576, VOCAB, bias=False)
    lin.weight.data = q8_dequantize(codes, d).bfloat16()
    packed, q8 = PackedLinear(lin), pack_q8(codes, d)
    out = {}
    for rows in (1, 16, 64):
        x = torch.randn(rows, 576, generator=g).bfloat16()
        fns = {"bf16 (oneDNN)": lambda: packed(x)}
        fns.update(kernel_fns(lambda: cpu_q4_linear(x, q8, VOCAB), "8-bit"))
        out[rows] = median_ms(fns, reps)
        print("LM head", rows, {k: round(v, 2) for k, v in out[rows].items()}, flush=True)
    return out


def bench_attention(reps: int) -> dict:
    n_q, n_kv, hd, b = 9, 3, 64, 16
    g = torch.Generator().manual_seed(2)
    out = {}
    for keys in (300, 1000):
        slots = b * keys + 1
        kv = [(torch.randn(slots, n_kv, hd, generator=g).bfloat16(),
               torch.randn(slots, n_kv, hd, generator=g).bfloat16()) for _ in range(LAYERS)]
        idx = torch.arange(1, slots).view(b, keys)
        lens = torch.full((b,), keys)
        q = torch.randn(b, n_q, hd, generator=g).bfloat16()

        def sdpa():
            for kb, vb in kv:
                F.scaled_dot_product_attention(
                    q.unsqueeze(2), kb[idx].transpose(1, 2), vb[idx].transpose(1, 2),
                    scale=hd ** -0.5, enable_gqa=True)

        fns = {"gather + SDPA": sdpa}
        if cpu_kernels_available():
            fns["C kernel"] = lambda: [cpu_decode_attention(q, kb, vb, idx, lens, hd ** -0.5)
                                       for kb, vb in kv]
        out[keys] = median_ms(fns, reps)
        print("attention", keys, {k: round(v, 2) for k, v in out[keys].items()}, flush=True)
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    dec = result["decoder_linears_ms"]
    rows = [int(r) for r in dec]
    for name in next(iter(dec.values())):
        axes[0].plot(rows, [dec[r][name] for r in dec], marker="o", label=name)
    axes[0].set(title="30 layers' projections per step", xlabel="rows", ylabel="ms")
    axes[0].legend(fontsize=8)
    for ax, key, title in ((axes[1], "lm_head_ms", "LM head (49152 x 576)"),
                           (axes[2], "decode_attention_ms", "attention, 16 rows x 30 layers")):
        groups = result[key]
        names = list(next(iter(groups.values())))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            ax.bar([j + i * width for j in range(len(groups))], [v[name] for v in groups.values()],
                   width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))],
                      [f"{k} {'rows' if key == 'lm_head_ms' else 'keys'}" for k in groups])
        ax.set(title=title, ylabel="ms")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    result = {"decoder_linears_ms": bench_decoder(args.reps), "lm_head_ms": bench_head(args.reps),
              "decode_attention_ms": bench_attention(args.reps)}
    path = save("cpu_quant_linear", result)
    plot(result, RESULTS / "cpu_quant_linear.png")
    print(path)


if __name__ == "__main__":
    main()
