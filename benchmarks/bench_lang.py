"""Language benchmark (issue 4): `run_batch` throughput of a few-shot program and a fork program
(the shapes of samples/few_shot_qa.py and samples/fork_judge.py), on sglc with the radix cache
on and off, against the same programs written as sequential HF transformers `generate` calls.

Every gen is greedy with `ignore_eos`, so each system generates the same number of tokens.
Run: python benchmarks/bench_lang.py [--quick] [--num-programs N] [--systems sglc,hf]"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, bar_plot, load_hf, save, timed

import sglc as sgl


def few_shot_prefix(num_shots: int) -> str:
    rng = random.Random(0)
    shots = "".join(f"Question: What is {a} plus {b}?\nAnswer: {a + b}\n\n"
                    for a, b in [(rng.randint(2, 99), rng.randint(2, 99))
                                 for _ in range(num_shots)])
    return "Answer the arithmetic questions.\n\n" + shots


def make_programs(args):
    prefix = few_shot_prefix(args.num_shots)
    gen = {"max_tokens": args.max_new_tokens, "ignore_eos": True}

    @sgl.function
    def few_shot(s, question):
        s += prefix + "Question: " + question + "\nAnswer:"
        s += sgl.gen("answer", **gen)

    @sgl.function
    def fork_judge(s, question):
        s += prefix + "Question: " + question + "\n"
        forks = s.fork(args.branches)
        forks += lambda i: f"Candidate answer {i + 1}:" + sgl.gen("answer", **gen)
        forks.join()
        s += "".join(f"Candidate {i + 1}:{a}\n" for i, a in enumerate(s["answer"]))
        s += "The best candidate is" + sgl.gen("verdict", **gen)

    questions = [f"What is {i} plus {i + 7}?" for i in range(args.num_programs)]
    return prefix, {"few_shot": few_shot, "fork_judge": fork_judge}, questions


# ---- sglc -------------------------------------------------------------------------------------
def bench_sglc(args, programs, questions, disable_radix_cache: bool) -> dict:
    engine = sgl.Engine(dtype=args.dtype, disable_radix_cache=disable_radix_cache)
    rt = sgl.Runtime(engine=engine)
    res = {}
    for name, prog in programs.items():
        prog.run_batch([{"question": "What is 1 plus 1?"}] * 2, temperature=0, backend=rt)
        if not disable_radix_cache:
            engine.flush_cache()  # time the first computation of the prefix too
        prefilled = engine.stats()["num_prefill_tokens"]
        states, t = timed(prog.run_batch, [{"question": q} for q in questions], temperature=0,
                          backend=rt)
        errors = [st.error() for st in states if st.error() is not None]
        assert not errors, f"{name}: {errors[0]!r}"
        res[name] = {"programs_per_s": len(questions) / t, "wall_s": t,
                     "prefill_tokens_computed": engine.stats()["num_prefill_tokens"] - prefilled}
    engine.shutdown()
    return res


# ---- HF transformers ---------------------------------------------------------------------------
def bench_hf(args, prefix, questions) -> dict | None:
    """The same programs as a transformers user writes them: one `generate` call at a time."""
    model = load_hf()
    if model is None:
        return None
    from transformers import AutoTokenizer

    from sglc_runtime.model_source import default_model_path

    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    n = args.max_new_tokens

    @torch.no_grad()
    def generate(prompt: str) -> str:
        ids = tok(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=tok.eos_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def few_shot(question):
        return generate(prefix + "Question: " + question + "\nAnswer:")

    def fork_judge(question):
        base = prefix + "Question: " + question + "\n"
        answers = [generate(base + f"Candidate answer {i + 1}:") for i in range(args.branches)]
        listing = "".join(f"Candidate {i + 1}:{a}\n" for i, a in enumerate(answers))
        return generate(base + listing + "The best candidate is")

    res = {}
    for name, fn in {"few_shot": few_shot, "fork_judge": fork_judge}.items():
        fn("What is 1 plus 1?")
        _, t = timed(lambda f=fn: [f(q) for q in questions])
        res[name] = {"programs_per_s": len(questions) / t, "wall_s": t}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a tiny run to check the script works")
    ap.add_argument("--num-programs", type=int, default=64)
    ap.add_argument("--num-shots", type=int, default=20, help="few-shot examples in the prefix")
    ap.add_argument("--branches", type=int, default=3, help="fork width of fork_judge")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--dtype", default="auto", help="sglc's dtype (HF always runs float32)")
    ap.add_argument("--systems", default="sglc,sglc-nocache,hf")
    args = ap.parse_args()
    if args.quick:
        args.num_programs, args.num_shots, args.max_new_tokens = 4, 4, 2
    systems = args.systems.split(",")

    prefix, programs, questions = make_programs(args)
    results = {}
    if "sglc" in systems:
        results["sglc"] = bench_sglc(args, programs, questions, disable_radix_cache=False)
    if "sglc-nocache" in systems:
        results["sglc (no radix cache)"] = bench_sglc(args, programs, questions,
                                                      disable_radix_cache=True)
    if "hf" in systems:
        hf = bench_hf(args, prefix, questions)
        if hf is not None:
            results["HF transformers (sequential)"] = hf
    for system, res in results.items():
        print(system, {k: round(v["programs_per_s"], 2) for k, v in res.items()})

    name = "lang_quick" if args.quick else "lang"
    workload = {k: getattr(args, k) for k in ("num_programs", "num_shots", "branches",
                                              "max_new_tokens")}
    ratios = {}
    ours = results.get("sglc", {})
    for other, res in results.items():
        if other == "sglc":
            continue
        for w, r in res.items():
            if w in ours:
                ratios[f"{w}: sglc vs {other}"] = ours[w]["programs_per_s"] / r["programs_per_s"]
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    save(name, {"workload": workload, "dtype": args.dtype, "systems": results,
                "ratios": ratios})
    groups = {f"{w} (programs/s)": {s: r[w]["programs_per_s"] for s, r in results.items()}
              for w in programs}
    bar_plot(RESULTS / f"{name}.png", "run_batch throughput", groups, "programs / s")
    print(f"wrote {RESULTS / name}.json and .png")


if __name__ == "__main__":
    main()
