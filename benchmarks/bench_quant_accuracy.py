"""Would int8 matmuls pay here? On this AVX2 CPU fp32 GEMM peaks near 130 GFLOP/s and fbgemm's
int8 GEMM runs ~1.7-2.3x faster, which is what the prefill and 64-sequence decode targets would
need. This measures both sides: the int8 kernel's speed against fp32 at the model's shapes, and
what int8 quantization does to the model's greedy output (first token where it departs from
exact fp32, over several prompts), next to the int4 small-batch path sglc ships.

Run: python benchmarks/bench_quant_accuracy.py"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, bar_plot, load_llama_cpp, save

from sglc_runtime.engine import Engine

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Write a haiku about the sea.\n",
           "Question: What is 12 times 7?\nAnswer:", "Once upon a time, in a small village,",
           "List three colors:", "The quick brown fox", "import numpy as np\n"]
N_NEW = 32


class FakeQuantLinear(nn.Module):
    """fp32 matmul on int8-rounded operands: weights per output channel; activations per tensor
    (what fbgemm's dynamic int8 linear does), per token, or not at all."""

    def __init__(self, linear: nn.Linear, act: str | None, weight: bool = True):
        super().__init__()
        w = linear.weight.data.float()
        s = (w.abs().amax(1, keepdim=True) / 127).clamp(min=1e-12)
        self.w = (w / s).round().clamp(-127, 127) * s if weight else w
        self.act = act

    def forward(self, x):
        if self.act == "tensor":
            s = (x.abs().amax() / 127).clamp(min=1e-12)
            x = (x / s).round() * s
        elif self.act == "token":
            s = (x.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-12)
            x = (x / s).round() * s
        return F.linear(x, self.w)


def projections(model):
    """(module, attribute) of every decoder projection."""
    return [(mod, name) for layer in model.model.layers
            for mod, name in [(layer.self_attn, "qkv_proj"), (layer.self_attn, "o_proj"),
                              (layer.mlp, "gate_up_proj"), (layer.mlp, "down_proj")]]


def divergence(ref, out) -> list[int]:
    return [next((k for k, (a, b) in enumerate(zip(r, o)) if a != b), len(r))
            for r, o in zip(ref, out)]


def kernel_speed() -> dict:
    warnings.filterwarnings("ignore", category=UserWarning)
    res = {}
    for m in (1, 64, 512):
        x, w = torch.randn(m, 576), torch.randn(3072, 576) * 0.05
        qw = torch.quantize_per_channel(w, w.abs().amax(1) / 127,
                                        torch.zeros(3072, dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qw, None)
        t = {}
        for name, fn in [("fp32", lambda x=x, w=w: F.linear(x, w)),
                         ("int8", lambda x=x, p=packed: torch.ops.quantized.linear_dynamic(
                             x, p, True))]:
            for _ in range(3):
                fn()
            t0 = time.perf_counter()
            for _ in range(30):
                fn()
            t[name] = (time.perf_counter() - t0) / 30
        res[f"M={m}"] = t["fp32"] / t["int8"]
    return res


def main():
    sp = {"temperature": 0, "max_new_tokens": N_NEW, "ignore_eos": True}
    eng = Engine(dtype="float32", disable_prepacked_linear=True,  # fake-quant needs .weight
                 engine_in_process=True)  # and this process holds the model it edits
    ids = [eng.tokenizer.encode(p) for p in PROMPTS]
    ref = [o["output_ids"] for o in eng.generate(input_ids=ids, sampling_params=sp)]
    slots = projections(eng.core.runner.model)
    originals = [getattr(mod, name) for mod, name in slots]
    schemes = {
        "int8 W, int8 A per tensor (fbgemm)": dict(act="tensor"),
        "int8 W, int8 A per token": dict(act="token"),
        "int8 W only": dict(act=None),
        "int8 A per token only": dict(act="token", weight=False),
    }
    results = {}
    for name, kw in schemes.items():  # the engine is idle: swap its projections in place
        for (mod, attr), lin in zip(slots, originals):
            setattr(mod, attr, FakeQuantLinear(lin, **kw))
        eng.flush_cache()
        out = [o["output_ids"] for o in eng.generate(input_ids=ids, sampling_params=sp)]
        d = divergence(ref, out)
        results[name] = {"first_divergence": d, "mean_first_divergence": sum(d) / len(d),
                         "identical": sum(x == N_NEW for x in d)}
    for (mod, attr), lin in zip(slots, originals):
        setattr(mod, attr, lin)
    eng.shutdown()
    engines = {"sglc fp32 + int4 small-batch": dict(dtype="float32", quantization="int4"),
               "sglc bf16 dense": dict(dtype="bfloat16", quantization=None),
               "sglc bf16 + int4 small-batch (CPU default)": dict(dtype="bfloat16",
                                                                  quantization="int4")}
    for name, kw in engines.items():
        other = Engine(**kw)
        out = [other.generate(input_ids=i, sampling_params=sp)["output_ids"] for i in ids]  # b=1
        other.shutdown()
        d = divergence(ref, out)
        results[name] = {"first_divergence": d, "mean_first_divergence": sum(d) / len(d),
                         "identical": sum(x == N_NEW for x in d)}
    llm = load_llama_cpp()
    if llm is not None:  # the peer: Q4_1 weights times int8 (Q8_1) activations
        out = []
        for i in ids:
            llm.reset()
            toks = []
            for t in llm.generate(i, temp=0.0, reset=True):
                toks.append(t)
                if len(toks) == N_NEW:
                    break
            out.append(toks)
        d = divergence(ref, out)
        results["llama.cpp (Q4_1 x Q8_1 blocks)"] = {
            "first_divergence": d, "mean_first_divergence": sum(d) / len(d),
            "identical": sum(x == N_NEW for x in d)}
    speed = kernel_speed()
    result = {"prompts": len(PROMPTS), "new_tokens": N_NEW, "schemes": results,
              "fbgemm_int8_speedup_over_fp32_linear_576x3072": speed}
    path = save("quant_accuracy", result)
    bar_plot(RESULTS / "quant_accuracy.png",
             f"greedy tokens before departing from exact fp32 (mean of {len(PROMPTS)} prompts, "
             f"max {N_NEW})",
             {"mean first divergence": {k: v["mean_first_divergence"] for k, v in
                                        results.items()}}, "tokens")
    print(path.read_text())


if __name__ == "__main__":
    main()
