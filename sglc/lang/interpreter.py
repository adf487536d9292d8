"""The eager interpreter: a `StreamExecutor` runs one program state's expressions in order on a
worker thread, so `s += gen(...)` returns at once and states (forks, batch programs) generate
concurrently (`runner.py` drives whole programs)."""

from __future__ import annotations

import logging
import queue
import threading

from .fork_batch import SglForkGen
from .primitives import (
    ProgramError,
    SglCommitLazy,
    SglConcateAndAppend,
    SglConstantText,
    SglExpr,
    SglExprList,
    SglGen,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    SglSeparateReasoning,
    SglVarScopeBegin,
    SglVarScopeEnd,
    var_names,
)
from .snapshot import Snapshot, apply, join, sampling_params
from .speculative import Speculation

logger = logging.getLogger(__name__)


class StreamExecutor:
    """Executes a state's expressions against a backend. Its state is one `Snapshot`
    (`snapshot.py`), replaced at every step; `text_`, `variables`, `messages_` ... read it.
    The snapshot and the first error are guarded by `cond`, which is notified on every change
    (streaming readers wait on it)."""

    def __init__(self, backend, arguments: dict, default_params: SglSamplingParams,
                 chat_template=None, stream: bool = False,
                 num_api_spec_tokens: int | None = None, use_thread: bool = True,
                 state: Snapshot | None = None):
        self.backend = backend
        self.arguments = arguments
        self.default_params = default_params
        self.stream = stream
        self.num_api_spec_tokens = num_api_spec_tokens
        self.spec = (Speculation(num_api_spec_tokens) if num_api_spec_tokens and
                     getattr(backend, "speculative_execution", False) else None)
        self.chat_template = chat_template or backend.get_chat_template()

        self.state = state if state is not None else Snapshot()
        self.variable_event: dict[str, threading.Event] = {}
        self._pending: dict[str, int] = {}  # writes of each name submitted but not yet done
        self.stream_chunks: dict[str, list[tuple[str, dict]]] = {}  # streamed gens, per chunk
        self.error_: BaseException | None = None
        self.is_finished = False
        self.cond = threading.Condition()
        self._stop_ids: tuple[int, ...] | None = None
        self._ended = False
        self.program_thread: threading.Thread | None = None  # runs a streamed program

        self.use_thread = use_thread
        if use_thread:
            self.queue: queue.Queue = queue.Queue()
            self.worker = threading.Thread(target=self._worker, daemon=True,
                                           name="sglc-program")
            self.worker.start()

    # ---- the snapshot's fields, read-only ---------------------------------------------------
    @property
    def text_(self) -> str:
        return self.state.text

    @property
    def variables(self):
        return self.state.variables

    @property
    def meta_info(self):
        return self.state.meta_info

    @property
    def messages_(self) -> tuple[dict, ...]:
        return self.state.messages

    @property
    def cur_role(self) -> str | None:
        return self.state.role

    @property
    def fork_start_text_pos(self) -> int | None:
        return self.state.fork_start

    def _update(self, step) -> None:
        """Replace the state by `step(state)`, atomically: the program thread (set_var, join)
        and the worker both change it."""
        with self.cond:
            self.state = step(self.state)
            self.cond.notify_all()

    # ---- called from the program's thread -----------------------------------------------------
    def submit(self, expr: SglExpr, loc: str | None = None) -> None:
        if self._ended:
            raise ProgramError(f"cannot append {expr!r}: this state has ended (a joined fork, "
                               "or a program that returned)")
        with self.cond:
            for name in var_names(expr):
                # a reader waits for the last pending write of a name, not the first
                self._pending[name] = self._pending.get(name, 0) + 1
                ev = self.variable_event.get(name)
                if ev is None or ev.is_set():
                    self.variable_event[name] = threading.Event()
        if self.use_thread:
            self.queue.put((expr, loc))
        else:
            self.apply(expr)

    def sync(self) -> None:
        """Wait for everything appended so far (for a streamed program: for all of it)."""
        t = self.program_thread
        if t is not None and t is not threading.current_thread():
            t.join()
        if self.use_thread:
            self.queue.join()

    def end(self) -> None:
        """No more expressions will come; the worker finishes the queued ones and exits."""
        if self.use_thread and not self._ended:
            self._ended = True
            self.queue.put(None)
        self.backend.end_program(self)

    def get_var(self, name: str):
        ev = self.variable_event.get(name)
        if ev is not None:
            ev.wait()
        with self.cond:
            if name not in self.state.variables and self.error_ is not None:
                raise self.error_
            return self.state.get_var(name)

    def set_var(self, name: str, value) -> None:
        self._update(lambda st: st.with_var(name, value))

    def get_meta_info(self, name: str):
        ev = self.variable_event.get(name)
        if ev is not None:
            ev.wait()
        return self.state.meta_info.get(name)

    def fail(self, err: BaseException) -> None:
        """Record the first error; wake everyone waiting on a variable (they raise it)."""
        with self.cond:
            if self.error_ is None:
                self.error_ = err
            for ev in self.variable_event.values():
                ev.set()
            self.cond.notify_all()

    def fork(self, size: int) -> list[StreamExecutor]:
        """Children start from this state's snapshot. With more than one child the text so far
        is committed first, so all of them hit the cache."""
        size = int(size)
        if size < 1:
            raise ProgramError(f"fork({size}): the number of branches must be >= 1")
        if size > 1:
            self.submit(SglCommitLazy())
        self.sync()
        if self.error_ is not None:
            raise self.error_
        children = [StreamExecutor(self.backend, self.arguments, self.default_params,
                                   self.chat_template, self.stream, None, self.use_thread,
                                   self.state.fork_child())
                    for _ in range(size)]  # (fork branches have no speculation)
        for c in children:
            c._stop_ids = self._stop_ids
        return children

    def gather(self, children: list[StreamExecutor], mode: str) -> None:
        """Join finished fork branches into this state (`snapshot.join`)."""
        self._update(lambda st: join(st, [c.state for c in children], mode))

    def apply(self, expr: SglExpr) -> None:
        """Execute `expr` (model calls too) on this state now, on the calling thread."""
        self._execute(expr)

    # ---- the worker -------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                self.queue.task_done()
                break
            expr, loc = item
            if self.error_ is None:
                try:
                    self._execute(expr)
                except BaseException as e:  # noqa: BLE001 - recorded, re-raised to the caller
                    if loc and hasattr(e, "add_note"):
                        e.add_note(f"while running {expr!r} appended at {loc}")
                    self._withdraw_fork_gens(expr)  # its siblings must not wait for it
                    self.fail(e)
            else:  # after an error the rest is skipped; readers of its variables get the error
                self._withdraw_fork_gens(expr)
                self.fail(self.error_)
            self.queue.task_done()
        with self.cond:
            self.is_finished = True
            self.cond.notify_all()

    def _withdraw_fork_gens(self, expr: SglExpr) -> None:
        for x in expr.flatten():
            if isinstance(x, SglForkGen):
                x.batch.withdraw(self.backend, x.index)

    def _execute(self, expr: SglExpr) -> None:
        if isinstance(expr, SglExprList):
            for x in expr.expr_list:
                self._execute(x)
        elif isinstance(expr, SglConstantText):
            self._execute_text(expr.value)
        elif isinstance(expr, SglGen):
            self._execute_gen(expr)
        elif isinstance(expr, SglSelect):
            self._execute_select(expr)
        elif isinstance(expr, SglRoleBegin):
            if self.spec is not None:
                self.spec.drop()
            self._update(lambda st: apply(st, expr, self.chat_template))
        elif isinstance(expr, SglRoleEnd):
            self._execute_role_end(expr)
        elif isinstance(expr, SglCommitLazy):
            if self.state.text:
                self.backend.cache_prefix(self.state.text)
        elif isinstance(expr, SglConcateAndAppend):
            self._execute_concate_and_append(expr)
        elif isinstance(expr, (SglVarScopeBegin, SglVarScopeEnd, SglSeparateReasoning)):
            self._update(lambda st: apply(st, expr, self.chat_template))
            if isinstance(expr, SglVarScopeEnd):  # (a scope's begin stores its offset only)
                self._done_writing(expr.name)
            elif isinstance(expr, SglSeparateReasoning):
                for name in var_names(expr):
                    self._done_writing(name)
        else:
            raise ProgramError(f"cannot execute {expr!r}")

    def _execute_text(self, value: str) -> None:
        if self.spec is not None:
            if self._chat_spec_turn():
                self.spec.defer_text(value)
                return
            self.spec.on_text(value)
        self._update(lambda st: st.filled(value))

    def _chat_spec_turn(self) -> bool:
        """Whether this state collects an assistant turn for one speculative chat call."""
        return (self.spec is not None and self.backend.is_chat_model
                and self.state.role == "assistant")

    def _prompt(self, primitive: str = "gen"):
        """What the backend continues: the text so far, or for a chat-model backend the messages
        so far (the gen must open an assistant turn)."""
        st = self.state
        if not self.backend.is_chat_model:
            return st.text
        if st.role != "assistant" or st.text[st.role_begin:].strip():
            raise ProgramError(
                f"{primitive} on the chat model {self.backend!r} must come right after "
                "sgl.assistant (as in s += sgl.assistant(sgl.gen('answer'))), or the program "
                "needs @function(num_api_spec_tokens=N) to fill a written turn")
        return list(st.messages)

    def _generated(self, name: str | None, text: str, meta=None, shown=None) -> None:
        """A model call produced `text` for variable `name` (`shown`: the text appended, when
        it is not `text`); wake its readers."""
        with self.cond:
            self.state = self.state.filled(text if shown is None else shown).with_var(
                name, text, meta)
            self._done_writing(name)
            self.cond.notify_all()

    def _done_writing(self, name: str | None) -> None:
        """One submitted write of `name` is done; after the last one its readers wake."""
        if name is None:
            return
        with self.cond:
            left = self._pending.get(name, 0) - 1
            self._pending[name] = max(left, 0)
            if left <= 0:
                self.variable_event.setdefault(name, threading.Event()).set()
            self.cond.notify_all()

    def stop_token_ids(self, stop_strs: tuple[str, ...]) -> tuple[int, ...]:
        if self._stop_ids is None:
            self._stop_ids = self.backend.stop_token_ids(stop_strs)
        return self._stop_ids

    def resolve_sampling_params(self, params: SglSamplingParams) -> SglSamplingParams:
        """The program's defaults overlaid with the gen's own (`snapshot.sampling_params`)."""
        return sampling_params(self.state, self.default_params, params, self.chat_template,
                               self.stop_token_ids)

    def _execute_gen(self, expr: SglGen) -> None:
        if isinstance(expr, SglForkGen):  # fork branches have no speculation
            try:
                params = self.resolve_sampling_params(expr.sampling_params)
                prompt = self._prompt()
            except BaseException:
                expr.batch.withdraw(self.backend, expr.index)
                raise
            comp, meta = expr.batch.generate(self.backend, expr.index, prompt, params)
            return self._generated(expr.name, comp, meta)
        params = self.resolve_sampling_params(expr.sampling_params)
        if self._chat_spec_turn():
            self.spec.defer_gen(expr, params)
            return
        if self.spec is not None:
            out = self.spec.completion_gen(self.backend, self.state.text, params)
            if out is not None:
                return self._generated(expr.name, out[0], out[1])
        prompt = self._prompt()
        if not self.stream:
            comp, meta = self.backend.generate(prompt, params)
            # n > 1: the variable holds every sample, the text shows the first
            return self._generated(expr.name, comp, meta,
                                   comp[0] if isinstance(comp, list) else None)
        name, meta, text = expr.name, {}, ""
        with self.cond:
            self.state = self.state.with_var(name, "")
        for piece, meta in self.backend.generate_stream(prompt, params):
            text += piece
            with self.cond:
                self.state = self.state.filled(piece).with_var(name, text, meta)
                if piece and name is not None:
                    self.stream_chunks.setdefault(name, []).append((piece, meta))
                self.cond.notify_all()
        with self.cond:
            self.state = self.state.with_var(name, text, meta)
            self._done_writing(name)

    def _execute_select(self, expr: SglSelect) -> None:
        if self.spec is not None:
            self.spec.drop()
        decision = self.backend.select(self.state.text, expr.choices, expr.temperature,
                                       expr.choices_method)
        self._generated(expr.name, decision.decision, decision.meta_info)

    def _execute_role_end(self, expr: SglRoleEnd) -> None:
        if self.state.role != expr.role:
            raise ProgramError(f"role {expr.role!r} ends but the open role is "
                               f"{self.state.role!r}")
        if self._chat_spec_turn():
            for text, gen, meta in self.spec.finish_turn(self.backend, list(self.state.messages)):
                if gen is not None:
                    self._generated(gen.name, text, meta)
                else:
                    self._update(lambda st, t=text: st.filled(t))
        self._update(lambda st: apply(st, expr, self.chat_template))

    def _execute_concate_and_append(self, expr: SglConcateAndAppend) -> None:
        children = [state.stream_executor for state in expr.states]
        for child in children:
            child.sync()
            if child.error_ is not None:
                raise child.error_
        self.gather(children, "concate_and_append")
