"""OpenAI-compatible HTTP server over an Engine: /v1/completions, /v1/chat/completions (with
SSE streaming), /v1/models, plus SGLang's native /generate, /get_model_info, /server_info,
/flush_cache and the tokenizer routes a remote frontend uses. With `api_key` every route asks
for `Authorization: Bearer <key>`; bodies over `max_request_bytes` get a 413."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..engine import Engine
from ..errors import SglcError
from .openai_protocol import (
    OpenAIRequest,
    ParamError,
    chat_logprobs,
    choice_body,
    completion_logprobs,
    finish_reason,
    parse_chat,
    parse_completion,
    usage,
)
from .tools import parse_calls

DEFAULT_MAX_REQUEST_BYTES = 16 << 20
_GENERATE_FIELDS = {"text", "input_ids", "sampling_params", "return_logprob",
                    "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs", "stream",
                    "rid"}


class HTTPError(SglcError):
    """A request refused with a status other than 400 (401, 404, 413)."""

    def __init__(self, status: int, kind: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param


def _error_body(message: str, kind: str, status: int, param: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def create_app(engine: Engine, model_name: str = "default", api_key: str | None = None,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> FastAPI:
    """Build the FastAPI app serving `engine` under the name `model_name`."""
    app = FastAPI(title="sglc")
    tok = engine.tokenizer

    @app.exception_handler(SglcError)
    async def _refused(_request, exc: SglcError):
        status, kind = getattr(exc, "status", 400), getattr(exc, "kind", "invalid_request_error")
        return JSONResponse(status_code=status, content=_error_body(
            str(exc), kind, status, getattr(exc, "param", None)))

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        """Authentication and the size limit, before any route reads the body."""
        if api_key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return JSONResponse(status_code=401, content=_error_body(
                    "missing or invalid API key (send 'Authorization: Bearer <key>')",
                    "authentication_error", 401, None))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_request_bytes:
            return JSONResponse(status_code=413, content=_error_body(
                f"request body of {length} bytes exceeds the limit of {max_request_bytes}",
                "invalid_request_error", 413, None))
        return await call_next(request)

    async def body_of(request: Request) -> dict:
        data = b""
        async for chunk in request.stream():  # also bounds bodies sent without a length
            data += chunk
            if len(data) > max_request_bytes:
                raise HTTPError(413, "invalid_request_error", f"request body exceeds the limit "
                                                              f"of {max_request_bytes} bytes")
        try:
            body = json.loads(data)
        except ValueError as e:
            raise SglcError(f"request body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise SglcError("request body must be a JSON object")
        return body

    # ---- SGLang's native routes -----------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    def info() -> dict:
        """What a remote frontend needs to tokenize and render roles like the server does."""
        return {"model_path": engine.config.model_path or model_name,
                "served_model_name": model_name,
                "context_length": engine.context_length,
                "chat_template": tok.chat_template, "bos_token_id": tok.bos_token_id,
                "bos_token": tok.bos_token, "eos_token_ids": list(tok.eos_token_ids),
                "add_bos": tok.add_bos, "special_ids": sorted(tok.special_ids),
                "vocab_size": tok.vocab_size, "is_generation": True,
                "generate_program": True}

    @app.get("/get_model_info")
    async def model_info():
        return info()

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def server_info():
        return {**info(), "max_total_num_tokens": engine.max_total_tokens,
                "disable_radix_cache": engine.config.disable_radix_cache,
                "version": "sglc"}

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
    @app.get("/flush_cache")
    async def flush_cache():
        return {"flushed": await asyncio.to_thread(engine.flush_cache)}

    def with_token_text(result: dict) -> dict:
        """SGLang's return_text_in_logprobs: each (logprob, id, text) entry gets its text."""
        meta = result["meta_info"]
        for key in ("input_token_logprobs", "output_token_logprobs"):
            if key in meta:
                meta[key] = [(lp, t, tok.decode([t])) for lp, t, _ in meta[key]]
        for key in ("input_top_logprobs", "output_top_logprobs"):
            if key in meta:
                meta[key] = [None if top is None else [(lp, t, tok.decode([t]))
                                                       for lp, t, _ in top]
                             for top in meta[key]]
        return result

    @app.post("/generate")
    async def generate(request: Request):
        body = await body_of(request)
        unknown = sorted(set(body) - _GENERATE_FIELDS)
        if unknown:
            raise ParamError(unknown[0], f"unsupported /generate field(s): {', '.join(unknown)}")
        kw = dict(prompt=body.get("text"), sampling_params=body.get("sampling_params"),
                  input_ids=body.get("input_ids"),
                  return_logprob=bool(body.get("return_logprob")),
                  logprob_start_len=body.get("logprob_start_len"),
                  top_logprobs_num=body.get("top_logprobs_num") or 0)
        texts = bool(body.get("return_text_in_logprobs"))
        if body.get("stream"):
            it = await engine.async_generate(**kw, stream=True)

            async def sse():
                text = ""
                async for chunk in it:  # cumulative text on the wire, as SGLang's server sends
                    text += chunk["text"]
                    out = {**chunk, "text": text}
                    yield f"data: {json.dumps(with_token_text(out) if texts else out)}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream")
        out = await engine.async_generate(**kw)
        if texts:
            out = [with_token_text(o) for o in out] if isinstance(out, list) \
                else with_token_text(out)
        return out

    @app.post("/generate_program")
    async def generate_program(request: Request):
        """sglc's own route: a straight-line program segment as one continuing request,
        {"text": prompt, "program": [{"text": str} | {"gen": sampling_params}, ...]}."""
        body = await body_of(request)
        unknown = sorted(set(body) - {"text", "program"})
        if unknown:
            raise ParamError(unknown[0], f"unsupported /generate_program field(s): "
                                         f"{', '.join(unknown)}")
        return await engine.async_generate_program(body.get("text"), body.get("program"))

    # ---- OpenAI routes ----------------------------------------------------------------------
    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "owned_by": "sglc", "created": 0}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _respond(parse_completion(await body_of(request), tok))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _respond(parse_chat(await body_of(request), tok))

    async def _respond(req: OpenAIRequest):
        if req.model is not None and req.model != model_name:
            raise HTTPError(404, "not_found_error", f"the model {req.model!r} does not exist "
                                                   f"(this server serves {model_name!r})",
                            "model")
        rid = ("chatcmpl-" if req.chat else "cmpl-") + uuid.uuid4().hex[:24]
        head = {"id": rid, "object": "chat.completion" if req.chat else "text_completion",
                "created": int(time.time()), "model": model_name}
        if req.stream:
            streams = await _open_streams(req)
            return StreamingResponse(_sse(req, head, streams), media_type="text/event-stream")
        outs = await engine.async_generate(**req.engine_args())
        choices = [choice_body(req, tok, i, o) for i, o in enumerate(outs)]
        return {**head, "choices": choices, "usage": usage([o["meta_info"] for o in outs], req.n)}

    async def _open_streams(req: OpenAIRequest) -> list:
        """One engine stream per choice (prompt-major, then sample), opened before the response
        starts so a bad request is still a 400."""
        args = req.engine_args()
        sources = args.pop("prompt", None) or args.pop("input_ids")
        key = "prompt" if req.prompts is not None else "input_ids"
        seed = req.sampling.get("seed")
        streams = []
        try:
            for src in sources:
                for j in range(req.n):
                    sp = {**req.sampling, "n": 1}
                    if seed is not None:
                        sp["seed"] = seed + 7919 * j  # distinct samples, as Engine does for n
                    streams.append(await engine.async_generate(
                        **{**args, key: src, "sampling_params": sp}, stream=True))
        except BaseException:
            for s in streams:
                await s.aclose()
            raise
        return streams

    async def _sse(req: OpenAIRequest, head: dict, streams: list):
        kind = "chat.completion.chunk" if req.chat else "text_completion"
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, stream) -> None:
            try:
                async for chunk in stream:
                    await queue.put((i, chunk, None))
            except Exception as e:  # noqa: BLE001 - reported to the client in the stream
                await queue.put((i, None, e))
            await queue.put((i, None, None))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
        sent_lps = [0] * len(streams)
        finals: list[dict | None] = [None] * len(streams)
        texts = [""] * len(streams)  # with tools: each choice's text so far
        shown = [0] * len(streams)  # ... and how much of it was sent
        open_streams = len(streams)
        try:
            if req.chat:  # the role comes first, in its own chunk per choice
                for i in range(len(streams)):
                    yield _event({**head, "object": kind, "choices": [{
                        "index": i, "delta": {"role": "assistant", "content": ""},
                        "logprobs": None, "finish_reason": None}]}, req)
            elif req.echo:
                for i in range(len(streams)):
                    yield _event({**head, "object": kind, "choices": [{
                        "index": i, "text": req.echo_texts[i // req.n], "logprobs": None,
                        "finish_reason": None}]}, req)
            while open_streams:
                i, chunk, err = await queue.get()
                if err is not None:
                    body = _error_body(str(err), "server_error", 500, None)
                    yield f"data: {json.dumps(body)}\n\n"
                    return
                if chunk is None:
                    open_streams -= 1
                    continue
                meta = chunk["meta_info"]
                entries = meta.get("output_token_logprobs", [])[sent_lps[i]:]
                tops = meta.get("output_top_logprobs", [])[sent_lps[i]:] or None
                sent_lps[i] += len(entries)
                done = "finish_reason" in meta
                choice: dict = {"index": i, "finish_reason": finish_reason(meta) if done else None}
                lp = None
                if req.chat and req.tools is not None:
                    # a text answer never starts with "{" (the tools grammar): it streams as
                    # it comes; what starts with "{" is a call, known whole only at the end
                    texts[i] += chunk["text"]
                    choice["delta"] = {}
                    if texts[i][:1] not in ("", "{"):
                        choice["delta"] = {"content": texts[i][shown[i]:]}
                        shown[i] = len(texts[i])
                    elif done:
                        calls = parse_calls(texts[i], req.tools)
                        choice["delta"] = {"content": texts[i]} if not calls else {
                            "tool_calls": [{"index": k, **c} for k, c in enumerate(calls)]}
                        if calls:
                            choice["finish_reason"] = "tool_calls"
                    if not done and not entries and not choice["delta"].get("content"):
                        continue
                    if req.top_logprobs is not None:
                        lp = chat_logprobs(tok, entries, tops)
                elif req.chat:
                    choice["delta"] = {"content": chunk["text"]}
                    if req.top_logprobs is not None:
                        lp = chat_logprobs(tok, entries, tops)
                else:
                    choice["text"] = chunk["text"]
                    if req.top_logprobs is not None:
                        lp = completion_logprobs(tok, entries, tops, 0, False)
                choice["logprobs"] = lp
                if done:
                    finals[i] = meta
                yield _event({**head, "object": kind, "choices": [choice]}, req)
            if req.include_usage:
                last = {**head, "object": kind, "choices": [], "usage": usage(finals, req.n)}
                yield f"data: {json.dumps(last)}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # the client went away, or all is sent: stop (and abort) what still runs
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for s in streams:
                await s.aclose()

    def _event(data: dict, req: OpenAIRequest) -> str:
        if req.include_usage:
            data["usage"] = None
        return f"data: {json.dumps(data)}\n\n"

    return app
