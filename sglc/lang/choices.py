"""How `select` picks a choice: SGLang's three scoring methods, with SGLang's call interface.

The arithmetic lives in the runtime's pure functions (`sglc_runtime.constrained.choices`); this
module gives them the interface SGLang programs and custom methods use: keyword arguments in,
`ChoicesDecision(decision, meta_info)` out. `input_token_logprobs[i]` lists `(logprob,
token_id, text)` for the tokens of choice i given the program's text;
`unconditional_token_logprobs[i]` the same tokens with no context (first entry None)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ChoicesDecision:
    decision: str
    meta_info: dict[str, Any] = field(default_factory=dict)


class ChoicesSamplingMethod:
    """Base class (as in SGLang): subclass and implement `__call__` for a custom method;
    `requires_unconditional_logprobs` asks the backend for context-free logprobs too."""

    requires_unconditional_logprobs = False

    def __call__(self, *, choices: list[str], normalized_prompt_logprobs: list[float],
                 input_token_logprobs: list[list], output_token_logprobs: list[list],
                 unconditional_token_logprobs: list[list] | None = None) -> ChoicesDecision:
        raise NotImplementedError


class _RuntimeMethod(ChoicesSamplingMethod):
    """Adapts one of the runtime's scoring functions (imported on first use: the runtime's
    package pulls in torch, which `import sglc` should not)."""

    def __init__(self, name: str, requires_unconditional_logprobs: bool = False):
        self.name = name
        self.requires_unconditional_logprobs = requires_unconditional_logprobs

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs,
                 output_token_logprobs, unconditional_token_logprobs=None):
        from sglc_runtime.constrained.choices import CHOICES_METHODS

        d = CHOICES_METHODS[self.name](choices, input_token_logprobs,
                                       unconditional_token_logprobs)
        decision = d.decision
        if self.name == "token_length_normalized":
            # as SGLang: the backend's normalized logprobs decide (a backend may normalize over
            # other tokens than the ones it lists, e.g. after token healing)
            best = max(range(len(choices)), key=normalized_prompt_logprobs.__getitem__)
            decision = choices[best]
        meta = {"normalized_prompt_logprobs": normalized_prompt_logprobs,
                "input_token_logprobs": input_token_logprobs,
                "output_token_logprobs": output_token_logprobs}
        if d.greedy_logprob_matrix is not None:
            meta["greedy_logprob_matrix"] = d.greedy_logprob_matrix
        if unconditional_token_logprobs is not None:
            meta["unconditional_token_logprobs"] = unconditional_token_logprobs
            meta["normalized_unconditional_prompt_logprobs"] = \
                d.normalized_unconditional_prompt_logprobs
        return ChoicesDecision(decision, meta)

    def __repr__(self) -> str:
        return self.name


token_length_normalized = _RuntimeMethod("token_length_normalized")
greedy_token_selection = _RuntimeMethod("greedy_token_selection")
unconditional_likelihood_normalized = _RuntimeMethod("unconditional_likelihood_normalized",
                                                     requires_unconditional_logprobs=True)
