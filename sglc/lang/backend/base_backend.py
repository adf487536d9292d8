"""The backend interface: what the interpreter and the graph executor ask of a model server.

Every method takes the program's text so far as a plain string (for a chat-model backend,
`is_chat_model`, the gen methods take the chat messages so far instead), so one backend serves
both the eager interpreter (`sglc.lang`) and the compiled-graph executor. Methods are called from
many threads at once; a backend must be thread-safe and should let concurrent calls batch."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..chat_template import ChatTemplate
from ..choices import ChoicesDecision, ChoicesSamplingMethod
from ..primitives import SglSamplingParams


@dataclass
class TokenUsage:
    """What a backend has spent: API calls made and saved (speculative execution, `n=`), and
    prompt and completion tokens."""

    num_calls: int = 0
    num_calls_saved: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, meta: dict) -> None:
        self.num_calls += 1
        self.prompt_tokens += meta.get("prompt_tokens") or 0
        self.completion_tokens += meta.get("completion_tokens") or 0

    def reset(self) -> None:
        self.num_calls = self.num_calls_saved = self.prompt_tokens = self.completion_tokens = 0


class BaseBackend:
    """Implementations: `RuntimeBackend`/`Runtime` (in-process engine), `RuntimeEndpoint`
    (`sglc serve` over HTTP) and `OpenAI` (any OpenAI-compatible API)."""

    #: can `select` score choices by logprobs (an OpenAI chat backend cannot)
    supports_select: bool = True
    #: True for chat-only APIs; the interpreter then sends messages instead of text
    is_chat_model: bool = False
    #: whether `@function(num_api_spec_tokens=N)` fills several gens from one call (API models)
    speculative_execution: bool = False
    #: whether `generate_n` makes one call for n samples (a fork's same-continuation gens use it)
    supports_n: bool = False
    #: whether `generate_program` runs a gen/text/gen segment as one continuing request
    supports_programs: bool = False

    def __init__(self) -> None:
        self.token_usage = TokenUsage()

    def get_chat_template(self) -> ChatTemplate:
        """The template roles are rendered with (the model's own where it has one)."""
        raise NotImplementedError

    def stop_token_ids(self, stop_strs: tuple[str, ...]) -> tuple[int, ...]:
        """Token ids of those stop strings that are single special tokens (a template's end of
        turn is often one, and skipped from the text, so a stop string alone would not fire)."""
        return ()

    def generate(self, prompt: str, params: SglSamplingParams) -> tuple[str, dict]:
        """Generate after `prompt`; return (text, meta_info)."""
        raise NotImplementedError

    def generate_stream(self, prompt: str, params: SglSamplingParams
                        ) -> Iterator[tuple[str, dict]]:
        """Yield (new text piece, meta_info so far); the last piece's meta_info is final."""
        text, meta = self.generate(prompt, params)
        yield text, meta

    def generate_n(self, prompt: str, params: SglSamplingParams, n: int
                   ) -> list[tuple[str, dict]]:
        """`n` samples of one continuation (backends with `supports_n`)."""
        raise NotImplementedError

    def generate_program(self, prompt: str, steps: list[tuple[str, object]]
                         ) -> list[tuple[str, dict]]:
        """Run a straight-line segment, steps ("gen", SglSamplingParams) / ("text", str), as one
        request that continues in place (backends with `supports_programs`); returns
        (text, meta_info) per gen. Each gen must see exactly the prompt a `generate` call for
        the text so far would send."""
        raise NotImplementedError

    def generate_many(self, prompts: list[str], params: list[SglSamplingParams]
                      ) -> list[tuple[str, dict]]:
        """Several independent generations submitted together so they batch."""
        return [self.generate(p, sp) for p, sp in zip(prompts, params)]

    def select(self, prompt: str, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        """Score each of `choices` as a continuation of `prompt` and pick one."""
        raise NotImplementedError

    def cache_prefix(self, prefix: str) -> None:
        """Compute and cache `prefix` (a fork's shared text, a batch's constant prefix) so later
        requests that start with it reuse it. A no-op for backends without a prefix cache."""

    def flush_cache(self) -> bool:
        """Drop cached prefixes; return whether anything was done."""
        return False

    def end_program(self, state) -> None:
        """Called when a program state ends (lets stateful backends free per-program data)."""

    def shutdown(self) -> None:
        """Release the model server if this backend owns it."""
