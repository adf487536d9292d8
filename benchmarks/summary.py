"""Print a markdown summary of the committed results in benchmarks/results/*.json."""

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def load(name):
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def table(systems: dict, metrics: list[str]) -> str:
    head = "| system | " + " | ".join(metrics) + " |\n|---|" + "---|" * len(metrics) + "\n"
    rows = "".join("| " + s + " | " + " | ".join(
        f"{v[m]:.2f}" if isinstance(v.get(m), (int, float)) else "-" for m in metrics) + " |\n"
        for s, v in systems.items())
    return head + rows


def main():
    eng = load("engine")
    if eng:
        print("## Engine (`python benchmarks/bench_engine.py`)\n")
        print(table(eng["systems"], ["prefill_tok_s", "decode_b1_tok_s", "decode_b64_tok_s",
                                     "shared_prefix_req_s", "shared_prefix_cache_hit_rate"]))
        print("Ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in eng["ratios"].items()) + "\n")
    gpu = load("engine_gpu")
    if gpu:
        print(f"## Engine on {gpu['device']} (`python benchmarks/bench_gpu.py`)\n")
        print(table(gpu["systems"], ["prefill_tok_s", "decode_b1_tok_s", "decode_b64_tok_s",
                                     "shared_prefix_req_s", "shared_prefix_cache_hit_rate"]))
        print("Ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in gpu["ratios"].items()) + "\n")
    qa = load("quant_accuracy")
    if qa:
        print("## int8 / int4 against exact fp32 (`python benchmarks/bench_quant_accuracy.py`)\n")
        print(table(qa["schemes"], ["mean_first_divergence", "identical"]))
        print("fbgemm int8 linear speedup over fp32: " + ", ".join(
            f"{k} {v:.2f}x" for k, v in
            qa["fbgemm_int8_speedup_over_fp32_linear_576x3072"].items()) + "\n")
    con = load("constrained")
    if con:
        print("## Constrained decoding (`python benchmarks/bench_constrained.py`)\n")
        print(table(con["systems"], ["requests_per_s", "output_tokens", "jump_forward_tokens"]))
        print(f"Jump-forward speedup {con['speedup']:.2f}x; greedy texts differ "
              f"{con['greedy_texts_differ']}.\n")
    fsm = load("fsm_build")
    if fsm:
        print("## FSM build (`python benchmarks/bench_fsm.py --repeats 5`)\n")
        print("| case | states | sglc ms | outlines-core ms |\n|---|---|---|---|")
        for c in fsm["cases"]:
            o = c.get("outlines_core", {}).get("total_s")
            print(f"| {c['case']} | {c['sglc']['num_states']} | {c['sglc']['total_s'] * 1e3:.1f} "
                  f"| {'-' if o is None else f'{o * 1e3:.1f}'} |")
        print()
    for name, title in (("lang", "Language run_batch (`bench_lang.py --num-programs 32`)"),
                        ("compiler", "Compiled vs eager (`bench_compiler.py`)")):
        d = load(name)
        if not d:
            continue
        print(f"## {title}\n")
        print("```\n" + json.dumps({k: d[k] for k in d if k in ("systems", "ratios", "programs")},
                                   indent=1)[:3000] + "\n```\n")


if __name__ == "__main__":
    main()
