"""OpenAI request bodies to engine requests, and engine results to OpenAI response bodies.

Every field of a completions or chat-completions body is either honoured or refused with a
`ParamError` naming it (the server answers 400 with OpenAI's error body); none is ignored.
Responses follow OpenAI's layout: choices (indexed prompt-major, then by sample), logprobs in
the legacy completions form or the chat form, and usage with cached prompt tokens."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import InvalidRequestError
from ..sampling_params import CONSTRAINT_KEYS, SamplingParams
from ..tokenizer import Tokenizer
from .tools import Tools, call_text, parse_calls, parse_tools, tool_grammar, with_tools


class ParamError(InvalidRequestError):
    """A request field is invalid or unsupported; `param` names it (OpenAI's error `param`)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


# OpenAI (and SGLang / vLLM extra_body) field -> engine sampling parameter: OpenAI's names for
# the token budgets, and every other engine parameter under its own name (sampling_params.py is
# the one schema; a parameter added there is taken here too)
_OPENAI_NAMES = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens",
                 "min_tokens": "min_new_tokens"}
_SAMPLING = {**{f.name: f.name for f in fields(SamplingParams)
                if f.init and f.name not in _OPENAI_NAMES.values()}, **_OPENAI_NAMES}
# `user` is an end-user id for the provider's abuse monitoring: accepted, it changes nothing.
_COMMON = {"model", "stream", "stream_options", "user", "response_format", *_SAMPLING}
_COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "logprobs", "best_of"}
_CHAT_FIELDS = _COMMON | {"messages", "logprobs", "top_logprobs", "tools", "tool_choice",
                          "parallel_tool_calls"}
# OpenAI fields this server knows but cannot honour: a request that sets one gets a 400.
_REFUSED = {
    "logit_bias": "logit_bias is not supported by this server",
    "tools": "tools are taken by /v1/chat/completions, not /v1/completions",
    "tool_choice": "tools are taken by /v1/chat/completions, not /v1/completions",
    "parallel_tool_calls": "tools are taken by /v1/chat/completions, not /v1/completions",
    "functions": "function calls are not supported by this server",
    "function_call": "function calls are not supported by this server",
    "audio": "audio output is not supported (the model is text-only)",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "suffix": "suffix (insertion) is not supported: the model has no fill-in-the-middle mode",
}
_MAX_TOP_LOGPROBS = 20
_ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class OpenAIRequest:
    """A validated completions or chat request: what to send to the engine and how to answer."""

    chat: bool
    model: str | None
    prompts: list[str] | None  # the texts, or None when the prompt came as token ids
    input_ids: list[list[int]] | None
    sampling: dict[str, Any]
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    top_logprobs: int | None = None  # None: no logprobs; else this many alternatives per token
    echo_texts: list[str] = field(default_factory=list)
    tools: Tools | None = None  # chat with tools: the answer may be a tool call (tools.py)

    def engine_args(self) -> dict:
        """Keyword arguments for `Engine.async_generate` (always a list of prompts)."""
        args: dict[str, Any] = {"sampling_params": self.sampling}
        if self.prompts is not None:
            args["prompt"] = self.prompts
        else:
            args["input_ids"] = self.input_ids
        if self.top_logprobs is not None:
            args["return_logprob"] = True
            args["top_logprobs_num"] = self.top_logprobs
            if self.echo:
                args["logprob_start_len"] = 0
        return args


def _check_fields(body: dict, allowed: set[str]) -> None:
    for k, v in body.items():
        if k in _REFUSED and k not in allowed:
            if v is None or v == "" or v == [] or (k == "tool_choice" and v == "none"):
                continue  # not set
            raise ParamError(k, _REFUSED[k])
        if k not in allowed:
            raise ParamError(k, f"unknown parameter {k!r}")


def _int(body: dict, name: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ParamError(name, f"{name}={v!r}: must be an integer {rng}")
    return v


def _sampling(body: dict) -> dict[str, Any]:
    sp: dict[str, Any] = {"max_new_tokens": 128}
    for k, name in _SAMPLING.items():
        if body.get(k) is not None:
            sp[name] = body[k]
    for k in ("max_tokens", "max_completion_tokens", "n"):
        _int(body, k, 1 if k == "n" else 0)
    rf = body.get("response_format")
    if rf is not None:
        kind = rf.get("type") if isinstance(rf, dict) else None
        if kind == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema")
            if schema is None:
                raise ParamError("response_format", "response_format.json_schema.schema is "
                                                    "missing")
            sp["json_schema"] = schema if isinstance(schema, str) else json.dumps(schema)
        elif kind == "json_object":
            sp["json_schema"] = json.dumps({"type": "object"})
        elif kind != "text":
            raise ParamError("response_format", f"response_format type {kind!r}: must be "
                                                "'text', 'json_object' or 'json_schema'")
    return sp


def _stream_options(body: dict, stream: bool) -> bool:
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not stream:
        raise ParamError("stream_options", "stream_options is only allowed with stream=true")
    if not isinstance(opts, dict) or set(opts) - {"include_usage"}:
        raise ParamError("stream_options", "stream_options takes only include_usage")
    return bool(opts.get("include_usage"))


def _common(body: dict, chat: bool) -> OpenAIRequest:
    stream = bool(body.get("stream"))
    sp = _sampling(body)
    return OpenAIRequest(chat=chat, model=body.get("model"), prompts=None, input_ids=None,
                         sampling=sp, n=sp.get("n", 1), stream=stream,
                         include_usage=_stream_options(body, stream))


def parse_completion(body: dict, tok: Tokenizer) -> OpenAIRequest:
    """Validate a /v1/completions body. `prompt` is a string, a list of strings, a list of
    token ids, or a list of such lists."""
    _check_fields(body, _COMPLETION_FIELDS)
    req = _common(body, chat=False)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        req.prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        req.prompts = list(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        req.input_ids = [list(prompt)]
    elif (isinstance(prompt, list) and prompt and all(
            isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt)):
        req.input_ids = [list(p) for p in prompt]
    else:
        raise ParamError("prompt", "prompt must be a string, a list of strings, a list of "
                                   "token ids, or a list of token-id lists (non-empty)")
    best_of = _int(body, "best_of", 1)
    if best_of is not None and best_of != req.n:
        raise ParamError("best_of", f"best_of={best_of} is not supported (only best_of == n, "
                                    f"here {req.n})")
    req.echo = bool(body.get("echo"))
    req.top_logprobs = _int(body, "logprobs", 0, _MAX_TOP_LOGPROBS)
    if req.stream and req.echo and req.top_logprobs is not None:
        raise ParamError("echo", "echo with logprobs is not supported when streaming")
    if req.echo:
        req.echo_texts = (req.prompts if req.prompts is not None
                          else [tok.decode(ids, skip_special_tokens=False)
                                for ids in req.input_ids])
    return req


def _message_text(i: int, m: Any) -> dict:
    if not isinstance(m, dict) or "role" not in m:
        raise ParamError("messages", f"messages[{i}] must be an object with a role")
    extra = set(m) - {"role", "content", "name", "tool_calls", "tool_call_id"}
    if extra:
        raise ParamError("messages", f"messages[{i}]: unsupported field(s) "
                                     f"{', '.join(sorted(extra))}")
    if m["role"] not in _ROLES:
        raise ParamError("messages", f"messages[{i}].role={m['role']!r}: must be one of "
                                     f"{', '.join(_ROLES)}")
    content = m.get("content")
    calls = m.get("tool_calls")
    if calls and (m["role"] != "assistant" or not isinstance(calls, list)):
        raise ParamError("messages", f"messages[{i}]: tool_calls must be a list, on an "
                                     f"assistant message")
    if calls and content is None:
        content = ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ParamError("messages", f"messages[{i}]: content part {kind!r} is not "
                                             "supported (the model reads text only)")
            parts.append(str(part.get("text", "")))
        content = "".join(parts)
    if not isinstance(content, str):
        raise ParamError("messages", f"messages[{i}].content must be a string or text parts")
    if calls:  # an earlier call, shown to the model as it writes one
        content = (content + "\n" if content else "") + call_text(calls, i)
    role = "system" if m["role"] == "developer" else m["role"]
    return {"role": role, "content": content}


def parse_chat(body: dict, tok: Tokenizer) -> OpenAIRequest:
    """Validate a /v1/chat/completions body and render its messages with the chat template."""
    _check_fields(body, _CHAT_FIELDS)
    req = _common(body, chat=True)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ParamError("messages", "messages must be a non-empty list")
    messages = [_message_text(i, m) for i, m in enumerate(msgs)]
    req.tools = parse_tools(body)
    if req.tools is not None:
        given = [k for k in CONSTRAINT_KEYS if k in req.sampling]
        if given:
            raise ParamError("tools", f"tools decide the answer's shape; drop {given[0]}")
        messages = with_tools(messages, req.tools)
        req.sampling["grammar"] = tool_grammar(req.tools)
    req.prompts = [tok.apply_chat_template(messages, add_generation_prompt=True)]
    top = _int(body, "top_logprobs", 0, _MAX_TOP_LOGPROBS)
    if body.get("logprobs"):
        req.top_logprobs = top or 0
    elif top is not None:
        raise ParamError("top_logprobs", "top_logprobs requires logprobs=true")
    return req


# ---- responses ---------------------------------------------------------------------------------
def token_text(tok: Tokenizer, tid: int) -> str:
    """A token as OpenAI shows it: its UTF-8 text, or `bytes:\\xNN...` for a partial character."""
    raw = tok.token_bytes[tid]
    if not raw:  # a special token
        return tok.decode([tid], skip_special_tokens=False)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _raw(tok: Tokenizer, tid: int) -> bytes:
    return tok.token_bytes[tid] or tok.decode([tid], skip_special_tokens=False).encode()


def completion_logprobs(tok: Tokenizer, entries: list, tops: list | None, offset: int,
                        count_special: bool) -> dict:
    """The legacy completions `logprobs` object for `entries` [(logprob, id, _), ...];
    text offsets start at `offset` (special tokens take no room unless `count_special`)."""
    tokens, lps, top_lps, offsets = [], [], [], []
    buf = b""
    for k, (lp, tid, _) in enumerate(entries):
        offsets.append(offset + len(buf.decode("utf-8", "ignore")))
        if count_special or tok.token_bytes[tid]:
            buf += _raw(tok, tid)
        tokens.append(token_text(tok, tid))
        lps.append(lp)
        top = tops[k] if tops is not None and k < len(tops) else None
        top_lps.append(None if top is None else {token_text(tok, t): v for v, t, _ in top})
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": top_lps,
            "text_offset": offsets}


def chat_logprobs(tok: Tokenizer, entries: list, tops: list | None) -> dict:
    """The chat `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    def one(lp, tid):
        return {"token": token_text(tok, tid), "logprob": lp, "bytes": list(_raw(tok, tid))}

    content = []
    for k, (lp, tid, _) in enumerate(entries):
        top = tops[k] if tops is not None and k < len(tops) else None
        content.append({**one(lp, tid), "top_logprobs": [one(v, t) for v, t, _ in top or ()]})
    return {"content": content}


def finish_reason(meta: dict) -> str:
    fr = meta.get("finish_reason") or {}
    return "length" if fr.get("type") == "length" else "stop"


def usage(metas: list[dict], n: int) -> dict:
    """Prompt tokens count once per prompt (the first of its n samples), completions per sample."""
    firsts = metas[::n]
    p = sum(m["prompt_tokens"] for m in firsts)
    c = sum(m["completion_tokens"] for m in metas)
    cached = sum(m["cached_tokens"] for m in firsts)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": cached}}


def choice_body(req: OpenAIRequest, tok: Tokenizer, index: int, out: dict) -> dict:
    """One non-streamed choice for engine result `out` (the index-th of the request)."""
    meta = out["meta_info"]
    c: dict[str, Any] = {"index": index, "finish_reason": finish_reason(meta)}
    lp = None
    if req.chat:
        c["message"] = {"role": "assistant", "content": out["text"]}
        calls = None if req.tools is None else parse_calls(out["text"], req.tools)
        if calls:
            c["message"] = {"role": "assistant", "content": None, "tool_calls": calls}
            c["finish_reason"] = "tool_calls"
        if req.top_logprobs is not None:
            lp = chat_logprobs(tok, meta["output_token_logprobs"],
                               meta.get("output_top_logprobs"))
        c["logprobs"] = lp
        return c
    echo = req.echo_texts[index // req.n] if req.echo else ""
    c["text"] = echo + out["text"]
    if req.top_logprobs is not None:
        entries = meta["output_token_logprobs"]
        tops = meta.get("output_top_logprobs")
        if req.echo:
            prompt_lp = completion_logprobs(tok, meta["input_token_logprobs"],
                                            meta.get("input_top_logprobs"), 0, True)
            out_lp = completion_logprobs(tok, entries, tops, len(echo), False)
            lp = {k: prompt_lp[k] + out_lp[k] for k in prompt_lp}
        else:
            lp = completion_logprobs(tok, entries, tops, 0, False)
    c["logprobs"] = lp
    return c
