"""Engine process split and data parallelism (issue 11), each configuration in a worker process
of its own, side by side in one run.

1. Isolation: batch-1 and 16-row decode tok/s of the engine in its own process and on a thread
   of the caller's process, with a quiet caller and with a caller that has run one parallel
   torch op on its main thread (which gives the caller's process a second OpenMP pool).
2. Data parallel: the few-shot and LLM-judge programs of bench_lang and a multi-turn chat whose
   history is distinct per program (`run_batch`), on 1 engine process (2 threads) and on 2
   replicas (1 thread each) behind the cache-aware, round-robin and random routers: programs/s
   and prefix-cache hit rate (cached prompt tokens / prompt tokens).

Run: python benchmarks/bench_dp.py [--repeats R] [--num-programs N]"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, bar_plot, save

ISOLATION = [("in_process", False), ("in_process", True), ("process", False), ("process", True)]
DP = [("1 process", 1, "cache_aware"), ("2 replicas, cache-aware", 2, "cache_aware"),
      ("2 replicas, round-robin", 2, "round_robin"), ("2 replicas, random", 2, "random")]


def isolation_worker(mode: str, busy: bool, repeats: int) -> dict:
    import torch

    from sglc_runtime.engine import Engine

    eng = Engine(engine_in_process=(mode == "in_process"))
    if busy:
        torch.zeros(1_000_000).add_(1)  # the caller's own parallel torch work
    out = {}
    for rows in (1, 16):
        prompts = [f"Write a long story number {i}:" for i in range(rows)]
        sp = {"max_new_tokens": 128, "ignore_eos": True, "temperature": 0}
        eng.generate(prompts, {**sp, "max_new_tokens": 8})
        best = 0.0
        for _ in range(repeats):
            eng.flush_cache()
            t = time.perf_counter()
            eng.generate(prompts, sp)
            best = max(best, rows * 128 / (time.perf_counter() - t))
        out[f"decode_b{rows}_tok_s"] = best
    eng.shutdown()
    return out


def multi_turn(s, question):
    """A chat whose history is its own (a distinct ~250-token document per program): its later
    turns hit the cache only on the replica that served the earlier ones."""
    import sglc as sgl

    words = [f"{question.split()[2]}-fact-{k}" for k in range(60)]
    s += sgl.system("You answer questions about this document: " + " ".join(words))
    for turn in ("Summarize it.", "Name one fact.", "Name another."):
        s += sgl.user(turn)
        s += sgl.assistant(sgl.gen(max_tokens=16, ignore_eos=True))


def dp_worker(dp_size: int, policy: str, num_programs: int) -> dict:
    from bench_lang import make_programs

    import sglc as sgl

    class A:  # bench_lang's workload knobs
        num_shots, branches, max_new_tokens = 20, 3, 16

    A.num_programs = num_programs
    _, programs, questions = make_programs(A)
    programs["multi_turn"] = multi_turn
    eng = sgl.Engine(dp_size=dp_size, router_policy=policy)
    rt = sgl.Runtime(engine=eng)
    res = {}
    for name, prog in programs.items():
        prog = prog if isinstance(prog, sgl.SglFunction) else sgl.function(prog)
        prog.run_batch([{"question": "What is 1 plus 1?"}] * 2, temperature=0, backend=rt)
        eng.flush_cache()
        before = eng.stats()
        t = time.perf_counter()
        states = prog.run_batch([{"question": q} for q in questions], temperature=0, backend=rt)
        wall = time.perf_counter() - t
        after = eng.stats()
        assert all(s.error() is None for s in states), [s.error() for s in states][:1]
        prompt = after["num_prompt_tokens"] - before["num_prompt_tokens"]
        cached = after["num_cached_prompt_tokens"] - before["num_cached_prompt_tokens"]
        res[name] = {"programs_per_s": len(questions) / wall, "wall_s": wall,
                     "cache_hit_rate": cached / max(prompt, 1), "prompt_tokens": prompt}
    eng.shutdown()
    return res


def run_worker(kind: str, *params) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps([kind, *params])]
    r = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if r.returncode or line is None:
        raise RuntimeError(f"worker {kind} {params} failed:\n{r.stderr[-2000:]}")
    return json.loads(line[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-programs", type=int, default=32)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, *params = json.loads(args.worker)
        fn = isolation_worker if kind == "isolation" else dp_worker
        print("RESULT " + json.dumps(fn(*params)))
        return
    iso = {}
    for mode, busy in ISOLATION:
        label = f"{mode}{', busy caller' if busy else ''}"
        iso[label] = run_worker("isolation", mode, busy, args.repeats)
        print(label, iso[label], flush=True)
    dp = {}
    for label, size, policy in DP:
        dp[label] = run_worker("dp", size, policy, args.num_programs)
        print(label, dp[label], flush=True)
    ratios = {
        "busy_over_quiet_in_process_b1": iso["in_process, busy caller"]["decode_b1_tok_s"]
        / iso["in_process"]["decode_b1_tok_s"],
        "busy_over_quiet_process_b1": iso["process, busy caller"]["decode_b1_tok_s"]
        / iso["process"]["decode_b1_tok_s"],
        "process_over_in_process_b1": iso["process"]["decode_b1_tok_s"]
        / iso["in_process"]["decode_b1_tok_s"],
        "process_over_in_process_b16": iso["process"]["decode_b16_tok_s"]
        / iso["in_process"]["decode_b16_tok_s"],
    }
    result = {"isolation": iso, "data_parallel": dp, "ratios": ratios,
              "workload": {"decode_tokens": 128, "num_programs": args.num_programs,
                           "repeats": args.repeats}}
    save("dp", result)
    bar_plot(RESULTS / "dp.png", "engine process split and data parallelism (2 cores)", {
        "batch-1 decode tok/s": {k: v["decode_b1_tok_s"] for k, v in iso.items()},
        "few-shot programs/s": {k: v["few_shot"]["programs_per_s"] for k, v in dp.items()},
        "judge programs/s": {k: v["fork_judge"]["programs_per_s"] for k, v in dp.items()},
        "multi-turn programs/s": {k: v["multi_turn"]["programs_per_s"] for k, v in dp.items()},
        "multi-turn cache hit %": {k: 100 * v["multi_turn"]["cache_hit_rate"]
                                   for k, v in dp.items()},
    }, "")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
