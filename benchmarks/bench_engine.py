"""Engine benchmark (issue 2): prefill, batch-1 decode, decode at 64 sequences, and a
shared-prefix few-shot workload, for sglc (and its ablations), HF transformers and llama.cpp,
side by side in one run. Run: python benchmarks/bench_engine.py [--quick]

The machine's speed drifts by up to 2x from minute to minute, so systems take turns: every
repeat of every timing runs each system once, back to back, and each keeps its fastest run.
Each system lives in its own worker process: libgomp cuts its spin-wait to 100 iterations once a
process holds more OpenMP threads than CPUs, so a second thread pool in the same process (another
engine's, or HF's in the main thread) measured halving sglc's batch-1 decode."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, bar_plot, load_hf, load_llama_cpp, save, timed

from sglc_runtime.config import parse_dtype
from sglc_runtime.engine import Engine

SLOW_S = 20  # a timing whose first run takes longer is not repeated


def make_workload(tok, args):
    rng = random.Random(0)
    vocab = list(range(300, 40000))
    prefill = [rng.choice(vocab) for _ in range(args.prefill_len)]
    short = [[rng.choice(vocab) for _ in range(16)] for _ in range(args.batch)]
    shots = "".join(f"Question: What is {a} times {b}?\nAnswer: {a * b}\n\n"
                    for a, b in [(rng.randint(2, 99), rng.randint(2, 99)) for _ in range(40)])
    prefix_ids = tok.encode("Answer the arithmetic questions.\n\n" + shots)
    prefix_ids = prefix_ids[:args.prefix_len]
    questions = [tok.encode(f"Question: What is {i} times {i + 3}?\nAnswer:")
                 for i in range(args.num_shared)]
    shared = [prefix_ids + q for q in questions]
    return prefill, short, shared


# Each system is a dict: timing name -> (before, run). `before` runs untimed ahead of each run
# (e.g. emptying a prefix cache); `run` is timed, or returns its own elapsed seconds.
# Timings: prefill (one pass over the prompt); b1_1 / b1_n and bN_1 / bN_n (1 and n new tokens
# at batch 1 and batch N: decode speed is their difference); b1_decode (llama.cpp times its
# decode loop itself); shared (the shared-prefix workload).

def sglc_system(args, prefill, short, shared, **engine_kwargs):
    eng = Engine(dtype=args.dtype, **engine_kwargs)
    greedy = {"temperature": 0, "ignore_eos": True}
    eng.generate(input_ids=prefill[:32], sampling_params={**greedy, "max_new_tokens": 4})

    def gen(ids, n, params=greedy):
        return lambda: eng.generate(input_ids=ids, sampling_params={**params, "max_new_tokens": n})

    outs = gen(shared, args.shared_new, {"temperature": 0})()
    hit_rate = (sum(o["meta_info"]["cached_tokens"] for o in outs)
                / sum(o["meta_info"]["prompt_tokens"] for o in outs))
    flush = eng.flush_cache  # every timed run starts from an empty prefix cache
    n = args.decode_len
    return {"prefill": (flush, gen(prefill, 1)),
            "b1_1": (flush, gen(short[0], 1)), "b1_n": (flush, gen(short[0], n)),
            "bN_1": (flush, gen(short, 1)), "bN_n": (flush, gen(short, n)),
            "shared": (flush, gen(shared, args.shared_new, {"temperature": 0}))}, \
        {"shared_prefix_cache_hit_rate": hit_rate, "dtype": str(eng.config.dtype),
         "quantization": eng.config.quantization}, eng.shutdown


def hf_system(args, prefill, short, shared):
    model = load_hf()
    if model is None:
        return None
    nograd = torch.no_grad()

    def run(fn):
        def go():
            with nograd:
                return fn()
        return go

    gen = dict(do_sample=False, min_new_tokens=1, pad_token_id=0)
    x, xb = torch.tensor([short[0]]), torch.tensor(short)
    n = args.decode_len
    # shared prefix: batched generate with left padding, as a transformers user would
    width = max(map(len, shared))
    ids = torch.tensor([[0] * (width - len(s)) + s for s in shared])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in shared])
    run(lambda: model(torch.tensor([prefill[:32]])))()
    return {"prefill": (None, run(lambda: model(torch.tensor([prefill])))),
            "b1_1": (None, run(lambda: model.generate(x, max_new_tokens=1, **gen))),
            "b1_n": (None, run(lambda: model.generate(x, max_new_tokens=n, **gen))),
            "bN_1": (None, run(lambda: model.generate(xb, max_new_tokens=1, **gen))),
            "bN_n": (None, run(lambda: model.generate(xb, max_new_tokens=n, **gen))),
            "shared": (None, run(lambda: model.generate(
                ids, attention_mask=mask, do_sample=False, max_new_tokens=args.shared_new,
                pad_token_id=0)))}, {"shared_prefix_cache_hit_rate": 0.0}, None


def llama_cpp_system(args, prefill, short, shared):
    llm = load_llama_cpp()
    if llm is None:
        return None
    llm.reset()
    llm.eval(prefill[:32])
    n = args.decode_len

    def decode_time():
        t0 = None
        for k, _ in enumerate(llm.generate(short[0], temp=0.0, reset=True)):
            if k == 0:
                t0 = time.perf_counter()  # the first token comes after the prefill
            if k == n - 1:
                break
        return {"elapsed": time.perf_counter() - t0}

    # llama-cpp-python reuses the KV of the longest common prefix with the previous prompt
    return {"prefill": (llm.reset, lambda: llm.eval(prefill)),
            "b1_decode": (llm.reset, decode_time),
            "shared": (llm.reset, lambda: [llm.create_completion(
                s, max_tokens=args.shared_new, temperature=0.0) for s in shared])}, {}, None


SYSTEMS = {"sglc": sglc_system, "hf": hf_system, "llama_cpp": llama_cpp_system}


def _worker(conn, kind: str, args, work, kwargs) -> None:
    """One system in its own process: build it, then run the timings the parent asks for."""
    made = SYSTEMS[kind](args, *work, **kwargs)
    if made is None:
        conn.send(None)
        return
    timings, extra, close = made
    conn.send((list(timings), extra))
    while (name := conn.recv()) is not None:
        before, fn = timings[name]
        if before is not None:
            before()
        out, t = timed(fn)
        conn.send(out["elapsed"] if isinstance(out, dict) and "elapsed" in out else t)
    if close is not None:
        close()


def start_systems(specs: dict, args, work) -> dict:
    """name -> (connection, process, timing names, extra metrics), for the systems present."""
    ctx = mp.get_context("spawn")
    started = {}
    for name, (kind, kwargs) in specs.items():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, kind, args, work, kwargs), daemon=True)
        proc.start()
        ready = parent.recv()
        if ready is None:
            proc.join()
            print(f"{name}: not installed, skipped", flush=True)
            continue
        started[name] = (parent, proc, *ready)
    return started


def run_interleaved(started: dict, repeats: int) -> dict:
    """Best time of each (system, timing), the systems taking turns within every repeat."""
    names = list(dict.fromkeys(t for _, _, ts, _ in started.values() for t in ts))
    best = {s: {} for s in started}
    for name in names:
        for _ in range(repeats):
            for sname, (conn, _, timings, _) in started.items():
                if name not in timings or best[sname].get(name, 0) > SLOW_S:
                    continue
                conn.send(name)
                best[sname][name] = min(conn.recv(), best[sname].get(name, float("inf")))
                time.sleep(0.2)  # let this system's worker threads go idle
        print(f"{name}: " + ", ".join(f"{s} {b[name]:.3f}s" for s, b in best.items()
                                      if name in b), flush=True)
    for conn, proc, _, _ in started.values():
        conn.send(None)
        proc.join()
    return best


def metrics(args, t: dict, extra: dict) -> dict:
    n, N = args.decode_len, args.batch
    out = {}
    if "prefill" in t:
        out["prefill_tok_s"] = args.prefill_len / t["prefill"]
    if "b1_decode" in t:
        out["decode_b1_tok_s"] = (n - 1) / t["b1_decode"]
    elif "b1_n" in t:
        out["decode_b1_tok_s"] = (n - 1) / max(t["b1_n"] - t["b1_1"], 1e-9)
    if "bN_n" in t:
        out[f"decode_b{N}_tok_s"] = N * (n - 1) / max(t["bN_n"] - t["bN_1"], 1e-9)
    if "shared" in t:
        out["shared_prefix_req_s"] = args.num_shared / t["shared"]
    return {**out, **extra}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best)")
    ap.add_argument("--skip", default="",
                    help="comma list of: hf,llama_cpp,no_radix,no_int4,no_prepack")
    args = ap.parse_args()
    args.prefill_len, args.batch, args.decode_len = (512, 64, 64) if not args.quick else (64, 4, 8)
    args.prefix_len, args.num_shared, args.shared_new = (550, 48, 4) if not args.quick else \
        (100, 4, 2)
    skip = set(args.skip.split(","))
    eng_tok = Engine(dtype=args.dtype, max_total_tokens=4096)
    tok = eng_tok.tokenizer
    eng_tok.shutdown()
    work = make_workload(tok, args)
    specs = {"sglc": ("sglc", {})}
    if "no_int4" not in skip:
        specs["sglc (no int4 decode)"] = ("sglc", {"quantization": None})
    if "no_prepack" not in skip:
        specs["sglc (no prepacked linear)"] = ("sglc", {"disable_prepacked_linear": True})
    if "no_radix" not in skip:
        specs["sglc (no radix cache)"] = ("sglc", {"disable_radix_cache": True})
    if "hf" not in skip:
        specs["HF transformers"] = ("hf", {})
    if "llama_cpp" not in skip:
        specs["llama.cpp"] = ("llama_cpp", {})
    started = start_systems(specs, args, work)
    extras = {name: extra for name, (_, _, _, extra) in started.items()}
    best = run_interleaved(started, args.repeats)
    systems = {k: metrics(args, best[k], extras[k]) for k in started}
    ours, N = systems["sglc"], args.batch
    ratios = {}
    if "llama.cpp" in systems:
        lc = systems["llama.cpp"]
        ratios = {
            "prefill_vs_llama_cpp": ours["prefill_tok_s"] / lc["prefill_tok_s"],
            "decode_b1_vs_llama_cpp": ours["decode_b1_tok_s"] / lc["decode_b1_tok_s"],
            f"decode_b{N}_vs_llama_cpp_b1": ours[f"decode_b{N}_tok_s"] / lc["decode_b1_tok_s"],
            "shared_prefix_vs_llama_cpp": ours["shared_prefix_req_s"] / lc["shared_prefix_req_s"],
        }
        if "sglc (no int4 decode)" in systems:
            ratios["no_int4_decode_b1_vs_llama_cpp"] = (
                systems["sglc (no int4 decode)"]["decode_b1_tok_s"] / lc["decode_b1_tok_s"])
    if "HF transformers" in systems:
        hf = systems["HF transformers"]
        ratios.update({f"{k}_vs_hf": ours[k] / hf[k] for k in ours if hf.get(k)})
    result = {"workload": {k: getattr(args, k) for k in ("prefill_len", "batch", "decode_len",
                                                          "prefix_len", "num_shared",
                                                          "shared_new", "repeats")},
              "dtype": args.dtype, "resolved_dtype": str(parse_dtype(args.dtype)),
              "interleaved": True, "systems": systems, "ratios": ratios}
    name = "engine_quick" if args.quick else "engine"
    path = save(name, result)
    plotted = ["prefill_tok_s", "decode_b1_tok_s", f"decode_b{N}_tok_s", "shared_prefix_req_s"]
    bar_plot(RESULTS / f"{name}.png", "sglc engine vs peers (SmolLM2-135M, same GGUF)",
             {m: {s: v[m] for s, v in systems.items() if m in v} for m in plotted},
             "tokens/s  (requests/s for shared prefix)")
    print(path.read_text())


if __name__ == "__main__":
    main()
