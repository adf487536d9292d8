"""Engine benchmark on a GPU: the issue-2 workloads (prefill, batch-1 decode, decode at 64
sequences, shared-prefix few-shot) for sglc (radix cache on/off) and HF transformers, both on
the same CUDA device and dtype. Needs CUDA; run: python benchmarks/bench_gpu.py [--quick]"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import bench_sglc, make_workload
from common import RESULTS, bar_plot, save

from sglc_runtime.config import parse_dtype
from sglc_runtime.engine import Engine


def _timed_cuda(args, fn) -> float:
    """Fastest of args.repeats synchronised runs (as bench_engine.best_time does for sglc)."""
    times = []
    for _ in range(args.repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times)


@torch.no_grad()
def bench_hf_cuda(args, prefill, short, shared):
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    from sglc_runtime.model_source import default_model_path

    p = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name,
                                                 torch_dtype=parse_dtype(args.dtype))
    model = model.cuda().eval()
    dev = "cuda"
    res = {}
    model(torch.tensor([prefill[:32]], device=dev))
    x = torch.tensor([prefill], device=dev)
    res["prefill_tok_s"] = len(prefill) / _timed_cuda(args, lambda: model(x))
    n = args.decode_len
    gen = dict(do_sample=False, min_new_tokens=1, pad_token_id=0)
    x = torch.tensor([short[0]], device=dev)
    t1 = _timed_cuda(args, lambda: model.generate(x, max_new_tokens=1, **gen))
    tn = _timed_cuda(args, lambda: model.generate(x, max_new_tokens=n, min_length=0, **gen))
    res["decode_b1_tok_s"] = (n - 1) / (tn - t1)
    xb = torch.tensor(short, device=dev)
    t1 = _timed_cuda(args, lambda: model.generate(xb, max_new_tokens=1, **gen))
    tn = _timed_cuda(args, lambda: model.generate(xb, max_new_tokens=n, **gen))
    res[f"decode_b{len(short)}_tok_s"] = len(short) * (n - 1) / (tn - t1)
    width = max(map(len, shared))
    ids = torch.tensor([[0] * (width - len(s)) + s for s in shared], device=dev)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in shared], device=dev)
    t = _timed_cuda(args, lambda: model.generate(ids, attention_mask=mask, do_sample=False,
                                                 max_new_tokens=args.shared_new, pad_token_id=0))
    res["shared_prefix_req_s"] = len(shared) / t
    res["shared_prefix_cache_hit_rate"] = 0.0
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs CUDA")
    args.prefill_len, args.batch, args.decode_len = (512, 64, 64) if not args.quick else (64, 4, 8)
    args.prefix_len, args.num_shared, args.shared_new = (550, 48, 4) if not args.quick else \
        (100, 4, 2)
    eng = Engine(dtype=args.dtype, max_total_tokens=4096)
    tok = eng.tokenizer
    eng.shutdown()
    prefill, short, shared = make_workload(tok, args)
    systems = {
        "sglc": bench_sglc(args, prefill, short, shared, False),
        "sglc (torch attention, no CUDA graphs)": bench_sglc(
            args, prefill, short, shared, False,
            engine_kwargs=dict(attention_backend="torch", disable_cuda_graph=True)),
        "sglc (no radix cache)": bench_sglc(args, prefill, short, shared, True),
        "HF transformers": bench_hf_cuda(args, prefill, short, shared),
    }
    systems = {k: v for k, v in systems.items() if v is not None}
    ratios = {}
    if "HF transformers" in systems:
        hf, ours = systems["HF transformers"], systems["sglc"]
        ratios = {f"{k}_vs_hf": ours[k] / hf[k] for k in ours if hf.get(k)}
    result = {"workload": {k: getattr(args, k) for k in ("prefill_len", "batch", "decode_len",
                                                          "prefix_len", "num_shared",
                                                          "shared_new", "repeats")},
              "dtype": args.dtype, "device": torch.cuda.get_device_name(),
              "systems": systems, "ratios": ratios}
    name = "engine_gpu_quick" if args.quick else "engine_gpu"
    path = save(name, result)
    metrics = ["prefill_tok_s", "decode_b1_tok_s", f"decode_b{args.batch}_tok_s",
               "shared_prefix_req_s"]
    bar_plot(RESULTS / f"{name}.png",
             f"sglc engine vs HF transformers on {torch.cuda.get_device_name()} ({args.dtype})",
             {m: {s: v[m] for s, v in systems.items() if m in v} for m in metrics},
             "tokens/s  (requests/s for shared prefix)")
    print(path.read_text())


if __name__ == "__main__":
    main()
