"""Precision of the default (bfloat16) path against its cost (issue 13): greedy chat answers of
the default engine against float32 HF transformers on the same GGUF, and decode / prefill speed,
with attention scores and the LM head's top logits in float32 (the default) and without each.

Configurations, each in its own process (interleaved, best of --repeats):
  default            attention as picked for this CPU (float32 scores in both implementations;
                     under sdpa, prefill attention in float32), each row's top-16 logits
                     recomputed in float32
  sdpa / matmul      --attention-backend sdpa (torch's fused flash kernel) / matmul (`attend`)
  bf16_prefill       sdpa with prefill attention in bfloat16 (attention.PREFILL_IN_FLOAT32 = False)
  bf16_logits        --disable-fp32-logits (the LM head's bfloat16 logits only)
  bf16_scores        matmul attention with scores rounded to bfloat16
                     (attention.SCORES_IN_FLOAT32 = False)
  bf16_both          both off (the engine before issue 13)
Agreement: per chat question, greedy tokens equal float32 HF's up to the first position where
float32 HF's own top-2 logit gap is below 0.05 (a near-tie), and over all 24 tokens.

Run: python benchmarks/bench_precision.py [--repeats 2] [--new 24]"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, bar_plot, save

CONFIGS = ("default", "sdpa", "bf16_prefill", "matmul", "bf16_logits", "bf16_scores",
           "bf16_both")
QUESTIONS = ["What is the capital of France?", "What is 2 + 3?", "Name a primary color.",
             "Who wrote Hamlet?", "What is the largest ocean on Earth?",
             "How many legs does a spider have?", "What gas do plants breathe in?",
             "Translate 'thank you' into Spanish.", "Name one planet in the solar system.",
             "What is the opposite of hot?", "Which animal is known as the king of the jungle?",
             "What is the boiling point of water in Celsius?",
             "What color is the sky on a clear day?", "How many days are in a week?",
             "What is the freezing point of water in Fahrenheit?", "Who painted the Mona Lisa?",
             "What is the square root of 16?", "Name a fruit that is yellow.",
             "What is the chemical symbol for gold?", "How many continents are there?",
             "What language is spoken in Brazil?", "What is the tallest mountain in the world?",
             "Who was the first president of the United States?", "What do bees make?",
             "What is the capital of Japan?", "How many hours are in a day?",
             "What is 10 times 10?", "Name a mammal that can fly.",
             "What is the largest planet in our solar system?", "What is H2O commonly called?",
             "Which season comes after winter?", "What instrument has 88 keys?",
             "What is the main ingredient in guacamole?", "How many sides does a triangle have?",
             "What is the capital of Italy?", "Who discovered penicillin?",
             "What is the fastest land animal?", "Write a haiku about rain.",
             "Give me a synonym for happy.", "What is the currency of the United Kingdom?"]
NEAR_TIE = 0.05


def child(config: str, new: int) -> dict:
    """One configuration's greedy answers and speeds (runs in its own process)."""
    import sglc_runtime.attention.torch_attention as attention
    from sglc_runtime.engine import Engine

    attention.SCORES_IN_FLOAT32 = config not in ("bf16_scores", "bf16_both")
    attention.PREFILL_IN_FLOAT32 = config != "bf16_prefill"
    backend = {"sdpa": "sdpa", "bf16_prefill": "sdpa", "bf16_scores": "matmul",
               "bf16_both": "matmul", "matmul": "matmul"}.get(config, "auto")
    eng = Engine(engine_in_process=True, attention_backend=backend,
                 disable_fp32_logits=config in ("bf16_logits", "bf16_both"))
    attention_used = eng.core.runner.attention.name
    tok = eng.tokenizer
    answers = []
    for q in QUESTIONS:
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], True))
        answers.append(eng.generate(input_ids=ids, sampling_params={
            "temperature": 0, "max_new_tokens": new, "ignore_eos": True})["output_ids"])
    speed = {}
    for b in (1, 8, 32):
        prompts = [[tok.bos_token_id or 1] + [100 + 7 * i + j for j in range(16)]
                   for i in range(b)]
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            eng.generate(input_ids=prompts, sampling_params={
                "temperature": 0, "max_new_tokens": 32, "ignore_eos": True})
            best = min(best, time.perf_counter() - t)
        speed[f"decode_b{b}_tok_s"] = b * 32 / best
    best = float("inf")
    for i in range(3):
        ids = [tok.bos_token_id or 1] + [(1000 + 13 * i + 7 * j) % 40000 for j in range(511)]
        t = time.perf_counter()
        eng.generate(input_ids=ids, sampling_params={"max_new_tokens": 1})
        best = min(best, time.perf_counter() - t)
    speed["prefill_512_tok_s"] = 512 / best
    eng.shutdown()
    return {"answers": answers, "speed": speed, "attention": attention_used}


def reference(new: int) -> list[tuple[list[int], list[float]]]:
    """float32 HF's greedy tokens and top-2 gaps per question."""
    import torch
    from transformers import AutoModelForCausalLM

    from sglc_runtime.model_source import default_model_path
    from sglc_runtime.tokenizer import Tokenizer

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    from gguf import GGUFReader

    tok = Tokenizer.from_gguf(GGUFReader(str(path)))
    out = []
    for q in QUESTIONS:
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], True))
        seq, margins = list(ids), []
        with torch.no_grad():
            o = model(torch.tensor([seq]), use_cache=True)
            for _ in range(new):
                top = o.logits[0, -1].float().topk(2).values
                margins.append(float(top[0] - top[1]))
                seq.append(int(o.logits[0, -1].argmax()))
                o = model(torch.tensor([[seq[-1]]]), past_key_values=o.past_key_values,
                          use_cache=True)
        out.append((seq[len(ids):], margins))
    return out


def agreement(answers: list[list[int]], ref) -> dict:
    before_tie = same = 0
    first_diff = []
    for ours, (theirs, margins) in zip(answers, ref):
        upto = next((i for i, m in enumerate(margins) if m < NEAR_TIE), len(theirs))
        before_tie += ours[:upto] == theirs[:upto]
        same += ours == theirs
        first_diff.append(next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                               len(theirs)))
    return {"agree_until_near_tie": before_tie, "identical": same, "questions": len(answers),
            "first_difference": first_diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.new)))
        return
    ref = reference(args.new)
    runs: dict = {c: [] for c in CONFIGS}
    for _ in range(args.repeats):
        for c in CONFIGS:
            out = subprocess.run([sys.executable, __file__, "--child", c, "--new", str(args.new)],
                                 capture_output=True, text=True, check=True)
            runs[c].append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = {}
    for c, rs in runs.items():
        speed = {k: max(r["speed"][k] for r in rs) for k in rs[0]["speed"]}
        results[c] = {"speed": speed, "attention": rs[0]["attention"],
                      **agreement(rs[0]["answers"], ref)}
        print(f"{c:12s} agree {results[c]['agree_until_near_tie']}/{len(QUESTIONS)} "
              f"identical {results[c]['identical']}  " +
              "  ".join(f"{k} {v:.1f}" for k, v in speed.items()), flush=True)
    base = results["bf16_both"]["speed"]
    for c in CONFIGS:
        results[c]["speed_vs_bf16_both"] = {k: results[c]["speed"][k] / base[k] for k in base}
    path = save("precision", {"workload": {"questions": QUESTIONS, "new_tokens": args.new,
                                           "near_tie": NEAR_TIE, "repeats": args.repeats},
                              "results": results})
    bar_plot(RESULTS / "precision.png", "bfloat16 engine: precision vs cost",
             {f"chat answers = float32 HF (of {len(QUESTIONS)})": {c: results[c]["agree_until_near_tie"]
                                                    for c in CONFIGS},
              "decode tok/s, batch 32": {c: results[c]["speed"]["decode_b32_tok_s"]
                                         for c in CONFIGS},
              "decode tok/s, batch 1": {c: results[c]["speed"]["decode_b1_tok_s"]
                                        for c in CONFIGS}}, "")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
