"""`sgl.RuntimeEndpoint(url)`: programs run on a remote `sglc serve` (or any server with
SGLang's native /generate API) over HTTP; the same backend logic as the in-process runtime,
with the engine and tokenizer calls sent to the server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace

from sglc_runtime.errors import SglcError

from ..lang.chat_template import ChatTemplate
from .runtime import RuntimeBackend


class EndpointError(SglcError):
    """The server could not be reached or rejected a request (its message is kept)."""


class _Http:
    def __init__(self, base_url: str, api_key: str | None, timeout: float):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout

    def _open(self, path: str, body: dict | None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, headers=self.headers,
                                     method="GET" if body is None else "POST")
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = str(e)
            raise EndpointError(f"{self.base_url}{path}: {msg}") from None
        except urllib.error.URLError as e:
            raise EndpointError(f"cannot reach {self.base_url}{path}: {e.reason}") from None

    def call(self, path: str, body: dict | None = None):
        with self._open(path, body) as r:
            return json.loads(r.read())

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        with self._open(path, body) as r:
            for line in r:
                line = line.decode().strip()
                if line.startswith("data:"):
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    yield json.loads(payload)


class _RemoteTokenizer:
    """The tokenizer calls RuntimeBackend makes, answered by the server."""

    def __init__(self, http: _Http, info: dict):
        self.http = http
        self.chat_template = info.get("chat_template")
        self.bos_token_id = info.get("bos_token_id")
        self.bos_token = info.get("bos_token") or ""
        self.eos_token_ids = tuple(info.get("eos_token_ids") or ())
        self.add_bos = bool(info.get("add_bos"))
        self.special_ids = frozenset(info.get("special_ids") or ())
        self.vocab_size = info.get("vocab_size")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.http.call("/tokenize", {"text": text,
                                            "add_special_tokens": add_special_tokens})["tokens"]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.http.call("/detokenize", {"tokens": list(ids),
                                              "skip_special_tokens": skip_special_tokens})["text"]

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True):
        return self.http.call("/apply_chat_template", {
            "messages": messages, "add_generation_prompt": add_generation_prompt})["text"]


class _RemoteEngine:
    """`Engine.generate` / `flush_cache` over the server's /generate."""

    def __init__(self, http: _Http):
        self.http = http
        info = http.call("/get_model_info")
        self.config = SimpleNamespace(model_path=info.get("model_path"))
        self.tokenizer = _RemoteTokenizer(http, info)
        self.supports_programs = bool(info.get("generate_program"))  # `sglc serve` has it

    def generate_program(self, prompt: str, program: list) -> dict:
        return self.http.call("/generate_program", {"text": prompt, "program": program})

    def generate(self, prompt=None, sampling_params=None, input_ids=None,
                 return_logprob=False, logprob_start_len=None, top_logprobs_num=0,
                 stream=False):
        body = {"text": prompt, "input_ids": input_ids, "sampling_params": sampling_params,
                "return_logprob": return_logprob, "logprob_start_len": logprob_start_len,
                "top_logprobs_num": top_logprobs_num}
        body = {k: v for k, v in body.items() if v is not None}
        if not stream:
            return self.http.call("/generate", body)
        return self._stream({**body, "stream": True})

    def _stream(self, body: dict) -> Iterator[dict]:
        sent = 0
        for chunk in self.http.stream("/generate", body):
            text = chunk["text"]  # cumulative on the wire, as SGLang's server sends it
            yield {**chunk, "text": text[sent:]}
            sent = len(text)

    def flush_cache(self) -> bool:
        return bool(self.http.call("/flush_cache", {}).get("flushed"))


class RuntimeEndpoint(RuntimeBackend):
    """`sgl.RuntimeEndpoint("http://127.0.0.1:30000")`, as in SGLang."""

    def __init__(self, base_url: str, api_key: str | None = None,
                 chat_template: str | ChatTemplate | None = None, timeout: float = 600.0):
        super().__init__(_RemoteEngine(_Http(base_url, api_key, timeout)), chat_template)
        self.base_url = base_url

    def get_server_info(self) -> dict:
        return self.engine.http.call("/get_model_info")

    def get_model_name(self) -> str:
        """The served model's path, as the server reports it (SGLang's spelling)."""
        return self.engine.config.model_path
