"""FSM build time (cold, no cache) for regexes and JSON schemas, beside outlines-core if installed.

    python benchmarks/bench_fsm.py [--repeats 3] [--out benchmarks/results/fsm_build.json]

sglc's time is regex → byte DFA (interegular + UTF-8 expansion) plus the token index over the
vocabulary; the vocabulary trie is built once per tokenizer and reported on its own line.
outlines-core (the Rust index that `outlines` >= 1.0 uses) gets the same regex strings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import gguf

from sglc_runtime.constrained.json_schema import json_schema_to_regex
from sglc_runtime.constrained.regex_fsm import regex_to_byte_dfa
from sglc_runtime.constrained.token_index import build_token_index, build_vocab_trie
from sglc_runtime.model_source import default_model_path
from sglc_runtime.tokenizer import Tokenizer

FIVE_FIELDS = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "email": {"type": "string"},
    "score": {"type": "number"}, "active": {"type": "boolean"}},
    "required": ["name", "age", "email", "score", "active"]}
CASES = {
    "ipv4": r"((25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)",
    "date": r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
    "float": r"[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?",
    "json string": r'"([^"\\\x00-\x1f]|\\["\\/bfnrt])*"',
    "string{0,50}": r'"[^"]{0,50}"',
    "choices x10": "(yes|no|maybe|red|green|blue|north|south|east|west)",
    "non-ascii": r"(héllo|日本語|[α-ω]{2,4})+",
    "schema: 5-field object": FIVE_FIELDS,
    "schema: nested + array": {"type": "object", "properties": {
        "user": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 20},
            "id": {"type": "integer", "minimum": 1, "maximum": 100000}},
            "required": ["name", "id"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5}},
        "required": ["user", "tags"]},
    "schema: optional fields": {"type": "object", "properties": {
        k: {"type": t} for k, t in zip("abcdefgh", ["integer", "string", "boolean", "number",
                                                    "null", "string", "integer", "boolean"])},
        "required": ["d"]},
    "schema: array of objects": {"type": "array", "items": {
        "type": "object", "properties": {"x": {"type": "number"}, "label": {
            "enum": ["cat", "dog", "bird"]}}, "required": ["x", "label"]}, "maxItems": 10},
}


def time_sglc(regex: str, trie, repeats: int) -> dict:
    dfa_s, index_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dfa = regex_to_byte_dfa(regex)
        t1 = time.perf_counter()
        index = build_token_index(dfa, trie)
        t2 = time.perf_counter()
        dfa_s.append(t1 - t0)
        index_s.append(t2 - t1)
    return {"dfa_s": statistics.median(dfa_s), "index_s": statistics.median(index_s),
            "total_s": statistics.median(a + b for a, b in zip(dfa_s, index_s)),
            "num_states": int(dfa.num_states), "num_transitions": len(index.tokens)}


def outlines_vocabulary(tok):
    try:
        from outlines_core import Index, Vocabulary
    except ImportError:
        return None, None
    by_bytes: dict[bytes, list[int]] = {}
    for i, b in enumerate(tok.token_bytes):
        if b and i not in tok.eos_token_ids:
            by_bytes.setdefault(b, []).append(i)
    return Index, Vocabulary(tok.eos_token_ids[0], by_bytes)


def time_outlines(Index, vocab, regex: str, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        Index(regex, vocab)
        times.append(time.perf_counter() - t0)
    return {"total_s": statistics.median(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/fsm_build.json")
    args = ap.parse_args()
    tok = Tokenizer.from_gguf(gguf.GGUFReader(str(default_model_path())))
    t0 = time.perf_counter()
    trie = build_vocab_trie(list(tok.token_bytes), tuple(tok.eos_token_ids), tok.vocab_size)
    trie_s = time.perf_counter() - t0
    Index, vocab = outlines_vocabulary(tok)
    outlines_version = None
    if Index is not None:
        from importlib.metadata import version
        outlines_version = version("outlines_core")
    rows = []
    for name, case in CASES.items():
        regex = case if isinstance(case, str) else json_schema_to_regex(case)
        row = {"case": name, "regex_chars": len(regex), "sglc": time_sglc(regex, trie,
                                                                           args.repeats)}
        if Index is not None:
            row["outlines_core"] = time_outlines(Index, vocab, regex, args.repeats)
        rows.append(row)
        s, o = row["sglc"], row.get("outlines_core")
        print(f"{name:26s} states {s['num_states']:5d}  sglc {s['total_s']*1e3:8.1f} ms "
              f"(dfa {s['dfa_s']*1e3:6.1f} + index {s['index_s']*1e3:6.1f})"
              + (f"  outlines-core {o['total_s']*1e3:8.1f} ms" if o else ""))
    print(f"vocabulary trie (once per tokenizer): {trie_s*1e3:.1f} ms")
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_average_1m_at_end": os.getloadavg()[0]},  # shared box: noisy
        "tokenizer": {"vocab_size": tok.vocab_size, "model": default_model_path().name},
        "repeats": args.repeats, "statistic": "median seconds, cold (no cache)",
        "vocab_trie_build_s": trie_s,
        "outlines_core_version": outlines_version,
        "outlines_note": None if Index is not None else
        "outlines-core not installed (pip install --no-deps outlines_core) - skipped",
        "cases": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out} and its .png")


def plot(rows: list[dict], path: Path) -> None:
    """Build time per case, sglc beside outlines-core (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["case"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar([i - 0.2 for i in x], [r["sglc"]["total_s"] * 1e3 for r in rows], 0.4, label="sglc")
    if all("outlines_core" in r for r in rows):
        ax.bar([i + 0.2 for i in x], [r["outlines_core"]["total_s"] * 1e3 for r in rows], 0.4,
               label="outlines-core")
    ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("cold build time (ms)")
    ax.set_title("regex / JSON schema -> token FSM build time (49k-token vocabulary)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
