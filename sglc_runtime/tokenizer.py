"""Tokenizer: byte-level BPE from GGUF metadata or tokenizer.json, chat template, detokenizing."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import jinja2
import jinja2.sandbox
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from .errors import InvalidRequestError, ModelLoadError

_GGUF_CONTROL = 3  # llama.cpp token_type for control (special) tokens
_GGUF_USER_DEFINED = 4


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


class Tokenizer:
    """Wraps a `tokenizers.Tokenizer` with the model's special ids and chat template."""

    def __init__(self, tk: HFTokenizer, eos_token_ids: tuple[int, ...], bos_token_id: int | None,
                 chat_template: str | None, add_bos: bool = False):
        self.tk = tk
        self.eos_token_ids = tuple(eos_token_ids)
        self.bos_token_id = bos_token_id
        self.chat_template = chat_template
        self.add_bos = add_bos
        self.vocab_size = tk.get_vocab_size(with_added_tokens=True)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, reader) -> Tokenizer:
        """Build the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata."""

        def get(key, default=None):
            f = reader.fields.get(key)
            return default if f is None else f.contents()

        kind = get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ModelLoadError(f"GGUF tokenizer model {kind!r} is not supported (byte-level "
                                 "BPE 'gpt2' only)")
        tokens = get("tokenizer.ggml.tokens")
        types = get("tokenizer.ggml.token_type") or [1] * len(tokens)
        merges = [tuple(m.split(" ", 1)) for m in get("tokenizer.ggml.merges")]
        vocab = {t: i for i, t in enumerate(tokens)}
        tk = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if get("tokenizer.ggml.pre") in ("smollm", "qwen2", "llama3", "llama-bpe", "deepseek-llm"):
            pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
        tk.pre_tokenizer = pre_tokenizers.Sequence(pre)
        tk.decoder = decoders.ByteLevel()
        specials = [AddedToken(t, special=True, normalized=False)
                    for t, ty in zip(tokens, types) if ty in (_GGUF_CONTROL, _GGUF_USER_DEFINED)]
        tk.add_special_tokens(specials)
        eos = get("tokenizer.ggml.eos_token_id")
        eos_ids = [] if eos is None else [int(eos)]
        eot = vocab.get("<|im_end|>")
        if eot is not None and eot not in eos_ids:
            eos_ids.append(eot)
        return cls(tk, tuple(eos_ids), get("tokenizer.ggml.bos_token_id"),
                   get("tokenizer.chat_template"), bool(get("tokenizer.ggml.add_bos_token", False)))

    @classmethod
    def from_folder(cls, folder: Path, eos_token_ids: tuple[int, ...], bos_token_id) -> Tokenizer:
        """Load tokenizer.json (+ tokenizer_config.json's chat template) from a HF folder."""
        if not (folder / "tokenizer.json").exists():
            raise ModelLoadError(f"{folder} has no tokenizer.json")
        tk = HFTokenizer.from_file(str(folder / "tokenizer.json"))
        template, add_bos = None, False
        cfg_path = folder / "tokenizer_config.json"
        if cfg_path.exists():
            cfg = json.loads(cfg_path.read_text())
            template = cfg.get("chat_template")
            add_bos = bool(cfg.get("add_bos_token", False))
            eos_tok = cfg.get("eos_token")
            if isinstance(eos_tok, dict):
                eos_tok = eos_tok.get("content")
            if eos_tok and tk.token_to_id(eos_tok) is not None:
                eos_token_ids = tuple(dict.fromkeys((*eos_token_ids, tk.token_to_id(eos_tok))))
        return cls(tk, eos_token_ids, bos_token_id, template, add_bos)

    # ---- encode / decode ----------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.tk.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def bos_token(self) -> str:
        return self.tk.id_to_token(self.bos_token_id) if self.bos_token_id is not None else ""

    @cached_property
    def special_ids(self) -> frozenset[int]:
        return frozenset(t.id if hasattr(t, "id") else i
                         for i, t in self.tk.get_added_tokens_decoder().items())

    @cached_property
    def token_bytes(self) -> list[bytes]:
        """Raw bytes of every token id (special tokens map to b''), for constrained decoding."""
        out = [b""] * self.vocab_size
        for tok, i in self.tk.get_vocab(with_added_tokens=True).items():
            if i in self.special_ids or i >= self.vocab_size:
                continue
            try:
                out[i] = bytes(_UNICODE_TO_BYTE[c] for c in tok)
            except KeyError:  # not byte-level (e.g. a sentencepiece vocab): use its text
                out[i] = tok.replace("\u2581", " ").encode()
        return out

    # ---- chat template ------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render OpenAI-style messages with the model's own jinja2 chat template."""
        if not self.chat_template:
            raise InvalidRequestError("this model has no chat template")
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(msg):
            raise InvalidRequestError(f"chat template: {msg}")

        env.globals["raise_exception"] = raise_exception
        tmpl = env.from_string(self.chat_template)
        eos = self.tk.id_to_token(self.eos_token_ids[0]) if self.eos_token_ids else ""
        return tmpl.render(messages=messages, add_generation_prompt=add_generation_prompt,
                           bos_token=self.bos_token, eos_token=eos)


class IncrementalDecoder:
    """Turns a growing list of token ids into text, holding back incomplete UTF-8 characters."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""

    def step(self, ids: list[int]) -> str:
        """Append the text newly made complete by `ids` (all output ids so far); return it."""
        prefix = self.tok.decode(ids[self.prefix_offset:self.read_offset], self.skip)
        full = self.tok.decode(ids[self.prefix_offset:], self.skip)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new = full[len(prefix):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(ids)
            self.text += new
            return new
        return ""

    def flush(self, ids: list[int]) -> str:
        """Text of all ids, including a trailing incomplete character; makes `text` final."""
        full = self.tok.decode(ids, self.skip)
        new = full[len(self.text):] if full.startswith(self.text) else ""
        self.text = full
        return new


def whole_chars(data: bytes) -> bytes:
    """`data` without a trailing, incomplete UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 != 0x80:  # the last character's first byte
            need = 1 if b < 0x80 else 2 if b >> 5 == 6 else 3 if b >> 4 == 14 else 4
            return data if need <= back else data[:-back]
    return data
