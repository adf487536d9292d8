"""TokenFSM: the token-level view of a byte DFA that the sampler and the engine query per step.

States are ints. `0..num_states-2` are byte-DFA states (0 is initial); `final_state`
(`num_states - 1`) is where EOS leads from an accepting state. `-1` means "not allowed".
A state depends only on the bytes generated so far, never on how they were tokenized, so after a
jump-forward the engine may re-tokenize freely: `advance_bytes(state, forced)` gives the new state.
"""

from __future__ import annotations

import numpy as np
import torch

from .regex_fsm import ByteDFA
from .token_index import TokenIndex


class TokenFSM:
    """Allowed tokens, transitions and jump-forward strings for one compiled constraint."""

    def __init__(self, dfa: ByteDFA, index: TokenIndex, vocab_size: int,
                 eos_token_ids: tuple[int, ...], pattern: str = ""):
        self.dfa, self.index, self.pattern = dfa, index, pattern
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(eos_token_ids)
        self.initial_state = 0
        self.final_state = dfa.num_states
        self.num_states = dfa.num_states + 1
        self._num_tokens = np.diff(index.ptr)
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._allowed: dict[int, torch.Tensor] = {}
        self._masks: dict[int, torch.Tensor] = {}
        self._forced: dict[int, bytes] = {}
        self._to_accept: tuple[np.ndarray, np.ndarray] | None = None  # see tokens_to_accept

    def __repr__(self) -> str:
        return (f"TokenFSM(pattern={self.pattern!r}, num_states={self.num_states}, "
                f"num_transitions={len(self.index.tokens)})")

    # ---- per-state token sets ------------------------------------------------------------------
    def _row(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(sorted allowed non-EOS token ids, their next states) of a byte-DFA state."""
        row = self._rows.get(state)
        if row is None:
            lo, hi = self.index.ptr[state], self.index.ptr[state + 1]
            toks, nxt = self.index.tokens[lo:hi], self.index.next_states[lo:hi]
            order = np.argsort(toks, kind="stable")
            row = self._rows[state] = (toks[order], nxt[order])
        return row

    def allowed_tokens(self, state: int) -> torch.Tensor:
        """Sorted int64 ids allowed in `state`; EOS ids are included iff `state` is accepting."""
        out = self._allowed.get(state)
        if out is None:
            self._check(state)
            toks = np.zeros(0, np.int64) if state == self.final_state else self._row(state)[0]
            if self.is_accepting(state):
                toks = np.union1d(toks, np.array(self.eos_token_ids, np.int64))
            out = self._allowed[state] = torch.from_numpy(toks.astype(np.int64))
        return out

    def allowed_mask(self, state: int, tokens_left: int | None = None) -> torch.Tensor:
        """Bool (vocab_size,) mask of `allowed_tokens(state)`; cached, do not modify in place.
        With `tokens_left` (the tokens the gen may still emit, this one included), only tokens
        after which an accepting state is at most `tokens_left - 1` tokens away, so the output
        ends as a sentence of the constraint whenever the budget can hold one (where it cannot,
        every allowed token: the request then ends by length, incomplete)."""
        mask = self._masks.get(state)
        if mask is None:
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            mask[self.allowed_tokens(state)] = True
            self._masks[state] = mask
        if tokens_left is None or state == self.final_state or tokens_left > self.num_states:
            return mask  # (no shortest way to acceptance is longer than the states)
        dist, worst = self.tokens_to_accept()
        if worst[state] <= tokens_left - 1:
            return mask  # every allowed token leaves the budget enough
        toks, nxt = self._row(state)
        ok = dist[nxt] <= tokens_left - 1
        if not ok.any() and not self.is_accepting(state):
            return mask  # (no way to finish in the budget: nothing to prefer)
        tight = torch.zeros(self.vocab_size, dtype=torch.bool)
        tight[torch.from_numpy(toks[ok].astype(np.int64))] = True
        if self.is_accepting(state):
            tight[list(self.eos_token_ids)] = True
        return tight

    def tokens_to_accept(self) -> tuple[np.ndarray, np.ndarray]:
        """Per state, the fewest tokens that lead from it to an accepting state (0 there; a
        large number where none does), and per state the largest of that over the states its
        allowed tokens lead to (0 where none). A breadth-first search backwards over the token
        transitions, once per FSM (each transition visited once)."""
        if self._to_accept is not None:
            return self._to_accept
        n, ptr, dst = self.num_states, self.index.ptr, self.index.next_states.astype(np.int64)
        far = np.iinfo(np.int64).max // 4
        counts = np.diff(ptr).astype(np.int64)
        src = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        order = np.argsort(dst, kind="stable")
        pred = src[order]  # transitions grouped by their target state
        rptr = np.concatenate([[0], np.cumsum(np.bincount(dst, minlength=n))])
        dist = np.full(n, far, np.int64)
        frontier = np.flatnonzero(np.append(self.dfa.accepting.astype(bool), True))
        dist[frontier] = 0
        d = 0
        while frontier.size:
            d += 1
            lo, num = rptr[frontier], rptr[frontier + 1] - rptr[frontier]
            total = int(num.sum())
            if not total:
                break
            starts = np.repeat(lo - np.concatenate([[0], np.cumsum(num)[:-1]]), num)
            preds = pred[starts + np.arange(total)]
            frontier = np.unique(preds[dist[preds] == far])
            dist[frontier] = d
        worst = np.zeros(n, np.int64)
        if len(dst):
            nonempty = counts > 0
            worst[:len(counts)][nonempty] = np.maximum.reduceat(dist[dst], ptr[:-1][nonempty])
        self._to_accept = (dist, worst)
        return self._to_accept

    def next_state(self, state: int, token_id: int) -> int:
        """State after emitting `token_id` in `state`: -1 if not allowed; EOS → `final_state`."""
        self._check(state)
        if token_id in self.eos_token_ids:
            return self.final_state if self.is_accepting(state) else -1
        if state == self.final_state:
            return -1
        toks, nxt = self._row(state)
        i = int(np.searchsorted(toks, token_id))
        return int(nxt[i]) if i < len(toks) and toks[i] == token_id else -1

    def is_accepting(self, state: int) -> bool:
        """True if the text so far fully matches the constraint (EOS is allowed here)."""
        return state == self.final_state or bool(self.dfa.accepting[state])

    def is_finished(self, state: int) -> bool:
        """Accepting and no token can continue: generation must stop (only EOS is possible)."""
        return self.is_accepting(state) and (state == self.final_state
                                             or self._num_tokens[state] == 0)

    # ---- jump-forward -------------------------------------------------------------------------
    def forced_bytes(self, state: int) -> bytes:
        """The longest byte string that is the only way forward from `state`, cut back to end on
        a UTF-8 character boundary; b'' at an accepting state, a branch, or `final_state`."""
        out = self._forced.get(state)
        if out is not None:
            return out
        self._check(state)
        buf, s, keep = bytearray(), state, 0
        while s != self.final_state and not self.dfa.accepting[s]:
            out_bytes = np.flatnonzero(self.dfa.trans[s] >= 0)
            if len(out_bytes) != 1:
                break
            buf.append(int(out_bytes[0]))
            s = int(self.dfa.trans[s, out_bytes[0]])
            if self.dfa.char_boundary[s]:
                keep = len(buf)
            assert len(buf) <= self.dfa.num_states, "forced chain loops: DFA not pruned"
        out = self._forced[state] = bytes(buf[:keep])
        return out

    def advance_bytes(self, state: int, data: bytes) -> int:
        """The state after appending `data` in `state`, or -1 if that leaves the constraint."""
        self._check(state)
        if state == self.final_state:
            return state if not data else -1
        trans = self.dfa.trans
        for b in data:
            state = int(trans[state, b])
            if state < 0:
                return -1
        return state

    def retokenized(self, state: int, forced: bytes, old: list[int], new: list[int],
                    common: int) -> int:
        """The state after jump-forward appended `forced` and re-tokenized the output from `old`
        to `new`: a state depends on bytes only, so the tokens do not matter here (a grammar
        matcher, which counts tokens, re-syncs with them: grammar.py)."""
        return self.advance_bytes(state, forced)

    def _check(self, state: int) -> None:
        assert 0 <= state < self.num_states, f"FSM state {state} not in [0, {self.num_states})"
