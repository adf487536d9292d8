"""Byte DFA × vocabulary → per-state allowed tokens and the state each token leads to.

The vocabulary is stored once per tokenizer as a byte trie, level by level (`VocabTrie`), so a
prefix shared by many tokens is walked once per DFA state. `build_token_index` walks all DFA
states through the trie at once with numpy, keeping only (origin state, current state, trie node)
triples that are still inside the DFA: a token is allowed in state s iff every one of its bytes
keeps the walk alive, and its next state is where the walk ends. Special tokens (empty bytes)
and EOS ids are not in the trie, so they are never allowed here (`TokenFSM` adds EOS).
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass

import numpy as np

from .regex_fsm import ByteDFA

_MAX_PAIRS = 4_000_000  # walk origin states in chunks so the live-triple arrays stay bounded


@dataclass
class _Level:
    """Trie nodes at depth d (1-based), sorted by (parent, byte)."""

    byte: np.ndarray         # (n_d,) int32: the node's last byte
    child_start: np.ndarray  # (n_{d-1},) int64: first child (at depth d) of each depth-(d-1) node
    child_count: np.ndarray  # (n_{d-1},) int64
    tok_ptr: np.ndarray      # (n_d + 1,) int64: tokens whose bytes end at node i are
    tok_ids: np.ndarray      # tok_ids[tok_ptr[i]:tok_ptr[i + 1]]


@dataclass
class VocabTrie:
    """A tokenizer's non-empty token byte strings as a level-ordered trie (depth 0 = root)."""

    levels: list[_Level]
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    fingerprint: str  # sha256 of every token's bytes and the EOS ids


_TRIES: weakref.WeakKeyDictionary[object, VocabTrie] = weakref.WeakKeyDictionary()


def vocab_trie(tokenizer) -> VocabTrie:
    """The (cached per tokenizer object) trie of `tokenizer.token_bytes`."""
    trie = _TRIES.get(tokenizer)
    if trie is None:
        trie = build_vocab_trie(list(tokenizer.token_bytes), tuple(tokenizer.eos_token_ids),
                                int(tokenizer.vocab_size))
        _TRIES[tokenizer] = trie
    return trie


def build_vocab_trie(token_bytes: list[bytes], eos_token_ids: tuple[int, ...],
                     vocab_size: int) -> VocabTrie:
    """Build the trie of every non-empty, non-EOS token's bytes (token ids are list indices)."""
    assert len(token_bytes) <= vocab_size, "token_bytes longer than vocab_size"
    h = hashlib.sha256()
    h.update(np.array([len(t) for t in token_bytes], np.int64).tobytes())
    h.update(b"".join(token_bytes))
    h.update(repr((eos_token_ids, vocab_size)).encode())
    token_bytes = [b"" if i in eos_token_ids else t for i, t in enumerate(token_bytes)]
    by_level: list[set[bytes]] = [set() for _ in range(max(map(len, token_bytes), default=0))]
    for t in token_bytes:
        for d in range(1, len(t) + 1):
            by_level[d - 1].add(t[:d])
    ends_by_level: list[list[tuple[bytes, int]]] = [[] for _ in by_level]
    for i, t in enumerate(token_bytes):
        if t:
            ends_by_level[len(t) - 1].append((t, i))
    levels, prev_index = [], {b"": 0}
    for prefix_set, ends in zip(by_level, ends_by_level):
        prefixes = sorted(prefix_set)
        index = {p: i for i, p in enumerate(prefixes)}
        parent = np.fromiter((prev_index[p[:-1]] for p in prefixes), np.int64, len(prefixes))
        ends = sorted((index[t], i) for t, i in ends)
        node_of_end = np.array([n for n, _ in ends], np.int64)
        levels.append(_Level(
            byte=np.fromiter((p[-1] for p in prefixes), np.int32, len(prefixes)),
            child_start=np.searchsorted(parent, np.arange(len(prev_index))),
            child_count=np.bincount(parent, minlength=len(prev_index)),
            tok_ptr=np.searchsorted(node_of_end, np.arange(len(prefixes) + 1)),
            tok_ids=np.array([i for _, i in ends], np.int32)))
        prev_index = index
    return VocabTrie(levels, vocab_size, tuple(eos_token_ids), h.hexdigest())


@dataclass
class TokenIndex:
    """CSR over DFA states: tokens allowed in state s are `tokens[ptr[s]:ptr[s+1]]` (in no
    particular order), and `next_states[ptr[s]:ptr[s+1]]` are the states they lead to."""

    ptr: np.ndarray          # (S + 1,) int64
    tokens: np.ndarray       # (nnz,) int32
    next_states: np.ndarray  # (nnz,) int32


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenate arange(starts[i], starts[i] + counts[i]) over i, vectorized."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.repeat(starts - np.cumsum(counts) + counts, counts)
    return offsets + np.arange(total)


def _walk(dfa: ByteDFA, trie: VocabTrie, origins: np.ndarray) -> tuple[np.ndarray, ...]:
    """(origin, token, next_state) for every token allowed in any of `origins`."""
    trans = dfa.trans.reshape(-1)  # (S * 256,): trans[state * 256 + byte]
    origin, cur = origins.astype(np.int32), origins.astype(np.int32)
    node = np.zeros(len(origins), np.int64)
    out_o, out_t, out_n = [], [], []
    for level in trie.levels:
        if len(origin) == 0:
            break
        counts = level.child_count[node]
        child = _ranges(level.child_start[node], counts)
        which = np.repeat(np.arange(len(origin), dtype=np.int32), counts)
        nxt = trans[cur[which] * 256 + level.byte[child]]
        keep = np.flatnonzero(nxt >= 0)
        which = which[keep]
        origin, cur, node = origin[which], nxt[keep], child[keep]
        ntok = level.tok_ptr[node + 1] - level.tok_ptr[node]
        has = np.flatnonzero(ntok)
        if len(has):
            ends = np.repeat(has, ntok[has])
            out_o.append(origin[ends])
            out_t.append(level.tok_ids[_ranges(level.tok_ptr[node[has]], ntok[has])])
            out_n.append(cur[ends])
    if not out_o:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32)
    return np.concatenate(out_o), np.concatenate(out_t), np.concatenate(out_n)


def build_token_index(dfa: ByteDFA, trie: VocabTrie) -> TokenIndex:
    """Walk every DFA state through the vocabulary trie; see the module docstring."""
    n = dfa.num_states
    # States that accept many bytes touch most of the trie; chunk to bound memory.
    width = (dfa.trans >= 0).sum(axis=1)
    num_nodes = sum(len(lv.byte) for lv in trie.levels)
    est = np.maximum(1, (width / 256.0 * num_nodes).astype(np.int64))
    parts, start, acc = [], 0, 0
    for s in range(n):
        acc += int(est[s])
        if acc > _MAX_PAIRS or s == n - 1:
            parts.append(_walk(dfa, trie, np.arange(start, s + 1)))
            start, acc = s + 1, 0
    o = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
    t = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int32)
    nx = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int32)
    key = o.astype(np.uint16) if n <= 1 << 16 else o  # uint16 → numpy's O(n) radix sort
    order = np.argsort(key, kind="stable")
    ptr = np.searchsorted(o[order], np.arange(n + 1))
    return TokenIndex(ptr.astype(np.int64), t[order].astype(np.int32),
                      nx[order].astype(np.int32))
