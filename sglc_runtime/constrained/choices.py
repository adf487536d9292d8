"""`select` scoring: pick one choice from the logprobs of each choice's tokens (pure functions).

Inputs, per choice i: `input_token_logprobs[i]` = logprobs of choice i's tokens given the prompt;
for `unconditional_likelihood_normalized` also `unconditional_token_logprobs[i]` = the same
tokens' logprobs without the prompt (its first entry may be None: nothing to condition on, read
as 0). Entries may be floats or SGLang-style tuples `(logprob, token_id, text)`. Definitions
follow SGLang's `choices.py`; ties go to the earliest choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidRequestError


@dataclass(frozen=True)
class ChoicesDecision:
    """The chosen string plus the numbers it was chosen by."""

    decision: str
    index: int
    normalized_prompt_logprobs: list[float]  # mean token logprob of each choice
    input_token_logprobs: list[list[float]]
    unconditional_token_logprobs: list[list[float]] | None = None
    normalized_unconditional_prompt_logprobs: list[float] | None = None
    greedy_logprob_matrix: list[list[float]] | None = None


def _logprob(x) -> float | None:
    v = x[0] if isinstance(x, (tuple, list)) else x
    return None if v is None else float(v)


def _values(rows, none_as_zero_first: bool = False) -> list[list[float]]:
    out = []
    for row in rows:
        row = [_logprob(x) for x in row]
        if none_as_zero_first and row and row[0] is None:
            row[0] = 0.0
        assert None not in row, f"missing token logprob in {row}"
        out.append(row)
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("-inf")


def _argmax_first(xs: list[float]) -> int:
    return max(range(len(xs)), key=xs.__getitem__)


def _check(choices: list[str], rows: list, name: str) -> None:
    if not choices:
        raise InvalidRequestError("select needs at least one choice")
    assert len(rows) == len(choices), f"{name}: {len(rows)} rows for {len(choices)} choices"


class ChoicesMethod:
    """Base of the scoring methods; `requires_unconditional_logprobs` tells the caller whether
    to also compute each choice's logprobs without the prompt."""

    name = ""
    requires_unconditional_logprobs = False

    def __call__(self, choices: list[str], input_token_logprobs: list[list],
                 unconditional_token_logprobs: list[list] | None = None) -> ChoicesDecision:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class TokenLengthNormalized(ChoicesMethod):
    """Highest mean token logprob (SGLang's default)."""

    name = "token_length_normalized"

    def __call__(self, choices, input_token_logprobs, unconditional_token_logprobs=None):
        _check(choices, input_token_logprobs, "input_token_logprobs")
        rows = _values(input_token_logprobs)
        norm = [_mean(r) for r in rows]
        i = _argmax_first(norm)
        return ChoicesDecision(choices[i], i, norm, rows)


class GreedyTokenSelection(ChoicesMethod):
    """Highest first-token logprob; ties broken by the next token, and so on. A shorter choice
    is padded with its own mean logprob when compared against longer ones."""

    name = "greedy_token_selection"

    def __call__(self, choices, input_token_logprobs, unconditional_token_logprobs=None):
        _check(choices, input_token_logprobs, "input_token_logprobs")
        rows = _values(input_token_logprobs)
        width = max(len(r) for r in rows)
        matrix = [r + [_mean(r)] * (width - len(r)) for r in rows]
        remaining = list(range(len(choices)))
        for j in range(width):
            best = max(matrix[i][j] for i in remaining)
            remaining = [i for i in remaining if matrix[i][j] == best]
            if len(remaining) == 1:
                break
        i = remaining[0]
        return ChoicesDecision(choices[i], i, [_mean(r) for r in rows], rows,
                               greedy_logprob_matrix=matrix)


class UnconditionalLikelihoodNormalized(ChoicesMethod):
    """Highest mean of (logprob given the prompt − logprob without it) over the choice's
    tokens: prefers choices the prompt makes more likely, not choices likely anyway."""

    name = "unconditional_likelihood_normalized"
    requires_unconditional_logprobs = True

    def __call__(self, choices, input_token_logprobs, unconditional_token_logprobs=None):
        _check(choices, input_token_logprobs, "input_token_logprobs")
        assert unconditional_token_logprobs is not None, f"{self.name} needs unconditional logprobs"
        _check(choices, unconditional_token_logprobs, "unconditional_token_logprobs")
        rows = _values(input_token_logprobs)
        uncond = _values(unconditional_token_logprobs, none_as_zero_first=True)
        scores = []
        for r, u in zip(rows, uncond):
            assert len(r) == len(u), "input and unconditional token logprobs differ in length"
            scores.append(_mean([a - b for a, b in zip(r, u)]))
        i = _argmax_first(scores)
        return ChoicesDecision(choices[i], i, [_mean(r) for r in rows], rows, uncond, scores)


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
CHOICES_METHODS = {m.name: m for m in (token_length_normalized, greedy_token_selection,
                                       unconditional_likelihood_normalized)}
