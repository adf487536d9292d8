"""The peers as backends of the same programs: HF transformers (one `generate` call per gen, as a
transformers user writes it: no prefix cache, one call at a time) and llama.cpp's own server
(`llama-server -np 8`: parallel slots, continuous batching, prompt caching). Neither takes
regexes, so a regex-constrained gen runs unconstrained up to the next quote, comma or newline;
`select` scores each choice's tokens (HF) or constrains generation to the choices with a GBNF
grammar (llama-server)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import threading
import time
import urllib.request

from ..lang.backend import BaseBackend
from ..lang.chat_template import template_for_model
from ..lang.choices import ChoicesDecision

logger = logging.getLogger(__name__)

REGEX_STOPS = ['"', ",", "\n"]


def _stops(params) -> list[str]:
    sp, _ = params.to_request()
    stops = list(sp.get("stop", []))
    if sp.get("regex"):
        stops += REGEX_STOPS
    return stops


def _closing(params) -> str:
    """The delimiter a regex gen's pattern ends with (one of REGEX_STOPS): the constrained
    engine writes it as the field's last character, so the peers append it to their cut text
    (the programs then continue from the same JSON text)."""
    rx = params.to_request()[0].get("regex") or ""
    return rx[-1] if rx[-1:] in REGEX_STOPS and rx[-2:-1] != "\\" else ""


def _cut(text: str, stops: list[str]) -> str:
    at = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text if at < 0 else text[:at]


class _ChatTemplateOf:
    """Roles rendered with the model's own chat template, as the engine backend does."""

    def _init_template(self, gguf_path) -> None:
        from gguf import GGUFReader

        from sglc_runtime.tokenizer import Tokenizer

        self.sglc_tokenizer = tok = Tokenizer.from_gguf(GGUFReader(str(gguf_path)))

        def render(messages, add_generation_prompt):
            text = tok.apply_chat_template(messages, add_generation_prompt)
            return text[len(tok.bos_token):] if tok.add_bos and tok.bos_token and \
                text.startswith(tok.bos_token) else text

        self._template = template_for_model(render, tok.chat_template, name=gguf_path.name)

    def get_chat_template(self):
        return self._template


class HFBackend(_ChatTemplateOf, BaseBackend):
    """HF transformers on the same GGUF, one call at a time: float32 on the CPU, bfloat16 on
    a GPU (where sglc runs bfloat16 too)."""

    def __init__(self, gguf_path):
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        folder, name = str(gguf_path.parent), gguf_path.name
        self.tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                          dtype=dtype).eval().to(self.device)
        self._init_template(gguf_path)
        self.lock = threading.Lock()
        with torch.no_grad():  # warm up
            self.model.generate(self._ids("Hello"), max_new_tokens=4, do_sample=False,
                                pad_token_id=self.tok.eos_token_id)

    def _ids(self, prompt: str):
        return self.tok(prompt, return_tensors="pt").input_ids.to(self.device)

    def generate(self, prompt, params):
        sp, _ = params.to_request()
        stops = _stops(params)
        ids = self._ids(prompt)
        kw = {"max_new_tokens": sp.get("max_new_tokens", 128), "do_sample": False,
              "pad_token_id": self.tok.eos_token_id}
        if stops:
            kw.update(stop_strings=stops, tokenizer=self.tok)
        with self.lock, self.torch.no_grad():
            out = self.model.generate(ids, **kw)[0, ids.shape[1]:]
        text = _cut(self.tok.decode(out, skip_special_tokens=True), stops) + _closing(params)
        meta = {"prompt_tokens": ids.shape[1], "completion_tokens": len(out)}
        self.token_usage.add(meta)
        return text, meta

    def select(self, prompt, choices, temperature, choices_method):
        """Each choice's mean token logprob after the prompt (one forward per choice)."""
        n = len(self.tok(prompt).input_ids)
        scores = []
        with self.lock, self.torch.no_grad():
            for c in choices:
                ids = self._ids(prompt + c)
                lp = self.torch.log_softmax(self.model(ids).logits[0, :-1].float(), -1)
                tgt = ids[0, 1:]
                picked = lp.gather(1, tgt.unsqueeze(1)).squeeze(1)[max(n - 1, 0):]
                scores.append(float(picked.mean()) if len(picked) else float("-inf"))
        best = max(range(len(choices)), key=scores.__getitem__)
        return ChoicesDecision(choices[best], {"normalized_prompt_logprobs": scores})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServerBackend(_ChatTemplateOf, BaseBackend):
    """llama.cpp's server with `slots` parallel slots (continuous batching, prompt cache)."""

    def __init__(self, binary: str, gguf_path, slots: int = 8, threads: int | None = None,
                 ctx_per_slot: int = 2048):
        super().__init__()
        self._init_template(gguf_path)
        self.slots = slots
        self.cmd = [binary, "-m", str(gguf_path), "-np", str(slots),
                    "-c", str(slots * ctx_per_slot), "--cont-batching"]
        if threads:
            self.cmd += ["-t", str(threads)]
        self.cached = self.evaluated = 0
        self.lock = threading.Lock()
        self._launch()

    def _launch(self) -> None:
        """Start a server process, wait for /health, then warm it with one short request that
        shares nothing with the workloads."""
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = self.cmd + ["--port", str(port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if json.loads(r.read()).get("status") == "ok":
                        break
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited ({self.proc.returncode}): {cmd}")
            time.sleep(0.2)
        else:
            raise RuntimeError("llama-server did not become healthy")
        self._complete({"prompt": "Hello", "n_predict": 4, "temperature": 0.0,
                        "cache_prompt": False})

    def _complete(self, body: dict) -> dict:
        req = urllib.request.Request(self.url + "/completion", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            out = json.loads(r.read())
        t = out.get("timings", {})
        with self.lock:
            self.cached += t.get("cache_n", 0)
            self.evaluated += t.get("prompt_n", 0)
        return out

    def generate(self, prompt, params):
        sp, _ = params.to_request()
        stops = _stops(params)
        out = self._complete({"prompt": prompt, "n_predict": sp.get("max_new_tokens", 128),
                              "temperature": 0.0, "stop": stops, "cache_prompt": True})
        text = _cut(out["content"], stops) + _closing(params)
        meta = {"prompt_tokens": out.get("tokens_evaluated", 0),
                "completion_tokens": out.get("tokens_predicted", 0)}
        self.token_usage.add(meta)
        return text, meta

    def select(self, prompt, choices, temperature, choices_method):
        grammar = "root ::= " + " | ".join(json.dumps(c) for c in choices)
        out = self._complete({"prompt": prompt, "n_predict": 64, "temperature": 0.0,
                              "grammar": grammar, "cache_prompt": True})
        text = out["content"]
        best = next((c for c in choices if text.startswith(c) or c.startswith(text)),
                    choices[0])
        return ChoicesDecision(best, {"content": text})

    def hit_rate(self) -> float:
        return self.cached / max(1, self.cached + self.evaluated)

    def flush_cache(self) -> None:
        """Start over from a fresh server process (between repeated runs: each starts cold).
        Erasing the slots is not enough: the server also keeps finished prompts in a RAM
        prompt cache (`--cache-ram`), which would let a repeat reuse the previous run's
        prompts whole."""
        self.shutdown()
        self._launch()

    def shutdown(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class LlamaCppPythonBackend(_ChatTemplateOf, BaseBackend):
    """llama.cpp through its Python binding (`llama-cpp-python`): one `Llama`, one call at a
    time (it is not thread-safe), its prompt cache reusing the previous call's prefix."""

    def __init__(self, gguf_path, n_ctx: int = 4096):
        super().__init__()
        import llama_cpp

        self.llama_cpp = llama_cpp
        self._init_template(gguf_path)
        self.llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, verbose=False)
        self.lock = threading.Lock()
        self.llm.create_completion("Hello", max_tokens=4, temperature=0.0)  # warm up

    def flush_cache(self) -> None:
        """Forget the previous call's tokens (its prefix reuse), so a repeat starts cold."""
        with self.lock:
            self.llm.reset()

    def generate(self, prompt, params):
        sp, _ = params.to_request()
        stops = _stops(params)
        with self.lock:
            out = self.llm.create_completion(prompt, max_tokens=sp.get("max_new_tokens", 128),
                                             temperature=0.0, stop=stops or None)
        text = _cut(out["choices"][0]["text"], stops) + _closing(params)
        meta = {"prompt_tokens": out["usage"]["prompt_tokens"],
                "completion_tokens": out["usage"]["completion_tokens"]}
        self.token_usage.add(meta)
        return text, meta

    def select(self, prompt, choices, temperature, choices_method):
        grammar = self.llama_cpp.LlamaGrammar.from_string(
            "root ::= " + " | ".join(json.dumps(c) for c in choices), verbose=False)
        with self.lock:
            out = self.llm.create_completion(prompt, max_tokens=64, temperature=0.0,
                                             grammar=grammar)
        text = out["choices"][0]["text"]
        best = next((c for c in choices if text.startswith(c) or c.startswith(text)),
                    choices[0])
        return ChoicesDecision(best, {"content": text})
