"""Compiler benchmark (issue 5): `run_batch` throughput of the sample programs run eagerly
(`@sgl.function`) and compiled (`sgl.compile`), with the prefix-cache hit rate each achieves.

Programs: samples/few_shot_qa.py (a shared few-shot prefix), samples/fork_judge.py (a fork of
candidate answers, then a judge) and samples/tree_of_thought.py (two levels of forks, then a
rating per leaf). Every generation is greedy (a backend wrapper forces temperature 0, also for
gens that ask for sampling), so both modes generate the same tokens and do the same work.
The radix cache is emptied before each timed run. Hit rate = prompt tokens served from the
cache / all prompt tokens, over every engine request of the run (prefix commits included).

Run: python benchmarks/bench_compiler.py [--quick] [--num-programs N] [--programs LIST]
     [--modes eager,compiled] [--dtype auto]"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, bar_plot, save, timed

import sglc as sgl
from sglc.lang.primitives import SglSamplingParams

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
PROGRAMS = {  # name -> (sample file, function, argument name)
    "few_shot": ("few_shot_qa", "few_shot_qa", "question"),
    "fork_judge": ("fork_judge", "answer_and_judge", "question"),
    "tree_of_thought": ("tree_of_thought", "tree_of_thought", "question"),
}
TOPICS = ["the moon", "bread", "rain", "volcanoes", "bicycles", "coffee", "glaciers", "bees",
          "the ocean", "trains", "music", "chess", "winter", "deserts", "paper", "forests"]


def load_program(stem: str, name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{stem}", SAMPLES / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def questions(n: int) -> list[str]:
    return [f"What is one surprising fact about {TOPICS[i % len(TOPICS)]}"
            f"{'' if i < len(TOPICS) else f' (take {i // len(TOPICS) + 1})'}?"
            for i in range(n)]


class GreedyRuntime(sgl.Runtime):
    """Greedy for every gen, so eager and compiled runs generate identical tokens."""

    def generate(self, prompt, params=None, **kwargs):
        if isinstance(params, SglSamplingParams):
            params = dataclasses.replace(params, temperature=0.0)
        return super().generate(prompt, params, **kwargs)

    def generate_many(self, prompts, params):
        return super().generate_many(
            prompts, [dataclasses.replace(p, temperature=0.0) for p in params])


class RequestLog:
    """Wraps `engine.generate` to add up the prompt and cached tokens of every request."""

    def __init__(self, engine):
        self.engine, self.inner = engine, engine.generate
        self.prompt_tokens = self.cached_tokens = self.num_requests = 0
        engine.generate = self

    def __call__(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if not kwargs.get("stream"):
            for r in out if isinstance(out, list) else [out]:
                self.prompt_tokens += r["meta_info"]["prompt_tokens"]
                self.cached_tokens += r["meta_info"].get("cached_tokens", 0)
                self.num_requests += 1
        return out

    def reset(self) -> None:
        self.prompt_tokens = self.cached_tokens = self.num_requests = 0


def run_mode(program, mode: str, batch: list[dict], rt, log: RequestLog, engine) -> dict:
    runner = sgl.compile(program, strict=True, backend=rt) if mode == "compiled" else program
    runner.run_batch(batch[:2], backend=rt, temperature=0)  # warm up (FSMs, first batches)
    engine.flush_cache()
    log.reset()
    states, t = timed(runner.run_batch, batch, backend=rt, temperature=0)
    errors = [st.error() for st in states if st.error() is not None]
    assert not errors, f"{mode}: {errors[0]!r}"
    return {"programs_per_s": len(batch) / t, "wall_s": t, "requests": log.num_requests,
            "prompt_tokens": log.prompt_tokens, "cached_tokens": log.cached_tokens,
            "cache_hit_rate": log.cached_tokens / max(1, log.prompt_tokens),
            "prefill_tokens_computed": log.prompt_tokens - log.cached_tokens,
            "texts": [st.text() for st in states]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a tiny run to check the script works")
    ap.add_argument("--num-programs", type=int, default=32)
    ap.add_argument("--programs", default=",".join(PROGRAMS))
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    if args.quick:
        args.num_programs = 2
    modes = args.modes.split(",")

    engine = sgl.Engine(dtype=args.dtype)
    log = RequestLog(engine)
    rt = GreedyRuntime(engine=engine)
    results: dict = {}
    for name in args.programs.split(","):
        stem, fn, arg = PROGRAMS[name]
        program = load_program(stem, fn)
        batch = [{arg: q} for q in questions(args.num_programs)]
        results[name] = {mode: run_mode(program, mode, batch, rt, log, engine) for mode in modes}
        if {"eager", "compiled"} <= set(modes):
            same = results[name]["eager"]["texts"] == results[name]["compiled"]["texts"]
            results[name]["same_text"] = same
        for mode in modes:
            r = results[name][mode]
            print(f"{name:16s} {mode:9s} {r['programs_per_s']:7.2f} programs/s  "
                  f"hit rate {100 * r['cache_hit_rate']:5.1f}%  "
                  f"prefill computed {r['prefill_tokens_computed']}")
    engine.shutdown()
    for res in results.values():
        for mode in modes:
            res[mode].pop("texts")

    label = "compiler_quick" if args.quick else "compiler"
    path = save(label, {"workload": {"num_programs": args.num_programs, "dtype": args.dtype,
                                     "programs": args.programs.split(",")},
                        "results": results})
    bar_plot(RESULTS / f"{label}.png", "sglc run_batch: eager vs compiled (programs/s)",
             {n: {m: r[m]["programs_per_s"] for m in modes} for n, r in results.items()},
             "programs / s")
    bar_plot(RESULTS / f"{label}_cache.png", "prefix-cache hit rate (%)",
             {n: {m: 100 * r[m]["cache_hit_rate"] for m in modes} for n, r in results.items()},
             "% of prompt tokens cached")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
