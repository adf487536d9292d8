"""Context-free grammars through llguidance (an Earley parser over a regex lexer, made for LLM
decoding): Lark syntax, or GBNF / EBNF as llama.cpp and SGLang take them (converted to Lark by
llguidance's own converter).

`compile_grammar` checks a grammar once per (text, tokenizer) and caches a pristine matcher;
errors name the grammar's line and column (ConstraintError), before any request runs.
`GrammarConstraint` is one request's live matcher behind `TokenFSM`'s interface (allowed_mask,
next_state, is_accepting, is_finished, forced_bytes, retokenized), so the sampler, the output
processing and jump-forward treat both alike. Unlike a TokenFSM it holds state: each request gets
its own (a copy of the pristine matcher), and its state ids count the tokens consumed.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

import numpy as np
import torch

from ..errors import ConstraintError
from ..tokenizer import whole_chars

_MAX_CACHED = 128
_MATCHERS: OrderedDict[tuple[str, int], object] = OrderedDict()  # (text, id(tokenizer))
_LL_TOKENIZERS: dict[int, tuple[object, object]] = {}  # id(tokenizer) -> (tokenizer, LLTokenizer)
_LOCK = threading.Lock()


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise ConstraintError("grammar constraints need the llguidance package "
                              "(pip install llguidance)") from None
    return llguidance


def ll_tokenizer(tokenizer):
    """llguidance's view of `tokenizer` (built once per tokenizer, ~0.3 s); `tokenizer` is
    sglc's Tokenizer (its `tk` is a `tokenizers.Tokenizer`)."""
    with _LOCK:
        hit = _LL_TOKENIZERS.get(id(tokenizer))
        if hit is not None and hit[0] is tokenizer:
            return hit[1]
    llg = _llguidance()
    lt = llg.LLTokenizer(tokenizer.tk.to_str(), n_vocab=tokenizer.vocab_size,
                         eos_token=list(tokenizer.eos_token_ids))
    with _LOCK:
        hit = _LL_TOKENIZERS.get(id(tokenizer))
        if hit is None or hit[0] is not tokenizer:  # (another thread may have won the race)
            hit = _LL_TOKENIZERS[id(tokenizer)] = (tokenizer, lt)
        return hit[1]


def to_llguidance(text: str) -> str:
    """A Lark or GBNF/EBNF grammar as an llguidance grammar; ConstraintError if GBNF text does
    not convert."""
    llg = _llguidance()
    if not isinstance(text, str) or not text.strip():
        raise ConstraintError(f"a grammar must be non-empty text, got {text!r}")
    try:
        return llg.grammar_from("grammar", text)
    except ValueError as e:
        raise ConstraintError(f"grammar: {e}") from None


def check_grammar(text: str, tokenizer=None) -> None:
    """Raise ConstraintError naming the line and column of what is wrong in `text` (Lark or
    GBNF); the tokenizer is optional (without it, token-level checks are skipped)."""
    llg = _llguidance()
    grammar = to_llguidance(text)
    undefined = _undefined_name(text)
    if undefined is not None:
        raise ConstraintError(undefined)
    lt = None if tokenizer is None else ll_tokenizer(tokenizer)
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, lt)
    if is_error:
        raise ConstraintError("grammar error " + messages[0].rstrip())


_UNDEFINED = re.compile(r"Rule '([^']+)' used but not defined \(in rule ([^)]+)\)")
# what a grammar's rule bodies hold besides names: strings, regexes, comments
_NOT_NAMES = re.compile(r'"(?:[^"\\\n]|\\.)*"i?|/(?:[^/\\\n]|\\.)+/[imslux]*|//[^\n]*')


def _undefined_name(text: str) -> str | None:
    """For a Lark-syntax grammar (GBNF's `::=` is left to llguidance), lark's own check of
    names used but never defined, reachable from `start` or not (llguidance skips unreachable
    rules and places its message at the rule, not the name): the message names the first use's
    line and column and shows it with a caret."""
    if "::=" in text:
        return None
    import lark

    try:
        lark.Lark(text)
        return None
    except lark.exceptions.GrammarError as e:
        m = _UNDEFINED.search(str(e))
    except Exception:  # noqa: BLE001 - lark cannot read llguidance's extensions: not ours
        return None
    if m is None:
        return None
    name, rule = m.group(1), m.group(2).strip()
    at = _first_use(text, name, rule)
    if at is None:
        return f"grammar error: unknown name: {name!r} (in rule {rule!r})"
    line, col = at
    lines = text.splitlines()
    shown = [f"{i + 1:4d} | {lines[i]}" for i in range(max(0, line - 2), line)]
    shown.append(" " * (7 + col - 1) + "^")
    shown += [f"{i + 1:4d} | {lines[i]}" for i in range(line, min(len(lines), line + 1))]
    return f"grammar error at {line}({col}): unknown name: {name!r} (in rule {rule!r})\n" + \
        "\n".join(shown)


def _first_use(text: str, name: str, rule: str) -> tuple[int, int] | None:
    """(line, column), both from 1, of `name`'s first use in the body of rule `rule`."""
    head = re.compile(rf"^[ \t]*[?!]?{re.escape(rule)}(\.-?\d+)?[ \t]*:", re.M)
    h = head.search(text)
    if h is None:
        return None
    nxt = re.compile(r"^[ \t]*[?!]?[A-Za-z_][\w.]*[ \t]*:", re.M).search(text, h.end())
    body_end = nxt.start() if nxt else len(text)
    body = text[h.end():body_end]
    masked = _NOT_NAMES.sub(lambda s: " " * len(s.group()), body)
    use = re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", masked)
    if use is None:
        return None
    pos = h.end() + use.start()
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def compile_grammar(text: str, tokenizer) -> GrammarConstraint:
    """A fresh GrammarConstraint for one request (the checked grammar is cached)."""
    llg = _llguidance()
    lt = ll_tokenizer(tokenizer)  # kept alive with `tokenizer` in _LL_TOKENIZERS
    key = (text, id(tokenizer))
    with _LOCK:
        pristine = _MATCHERS.get(key)
        if pristine is not None:
            _MATCHERS.move_to_end(key)
    if pristine is None:
        check_grammar(text, tokenizer)
        pristine = llg.LLMatcher(lt, to_llguidance(text), log_level=0)
        probe = pristine.deep_copy()  # some errors (e.g. a rule that never ends) show only
        probe.compute_bitmask()       # when the first mask is computed
        for m in (pristine, probe):
            if m.is_error():
                raise ConstraintError(f"grammar error: {_first_line(m.get_error())} (the "
                                      f"grammar compiles but its matcher fails at the start: "
                                      f"a rule that never ends?)")
        with _LOCK:
            pristine = _MATCHERS.setdefault(key, pristine)
            while len(_MATCHERS) > _MAX_CACHED:
                _MATCHERS.popitem(last=False)
    return GrammarConstraint(pristine.deep_copy(), tokenizer.vocab_size,
                             tuple(tokenizer.eos_token_ids), text)


def _first_line(message: str) -> str:
    return (message.strip().splitlines() or [""])[0]


class GrammarConstraint:
    """One request's grammar matcher. State ids: the number of tokens consumed so far; a call
    with any other state is a bug (the engine only asks about the current one)."""

    initial_state = 0

    def __init__(self, matcher, vocab_size: int, eos_token_ids: tuple[int, ...], text: str):
        self.matcher, self.vocab_size = matcher, vocab_size
        self.eos_token_ids = eos_token_ids
        self.pattern = text
        self._pos = 0
        self._mask: tuple[int, torch.Tensor] | None = None

    def __repr__(self) -> str:
        return f"GrammarConstraint({self.pattern[:60]!r}, tokens={self._pos})"

    def _at(self, state: int) -> None:
        if state != self._pos:
            raise RuntimeError(f"grammar matcher is at token {self._pos}, asked about {state}")

    def _check(self) -> None:
        """llguidance never raises: a matcher that failed (a parser limit, a token it cannot
        take) only says so here, and would otherwise allow nothing but EOS."""
        if self.matcher.is_error():
            raise ConstraintError(f"grammar matcher failed: {_first_line(self.matcher.get_error())}")

    def allowed_mask(self, state: int, tokens_left: int | None = None) -> torch.Tensor:
        """Bool (vocab_size,) mask of the tokens the grammar allows next (EOS where complete).
        `tokens_left` is not used: llguidance's matcher gives no distance to acceptance, so a
        grammar's output can run out of tokens mid-sentence (its finish_reason then says
        "incomplete"), where a regex or JSON schema's TokenFSM steers to an end in time."""
        self._at(state)
        if self._mask is None or self._mask[0] != state:
            bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
            self._check()
            mask = np.unpackbits(bits, bitorder="little")[:self.vocab_size].astype(bool)
            self._mask = (state, torch.from_numpy(mask))
        return self._mask[1]

    def next_state(self, state: int, token_id: int) -> int:
        self._at(state)
        if not self.matcher.consume_token(token_id):
            return -1
        self._pos += 1
        return self._pos

    def is_accepting(self, state: int) -> bool:
        self._at(state)
        return self.matcher.is_accepting()

    def is_finished(self, state: int) -> bool:
        """Nothing but EOS can follow: generation stops here."""
        self._at(state)
        self._check()
        return self.matcher.is_stopped()

    def forced_bytes(self, state: int) -> bytes:
        """Bytes the grammar forces next (the jump-forward text), whole characters only."""
        self._at(state)
        forced = self.matcher.compute_ff_bytes()
        self._check()
        return whole_chars(forced)

    def retokenized(self, state: int, forced: bytes, old: list[int], new: list[int],
                    common: int) -> int:
        """After jump-forward re-tokenized the output from `old` to `new` (sharing `common`
        leading ids): roll the matcher back to `common` and consume the new tail. Returns the
        new state, or -1 (matcher unchanged) if the grammar does not take the new tokens."""
        self._at(state)
        back, tail = len(old) - common, new[common:]
        if back and not self.matcher.rollback(back):
            self._check()
            raise ConstraintError(f"grammar matcher could not roll back {back} tokens")
        if self.matcher.validate_tokens(tail) != len(tail):
            self.matcher.consume_tokens(old[common:])  # restore
            self._check()
            return -1
        self.matcher.consume_tokens(tail)
        self._check()
        self._pos = self._pos - back + len(tail)
        self._mask = None
        return self._pos
