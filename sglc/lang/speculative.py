"""API speculative execution (the SGLang paper's section 4.3): with
`@function(num_api_spec_tokens=N)` on an API backend, one call fills several gens.

- Completion models: a gen with stop strings asks for at least N tokens and ignores its stops;
  its value is the text up to its first stop string and the rest is kept. Constant text that the
  kept rest starts with is consumed, and the next gen reads its value from the rest with no call;
  a mismatch drops the rest. A rest that ends inside a gen is finished by a normal call.
- Chat models: an assistant turn's texts and gens are collected and the turn is filled by one call
  when it ends; the answer is split at the turn's constant texts (whitespace at their ends is
  matched loosely). An answer that does not follow the turn is retried (temperature > 0) and
  then raises: a gen is never left silently empty.

`backend.token_usage.num_calls_saved` counts the calls this avoided."""

from __future__ import annotations

import re
from dataclasses import replace

from .primitives import CONSTRAINT_FIELDS, ProgramError, SglGen, SglSamplingParams

_MAX_TRIES = 3


def _stops(params: SglSamplingParams) -> list[str]:
    stop = params.stop
    return [s for s in ([stop] if isinstance(stop, str) else list(stop or ())) if s]


def _cut_at_stop(text: str, params: SglSamplingParams) -> str:
    cuts = [text.find(s) for s in _stops(params) if s in text]
    return text[:min(cuts)] if cuts else text


class Speculation:
    """One program state's speculation: the completion-mode rest and the open chat turn."""

    def __init__(self, num_tokens: int):
        self.num_tokens = int(num_tokens)
        self.rest = ""  # speculated completion text not yet claimed by the program
        self.turn: list[tuple[str, SglGen | None, SglSamplingParams | None]] = []

    # ---- completion models ------------------------------------------------------------------
    def on_text(self, value: str) -> None:
        """Constant text was appended: consume it from the rest, or drop a rest that differs."""
        self.rest = self.rest[len(value):] if self.rest.startswith(value) else ""

    def drop(self) -> None:
        self.rest = ""

    def completion_gen(self, backend, prompt: str, params: SglSamplingParams):
        """(value, meta_info) for a gen, or None when it has no stop string to end it at or a
        constraint (which would hold the speculated text after it too): a normal call then."""
        stops = _stops(params)
        if not stops or any(getattr(params, k) is not None for k in CONSTRAINT_FIELDS):
            self.rest = ""
            return None
        meta: dict = {}
        saved = bool(self.rest)
        if not saved:
            wide = replace(params, stop=None,
                           max_new_tokens=max(params.max_new_tokens or 0, self.num_tokens))
            self.rest, meta = backend.generate(prompt, wide)
        cuts = [self.rest.find(s) for s in stops if s in self.rest]
        if not cuts:  # the speculated text ends inside this gen: finish it with a normal call
            head, self.rest = self.rest, ""
            tail, meta = backend.generate(prompt + head, params)
            return head + tail, meta
        value, self.rest = self.rest[:min(cuts)], self.rest[min(cuts):]
        if saved:
            backend.token_usage.num_calls_saved += 1
        return value, meta

    # ---- chat models ------------------------------------------------------------------------
    def defer_text(self, value: str) -> None:
        self.turn.append((value, None, None))

    def defer_gen(self, expr: SglGen, params: SglSamplingParams) -> None:
        self.turn.append(("", expr, params))

    def finish_turn(self, backend, messages: list[dict]) -> list[tuple[str, SglGen | None, dict]]:
        """Fill the collected assistant turn with one call; returns (text, gen or None, meta)
        in order, whose texts concatenate to the turn's content."""
        turn, self.turn = self.turn, []
        gens = [(g, p) for _, g, p in turn if g is not None]
        if not gens:
            return [(text, None, {}) for text, _, _ in turn]
        params = replace(gens[0][1], stop=None,
                         max_new_tokens=max(self.num_tokens,
                                            sum(p.max_new_tokens or 0 for _, p in gens)))
        regex = self._turn_regex(turn) if getattr(backend, "extensions", False) else None
        # a server that takes regexes answers in the turn's shape; the first gen's own
        # constraint must not hold the whole turn
        params = replace(params, regex=regex, json_schema=None, dtype=None, grammar=None)
        pattern = self._pattern(turn)
        answer = ""
        for _ in range(_MAX_TRIES):
            answer, meta = backend.generate(messages, params)
            m = pattern.fullmatch(answer)
            if m is not None:
                break
            if not params.temperature:
                break  # greedy: another try gives the same answer
        else:
            m = None
        if m is None:
            raise ProgramError(
                f"speculative execution: the answer to the assistant turn does not follow the "
                f"turn's text {[t for t, g, _ in turn if g is None]!r} (answer: {answer!r}); "
                "write the turn as one gen, or call without num_api_spec_tokens")
        if len(gens) > 1:
            backend.token_usage.num_calls_saved += len(gens) - 1
        out, k = [], 1
        for text, g, p in turn:
            if g is None:
                out.append((text, None, {}))
            else:
                out.append((_cut_at_stop(m.group(k), p), g, meta))
                k += 1
        return out

    @staticmethod
    def _turn_regex(turn) -> str | None:
        """A regex of the whole turn when every gen has a regex or single-character stops
        (else None: a multi-character stop cannot be written as a character class)."""
        parts = []
        for text, g, p in turn:
            if g is None:
                parts.append(re.escape(text))
            elif p.grammar is not None:
                return None  # a context-free grammar is not a regex
            elif p.regex is not None:
                parts.append(f"({p.regex})")
            elif _stops(p) and all(len(s) == 1 for s in _stops(p)):
                parts.append("[^" + "".join(re.escape(s) for s in _stops(p)) + "]*")
            else:
                return None
        return "".join(parts)

    @staticmethod
    def _pattern(turn) -> re.Pattern:
        parts = []
        for i, (text, g, _) in enumerate(turn):
            if g is not None:
                parts.append("(.*)" if i == len(turn) - 1 else "(.*?)")
            elif text.strip():
                parts.append(r"\s*" + re.escape(text.strip()) + r"\s*")
            else:
                parts.append(r"\s*")
        return re.compile("".join(parts), re.DOTALL)
