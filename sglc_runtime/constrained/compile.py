"""Compile a constraint (regex, JSON schema, dtype or choices) into a cached `TokenFSM`.

`compile_regex` caches per (pattern, tokenizer fingerprint): in memory (LRU, the same object is
returned) and on disk under `cache_dir() / "fsm"` as an `.npz` keyed by a sha256, so a fresh
process loads a built index instead of rebuilding it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict

import numpy as np

from ..errors import ConstraintError
from ..model_source import cache_dir
from .dtypes import dtype_regex
from .json_schema import json_schema_to_regex
from .regex_fsm import ByteDFA, regex_to_byte_dfa
from .token_fsm import TokenFSM
from .token_index import TokenIndex, build_token_index, vocab_trie

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 1  # bump when the on-disk layout or the DFA construction changes
_MAX_IN_MEMORY = 128
_MEMORY: OrderedDict[tuple[str, str], TokenFSM] = OrderedDict()
_LOCK = threading.Lock()


def compile_regex(pattern: str, tokenizer, disk_cache: bool = True) -> TokenFSM:
    """The TokenFSM of `pattern` (full match) over `tokenizer`'s vocabulary, cached.

    `tokenizer` needs `token_bytes`, `eos_token_ids` and `vocab_size`."""
    trie = vocab_trie(tokenizer)
    key = (pattern, trie.fingerprint)
    with _LOCK:
        fsm = _MEMORY.get(key)
        if fsm is not None:
            _MEMORY.move_to_end(key)
            return fsm
    path = _disk_path(pattern, trie.fingerprint)
    fsm = _load(path, pattern, trie) if disk_cache else None
    if fsm is None:
        dfa = regex_to_byte_dfa(pattern)
        fsm = TokenFSM(dfa, build_token_index(dfa, trie), trie.vocab_size, trie.eos_token_ids,
                       pattern)
        if disk_cache:
            _save(path, fsm)
    with _LOCK:
        fsm = _MEMORY.setdefault(key, fsm)  # another thread may have won the race
        while len(_MEMORY) > _MAX_IN_MEMORY:
            _MEMORY.popitem(last=False)
    return fsm


def clear_memory_cache() -> None:
    """Forget every in-memory TokenFSM (the disk cache is kept)."""
    with _LOCK:
        _MEMORY.clear()


def build_constraint(tokenizer, regex: str | None = None, json_schema=None, dtype=None,
                     choices: list[str] | None = None, grammar: str | None = None):
    """The constraint for whichever one is given, or None if none is: a shared TokenFSM for a
    regex, JSON schema, dtype or choices (an alternation of the escaped strings); a fresh
    GrammarConstraint (one request's own) for a context-free grammar."""
    given = {k: v for k, v in (("regex", regex), ("json_schema", json_schema),
                               ("dtype", dtype), ("choices", choices), ("grammar", grammar))
             if v is not None}
    if not given:
        return None
    if len(given) > 1:
        raise ConstraintError(f"give at most one of regex/json_schema/dtype/choices/grammar, "
                              f"got {' and '.join(given)}")
    if grammar is not None:
        from .grammar import compile_grammar

        return compile_grammar(grammar, tokenizer)
    if json_schema is not None:
        regex = json_schema_to_regex(json_schema)
    elif dtype is not None:
        regex = dtype_regex(dtype)
    elif choices is not None:
        if isinstance(choices, str) or not choices or \
                not all(isinstance(c, str) for c in choices):
            raise ConstraintError(f"choices must be a non-empty list of str, got {choices!r}")
        regex = "(" + "|".join(re.escape(c) for c in choices) + ")"
    return compile_regex(regex, tokenizer)


# ---- disk cache ---------------------------------------------------------------------------
def _disk_path(pattern: str, fingerprint: str):
    digest = hashlib.sha256(f"{_FORMAT_VERSION}\0{fingerprint}\0{pattern}".encode()).hexdigest()
    return cache_dir() / "fsm" / f"{digest}.npz"


def _save(path, fsm: TokenFSM) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, pattern=np.array(fsm.pattern), trans=fsm.dfa.trans,
                     accepting=fsm.dfa.accepting, char_boundary=fsm.dfa.char_boundary,
                     ptr=fsm.index.ptr, tokens=fsm.index.tokens,
                     next_states=fsm.index.next_states)
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("could not write the FSM cache file %s: %s", path, e)


def _load(path, pattern: str, trie) -> TokenFSM | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["pattern"]) != pattern:
                logger.warning("FSM cache file %s holds another pattern; rebuilding", path)
                return None
            dfa = ByteDFA(z["trans"], z["accepting"], z["char_boundary"])
            index = TokenIndex(z["ptr"], z["tokens"], z["next_states"])
    except (OSError, ValueError, KeyError) as e:
        logger.warning("unreadable FSM cache file %s (%s); rebuilding", path, e)
        return None
    return TokenFSM(dfa, index, trie.vocab_size, trie.eos_token_ids, pattern)
