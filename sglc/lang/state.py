"""`ProgramState` (the `s` a program appends to) and `ProgramStateGroup` (what `s.fork` gives)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .fork_batch import ForkBatch, SglForkGen
from .interpreter import StreamExecutor
from .primitives import (
    ProgramError,
    SglConcateAndAppend,
    SglExpr,
    SglExprList,
    SglGen,
    SglRoleBegin,
    SglRoleEnd,
    SglVarScopeBegin,
    SglVarScopeEnd,
    as_expr,
    caller_location,
)


class ProgramState:
    """The state of a running program: `s += expr` appends (and returns at once), `s["v"]`
    waits for variable `v`; `text()`, `messages()` and `error()` wait for the queued work."""

    def __init__(self, stream_executor: StreamExecutor):
        self.stream_executor = stream_executor
        self.ret_value = None

    def _append(self, expr, loc: str | None) -> None:
        self.stream_executor.submit(as_expr(expr), loc)

    def __iadd__(self, other) -> ProgramState:  # noqa: PYI034 - 3.10 has no typing.Self
        self._append(other, caller_location())
        return self

    # ---- roles and scopes ---------------------------------------------------------------------
    def _role_common(self, role: str, expr=None):
        if expr is not None:
            role_expr = SglExprList([SglRoleBegin(role), as_expr(expr), SglRoleEnd(role)])
            self._append(role_expr, caller_location())
            return role_expr

        @contextmanager
        def role_scope():
            self._append(SglRoleBegin(role), caller_location())
            yield
            self._append(SglRoleEnd(role), caller_location())

        return role_scope()

    def system(self, expr=None):
        """`s.system("...")` appends a system turn; `with s.system():` wraps appends in one."""
        return self._role_common("system", expr)

    def user(self, expr=None):
        return self._role_common("user", expr)

    def assistant(self, expr=None):
        return self._role_common("assistant", expr)

    @contextmanager
    def var_scope(self, name: str):
        """Everything appended inside the `with` block becomes variable `name`."""
        self._append(SglVarScopeBegin(name), caller_location())
        yield
        self._append(SglVarScopeEnd(name), caller_location())

    # ---- forks --------------------------------------------------------------------------------
    def fork(self, size: int = 1, position_ids_offset=None) -> ProgramStateGroup:
        """`size` copies of this state that run independently (and concurrently)."""
        children = self.stream_executor.fork(size)
        return ProgramStateGroup([ProgramState(c) for c in children], self)

    @contextmanager
    def copy(self, position_ids_offset=None):
        """`with s.copy() as c:` a one-branch fork, joined when the block ends."""
        group = self.fork(1)
        try:
            yield group[0]
        finally:
            group.join()

    # ---- reading ------------------------------------------------------------------------------
    def text(self) -> str:
        self.stream_executor.sync()
        return self.stream_executor.text_

    def messages(self) -> list[dict]:
        """The chat turns so far in OpenAI form: [{"role": ..., "content": ...}, ...]."""
        self.stream_executor.sync()
        return [dict(m) for m in self.stream_executor.messages_]

    def sync(self) -> None:
        self.stream_executor.sync()

    def error(self) -> BaseException | None:
        self.stream_executor.sync()
        return self.stream_executor.error_

    def get_var(self, name: str):
        return self.stream_executor.get_var(name)

    def set_var(self, name: str, value) -> None:
        self.stream_executor.set_var(name, value)

    def get_meta_info(self, name: str):
        """The engine's meta_info for gen `name` (token counts, finish_reason, logprobs), or
        the select's scores."""
        return self.stream_executor.get_meta_info(name)

    def __getitem__(self, name: str):
        return self.get_var(name)

    def __setitem__(self, name: str, value) -> None:
        self.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        exe = self.stream_executor
        return name in exe.variables or name in exe.variable_event

    # ---- streaming ----------------------------------------------------------------------------
    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """With `run(stream=True)`: the text (or variable `var_name`) piece by piece as it is
        generated; the pieces concatenate to the final value. Otherwise yields it once."""
        exe = self.stream_executor
        if not exe.stream:
            yield self.text() if var_name is None else self.get_var(var_name)
            return

        def current() -> str:
            if var_name is None:
                return exe.text_
            v = exe.variables.get(var_name, "")
            return v if isinstance(v, str) else ""

        def done() -> bool:
            if exe.is_finished or exe.error_ is not None:
                return True
            ev = exe.variable_event.get(var_name) if var_name is not None else None
            return ev is not None and ev.is_set()

        sent = 0
        while True:
            with exe.cond:
                exe.cond.wait_for(lambda n=sent: len(current()) > n or done())
                piece, finished = current()[sent:], done()
            sent += len(piece)
            if piece:
                yield piece
            if finished:
                with exe.cond:  # text appended between the last wait and `done`
                    rest = current()[sent:]
                if rest:
                    yield rest
                break
        if exe.error_ is not None:
            raise exe.error_

    def _chunks_iter(self, var_name: str) -> Iterator[tuple[str, dict]]:
        """(piece, meta_info) per streamed chunk of gen `var_name`, as the backend sent them."""
        exe = self.stream_executor
        i = 0
        while True:
            with exe.cond:
                exe.cond.wait_for(lambda i=i: len(exe.stream_chunks.get(var_name, ())) > i
                                  or exe.is_finished or exe.error_ is not None
                                  or (var_name in exe.variable_event
                                      and exe.variable_event[var_name].is_set()))
                chunks = exe.stream_chunks.get(var_name, [])[i:]
            if not chunks:
                break
            yield from chunks
            i += len(chunks)
        if exe.error_ is not None:
            raise exe.error_

    async def text_async_iter(self, var_name: str | None = None,
                              return_meta_data: bool = False):
        """`text_iter` for asyncio code (waits happen on a worker thread). With
        `return_meta_data` (and a streamed gen `var_name`) it yields (piece, meta_info) per
        chunk, meta_info holding that chunk's own logprob entries, as SGLang does."""
        loop = asyncio.get_running_loop()
        if return_meta_data and var_name is not None and self.stream_executor.stream:
            chunks = self._chunks_iter(var_name)
            end = object()
            while True:
                item = await loop.run_in_executor(None, next, chunks, end)
                if item is end:
                    return
                yield item
        it = self.text_iter(var_name)
        end = object()
        while True:
            piece = await loop.run_in_executor(None, next, it, end)
            if piece is end:
                return
            if return_meta_data:
                yield piece, self.stream_executor.meta_info.get(var_name)
            else:
                yield piece

    def __del__(self):
        exe = self.__dict__.get("stream_executor")
        if exe is not None:
            exe.end()

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"


class ProgramStateGroup:
    """The branches of a fork: `forks += expr` (or a list, or `lambda i: expr`) appends to
    each; `forks[i]` is a branch; `join()` gathers the branches' new variables as lists."""

    def __init__(self, states: list[ProgramState], src_state: ProgramState | None = None):
        self.states = states
        self.src_state = src_state

    def join(self, mode: str = "gather_variable") -> None:
        for child in self.states:  # a failed branch fails the program that forked it
            if child.error() is not None:
                raise child.stream_executor.error_
        if mode == "gather_variable":
            src = self.src_state.stream_executor
            src.sync()
            src.gather([child.stream_executor for child in self.states], mode)
        elif mode == "concate_and_append":
            self.src_state._append(SglConcateAndAppend(self.states), caller_location())
            self.src_state.sync()
        else:
            raise ProgramError(f"join(mode={mode!r}): mode must be 'gather_variable' or "
                               "'concate_and_append'")
        for child in self.states:
            child.stream_executor.end()

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value) -> None:
        if value is not self.states[i]:
            raise ProgramError("forks[i] = ... only takes back the same branch (forks[i] += x)")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self):
        return iter(self.states)

    def __iadd__(self, other) -> ProgramStateGroup:  # noqa: PYI034
        loc = caller_location()
        if isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ProgramError(f"appending {len(other)} items to {len(self.states)} forks")
            items = list(other)
        elif isinstance(other, (SglExpr, str)):
            items = _share_gens(as_expr(other), self.states)
        elif isinstance(other, Callable):
            items = [other(i) for i in range(len(self.states))]
        else:
            raise ProgramError(f"cannot append a {type(other).__name__} to forks")
        for state, item in zip(self.states, items):
            state._append(item, loc)
        return self


def _share_gens(expr: SglExpr, states: list[ProgramState]) -> list[SglExpr]:
    """The same expression for every branch; on a backend that samples n continuations in one
    call (`supports_n`), its gens become `SglForkGen`s sharing one `ForkBatch` each."""
    backend = states[0].stream_executor.backend if states else None
    parts = expr.flatten()
    if len(states) < 2 or not getattr(backend, "supports_n", False) or not any(
            isinstance(x, SglGen) for x in parts):
        return [expr] * len(states)
    batches = {k: ForkBatch(len(states)) for k, x in enumerate(parts) if isinstance(x, SglGen)}
    return [SglExprList([SglForkGen(x, batches[k], i) if k in batches else x
                         for k, x in enumerate(parts)]) for i in range(len(states))]
