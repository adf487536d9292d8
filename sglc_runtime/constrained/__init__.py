"""Constrained decoding: regex / JSON schema / dtype / choices → token-level FSM; select scoring.

Pipeline: pattern → byte DFA (`regex_fsm`) → per-state token index over the vocabulary
(`token_index`) → `TokenFSM` queried by the sampler and the engine's jump-forward (`token_fsm`),
cached in memory and on disk (`compile`).
"""

from .choices import (
    CHOICES_METHODS,
    ChoicesDecision,
    ChoicesMethod,
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from .compile import build_constraint, clear_memory_cache, compile_regex
from .dtypes import dtype_regex
from .json_schema import json_schema_to_regex
from .token_fsm import TokenFSM

__all__ = [
    "CHOICES_METHODS", "ChoicesDecision", "ChoicesMethod", "TokenFSM", "build_constraint",
    "clear_memory_cache", "compile_regex", "dtype_regex", "greedy_token_selection",
    "json_schema_to_regex", "token_length_normalized", "unconditional_likelihood_normalized",
]
