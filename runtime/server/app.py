"""OpenAI-compatible HTTP server over an Engine: /v1/completions, /v1/chat/completions (with
SSE streaming), /v1/models, plus SGLang's native /generate, /health, /get_model_info."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..engine import Engine
from ..errors import SglcError

_OPENAI_TO_SGLANG = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens"}
_PASSTHROUGH = ("temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty",
                "repetition_penalty", "stop", "n", "seed", "ignore_eos", "regex", "json_schema",
                "min_tokens", "stop_token_ids", "skip_special_tokens")
_IGNORED = ("model", "messages", "prompt", "stream", "stream_options", "user", "logprobs",
            "top_logprobs", "echo", "response_format", "max_tokens", "max_completion_tokens",
            "suffix", "best_of", "logit_bias", "tools", "tool_choice", "parallel_tool_calls")


def openai_sampling_params(body: dict) -> dict:
    """Map an OpenAI request body to SGLang sampling params; unknown fields are an error."""
    unknown = sorted(k for k in body if k not in _PASSTHROUGH and k not in _IGNORED)
    if unknown:
        raise SglcError(f"unsupported request field(s): {', '.join(unknown)}")
    sp: dict[str, Any] = {"max_new_tokens": 128}
    for k, v in _OPENAI_TO_SGLANG.items():
        if body.get(k) is not None:
            sp[v] = body[k]
    for k in _PASSTHROUGH:
        if body.get(k) is not None:
            sp["min_new_tokens" if k == "min_tokens" else k] = body[k]
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        sp["json_schema"] = schema if isinstance(schema, str) else json.dumps(schema)
    elif rf.get("type") == "json_object":
        sp["json_schema"] = json.dumps({"type": "object"})
    return sp


def _finish(meta: dict) -> str:
    fr = meta.get("finish_reason") or {}
    return "length" if fr.get("type") == "length" else "stop"


def _usage(outs: list[dict]) -> dict:
    p = outs[0]["meta_info"]["prompt_tokens"]
    c = sum(o["meta_info"]["completion_tokens"] for o in outs)
    cached = outs[0]["meta_info"]["cached_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": cached}}


def create_app(engine: Engine, model_name: str = "default"):
    """Build the FastAPI app serving `engine`."""
    app = FastAPI(title="sglc")

    @app.exception_handler(SglcError)
    async def _bad_request(_request, exc: SglcError):
        return JSONResponse(status_code=400, content={"error": {
            "message": str(exc), "type": "invalid_request_error", "code": 400}})

    async def body_of(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError as e:
            raise SglcError(f"request body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise SglcError("request body must be a JSON object")
        return body

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    tok = engine.tokenizer

    @app.get("/get_model_info")
    async def model_info():
        """What a remote frontend needs to tokenize and render roles like the server does."""
        return {"model_path": engine.config.model_path or "default",
                "context_length": engine.core.runner.context_length,
                "chat_template": tok.chat_template, "bos_token_id": tok.bos_token_id,
                "bos_token": tok.bos_token, "eos_token_ids": list(tok.eos_token_ids),
                "add_bos": tok.add_bos, "special_ids": sorted(tok.special_ids),
                "vocab_size": tok.vocab_size}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await body_of(request)
        if not isinstance(body.get("text"), str):
            raise SglcError("/tokenize needs a string 'text'")
        return {"tokens": tok.encode(body["text"], bool(body.get("add_special_tokens", True)))}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await body_of(request)
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise SglcError("/detokenize needs a list of integer 'tokens'")
        return {"text": tok.decode(ids, bool(body.get("skip_special_tokens", True)))}

    @app.post("/apply_chat_template")
    async def apply_chat_template(request: Request):
        body = await body_of(request)
        return {"text": tok.apply_chat_template(body.get("messages") or [],
                                                bool(body.get("add_generation_prompt", True)))}

    @app.post("/flush_cache")
    async def flush_cache():
        return {"flushed": engine.flush_cache()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "owned_by": "sglc", "created": 0}]}

    @app.post("/generate")
    async def generate(request: Request):
        body = await body_of(request)
        known = {"text", "input_ids", "sampling_params", "return_logprob", "logprob_start_len",
                 "top_logprobs_num", "stream"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise SglcError(f"unsupported /generate field(s): {', '.join(unknown)}")
        kw = dict(prompt=body.get("text"), sampling_params=body.get("sampling_params"),
                  input_ids=body.get("input_ids"),
                  return_logprob=body.get("return_logprob", False),
                  logprob_start_len=body.get("logprob_start_len"),
                  top_logprobs_num=body.get("top_logprobs_num", 0))
        if body.get("stream"):
            it = await engine.async_generate(**kw, stream=True)

            async def sse():
                text = ""
                async for chunk in it:
                    text += chunk["text"]
                    yield f"data: {json.dumps({**chunk, 'text': text})}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream")
        return await engine.async_generate(**kw)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await body_of(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise SglcError("prompt must be a string")
        return await _respond(body, prompt, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await body_of(request)
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise SglcError("messages must be a non-empty list")
        for m in msgs:
            if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
                raise SglcError("each message needs a role and string content")
        prompt = engine.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
        return await _respond(body, prompt, chat=True)

    async def _respond(body: dict, prompt: str, chat: bool):
        sp = openai_sampling_params(body)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        obj = "chat.completion" if chat else "text_completion"
        created = int(time.time())
        if body.get("stream"):
            if sp.get("n", 1) != 1:
                raise SglcError("stream=True supports n=1 only")
            it = await engine.async_generate(prompt, sp, stream=True)
            return StreamingResponse(_stream(it, rid, obj, created, chat),
                                     media_type="text/event-stream")
        out = await engine.async_generate(prompt, sp)
        outs = out if isinstance(out, list) else [out]
        choices = []
        for i, o in enumerate(outs):
            c = {"index": i, "finish_reason": _finish(o["meta_info"])}
            if chat:
                c["message"] = {"role": "assistant", "content": o["text"]}
            else:
                c["text"] = o["text"]
            choices.append(c)
        return {"id": rid, "object": obj, "created": created, "model": model_name,
                "choices": choices, "usage": _usage(outs)}

    async def _stream(it, rid, obj, created, chat):
        kind = obj + ".chunk" if chat else obj
        first = True
        async for chunk in it:
            meta = chunk["meta_info"]
            done = "finish_reason" in meta
            if chat:
                delta = {"content": chunk["text"]}
                if first:
                    delta["role"] = "assistant"
                choice = {"index": 0, "delta": delta, "finish_reason": None}
            else:
                choice = {"index": 0, "text": chunk["text"], "finish_reason": None}
            if done:
                choice["finish_reason"] = _finish(meta)
            first = False
            data = {"id": rid, "object": kind, "created": created, "model": model_name,
                    "choices": [choice]}
            if done:
                data["usage"] = _usage([chunk])
            yield f"data: {json.dumps(data)}\n\n"
        yield "data: [DONE]\n\n"

    return app
