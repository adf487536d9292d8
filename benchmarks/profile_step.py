"""Where one engine step spends its time: runs a workload, times every step (model forward vs
the rest), the fused decoder's parts where it runs, and prints torch.profiler's table for one
decode step.

Run: python benchmarks/profile_step.py [--batch 1] [--prompt-len 16] [--new 32] [--shared 0]
(--shared N gives every prompt the same N-token prefix, for cascade attention)."""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from sglc_runtime import engine_core, model_runner
from sglc_runtime.engine import Engine


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--shared", type=int, default=0)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--quantization", default="auto")
    ap.add_argument("--rows", type=int, default=25, help="profiler table rows")
    args = ap.parse_args()

    times = {"forward": [], "step": []}
    state = {"prof": None, "decode_steps": 0}
    real_forward, real_step = model_runner.ModelRunner.forward, engine_core.EngineCore.step

    def forward(self, fb, rows):
        state["runner"] = self
        t = time.perf_counter()
        out = real_forward(self, fb, rows)
        if out.is_cuda:
            torch.cuda.synchronize()
        times["forward"].append(time.perf_counter() - t)
        return out

    def step(self):
        t = time.perf_counter()
        batch_is_decode = bool(self.scheduler.running) and not self.scheduler.waiting
        if batch_is_decode:
            state["decode_steps"] += 1
        if batch_is_decode and state["decode_steps"] == 5:
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                             if torch.cuda.is_available() else [])
            with profile(activities=acts) as p:
                out = real_step(self)
            state["prof"] = p
        else:
            out = real_step(self)
        times["step"].append(time.perf_counter() - t)
        return out

    model_runner.ModelRunner.forward = forward
    engine_core.EngineCore.step = step
    eng = Engine(dtype=args.dtype, quantization=args.quantization,
                 engine_in_process=True)  # the patched step must run in this process
    rng = random.Random(0)
    shared = [rng.randint(300, 40000) for _ in range(args.shared)]
    prompts = [shared + [rng.randint(300, 40000) for _ in range(args.prompt_len)]
               for _ in range(args.batch)]
    sp = {"temperature": 0, "max_new_tokens": args.new, "ignore_eos": True}
    eng.generate(input_ids=prompts[0][:8], sampling_params={**sp, "max_new_tokens": 2})
    for v in times.values():
        v.clear()
    fused = state["runner"].model.model.fused  # the decoder in one C call, where it runs
    if fused is not None:
        fused.time_parts()
    t = time.perf_counter()
    eng.generate(input_ids=prompts, sampling_params=sp)
    total = time.perf_counter() - t
    eng.shutdown()
    med = {k: statistics.median(v) * 1e3 for k, v in times.items() if v}
    print(f"{args.batch} x {args.new} tokens in {total:.2f}s "
          f"({args.batch * args.new / total:.1f} tok/s); median step {med['step']:.2f} ms, "
          f"of which forward {med['forward']:.2f} ms")
    if fused is not None and fused.times.sum() > 0:
        n = len(times["forward"])
        print(f"fused decoder (kernels/cpu_decoder.c), ms per step over {n} steps: " + ", ".join(
            f"{name} {sec / n * 1e3:.2f}" for name, sec in zip(fused.PARTS, fused.times.tolist())))
    if state["prof"] is not None:
        key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        print(state["prof"].key_averages().table(sort_by="self_cpu_time_total",
                                                 row_limit=args.rows))
        if torch.cuda.is_available():
            print(state["prof"].key_averages().table(sort_by=key, row_limit=10))


if __name__ == "__main__":
    main()
