"""One API call with `n=` for the branches of a fork that ask the same continuation.

`forks += gen(...)` (or a role holding gens) on a backend with `supports_n` gives every branch a
`SglForkGen` that shares one `ForkBatch` per gen. Each branch's worker hands its prompt in and
waits; when every branch has arrived (or withdrawn, after an error), the last one makes one
`backend.generate_n` call per distinct (prompt, params) and hands out the samples. Branches
whose text differs get calls of their own, so the result is what separate calls would give."""

from __future__ import annotations

import threading

from .primitives import SglGen


class ForkBatch:
    """The meeting point of one gen across `size` fork branches."""

    def __init__(self, size: int):
        self.size = size
        self.cond = threading.Condition()
        self.requests: dict[int, tuple] = {}
        self.withdrawn: set[int] = set()
        self.results: dict[int, tuple | BaseException] = {}
        self.started = False

    def generate(self, backend, index: int, prompt, params) -> tuple[str, dict]:
        """Branch `index`'s (text, meta_info); blocks until the batch's call returns."""
        with self.cond:
            self.requests[index] = (prompt, params)
        self._run_if_complete(backend)
        with self.cond:
            self.cond.wait_for(lambda: index in self.results)
            result = self.results[index]
        if isinstance(result, BaseException):
            raise result
        return result

    def withdraw(self, backend, index: int) -> None:
        """Branch `index` will not ask (it failed before this gen)."""
        with self.cond:
            if index in self.requests or index in self.withdrawn:
                return
            self.withdrawn.add(index)
        self._run_if_complete(backend)

    def _run_if_complete(self, backend) -> None:
        with self.cond:
            if self.started or len(self.requests) + len(self.withdrawn) < self.size:
                return
            self.started = True
            requests = dict(self.requests)
        groups: dict[tuple, list[int]] = {}
        for i, (prompt, params) in sorted(requests.items()):
            groups.setdefault((repr(prompt), repr(params)), []).append(i)
        results: dict[int, tuple | BaseException] = {}
        for idxs in groups.values():
            prompt, params = requests[idxs[0]]
            try:
                if len(idxs) == 1:
                    outs = [backend.generate(prompt, params)]
                else:
                    outs = backend.generate_n(prompt, params, len(idxs))
                    backend.token_usage.num_calls_saved += len(idxs) - 1
                results.update(zip(idxs, outs))
            except BaseException as e:  # noqa: BLE001 - each waiting branch raises it
                results.update((i, e) for i in idxs)
        with self.cond:
            self.results.update(results)
            self.cond.notify_all()


class SglForkGen(SglGen):
    """Branch `index`'s share of a gen appended to a whole fork group."""

    def __init__(self, gen: SglGen, batch: ForkBatch, index: int):
        super().__init__(gen.name, gen.sampling_params)
        self.batch = batch
        self.index = index

    def __repr__(self) -> str:
        return f"ForkGen({self.name!r}, branch {self.index} of {self.batch.size})"
