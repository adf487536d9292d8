"""Compiler benchmark (issues 5 and 12): the sample programs run eagerly (`@sgl.function`),
compiled (`sgl.compile`: gen/text/gen segments run as one continuing engine request) and compiled
with every gen a request of its own (`whole_program=False`, the ablation), side by side.

Workloads: samples/few_shot_qa.py (a shared few-shot prefix, one gen), samples/fork_judge.py
(a fork of candidate answers, then a judge), samples/multi_turn_chat.py (two chat turns) and
samples/json_extraction.py's extract_fields (three constrained fields with text between them);
tree_of_thought on request. Two regimes: `run_batch` of --num-programs programs (throughput) and
one program at a time (latency, mean over 4 programs). Backends: the Engine API (the engine in
its own process) and `sglc serve` over HTTP (`sgl.RuntimeEndpoint`; the server in a thread of
this process, its engine in its own). Every generation is greedy (a backend wrapper forces
temperature 0), so all modes generate the same tokens and do the same work. The radix cache is
emptied before each timed run; every repeat runs each mode once, back to back, and each keeps
its best (the VM's speed drifts). Also recorded: engine requests, cache hit rate, and how much
of the wall time the engine spent in steps (`busy`: near 100% means the engine, not the
frontend, is the bottleneck).

Run: python benchmarks/bench_compiler.py [--quick] [--num-programs 32] [--repeats 3]
     [--programs few_shot,fork_judge,multi_turn_chat,json] [--backends engine,http]
     [--modes eager,compiled,compiled_per_gen] [--dtype auto]"""

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
PROGRAMS = {  # name -> (sample file, function, arguments of program i given its question)
    "few_shot": ("few_shot_qa", "few_shot_qa", lambda q: {"question": q}),
    "fork_judge": ("fork_judge", "answer_and_judge", lambda q: {"question": q}),
    "multi_turn_chat": ("multi_turn_chat", "multi_turn_question",
                        lambda q: {"question_1": q, "question_2": "Tell me one more fact."}),
    "json": ("json_extraction", "extract_fields",
             lambda q: {"text": f"{q} Ada Lovelace was a mathematician born in London in 1815."}),
    "tree_of_thought": ("tree_of_thought", "tree_of_thought", lambda q: {"question": q}),
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


class Greedy:
    """Greedy for every gen, so eager and compiled runs generate identical tokens."""

    def generate(self, prompt, params=None, **kwargs):
        if isinstance(params, SglSamplingParams):
            params = dataclasses.replace(params, temperature=0.0)
        return super().generate(prompt, params, **kwargs)

    def generate_many(self, prompts, params):
        return super().generate_many(
            prompts, [dataclasses.replace(p, temperature=0.0) for p in params])

    def generate_program(self, prompt, steps):
        return super().generate_program(prompt, [
            (k, dataclasses.replace(v, temperature=0.0) if k == "gen" else v) for k, v in steps])


MODES = ("eager", "compiled", "compiled_per_gen")
LATENCY_PROGRAMS = 4


class Backends:
    """The engine (its own process) and, on request, `sglc serve` over it (HTTP)."""

    def __init__(self, args):
        self.engine = sgl.Engine(dtype=args.dtype)
        self.rt = {"engine": GreedyRuntime(engine=self.engine)}
        self.stop = None
        if "http" in args.backends:
            from sglc_runtime.server.app import create_app

            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from conftest import start_server

            url, self.stop = start_server(create_app(self.engine, "bench"))
            self.rt["http"] = GreedyEndpoint(url)

    def close(self):
        if self.stop:
            self.stop()
        self.engine.shutdown()


class GreedyRuntime(Greedy, sgl.Runtime):
    pass


class GreedyEndpoint(Greedy, sgl.RuntimeEndpoint):
    pass


def runner_for(program, mode: str, rt):
    if mode == "eager":
        return program
    return sgl.compile(program, strict=True, backend=rt, whole_program=mode == "compiled")


def measure(runner, batch: list[dict], rt, b: Backends, latency: bool) -> dict:
    b.engine.flush_cache()
    s0 = b.engine.stats()
    if latency:  # one program at a time
        t = 0.0
        for kwargs in batch:
            st, dt = timed(runner.run, backend=rt, temperature=0, **kwargs)
            assert st.error() is None, repr(st.error())
            t += dt
        texts = None
    else:
        states, t = timed(runner.run_batch, batch, backend=rt, temperature=0)
        errors = [st.error() for st in states if st.error() is not None]
        assert not errors, repr(errors[0])
        texts = [st.text() for st in states]
    s1 = b.engine.stats()
    prompt = s1["num_prompt_tokens"] - s0["num_prompt_tokens"]
    cached = s1["num_cached_prompt_tokens"] - s0["num_cached_prompt_tokens"]
    out = {"wall_s": t, "engine_busy": (s1["busy_s"] - s0["busy_s"]) / t,
           "engine_steps": s1["num_steps"] - s0["num_steps"],
           "cache_hit_rate": cached / max(1, prompt), "texts": texts}
    if latency:
        out["latency_ms"] = 1e3 * t / len(batch)
    else:
        out["programs_per_s"] = len(batch) / t
    return out


def bench_program(name: str, args, b: Backends, backend: str) -> dict:
    stem, fn, make_args = PROGRAMS[name]
    program = load_program(stem, fn)
    batch = [make_args(q) for q in questions(args.num_programs)]
    rt = b.rt[backend]
    runners = {m: runner_for(program, m, rt) for m in args.modes}
    for r in runners.values():
        r.run_batch(batch[:2], backend=rt, temperature=0)  # warm up (FSMs, first batches)
    res: dict = {}
    for regime, items in (("batch", batch), ("latency", batch[:LATENCY_PROGRAMS])):
        best: dict = {}
        for _ in range(args.repeats):
            for m, r in runners.items():
                got = measure(r, items, rt, b, regime == "latency")
                if m not in best or got["wall_s"] < best[m]["wall_s"]:
                    best[m] = got
        if regime == "batch" and {"eager", "compiled"} <= set(best):
            res["same_text"] = best["eager"]["texts"] == best["compiled"]["texts"]
        for got in best.values():
            got.pop("texts")
        res[regime] = best
        key = "programs_per_s" if regime == "batch" else "latency_ms"
        for m, got in best.items():
            print(f"{backend:6s} {name:16s} {regime:7s} {m:16s} {got[key]:8.2f} "
                  f"{'programs/s' if regime == 'batch' else 'ms'}  busy "
                  f"{100 * got['engine_busy']:5.1f}%  steps {got['engine_steps']:4d}  "
                  f"hit rate {100 * got['cache_hit_rate']:5.1f}%", flush=True)
    if "eager" in args.modes:
        res["speedup_vs_eager"] = {
            regime: {m: (res[regime][m]["programs_per_s"] / res[regime]["eager"][
                "programs_per_s"] if regime == "batch" else res[regime]["eager"][
                "latency_ms"] / res[regime][m]["latency_ms"]) for m in args.modes}
            for regime in ("batch", "latency")}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a tiny run to check the script works")
    ap.add_argument("--num-programs", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--programs", default="few_shot,fork_judge,multi_turn_chat,json")
    ap.add_argument("--backends", default="engine,http")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    if args.quick:
        args.num_programs, args.repeats = 4, 1
    args.modes = args.modes.split(",")
    b = Backends(args)
    results: dict = {}
    try:
        for backend in args.backends.split(","):
            for name in args.programs.split(","):
                results.setdefault(backend, {})[name] = bench_program(name, args, b, backend)
    finally:
        b.close()
    label = "compiler_quick" if args.quick else "compiler"
    path = save(label, {"workload": {"num_programs": args.num_programs, "dtype": args.dtype,
                                     "repeats": args.repeats, "modes": args.modes,
                                     "latency_programs": LATENCY_PROGRAMS},
                        "results": results})
    groups = {f"{backend} {regime}": {f"{n} {m}": r["speedup_vs_eager"][regime][m]
                                      for n, r in res.items() for m in args.modes}
              for backend, res in results.items() for regime in ("batch", "latency")}
    bar_plot(RESULTS / f"{label}.png", "sglc compiled vs eager (speedup, higher is better)",
             groups, "x eager")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
