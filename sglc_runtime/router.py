"""Data parallelism: N engine processes behind a cache-aware router (`Engine(dp_size=N)`,
`sglc serve --dp N`).

The router keeps, per replica, an approximate copy of what that replica's radix cache holds (a
token-id trie of the prompts sent there and of finished sequences), and sends a request to the
replica holding its longest prefix, as SGLang's router does on text. Load comes first when it is
unbalanced (in-flight requests: max - min > `balance_abs` and max > `balance_rel` * min), and a
request with no good match (under `match_threshold` of its tokens, or under `min_match_tokens`:
a short shared start saves less than an unbalanced load costs) goes to the least loaded one.
Successive calls of a program and the branches of a fork share their prefix, so they stay on
one replica. A replica that dies fails its requests in flight with `EngineDiedError`; later
requests go to the replicas still alive."""

from __future__ import annotations

import itertools
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from .errors import EngineDiedError
from .request import Req

POLICIES = ("cache_aware", "round_robin", "random")


class PrefixIndex:
    """A token-id trie of sequences (nested dicts), cleared when it grows past `max_tokens`."""

    def __init__(self, max_tokens: int = 200_000):
        self.root: dict = {}
        self.size = 0
        self.max_tokens = max_tokens

    def match(self, ids: list[int]) -> int:
        node, n = self.root, 0
        for t in ids:
            node = node.get(t)
            if node is None:
                break
            n += 1
        return n

    def insert(self, ids: list[int]) -> None:
        node = self.root
        for t in ids:
            child = node.get(t)
            if child is None:
                child = node[t] = {}
                self.size += 1
            node = child
        if self.size > self.max_tokens:  # approximate, like the cache it mirrors: start over
            self.root, self.size = {}, 0


class Router:
    """Chooses a replica per request; pure logic (tested without engines)."""

    def __init__(self, num_replicas: int, policy: str = "cache_aware", balance_abs: int = 8,
                 balance_rel: float = 1.5, match_threshold: float = 0.5,
                 min_match_tokens: int = 32, seed: int = 0):
        if policy not in POLICIES:
            raise ValueError(f"router policy must be one of {', '.join(POLICIES)}, got "
                             f"{policy!r}")
        self.policy = policy
        self.indexes = [PrefixIndex() for _ in range(num_replicas)]
        self.balance_abs, self.balance_rel = balance_abs, balance_rel
        self.match_threshold = match_threshold
        self.min_match_tokens = min_match_tokens
        self._rr = itertools.count()
        self._rng = random.Random(seed)

    def choose(self, ids: list[int], loads: list[int], alive: list[bool]) -> int:
        live = [i for i, ok in enumerate(alive) if ok]
        if not live:
            raise EngineDiedError("every engine replica has died")
        if self.policy == "round_robin":
            i = live[next(self._rr) % len(live)]
        elif self.policy == "random":
            i = self._rng.choice(live)
        else:
            i = self._cache_aware(ids, loads, live)
        self.indexes[i].insert(ids)
        return i

    def _cache_aware(self, ids: list[int], loads: list[int], live: list[int]) -> int:
        least = min(live, key=lambda i: (loads[i], self.indexes[i].size))
        lo, hi = loads[least], max(loads[i] for i in live)
        if hi - lo > self.balance_abs and hi > self.balance_rel * lo:
            return least
        matched = {i: self.indexes[i].match(ids) for i in live}
        best = max(live, key=lambda i: (matched[i], -loads[i]))
        m = matched[best]
        if m >= self.min_match_tokens and m >= self.match_threshold * len(ids):
            return best
        return least

    def finished(self, replica: int, ids: list[int]) -> None:
        """A sequence finished on `replica`: its cache now holds prompt and output."""
        self.indexes[replica].insert(ids)


class DataParallelDriver:
    """N `ProcessDriver` replicas (1/N of the cores each) behind a `Router`."""

    def __init__(self, config, dp_size: int, policy: str = "cache_aware"):
        from .engine_process import ProcessDriver

        threads = config.num_threads or max(1, (os.cpu_count() or 1) // dp_size)
        cfg = replace(config, num_threads=threads)
        with ThreadPoolExecutor(dp_size) as pool:  # the replicas load side by side
            futures = [pool.submit(ProcessDriver, cfg, f"engine replica {i}")
                       for i in range(dp_size)]
            self.replicas = [f.result() for f in futures]
        first = self.replicas[0]
        self.tokenizer, self.eos_ids = first.tokenizer, first.eos_ids
        self.context_length, self.max_total_tokens = first.context_length, first.max_total_tokens
        self.pid = [r.pid for r in self.replicas]
        self.router = Router(dp_size, policy)
        self.loads = [0] * dp_size
        self.owner: dict[int, int] = {}
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return any(r.alive for r in self.replicas)

    def submit(self, reqs: list[Req]) -> None:
        groups: dict[int, list[Req]] = {}
        with self._lock:
            alive = [r.alive for r in self.replicas]
            for req in reqs:
                i = self.router.choose(req.input_ids, self.loads, alive)
                self.loads[i] += 1
                self.owner[req.rid] = i
                req.on_update = self._tracked(req.on_update, i)
                groups.setdefault(i, []).append(req)
        for i, group in groups.items():
            self.replicas[i].submit(group)

    def _tracked(self, callback, replica: int):
        def on_update(req: Req) -> None:
            if req.finished:
                with self._lock:
                    self.loads[replica] -= 1
                    self.owner.pop(req.rid, None)
                    if req.error is None:
                        self.router.finished(replica, req.input_ids + req.output_ids)
            if callback is not None:
                callback(req)
        return on_update

    def abort(self, req: Req) -> None:
        i = self.owner.get(req.rid)
        if i is not None:
            self.replicas[i].abort(req)

    def call(self, name: str, timeout: float = 60.0) -> Any:
        results = [r.call(name, timeout) for r in self.replicas if r.alive]
        if name == "stats":
            total = {k: sum(s[k] for s in results) for k in results[0]}
            return {**total, "replicas": results, "loads": list(self.loads)}
        return all(results)

    def shutdown(self, timeout: float = 30.0) -> None:
        for r in self.replicas:
            r.shutdown(timeout)
