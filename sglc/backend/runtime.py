"""The engine backend: programs call `sglc_runtime.engine.Engine` through its Python API (no
HTTP server; the engine itself runs in its own process unless `engine_in_process=True`)."""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Iterator

from sglc_runtime.engine import Engine
from sglc_runtime.jump_forward import common_prefix_len

from ..lang.backend import BaseBackend
from ..lang.chat_template import ChatTemplate, get_chat_template, template_for_model
from ..lang.choices import ChoicesDecision, ChoicesSamplingMethod
from ..lang.primitives import ProgramError, SglSamplingParams

logger = logging.getLogger(__name__)


class RuntimeBackend(BaseBackend):
    """Runs programs on an existing `Engine`; concurrent calls batch inside the engine."""

    def __init__(self, engine: Engine, chat_template: str | ChatTemplate | None = None):
        super().__init__()
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self._chat_template = (get_chat_template(chat_template)
                               if isinstance(chat_template, str) else chat_template)
        self._lock = threading.Lock()

    # ---- chat template ------------------------------------------------------------------------
    def get_chat_template(self) -> ChatTemplate:
        with self._lock:
            if self._chat_template is None:
                self._chat_template = template_for_model(
                    self._render, self.tokenizer.chat_template,
                    name=str(getattr(self.engine.config, "model_path", None) or "model"))
            return self._chat_template

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt)
        tok = self.tokenizer
        if tok.add_bos and tok.bos_token and text.startswith(tok.bos_token):
            text = text[len(tok.bos_token):]  # encode() adds it again
        return text

    def stop_token_ids(self, stop_strs: tuple[str, ...]) -> tuple[int, ...]:
        ids = []
        for s in stop_strs:
            enc = self.tokenizer.encode(s, add_special_tokens=False)
            if len(enc) == 1 and enc[0] in self.tokenizer.special_ids:
                ids.append(enc[0])
        return tuple(ids)

    # ---- generation ---------------------------------------------------------------------------
    def _prompt_args(self, prompt: str) -> dict:
        """An empty prompt starts from the BOS token (the engine rejects 0-token prompts)."""
        if prompt or self.tokenizer.bos_token_id is None:
            return {"prompt": prompt}
        return {"input_ids": [self.tokenizer.bos_token_id]}

    def generate(self, prompt: str, params: SglSamplingParams) -> tuple[str, dict]:
        sp, lp = params.to_request()
        out = self.engine.generate(**self._prompt_args(prompt), sampling_params=sp, **lp)
        for o in out if isinstance(out, list) else [out]:
            self.token_usage.add(o["meta_info"])
        if isinstance(out, list):  # n > 1 samples
            return [o["text"] for o in out], self._meta_with_text(out[0]["meta_info"])
        return out["text"], self._meta_with_text(out["meta_info"])

    def generate_many(self, prompts: list[str], params: list[SglSamplingParams]
                      ) -> list[tuple[str, dict]]:
        """One engine call for the whole group, so its requests are scheduled together."""
        if not prompts:
            return []
        reqs = [p.to_request() for p in params]
        if any(lp != reqs[0][1] for _, lp in reqs) or not all(prompts):
            return super().generate_many(prompts, params)  # logprob options differ per gen
        outs = self.engine.generate(prompt=list(prompts), sampling_params=[sp for sp, _ in reqs],
                                    **reqs[0][1])
        for o in outs:
            self.token_usage.add(o["meta_info"])
        return [(o["text"], self._meta_with_text(o["meta_info"])) for o in outs]

    @property
    def supports_programs(self) -> bool:
        return bool(getattr(self.engine, "supports_programs", True))

    def generate_program(self, prompt: str, steps: list[tuple[str, object]]
                         ) -> list[tuple[str, dict]]:
        program = []
        for kind, value in steps:
            if kind == "gen":
                sp, lp = value.to_request()
                if lp:
                    raise ProgramError("a program segment's gens return no logprobs")
                program.append({"gen": sp})
            else:
                program.append({"text": value})
        out = self.engine.generate_program(prompt, program)
        for g in out["gens"]:
            self.token_usage.add(g["meta_info"])
        return [(g["text"], self._meta_with_text(g["meta_info"])) for g in out["gens"]]

    def generate_stream(self, prompt: str, params: SglSamplingParams
                        ) -> Iterator[tuple[str, dict]]:
        sp, lp = params.to_request()
        sent = 0
        for chunk in self.engine.generate(**self._prompt_args(prompt), sampling_params=sp,
                                          stream=True, **lp):
            meta = self._meta_with_text(chunk["meta_info"])
            if "output_token_logprobs" in meta:  # SGLang's stream form: this chunk's entries
                lps = meta["output_token_logprobs"]
                meta["output_token_logprobs"] = lps[sent:]
                if "output_top_logprobs" in meta:
                    meta["output_top_logprobs"] = meta["output_top_logprobs"][sent:]
                meta["output_token_logprobs_length"] = meta["completion_tokens"] = len(lps)
                sent = len(lps)
            yield chunk["text"], meta

    def _meta_with_text(self, meta: dict) -> dict:
        """Fill each logprob entry's token text (SGLang's return_text_in_logprobs)."""
        for key in ("input_token_logprobs", "output_token_logprobs"):
            if key in meta:
                meta[key] = self._with_text(meta[key])
        for key in ("input_top_logprobs", "output_top_logprobs"):
            if key in meta:
                meta[key] = [None if top is None else self._with_text(top) for top in meta[key]]
        return meta

    def cache_prefix(self, prefix: str) -> None:
        if prefix:
            self.engine.generate(prompt=prefix, sampling_params={"max_new_tokens": 0})

    def flush_cache(self) -> bool:
        return self.engine.flush_cache()

    # ---- select -------------------------------------------------------------------------------
    def select(self, prompt: str, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        """One max_new_tokens=0 request per choice, all submitted together, each scoring the
        tokens from where `prompt + choice` stops tokenizing like `prompt` (so a token that
        spans the boundary is scored whole)."""
        if temperature > 1e-5:
            raise ProgramError(f"select: temperature={temperature} is not supported (only 0: "
                               "the most likely choice is taken)")
        tok = self.tokenizer
        prefix_ids = tok.encode(prompt) if prompt else []
        full_ids = [tok.encode(prompt + c) for c in choices]
        if not prefix_ids and tok.bos_token_id is not None:
            # no context: condition every choice on BOS so its first token is scored too
            prefix_ids = [tok.bos_token_id]
            full_ids = [prefix_ids + ids for ids in full_ids]
        starts = [min(common_prefix_len(prefix_ids, ids), len(ids) - 1) for ids in full_ids]
        if len(choices) > 1 and len(prefix_ids) > 1:
            # compute the shared context once; the choice requests then hit the prefix cache
            self.engine.generate(input_ids=prefix_ids, sampling_params={"max_new_tokens": 0})
        outs = self.engine.generate(input_ids=full_ids,
                                    sampling_params={"max_new_tokens": 0, "temperature": 0},
                                    return_logprob=True, logprob_start_len=starts)
        # position 0 (no BOS, empty prompt) has no logprob: score the choice without it
        input_lps = [[t for t in self._with_text(o["meta_info"]["input_token_logprobs"])
                      if t[0] is not None] for o in outs]
        normalized = [o["meta_info"]["normalized_prompt_logprob"] for o in outs]
        output_lps = [o["meta_info"]["output_token_logprobs"] for o in outs]
        uncond = None
        if choices_method.requires_unconditional_logprobs:
            uncond = self._unconditional(input_lps)
        return choices_method(choices=choices, normalized_prompt_logprobs=normalized,
                              input_token_logprobs=input_lps,
                              output_token_logprobs=output_lps,
                              unconditional_token_logprobs=uncond)

    def _unconditional(self, input_lps: list[list]) -> list[list]:
        """Each choice's tokens scored on their own (the first token has no logprob: None)."""
        ids = [[t[1] for t in lps] for lps in input_lps]
        nonempty = [i for i, x in enumerate(ids) if x]
        outs = self.engine.generate(input_ids=[ids[i] for i in nonempty],
                                    sampling_params={"max_new_tokens": 0},
                                    return_logprob=True, logprob_start_len=0)
        result: list[list] = [[] for _ in ids]
        for i, o in zip(nonempty, outs):
            result[i] = self._with_text(o["meta_info"]["input_token_logprobs"])
        return result

    def _with_text(self, lps: list) -> list:
        return [(lp, tid, self.tokenizer.decode([tid])) for lp, tid, _ in lps]


# SGLang's Runtime arguments about its HTTP server process, which sgl.Runtime does not start.
_SERVER_ONLY_ARGS = ("port", "host", "launch_timeout", "api_key")


class Runtime(RuntimeBackend):
    """`sgl.Runtime(model_path=None, **engine_args)`: starts an `Engine` (or wraps `engine=`
    given) and is the backend programs run on; `shutdown()` stops it."""

    def __init__(self, model_path: str | None = None, *, engine: Engine | None = None,
                 chat_template: str | ChatTemplate | None = None, **engine_args):
        ignored = [k for k in _SERVER_ONLY_ARGS if engine_args.pop(k, None) is not None]
        if ignored:
            logger.warning("Runtime: ignoring server arguments %s (no HTTP server is started)",
                           ", ".join(ignored))
        self._owns_engine = engine is None
        if engine is None:
            engine = Engine(model_path=model_path, **engine_args)
            atexit.register(self.shutdown)
        elif model_path is not None or engine_args:
            raise ProgramError("give either engine= or model_path/engine arguments, not both")
        super().__init__(engine, chat_template)

    def get_tokenizer(self):
        return self.tokenizer

    @property
    def endpoint(self) -> Runtime:
        """SGLang's `Runtime.endpoint` (the `RuntimeEndpoint` it serves through): here the
        runtime is its own backend, so this is the runtime itself."""
        return self

    def get_model_name(self) -> str:
        """The model's path (a GGUF file or Hugging Face folder), as SGLang's endpoint says."""
        from sglc_runtime.model_source import resolve_model_path

        return str(resolve_model_path(self.engine.config.model_path))

    def generate(self, prompt, params=None, **kwargs):
        """Backend call (`params` an SglSamplingParams), or SGLang's `Runtime.generate(prompt,
        sampling_params={...})` returning the engine's result dict."""
        if isinstance(params, SglSamplingParams):
            return super().generate(prompt, params)
        return self.engine.generate(prompt=prompt, sampling_params=params, **kwargs)

    async def async_generate(self, prompt: str, sampling_params: dict | None = None, **kwargs):
        return await self.engine.async_generate(prompt=prompt, sampling_params=sampling_params,
                                                **kwargs)

    def shutdown(self) -> None:
        if self._owns_engine:
            self.engine.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
