"""Grammar engines side by side (issue 14): compile time and mask time per token for regexes,
JSON schemas and context-free grammars, on the default model's vocabulary.

    python benchmarks/bench_grammar.py [--tokens 64] [--walks 3]

Engines: sglc's regex FSM (interegular byte DFA + token index; regex and JSON schema only),
llguidance (Earley over a regex lexer), and xgrammar (pushdown automaton) where installed
(`pip install --no-deps xgrammar apache-tvm-ffi`; its other requirements come with sglc's test
extra). Each engine compiles every case cold (no cache), then walks `--walks` seeded random paths
of up to `--tokens` tokens, each step computing the allowed-token mask and taking a random
allowed token; "mask" is the time per step to get the mask as a bool tensor over the vocabulary
(what the sampler applies). sglc's FSM builds a state's mask on first visit and then reuses it,
so the walks are cold for it; "warm" re-walks the first path (what the next request with the
same constraint meets: sglc's FSM then reads cached masks, the others compute each again).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, save

FIVE_FIELDS = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "email": {"type": "string"},
    "score": {"type": "number"}, "active": {"type": "boolean"}},
    "required": ["name", "age", "email", "score", "active"]}
NESTED = {"type": "object", "properties": {
    "user": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20},
        "id": {"type": "integer", "minimum": 1, "maximum": 100000}}, "required": ["name", "id"]},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5}},
    "required": ["user", "tags"]}
ARRAY_OF_OBJECTS = {"type": "array", "items": {
    "type": "object", "properties": {"x": {"type": "number"}, "label": {
        "enum": ["cat", "dog", "bird"]}}, "required": ["x", "label"]}, "maxItems": 10}

# (kind, text): regex, json_schema, or a grammar in GBNF (which all grammar engines read)
CASES = {
    "regex: date": ("regex", r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    "regex: ipv4": ("regex", (r"((25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}"
                              r"(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)")),
    "regex: string{0,50}": ("regex", r'"[^"]{0,50}"'),
    "schema: 5 fields": ("json_schema", FIVE_FIELDS),
    "schema: nested + array": ("json_schema", NESTED),
    "schema: array of objects": ("json_schema", ARRAY_OF_OBJECTS),
    "cfg: arithmetic": ("grammar", r"""
root ::= expr
expr ::= term (("+" | "-" | "*" | "/") term)*
term ::= [0-9]+ | "(" expr ")"
"""),
    "cfg: sql select": ("grammar", r"""
root ::= "SELECT " cols " FROM " table where? ";"
cols ::= col (", " col)*
col ::= "name" | "age" | "city" | "email" | "id"
table ::= "users" | "orders" | "items"
where ::= " WHERE " col " " op " " value (" AND " col " " op " " value)*
op ::= "=" | "<" | ">"
value ::= [0-9]+ | "'" [a-z]+ "'"
"""),
    "cfg: nested lists": ("grammar", r"""
root ::= list
list ::= "[" (item (", " item)*)? "]"
item ::= [a-z]+ | list
"""),
    "cfg: json (any)": ("grammar", r"""
root ::= value
value ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" (string ":" value ("," string ":" value)*)? "}"
array ::= "[" (value ("," value)*)? "]"
string ::= "\"" [a-z ]* "\""
number ::= "-"? [0-9]+ ("." [0-9]+)?
"""),
}


class Engine:
    """compile(kind, text) -> matcher factory; a matcher: mask() -> bool tensor, take(token)."""

    name = ""

    def supports(self, kind: str) -> bool:
        return True


class SglcFSM(Engine):
    name = "sglc regex FSM"

    def __init__(self, tok):
        self.tok = tok

    def supports(self, kind):
        return kind != "grammar"

    def compile(self, kind, text):
        from sglc_runtime.constrained import (
            clear_memory_cache,
            compile_regex,
            json_schema_to_regex,
        )

        clear_memory_cache()
        regex = json_schema_to_regex(json.dumps(text)) if kind == "json_schema" else text
        fsm = compile_regex(regex, self.tok, disk_cache=False)

        class M:
            def __init__(self):
                self.state = fsm.initial_state

            def mask(self):
                return fsm.allowed_mask(self.state)

            def take(self, t):
                self.state = fsm.next_state(self.state, t)

            def done(self):
                return fsm.is_finished(self.state)
        return M


class LLGuidance(Engine):
    name = "llguidance"

    def __init__(self, tok):
        import llguidance

        from sglc_runtime.constrained.grammar import ll_tokenizer

        self.llg, self.tok = llguidance, tok
        self.lt = ll_tokenizer(tok)

    def compile(self, kind, text):
        llg = self.llg
        g = {"regex": lambda: llg.LLMatcher.grammar_from_regex(text),
             "json_schema": lambda: llg.LLMatcher.grammar_from_json_schema(json.dumps(text)),
             "grammar": lambda: llg.grammar_from("grammar", text)}[kind]()
        pristine = llg.LLMatcher(self.lt, g, log_level=0)
        assert not pristine.is_error(), pristine.get_error()
        vocab = self.tok.vocab_size

        class M:
            def __init__(self):
                self.m = pristine.deep_copy()  # each walk its own matcher

            def mask(self):
                bits = np.frombuffer(self.m.compute_bitmask(), dtype=np.uint8)
                return torch.from_numpy(np.unpackbits(bits, bitorder="little")[:vocab]
                                        .astype(bool))

            def take(self, t):
                assert self.m.consume_token(t)

            def done(self):
                return self.m.is_stopped()
        return M


class XGrammar(Engine):
    name = "xgrammar"

    def __init__(self, tok):
        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo(list(tok.token_bytes), vocab_type=xgr.VocabType.RAW,
                                 vocab_size=tok.vocab_size,
                                 stop_token_ids=list(tok.eos_token_ids))
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        self.vocab = tok.vocab_size

    def compile(self, kind, text):
        xgr, c = self.xgr, self.compiler
        compiled = {"regex": lambda: c.compile_regex(text),
                    "json_schema": lambda: c.compile_json_schema(json.dumps(text)),
                    "grammar": lambda: c.compile_grammar(text)}[kind]()
        vocab = self.vocab

        class M:
            def __init__(self):
                self.m = xgr.GrammarMatcher(compiled)  # each walk its own matcher
                self.bitmask = xgr.allocate_token_bitmask(1, vocab)

            def mask(self):
                self.m.fill_next_token_bitmask(self.bitmask)
                bits = self.bitmask.numpy().view(np.uint8)
                return torch.from_numpy(np.unpackbits(bits, bitorder="little")[:vocab]
                                        .astype(bool))

            def take(self, t):
                assert self.m.accept_token(t)

            def done(self):
                return self.m.is_terminated()
        return M


def walk(factory, steps: int, seed: int, eos: set[int]) -> list[float]:
    """Mask times (s) along one random path of allowed tokens."""
    rng, m, times = random.Random(seed), factory(), []
    for _ in range(steps):
        if m.done():
            break
        t0 = time.perf_counter()
        mask = m.mask()
        times.append(time.perf_counter() - t0)
        allowed = [t for t in mask.nonzero().flatten().tolist() if t not in eos]
        if not allowed:
            break
        m.take(rng.choice(allowed))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--walks", type=int, default=3)
    args = ap.parse_args()
    from gguf import GGUFReader

    from sglc_runtime.model_source import default_model_path
    from sglc_runtime.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(GGUFReader(str(default_model_path())))
    engines, skipped = [], {}
    for cls in (SglcFSM, LLGuidance, XGrammar):
        try:
            t0 = time.perf_counter()
            engines.append(cls(tok))
            print(f"{cls.name}: tokenizer setup {time.perf_counter() - t0:.2f} s", flush=True)
        except ImportError as e:
            skipped[cls.name] = f"not installed ({e.name})"
            print(f"SKIPPED {cls.name}: not installed ({e.name})", flush=True)
    eos = set(tok.eos_token_ids)
    results: dict = {}
    for case, (kind, text) in CASES.items():
        results[case] = {}
        for eng in engines:
            if not eng.supports(kind):
                continue
            t0 = time.perf_counter()
            factory = eng.compile(kind, text)
            compile_ms = (time.perf_counter() - t0) * 1e3
            times = []
            for w in range(args.walks):
                times += walk(factory, args.tokens, w, eos)
            us = [t * 1e6 for t in times]
            warm = [t * 1e6 for t in walk(factory, args.tokens, 0, eos)]  # walk 0 again
            results[case][eng.name] = {
                "compile_ms": compile_ms, "mask_us_mean": statistics.fmean(us),
                "mask_us_p99": float(np.percentile(us, 99)), "steps": len(us),
                "warm_mask_us_mean": statistics.fmean(warm)}
            r = results[case][eng.name]
            print(f"{case:26s} {eng.name:16s} compile {compile_ms:9.1f} ms  mask "
                  f"{r['mask_us_mean']:8.1f} us (p99 {r['mask_us_p99']:8.1f}) over "
                  f"{len(us)} steps; same path again {r['warm_mask_us_mean']:8.1f} us",
                  flush=True)
    names = [e.name for e in engines]
    path = save("grammar", {"tokens": args.tokens, "walks": args.walks, "skipped": skipped,
                            "cases": {k: {"kind": v[0]} for k, v in CASES.items()},
                            "results": results})
    plot_grouped(RESULTS / "grammar.png", results, names)
    print(f"wrote {path}")


def plot_grouped(path: Path, results: dict, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(18, 6))
    width = 0.8 / max(1, len(names))
    for ax, metric, title in ((axes[0], "compile_ms", "compile time (ms)"),
                              (axes[1], "mask_us_mean", "mask time per token, cold (us)"),
                              (axes[2], "warm_mask_us_mean",
                               "mask time per token, same path again (us)")):
        for k, n in enumerate(names):
            ys = [results[c].get(n, {}).get(metric, float("nan")) for c in cases]
            ax.barh([i + k * width for i in range(len(cases))], ys, height=width, label=n)
        ax.set_yticks([i + width * (len(names) - 1) / 2 for i in range(len(cases))])
        ax.set_yticklabels(cases)
        ax.set_xscale("log")
        ax.set_title(title)
        ax.invert_yaxis()
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
