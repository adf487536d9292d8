"""Sampling parameters (SGLang's names), validated when a request is submitted."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from .errors import InvalidRequestError

#: the sampling parameters that constrain the output; a request gives at most one
CONSTRAINT_KEYS = ("regex", "json_schema", "dtype", "choices", "grammar", "ebnf")


@dataclass
class SamplingParams:
    """What to generate and how; every field named as in SGLang's `sampling_params` dict."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    n: int = 1
    regex: str | None = None
    json_schema: str | None = None
    dtype: str | None = None
    choices: list[str] | None = None
    grammar: str | None = None  # Lark or GBNF text (constrained/grammar.py, llguidance)
    ebnf: str | None = None  # SGLang's name for a grammar: the same thing
    seed: int | None = None
    stop_regex: str | list[str] | None = None
    stop_strs: list[str] = field(default_factory=list, init=False, repr=False)
    stop_patterns: list[re.Pattern] = field(default_factory=list, init=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict | SamplingParams | None) -> SamplingParams:
        """Build from a dict, raising on unknown keys (named) instead of ignoring them; a key
        whose value is None takes its default (SGLang's frontend sends unset fields as None)."""
        if d is None:
            return cls()
        if isinstance(d, SamplingParams):
            return d
        if not isinstance(d, dict):
            raise InvalidRequestError(f"sampling_params must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidRequestError(
                f"unknown sampling parameter(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in d.items() if v is not None})

    def __post_init__(self) -> None:
        def bad(name, why):
            raise InvalidRequestError(f"sampling parameter {name}={getattr(self, name)!r}: {why}")

        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            bad("max_new_tokens", "must be an integer >= 0")
        if not isinstance(self.min_new_tokens, int) or self.min_new_tokens < 0:
            bad("min_new_tokens", "must be an integer >= 0")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            bad("temperature", "must be >= 0")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k == 0 or self.top_k < -1:
            bad("top_k", "must be -1 (off) or a positive integer")
        if not 0 <= self.min_p <= 1:
            bad("min_p", "must be in [0, 1]")
        if not -2 <= self.frequency_penalty <= 2:
            bad("frequency_penalty", "must be in [-2, 2]")
        if not -2 <= self.presence_penalty <= 2:
            bad("presence_penalty", "must be in [-2, 2]")
        if not 0 < self.repetition_penalty <= 2:
            bad("repetition_penalty", "must be in (0, 2]")
        if not isinstance(self.n, int) or self.n < 1:
            bad("n", "must be a positive integer")
        if self.stop is None:
            self.stop_strs = []
        elif isinstance(self.stop, str):
            self.stop_strs = [self.stop] if self.stop else []
        elif isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) for s in self.stop):
            self.stop_strs = [s for s in self.stop if s]
        else:
            bad("stop", "must be a string or a list of strings")
        regexes = [self.stop_regex] if isinstance(self.stop_regex, str) else self.stop_regex
        if regexes is not None and not (isinstance(regexes, (list, tuple))
                                        and all(isinstance(r, str) for r in regexes)):
            bad("stop_regex", "must be a string or a list of strings")
        try:
            self.stop_patterns = [re.compile(r) for r in regexes or () if r]
        except re.error as e:
            bad("stop_regex", f"does not compile: {e}")
        if self.stop_token_ids is not None and not all(
                isinstance(t, int) for t in self.stop_token_ids):
            bad("stop_token_ids", "must be a list of integers")
        given = [k for k in CONSTRAINT_KEYS if getattr(self, k)]
        if len(given) > 1:
            raise InvalidRequestError(f"give at most one constraint, got {', '.join(given)}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def constraint(self) -> dict | None:
        for k in CONSTRAINT_KEYS:
            if getattr(self, k):
                return {"grammar" if k == "ebnf" else k: getattr(self, k)}
        return None
