"""Regex → TokenFSM on the default model's tokenizer: random walks, jump-forward, EOS, caching."""

import random
import re
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglc_runtime.constrained import build_constraint, clear_memory_cache, compile_regex
from sglc_runtime.constrained import compile as compile_mod
from sglc_runtime.constrained.regex_fsm import regex_to_byte_dfa
from sglc_runtime.errors import ConstraintError

IPV4 = r"((25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"
PATTERNS = [
    IPV4,
    r"\d{4}-\d{2}-\d{2}",
    r"[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?",
    r'"[^"\n]{0,20}"',
    r"(cat|dog|bird)( and (cat|dog|bird)){0,3}",
    r"(héllo|日本語)+",
    r"[a-zé€😀]{1,6}",
    r"The answer is (yes|no)\.",
]


@pytest.fixture(scope="module")
def tok():
    import gguf

    from sglc_runtime.model_source import default_model_path
    from sglc_runtime.tokenizer import Tokenizer

    return Tokenizer.from_gguf(gguf.GGUFReader(str(default_model_path())))


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Every test gets an empty disk cache (after the module's tokenizer is loaded)."""
    monkeypatch.setenv("SGLC_CACHE_DIR", str(tmp_path))
    clear_memory_cache()


def distance_to_accept(fsm) -> np.ndarray:
    """Bytes still needed from each byte-DFA state to reach an accepting one."""
    trans, dist = fsm.dfa.trans, np.where(fsm.dfa.accepting, 0, 10**9)
    while True:
        nxt = np.where(trans >= 0, dist[np.maximum(trans, 0)] + 1, 10**9).min(axis=1)
        new = np.minimum(dist, nxt)
        if (new == dist).all():
            return dist
        dist = new


def random_walk(fsm, tok, rng, jump_forward=True, budget=40, stop_p=0.3) -> bytes:
    """Sample allowed tokens until EOS; past `budget` steps, head for acceptance greedily."""
    dist, state, out, steps = distance_to_accept(fsm), fsm.initial_state, b"", 0
    while True:
        allowed = fsm.allowed_tokens(state).tolist()
        assert allowed, f"no token allowed in state {state} after {out!r}"
        eos = [t for t in allowed if t in tok.eos_token_ids]
        assert bool(eos) == fsm.is_accepting(state)
        if eos and (fsm.is_finished(state) or rng.random() < stop_p or steps > 3 * budget):
            assert fsm.next_state(state, eos[0]) == fsm.final_state
            return out
        if steps < budget:
            t = rng.choice([t for t in allowed if t not in tok.eos_token_ids])
        else:  # the token whose next state is closest to acceptance
            lo, hi = fsm.index.ptr[state], fsm.index.ptr[state + 1]
            t = int(fsm.index.tokens[lo + np.argmin(dist[fsm.index.next_states[lo:hi]])])
        state = fsm.next_state(state, t)
        assert state >= 0
        out += tok.token_bytes[t]
        steps += 1
        if jump_forward and (forced := fsm.forced_bytes(state)):
            state = fsm.advance_bytes(state, forced)
            out += forced


@pytest.mark.parametrize("pattern", PATTERNS)
def test_random_walks_fullmatch(tok, pattern):
    fsm = compile_regex(pattern, tok)
    rng = random.Random(pattern)
    for i in range(12):
        text = random_walk(fsm, tok, rng, jump_forward=i % 2 == 0).decode("utf-8")
        assert re.fullmatch(pattern, text), (pattern, text)


@pytest.mark.parametrize("pattern", [IPV4, r"(héllo|日本語)+", r'"[^"]{0,3}"'])
def test_allowed_tokens_match_brute_force(tok, pattern):
    """A token is allowed iff all its bytes stay inside the DFA, landing on next_state."""
    fsm = compile_regex(pattern, tok)
    rng = random.Random(1)
    states = [0] + rng.sample(range(fsm.num_states - 1), min(3, fsm.num_states - 1))
    for s in states:
        expect = {t: fsm.advance_bytes(s, b) for t, b in enumerate(tok.token_bytes) if b}
        expect = {t: n for t, n in expect.items() if n >= 0}
        got = fsm.allowed_tokens(s).tolist()
        assert set(got) - set(tok.eos_token_ids) == set(expect)
        assert all(fsm.next_state(s, t) == n for t, n in expect.items())
        assert int(fsm.allowed_mask(s).sum()) == len(got)


BUDGET_PATTERNS = [r"\d+( [+-] \d+)*", r"SELECT (id|name|price)(, (id|name|price))* FROM t;",
                   IPV4, r'\{"a": "[a-z]{1,8}", "b": [0-9]{1,3}\}']


@pytest.mark.parametrize("pattern", BUDGET_PATTERNS)
def test_tokens_to_accept_is_each_states_shortest_way(tok, pattern):
    """0 at accepting states, else one more than the best allowed token's next state."""
    fsm = compile_regex(pattern, tok)
    dist, worst = fsm.tokens_to_accept()
    for s in range(fsm.num_states - 1):
        toks = [t for t in fsm.allowed_tokens(s).tolist() if t not in tok.eos_token_ids]
        nxt = [fsm.next_state(s, t) for t in toks]
        want = 0 if fsm.is_accepting(s) else 1 + min(int(dist[n]) for n in nxt)
        assert int(dist[s]) == want, (s, pattern)
        assert int(worst[s]) == max((int(dist[n]) for n in nxt), default=0)


@pytest.mark.parametrize("pattern", BUDGET_PATTERNS)
def test_a_budget_that_can_hold_a_sentence_always_ends_in_one(tok, pattern):
    """Random tokens from the budget-aware mask: whatever the budget (down to the fewest
    tokens a sentence needs), the output fullmatches when the tokens run out."""
    fsm = compile_regex(pattern, tok)
    dist, _ = fsm.tokens_to_accept()
    rng = random.Random(pattern)
    for trial in range(20):
        budget = int(dist[fsm.initial_state]) + trial % 5
        state, out = fsm.initial_state, b""
        for left in range(budget, 0, -1):
            allowed = fsm.allowed_mask(state, left).nonzero().squeeze(1).tolist()
            t = rng.choice(allowed)
            if t in tok.eos_token_ids:
                break
            state, out = fsm.next_state(state, t), out + tok.token_bytes[t]
        assert fsm.is_accepting(state) and re.fullmatch(pattern, out.decode()), (budget, out)
    loose = fsm.allowed_mask(fsm.initial_state, 10 ** 6)
    assert loose is fsm.allowed_mask(fsm.initial_state)  # (a loose budget changes nothing)


def test_tokens_may_split_a_utf8_character(tok):
    fsm = compile_regex("日本語", tok)
    lead = tok.token_bytes.index(b"\xe6")  # the first byte of 日 (e6 97 a5) alone
    state = fsm.next_state(0, lead)
    assert state > 0 and not fsm.dfa.char_boundary[state]
    assert fsm.advance_bytes(state, b"\x97\xa5") == fsm.advance_bytes(0, "日".encode())
    assert fsm.forced_bytes(state) == b"\x97\xa5" + "本語".encode()


@given(st.text(alphabet="0123456789.-+eE x", max_size=12))
@settings(max_examples=300, deadline=None)
def test_byte_dfa_agrees_with_re(text):
    for pattern in (r"[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?", IPV4, r"(x|xx|0-){2,4}"):
        dfa = _dfa(pattern)
        state = 0
        for b in text.encode():
            state = dfa.trans[state, b] if state >= 0 else -1
        accepted = state >= 0 and bool(dfa.accepting[state])
        assert accepted == bool(re.fullmatch(pattern, text)), (pattern, text)


_DFAS = {}


def _dfa(pattern):
    if pattern not in _DFAS:
        _DFAS[pattern] = regex_to_byte_dfa(pattern)
    return _DFAS[pattern]


def test_non_ascii_byte_dfa_agrees_with_re():
    pattern = r"(héllo|日本語|[α-ω]{2})+"
    dfa = _dfa(pattern)
    rng = random.Random(0)
    pieces = ["héllo", "日本語", "αβ", "ω", "h", "é", "日本", "x", "ωω"]
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
        state = 0
        for b in text.encode():
            state = dfa.trans[state, b] if state >= 0 else -1
        assert (state >= 0 and bool(dfa.accepting[state])) == bool(re.fullmatch(pattern, text))


# ---- jump-forward -------------------------------------------------------------------------
def test_forced_bytes_and_advance(tok):
    fsm = compile_regex(r"The answer is (yes|no)\.", tok)
    assert fsm.forced_bytes(0) == b"The answer is "
    s = fsm.advance_bytes(0, b"The answer is ")
    assert s > 0 and fsm.forced_bytes(s) == b""
    s_yes = fsm.advance_bytes(s, b"y")
    assert fsm.forced_bytes(s_yes) == b"es."
    end = fsm.advance_bytes(s_yes, b"es.")
    assert fsm.is_accepting(end) and fsm.is_finished(end) and fsm.forced_bytes(end) == b""
    assert fsm.advance_bytes(0, b"The answer is maybe") == -1
    # a forced run stops at a branch even inside a character: "h" then é (c3 a9) or è (c3 a8)
    assert compile_regex("h(é|è)llo", tok).forced_bytes(0) == b"h"
    assert compile_regex("(日本語)+", tok).forced_bytes(0) == "日本語".encode()


def test_forced_bytes_is_the_only_way_forward(tok):
    """Every allowed token is a prefix of the forced string or extends it."""
    for pattern in (IPV4, r"The answer is (yes|no)\.", r'\{"a": (1|2), "b": "[a-z]*"\}'):
        fsm = compile_regex(pattern, tok)
        for s in range(fsm.num_states - 1):
            forced = fsm.forced_bytes(s)
            if not forced:
                continue
            forced.decode("utf-8")  # ends on a character boundary
            assert fsm.advance_bytes(s, forced) >= 0
            for t in fsm.allowed_tokens(s).tolist():
                b = tok.token_bytes[t]
                assert b.startswith(forced) or forced.startswith(b), (pattern, s, b, forced)


# ---- EOS and special tokens ---------------------------------------------------------------
def test_eos_only_in_accepting_states(tok):
    fsm = compile_regex(r"ab?", tok)
    eos = tok.eos_token_ids[0]
    assert fsm.next_state(0, eos) == -1 and not fsm.allowed_mask(0)[eos]
    s = fsm.advance_bytes(0, b"a")
    assert fsm.is_accepting(s) and not fsm.is_finished(s) and fsm.allowed_mask(s)[eos]
    assert fsm.next_state(s, eos) == fsm.final_state
    assert fsm.is_finished(fsm.final_state)
    assert fsm.allowed_tokens(fsm.final_state).tolist() == sorted(tok.eos_token_ids)
    specials = [i for i, b in enumerate(tok.token_bytes) if not b and i not in tok.eos_token_ids]
    assert not fsm.allowed_mask(s)[specials].any()
    assert fsm.allowed_mask(0).shape == (tok.vocab_size,)


def test_empty_pattern_allows_only_eos(tok):
    fsm = compile_regex("", tok)
    assert fsm.is_finished(0) and fsm.allowed_tokens(0).tolist() == sorted(tok.eos_token_ids)


# ---- validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("pattern, construct", [
    ("(ab", "missing )"), ("a(?=b)", "lookahead"), ("a(?!b)", "negative lookahead"),
    ("(?<=a)b", "lookbehind"), (r"(a)\1", "backreference"), ("a^b", "anchor '^'"),
    ("a$b", "anchor '$'"), (r"\bword", r"word boundary '\b'"), (r"(a)?(?(1)b|c)", "conditional"),
    ("a++", "possessive"), ("[^\\s\\S]", "matches no string"), ("a**", "multiple repeat"),
    ("(?m)a", "flag"),
])
def test_bad_patterns_name_the_construct(tok, pattern, construct):
    if pattern == "a++" and sys.version_info < (3, 11):
        construct = "multiple repeat"  # possessive quantifiers arrived in Python 3.11
    with pytest.raises(ConstraintError, match=re.escape(construct)):
        compile_regex(pattern, tok)


def test_unicode_escapes_and_case_insensitivity(tok):
    fsm = compile_regex(r"caf\u00e9 (?i:yes)", tok)
    for text in ("café yes", "café YeS"):
        assert fsm.is_accepting(fsm.advance_bytes(0, text.encode()))
    assert fsm.advance_bytes(0, b"cafe") == -1


def test_leading_caret_trailing_dollar_stripped(tok):
    assert compile_regex("^ab$", tok).advance_bytes(0, b"ab") >= 0
    literal = compile_regex(r"ab\$", tok)
    assert literal.is_accepting(literal.advance_bytes(0, b"ab$"))


# ---- build_constraint and caching ---------------------------------------------------------
def test_build_constraint(tok):
    assert build_constraint(tok) is None
    fsm = build_constraint(tok, choices=["red", "green", "a.b"])
    assert fsm.is_accepting(fsm.advance_bytes(0, b"a.b"))
    assert fsm.advance_bytes(0, b"axb") == -1
    assert build_constraint(tok, dtype=int) is build_constraint(tok, dtype="int")
    with pytest.raises(ConstraintError, match="regex and dtype"):
        build_constraint(tok, regex="a", dtype="int")
    with pytest.raises(ConstraintError, match="choices"):
        build_constraint(tok, choices=[])


def test_memory_and_disk_cache(tok, tmp_path, monkeypatch):
    pattern = r"[a-z]{1,5}@example\.com"
    fsm = compile_regex(pattern, tok)
    assert compile_regex(pattern, tok) is fsm
    files = list((tmp_path / "fsm").glob("*.npz"))
    assert len(files) == 1
    clear_memory_cache()

    def no_build(p):
        raise AssertionError("should have been loaded from disk")

    monkeypatch.setattr(compile_mod, "regex_to_byte_dfa", no_build)
    loaded = compile_regex(pattern, tok)
    assert loaded is not fsm
    assert np.array_equal(loaded.dfa.trans, fsm.dfa.trans)
    assert np.array_equal(loaded.index.tokens, fsm.index.tokens)
    assert loaded.allowed_tokens(0).tolist() == fsm.allowed_tokens(0).tolist()


def test_time_five_field_json_build(tok, capsys):
    """Timing only (assertions on time live in benchmarks/bench_fsm.py)."""
    from sglc_runtime.constrained import json_schema_to_regex

    schema = {"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"}, "email": {"type": "string"},
        "score": {"type": "number"}, "active": {"type": "boolean"}},
        "required": ["name", "age", "email", "score", "active"]}
    start = time.perf_counter()
    fsm = compile_regex(json_schema_to_regex(schema), tok, disk_cache=False)
    with capsys.disabled():
        print(f"\n5-field JSON object FSM: {fsm.num_states} states, "
              f"{time.perf_counter() - start:.3f} s to build")
