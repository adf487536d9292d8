"""`sgl.OpenAI(model_name, base_url=None, api_key=None, is_chat_model=None)`: programs on an
OpenAI-compatible API (OpenAI itself, `sglc serve`, vLLM, ...) through the `openai` client.

Chat models get the program's messages (a `gen` must open its assistant turn, or run under
`num_api_spec_tokens`); completion models get its text. Parameters the API has go as they are;
sglc's extensions (regex, grammar, dtype, json_schema, top_k, ...) go in `extra_body` when the server is
`sglc serve` (detected from /v1/models), a JSON schema goes as `response_format` to other chat
servers, and anything a server cannot do raises `BackendError` naming the primitive and the
backend: nothing is dropped. The API key (argument or `OPENAI_API_KEY`) is never logged."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from sglc_runtime.errors import SglcError

from ..lang.backend import BaseBackend
from ..lang.chat_template import ChatTemplate, get_chat_template
from ..lang.choices import ChoicesDecision, ChoicesSamplingMethod
from ..lang.primitives import SglSamplingParams

logger = logging.getLogger(__name__)

# OpenAI's completion-only models (everything else is taken to be a chat model)
_COMPLETION_MODELS = ("gpt-3.5-turbo-instruct", "davinci-002", "babbage-002")


class BackendError(SglcError):
    """A backend cannot do what the program asks, or its API refused the call."""


class OpenAI(BaseBackend):
    """A backend over an OpenAI-compatible HTTP API (SGLang's `sgl.OpenAI`)."""

    speculative_execution = True
    supports_n = True

    def __init__(self, model_name: str, is_chat_model: bool | None = None,
                 chat_template: str | ChatTemplate | None = None, base_url: str | None = None,
                 api_key: str | None = None, extensions: bool | None = None,
                 max_concurrency: int = 32, **client_kwargs):
        try:
            import openai
        except ImportError:
            raise BackendError("sgl.OpenAI needs the openai package: pip install openai") from None
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if api_key is None and base_url is None:
            raise BackendError("sgl.OpenAI: no API key; pass api_key=... or set OPENAI_API_KEY")
        super().__init__()
        self._openai = openai
        self.client = openai.OpenAI(api_key=api_key or "none", base_url=base_url,
                                    **client_kwargs)
        self.model_name = model_name
        self.base_url = base_url
        self.is_chat_model = (model_name not in _COMPLETION_MODELS if is_chat_model is None
                              else bool(is_chat_model))
        if isinstance(chat_template, str):
            chat_template = get_chat_template(chat_template)
        self.chat_template = chat_template or get_chat_template(
            "chatgpt" if self.is_chat_model else "default")
        self.supports_select = not self.is_chat_model
        self._extensions = extensions
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="sglc-openai")

    def __repr__(self) -> str:  # no key here: reprs end up in logs and tracebacks
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"OpenAI({self.model_name!r}{where})"

    # ---- what the server understands --------------------------------------------------------
    @property
    def extensions(self) -> bool:
        """Whether the server takes sglc's request extensions (it is `sglc serve`)."""
        with self._lock:
            if self._extensions is None:
                try:
                    models = self.client.models.list().data
                    self._extensions = any(getattr(m, "owned_by", "") == "sglc" for m in models)
                except self._openai.OpenAIError:
                    self._extensions = False
            return self._extensions

    def _fail(self, primitive: str, what: str) -> BackendError:
        return BackendError(f"{primitive}: {what} is not supported by {self!r}"
                            + ("" if self.extensions else " (only `sglc serve` takes it)"))

    def _request(self, params: SglSamplingParams, primitive: str = "gen") -> dict:
        """The API's keyword arguments for `params`; refuses what this server cannot do."""
        kw: dict = {}
        extra: dict = {}
        if params.max_new_tokens is not None:
            kw["max_tokens"] = params.max_new_tokens
        if params.stop:
            kw["stop"] = [params.stop] if isinstance(params.stop, str) else list(params.stop)
        for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
            if getattr(params, name) is not None:
                kw[name] = getattr(params, name)
        # sglc / SGLang extensions, given only when they differ from "off"
        ext = {"top_k": params.top_k not in (None, -1), "min_p": params.min_p not in (None, 0),
               "repetition_penalty": params.repetition_penalty not in (None, 1.0),
               "ignore_eos": bool(params.ignore_eos),
               "min_tokens": params.min_new_tokens not in (None, 0),
               "stop_token_ids": bool(params.stop_token_ids), "regex": params.regex is not None,
               "grammar": params.grammar is not None}
        for name, given in ext.items():
            if given:
                if not self.extensions:
                    raise self._fail(primitive, name)
                value = getattr(params, {"min_tokens": "min_new_tokens"}.get(name, name))
                extra[name] = list(value) if name == "stop_token_ids" else value
        if params.dtype is not None:
            if not self.extensions:
                raise self._fail(primitive, f"dtype={params.dtype}")
            from sglc_runtime.constrained.dtypes import dtype_regex

            extra["regex"] = dtype_regex(params.dtype)
        if params.json_schema is not None:
            if self.extensions:
                extra["json_schema"] = params.json_schema
            elif self.is_chat_model:
                import json

                kw["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "output", "schema": json.loads(params.json_schema)}}
            else:
                raise self._fail(primitive, "json_schema on a completion model")
        if params.return_logprob or params.top_logprobs_num:
            top = params.top_logprobs_num or 0
            if self.is_chat_model:
                kw["logprobs"] = True
                if top:
                    kw["top_logprobs"] = top
            else:
                kw["logprobs"] = top
        if extra:
            kw["extra_body"] = extra
        return kw

    def _call(self, primitive: str, prompt, **kw):
        """One API call; `prompt` is text (completion models) or messages (chat models)."""
        try:
            if self.is_chat_model:
                if not isinstance(prompt, list):
                    raise BackendError(f"{primitive}: {self!r} is a chat model and needs chat "
                                       "messages")
                r = self.client.chat.completions.create(model=self.model_name, messages=prompt,
                                                        **kw)
            else:
                r = self.client.completions.create(model=self.model_name, prompt=prompt, **kw)
        except self._openai.APIError as e:
            raise BackendError(f"{primitive} on {self!r}: the API refused the call: "
                               f"{getattr(e, 'message', e)}") from None
        except self._openai.OpenAIError as e:
            raise BackendError(f"{primitive} on {self!r}: {e}") from None
        with self._lock:
            self.token_usage.num_calls += 1
            if getattr(r, "usage", None) is not None:
                self.token_usage.prompt_tokens += r.usage.prompt_tokens or 0
                self.token_usage.completion_tokens += r.usage.completion_tokens or 0
        return r

    def _choice(self, r, c) -> tuple[str, dict]:
        text = c.message.content if self.is_chat_model else c.text
        meta = {"id": r.id, "finish_reason": {"type": c.finish_reason}}
        if getattr(r, "usage", None) is not None:
            meta["prompt_tokens"] = r.usage.prompt_tokens
            meta["completion_tokens"] = r.usage.completion_tokens
            details = getattr(r.usage, "prompt_tokens_details", None)
            meta["cached_tokens"] = getattr(details, "cached_tokens", None) or 0
        lp = getattr(c, "logprobs", None)
        if lp is not None:
            if self.is_chat_model:
                items = lp.content or []
                meta["output_token_logprobs"] = [(t.logprob, None, t.token) for t in items]
                meta["output_top_logprobs"] = [[(x.logprob, None, x.token)
                                                for x in t.top_logprobs or ()] for t in items]
            else:
                meta["output_token_logprobs"] = [
                    (v, None, t) for v, t in zip(lp.token_logprobs, lp.tokens)]
                meta["output_top_logprobs"] = [
                    [(v, None, t) for t, v in (top or {}).items()] for top in lp.top_logprobs
                    or ()]
        return text or "", meta

    # ---- the backend interface --------------------------------------------------------------
    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    def generate(self, prompt, params: SglSamplingParams) -> tuple[str | list[str], dict]:
        if params.n is not None and params.n > 1:  # the variable holds all n samples
            outs = self.generate_n(prompt, params, params.n)
            return [t for t, _ in outs], outs[0][1]
        r = self._call("gen", prompt, **self._request(params))
        return self._choice(r, r.choices[0])

    def generate_n(self, prompt, params: SglSamplingParams, n: int) -> list[tuple[str, dict]]:
        """`n` samples of the same continuation in one call (the API's `n=`)."""
        r = self._call("gen", prompt, n=n, **self._request(params))
        outs = [self._choice(r, c) for c in sorted(r.choices, key=lambda c: c.index)]
        if len(outs) != n:
            raise BackendError(f"gen on {self!r}: asked for n={n} samples, got {len(outs)}")
        return outs

    def generate_many(self, prompts: list, params: list[SglSamplingParams]
                      ) -> list[tuple[str, dict]]:
        return list(self._pool.map(self.generate, prompts, params))

    def generate_stream(self, prompt, params: SglSamplingParams) -> Iterator[tuple[str, dict]]:
        kw = self._request(params)
        if "logprobs" in kw:
            raise self._fail("gen", "streaming with logprobs")
        stream = self._call("gen", prompt, stream=True, **kw)
        meta: dict = {}
        try:
            for chunk in stream:
                if not chunk.choices:
                    continue
                c = chunk.choices[0]
                piece = (c.delta.content if self.is_chat_model else c.text) or ""
                if c.finish_reason is not None:
                    meta = {"id": chunk.id, "finish_reason": {"type": c.finish_reason}}
                yield piece, meta
        except self._openai.OpenAIError as e:
            raise BackendError(f"gen on {self!r}: {e}") from None

    def select(self, prompt, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        """Completion models: each choice is scored through the API's prompt logprobs
        (`echo=True, logprobs=1, max_tokens=0`); the tokens from the one that covers the
        choice's first character on are the choice's. Chat APIs return no prompt logprobs."""
        if self.is_chat_model:
            raise BackendError(f"select is not supported by {self!r}: a chat API returns no "
                               "logprobs for given text (use gen(..., regex=...) on `sglc serve`,"
                               " or a completion model)")
        if temperature > 1e-5:
            raise BackendError(f"select: temperature={temperature} is not supported (only 0)")
        rs = list(self._pool.map(lambda c: self._call(
            "select", prompt + c, max_tokens=0, echo=True, logprobs=1, temperature=0),
            choices))
        input_lps = []
        for c, r in zip(choices, rs):
            lp = r.choices[0].logprobs
            if lp is None or not lp.token_logprobs:
                raise BackendError(f"select: {self!r} returned no prompt logprobs for echo=True")
            offsets = list(lp.text_offset) + [len(prompt) + len(c)]
            first = next((k for k in range(len(lp.tokens)) if offsets[k + 1] > len(prompt)),
                         len(lp.tokens) - 1)
            input_lps.append([(v, None, t) for v, t in zip(lp.token_logprobs[first:],
                                                            lp.tokens[first:])
                              if v is not None])
        normalized = [sum(v for v, _, _ in x) / max(len(x), 1) for x in input_lps]
        uncond = None
        if choices_method.requires_unconditional_logprobs:
            raise BackendError(f"select: choices_method={choices_method!r} is not supported by "
                               f"{self!r}")
        return choices_method(choices=choices, normalized_prompt_logprobs=normalized,
                              input_token_logprobs=input_lps,
                              output_token_logprobs=[[] for _ in choices],
                              unconditional_token_logprobs=uncond)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)
