"""Regex → byte-level DFA: validate, build a char DFA with interegular, expand it to UTF-8.

Contract of `regex_to_byte_dfa(pattern)`: the returned `ByteDFA` accepts exactly the UTF-8
encodings of the strings interegular's char DFA accepts (full-match semantics), every state can
still reach an accepting state (dead states are pruned: `trans[s, b] == -1` means "not allowed"),
and states are numbered in breadth-first order from the initial state 0.

Semantics follow Python's `re` with two documented narrowings: `\\d \\w \\s` are ASCII-only
(as under `re.ASCII`), and a leading `^` / trailing `$` are stripped (matches are always full).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import interegular
import numpy as np
from interegular.fsm import anything_else

from ..errors import ConstraintError

try:  # Python >= 3.11
    import re._parser as _sre_parse
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre_parse

_AT_NAMES = {
    "AT_BEGINNING": "anchor '^'", "AT_BEGINNING_LINE": "anchor '^'",
    "AT_BEGINNING_STRING": "anchor '\\A'", "AT_END": "anchor '$'", "AT_END_LINE": "anchor '$'",
    "AT_END_STRING": "anchor '\\Z'", "AT_BOUNDARY": "word boundary '\\b'",
    "AT_NON_BOUNDARY": "non-word-boundary '\\B'",
}
_OP_NAMES = {
    "GROUPREF": "backreference", "GROUPREF_EXISTS": "conditional group '(?(n)...)'",
    "ATOMIC_GROUP": "atomic group '(?>...)'", "POSSESSIVE_REPEAT": "possessive quantifier",
}


@dataclass
class ByteDFA:
    """A DFA over bytes. `trans` (num_states, 256) int32, -1 = not allowed; state 0 is initial.

    `char_boundary[s]` is False for states inside a multi-byte UTF-8 character.
    """

    trans: np.ndarray       # (S, 256) int32
    accepting: np.ndarray   # (S,) bool
    char_boundary: np.ndarray  # (S,) bool

    @property
    def num_states(self) -> int:
        return self.trans.shape[0]


# ---- validation -------------------------------------------------------------------------------
def normalize_pattern(pattern: str) -> str:
    """Validate `pattern` and return it with a leading `^` / trailing `$` stripped and
    `\\uXXXX`, `\\UXXXXXXXX`, `\\N{...}` escapes spelled as literal characters.

    Raises ConstraintError naming the construct for invalid syntax, lookaround, backreferences,
    conditional groups, possessive/atomic groups and anchors other than the stripped ones.
    """
    if not isinstance(pattern, str):
        raise ConstraintError(f"regex must be a str, got {type(pattern).__name__}")
    body = pattern.removeprefix("^")
    if body.endswith("$"):
        escapes = len(body[:-1]) - len(body[:-1].rstrip("\\"))
        if escapes % 2 == 0:  # an unescaped trailing `$`
            body = body[:-1]
    try:
        tree = _sre_parse.parse(body)
    except re.error as e:
        raise ConstraintError(f"invalid regex {pattern!r}: {e}") from None
    bad = _find_unsupported(tree)
    if bad:
        raise ConstraintError(f"regex {pattern!r} uses an unsupported construct: {bad} "
                              "(constrained decoding needs a regular language; matches are full)")
    return _literalize_unicode_escapes(body)


def _find_unsupported(tree) -> str | None:
    for op, av in tree:
        name = str(op)
        if name == "AT":
            return _AT_NAMES.get(str(av), f"anchor {av}")
        if name in ("ASSERT", "ASSERT_NOT"):
            direction, _ = av
            kind = "lookahead" if direction == 1 else "lookbehind"
            return f"{'negative ' if name == 'ASSERT_NOT' else ''}{kind}"
        if name in _OP_NAMES:
            return _OP_NAMES[name]
        for sub in _subpatterns(name, av):
            found = _find_unsupported(sub)
            if found:
                return found
    return None


def _subpatterns(name: str, av) -> list:
    if name == "BRANCH":
        return list(av[1])
    if name == "SUBPATTERN":
        return [av[-1]]
    if name in ("MAX_REPEAT", "MIN_REPEAT"):
        return [av[2]]
    return []


def _literalize_unicode_escapes(p: str) -> str:
    """interegular lacks `\\u`, `\\U` and `\\N{}`; rewrite them as (escaped) literal chars."""
    out, i = [], 0
    while i < len(p):
        c = p[i]
        if c != "\\" or i + 1 >= len(p):
            out.append(c)
            i += 1
            continue
        kind = p[i + 1]
        if kind in "uU":
            n = 4 if kind == "u" else 8
            ch, i = chr(int(p[i + 2:i + 2 + n], 16)), i + 2 + n
        elif kind == "N":
            import unicodedata
            end = p.index("}", i)
            ch, i = unicodedata.lookup(p[i + 3:end]), end + 1
        else:
            out.append(p[i:i + 2])
            i += 2
            continue
        out.append(re.escape(ch) if ch not in "\n\t" else {"\n": "\\n", "\t": "\\t"}[ch])
    return "".join(out)


# ---- char DFA → byte DFA ----------------------------------------------------------------------
def regex_to_byte_dfa(pattern: str) -> ByteDFA:
    """Compile `pattern` (full-match semantics) to a pruned, byte-level `ByteDFA`."""
    body = normalize_pattern(pattern)
    try:
        fsm = interegular.parse_pattern(body).to_fsm()
    except (interegular.Unsupported, interegular.InvalidSyntax, ValueError) as e:
        what = e.args[0] if e.args else type(e).__name__
        if isinstance(what, interegular.REFlags):
            what = f"inline flag {what.name}"
        raise ConstraintError(f"regex {pattern!r} uses an unsupported construct: {what}") from None
    dfa = _utf8_expand(fsm)
    if dfa is None:
        raise ConstraintError(f"regex {pattern!r} matches no string")
    return dfa


class _Builder:
    """Expands char transitions into UTF-8 byte paths, sharing identical partial-char states."""

    def __init__(self, num_char_states: int):
        self.rows: list[np.ndarray] = [np.full(256, -1, np.int32) for _ in range(num_char_states)]
        self.memo: dict[tuple, int] = {}

    def new_state(self) -> int:
        self.rows.append(np.full(256, -1, np.int32))
        return len(self.rows) - 1

    def block(self, fn: _CharFn, k: int, base: int, lo: int, hi: int) -> int:
        """State consuming `k` continuation bytes (first in [lo, hi]) of chars in a cp block."""
        span = 64 ** (k - 1)
        start, stop = base + (lo - 0x80) * span, base + (hi - 0x80 + 1) * span
        summary = fn.summary(start, stop)
        if summary == (-1, ()):
            return -1
        key = (k, lo, hi, summary)
        if key in self.memo:
            return self.memo[key]
        s = self.new_state()
        self.memo[key] = s
        row = self.rows[s]
        for c in range(lo, hi + 1):
            cp = base + (c - 0x80) * span
            row[c] = fn(cp) if k == 1 else self.block(fn, k - 1, cp, 0x80, 0xBF)
        return s


class _CharFn:
    """A char state's transition function: codepoint → char state (or -1)."""

    def __init__(self, default: int, exceptions: dict[int, int]):
        self.default = default
        self.cps = sorted(exceptions)
        self.targets = [exceptions[c] for c in self.cps]

    def __call__(self, cp: int) -> int:
        i = bisect.bisect_left(self.cps, cp)
        return self.targets[i] if i < len(self.cps) and self.cps[i] == cp else self.default

    def summary(self, start: int, stop: int) -> tuple:
        i, j = bisect.bisect_left(self.cps, start), bisect.bisect_left(self.cps, stop)
        return self.default, tuple((self.cps[t] - start, self.targets[t]) for t in range(i, j))


_LEADS = []  # (lead byte, continuation bytes k, first codepoint, allowed 1st continuation range)
for _lead in range(0xC2, 0xF5):
    if _lead < 0xE0:
        _LEADS.append((_lead, 1, (_lead & 0x1F) << 6, 0x80, 0xBF))
    elif _lead < 0xF0:
        _lo, _hi = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F)}.get(_lead, (0x80, 0xBF))
        _LEADS.append((_lead, 2, (_lead & 0x0F) << 12, _lo, _hi))  # no overlongs/surrogates
    else:
        _lo, _hi = {0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(_lead, (0x80, 0xBF))
        _LEADS.append((_lead, 3, (_lead & 0x07) << 18, _lo, _hi))  # nothing past U+10FFFF


def _utf8_expand(fsm) -> ByteDFA | None:
    states = sorted(fsm.states, key=lambda s: (s != fsm.initial, s))
    num = {s: i for i, s in enumerate(states)}
    b = _Builder(len(states))
    alphabet = fsm.alphabet
    explicit = [(ord(c), alphabet[c]) for c in alphabet if c is not anything_else and len(c) == 1]
    other_key = alphabet.get(anything_else)
    uniform_leads: dict[int, np.ndarray] = {}  # default target → lead-byte row part
    for s in states:
        m = fsm.map.get(s, {})
        default = num[m[other_key]] if other_key is not None and other_key in m else -1
        exc = {cp: (num[m[k]] if k in m else -1) for cp, k in explicit}
        fn = _CharFn(default, {cp: t for cp, t in exc.items() if t != default})
        row = b.rows[num[s]]
        row[:0x80] = default
        for cp, t in zip(fn.cps, fn.targets):
            if cp < 0x80:
                row[cp] = t
        if fn.cps and fn.cps[-1] >= 0x80 or default not in uniform_leads:
            leads = np.array([b.block(fn, k, base, lo, hi) for _, k, base, lo, hi in _LEADS])
            if not fn.cps or fn.cps[-1] < 0x80:  # depends on `default` only: reuse
                uniform_leads[default] = leads
        else:
            leads = uniform_leads[default]
        row[0xC2:0xF5] = leads
    trans = np.stack(b.rows)
    accepting = np.zeros(len(b.rows), bool)
    accepting[[num[s] for s in fsm.finals]] = True
    boundary = np.arange(len(b.rows)) < len(states)
    return _prune(trans, accepting, boundary)


def _prune(trans: np.ndarray, accepting: np.ndarray, boundary: np.ndarray) -> ByteDFA | None:
    """Drop states that cannot reach acceptance or are unreachable; renumber BFS from 0."""
    n = trans.shape[0]
    src, byte = np.nonzero(trans >= 0)
    dst = trans[src, byte]
    by_dst = np.argsort(dst, kind="stable")
    starts = np.searchsorted(dst[by_dst], np.arange(n + 1))
    live = accepting.copy()
    stack = list(np.nonzero(accepting)[0])
    while stack:  # backward search: a state is live if an edge leads to a live state
        t = stack.pop()
        for s in src[by_dst[starts[t]:starts[t + 1]]]:
            if not live[s]:
                live[s] = True
                stack.append(s)
    if not live[0]:
        return None
    trans = np.where((trans >= 0) & live[np.maximum(trans, 0)], trans, -1).astype(np.int32)
    order, seen = [0], np.zeros(n, bool)
    seen[0] = True
    for s in order:  # BFS renumbering in byte order (canonical; drops unreachable states)
        targets = trans[s][trans[s] >= 0]
        _, first = np.unique(targets, return_index=True)
        for t in targets[np.sort(first)]:
            if not seen[t]:
                seen[t] = True
                order.append(int(t))
    new_id = np.full(n + 1, -1, np.int32)
    new_id[order] = np.arange(len(order), dtype=np.int32)
    new_trans = new_id[trans[order]]  # -1 indexes new_id[-1] == -1
    return ByteDFA(new_trans.astype(np.int32), accepting[order], boundary[order])
