"""The eager interpreter: a `StreamExecutor` runs one program state's expressions in order on a
worker thread, so `s += gen(...)` returns at once and states (forks, batch programs) generate
concurrently (`runner.py` drives whole programs)."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

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
    split_reasoning,
    var_names,
)
from .speculative import Speculation

logger = logging.getLogger(__name__)


class StreamExecutor:
    """Executes a state's expressions against a backend and holds its text, variables, chat
    messages and the first error. Everything it mutates is guarded by `cond`, which is notified
    on every change (streaming readers wait on it)."""

    def __init__(self, backend, arguments: dict, default_params: SglSamplingParams,
                 chat_template=None, stream: bool = False,
                 num_api_spec_tokens: int | None = None, use_thread: bool = True):
        self.backend = backend
        self.arguments = arguments
        self.default_params = default_params
        self.stream = stream
        self.num_api_spec_tokens = num_api_spec_tokens
        self.spec = (Speculation(num_api_spec_tokens) if num_api_spec_tokens and
                     getattr(backend, "speculative_execution", False) else None)
        self.chat_template = chat_template or backend.get_chat_template()

        self.text_ = ""
        self.variables: dict[str, Any] = {}
        self.meta_info: dict[str, Any] = {}
        self.variable_event: dict[str, threading.Event] = {}
        self._pending: dict[str, int] = {}  # writes of each name submitted but not yet done
        self.messages_: list[dict] = []
        self.stream_chunks: dict[str, list[tuple[str, dict]]] = {}  # streamed gens, per chunk
        self.cur_role: str | None = None
        self.cur_role_begin_pos: int | None = None
        self.fork_start_text_pos: int | None = None
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
            self._execute(expr)

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
            if name in self.variables:
                return self.variables[name]
            if self.error_ is not None:
                raise self.error_
        raise ProgramError(f"the program has no variable {name!r} (it has: "
                           f"{', '.join(map(repr, self.variables)) or 'none'})")

    def set_var(self, name: str, value) -> None:
        with self.cond:
            self.variables[name] = value
            self.cond.notify_all()

    def get_meta_info(self, name: str):
        ev = self.variable_event.get(name)
        if ev is not None:
            ev.wait()
        return self.meta_info.get(name)

    def fail(self, err: BaseException) -> None:
        """Record the first error; wake everyone waiting on a variable (they raise it)."""
        with self.cond:
            if self.error_ is None:
                self.error_ = err
            for ev in self.variable_event.values():
                ev.set()
            self.cond.notify_all()

    def fork(self, size: int) -> list[StreamExecutor]:
        """Children start with copies of this state's text, variables and messages. With more
        than one child the text so far is committed first, so all of them hit the cache."""
        size = int(size)
        if size < 1:
            raise ProgramError(f"fork({size}): the number of branches must be >= 1")
        if size > 1:
            self.submit(SglCommitLazy())
        self.sync()
        if self.error_ is not None:
            raise self.error_
        children = []
        for _ in range(size):  # (fork branches have no speculation)
            c = self.copy(stream=self.stream, use_thread=self.use_thread, speculate=False)
            c.fork_start_text_pos = len(self.text_)
            children.append(c)
        return children

    # ---- one state as a value: also the compiled executor's interface (sglc/compiler) -------
    def copy(self, stream: bool = False, use_thread: bool = False,
             speculate: bool = True) -> StreamExecutor:
        """A new executor holding this state's text, messages, variables and open role: a fork
        branch, or (the defaults: no worker thread) the state the compiled executor applies
        its next expression to, as it never changes a state in place."""
        c = StreamExecutor(self.backend, self.arguments, self.default_params, self.chat_template,
                           stream, self.num_api_spec_tokens if speculate else None, use_thread)
        c.text_, c.messages_ = self.text_, list(self.messages_)
        c.variables, c.meta_info = dict(self.variables), dict(self.meta_info)
        c.cur_role, c.cur_role_begin_pos = self.cur_role, self.cur_role_begin_pos
        c.fork_start_text_pos, c._stop_ids = self.fork_start_text_pos, self._stop_ids
        return c

    def apply(self, expr: SglExpr) -> None:
        """Execute `expr` on this state now, on the calling thread."""
        self._execute(expr)

    def record(self, name: str | None, value, meta=None) -> None:
        """Store a generated value (and its meta info) as variable `name`."""
        self._set(name, value, meta)

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
        if isinstance(expr, SglConstantText):
            self._execute_text(expr.value)
        elif isinstance(expr, SglExprList):
            for x in expr.expr_list:
                self._execute(x)
        elif isinstance(expr, SglGen):
            self._execute_gen(expr)
        elif isinstance(expr, SglSelect):
            self._execute_select(expr)
        elif isinstance(expr, SglRoleBegin):
            self._execute_role_begin(expr)
        elif isinstance(expr, SglRoleEnd):
            self._execute_role_end(expr)
        elif isinstance(expr, SglVarScopeBegin):
            self._set(expr.name, len(self.text_), event=False)
        elif isinstance(expr, SglVarScopeEnd):
            self._set(expr.name, self.text_[self.variables[expr.name]:])
        elif isinstance(expr, SglCommitLazy):
            if self.text_:
                self.backend.cache_prefix(self.text_)
        elif isinstance(expr, SglConcateAndAppend):
            self._execute_concate_and_append(expr)
        elif isinstance(expr, SglSeparateReasoning):
            self._execute_separate_reasoning(expr)
        else:
            raise ProgramError(f"cannot execute {expr!r}")

    def _execute_text(self, value: str) -> None:
        if self.spec is not None:
            if self._chat_spec_turn():
                self.spec.defer_text(value)
                return
            self.spec.on_text(value)
        self._fill(value)

    def _chat_spec_turn(self) -> bool:
        """Whether this state collects an assistant turn for one speculative chat call."""
        return (self.spec is not None and self.backend.is_chat_model
                and self.cur_role == "assistant")

    def _prompt(self, primitive: str = "gen"):
        """What the backend continues: the text so far, or for a chat-model backend the messages
        so far (the gen must open an assistant turn)."""
        if not self.backend.is_chat_model:
            return self.text_
        if self.cur_role != "assistant" or self.text_[self.cur_role_begin_pos:].strip():
            raise ProgramError(
                f"{primitive} on the chat model {self.backend!r} must come right after "
                "sgl.assistant (as in s += sgl.assistant(sgl.gen('answer'))), or the program "
                "needs @function(num_api_spec_tokens=N) to fill a written turn")
        return list(self.messages_)

    def _fill(self, value: str) -> None:
        with self.cond:
            self.text_ += value
            self.cond.notify_all()

    def _set(self, name: str | None, value, meta=None, event: bool = True) -> None:
        if name is None:
            return
        with self.cond:
            self.variables[name] = value
            if meta is not None:
                self.meta_info[name] = meta
            if event:
                left = self._pending.get(name, 0) - 1
                self._pending[name] = max(left, 0)
                if left <= 0:
                    self.variable_event.setdefault(name, threading.Event()).set()
            self.cond.notify_all()

    def resolve_sampling_params(self, params: SglSamplingParams) -> SglSamplingParams:
        """The program's defaults overlaid with the gen's own; in an assistant turn the chat
        template's end-of-turn also stops generation."""
        merged = self.default_params.merge(params)
        if self.cur_role != "assistant":
            return merged
        stop_strs = tuple(self.chat_template.stop_str)
        if self._stop_ids is None:
            self._stop_ids = self.backend.stop_token_ids(stop_strs)
        return merged.with_extra_stop(stop_strs, self._stop_ids)

    def _execute_gen(self, expr: SglGen) -> None:
        if isinstance(expr, SglForkGen):  # fork branches have no speculation
            try:
                params = self.resolve_sampling_params(expr.sampling_params)
                prompt = self._prompt()
            except BaseException:
                expr.batch.withdraw(self.backend, expr.index)
                raise
            comp, meta = expr.batch.generate(self.backend, expr.index, prompt, params)
            self._fill(comp)
            self._set(expr.name, comp, meta)
            return
        params = self.resolve_sampling_params(expr.sampling_params)
        if self._chat_spec_turn():
            self.spec.defer_gen(expr, params)
            return
        if self.spec is not None:
            out = self.spec.completion_gen(self.backend, self.text_, params)
            if out is not None:
                self._fill(out[0])
                self._set(expr.name, out[0], out[1])
                return
        prompt = self._prompt()
        if not self.stream:
            comp, meta = self.backend.generate(prompt, params)
            if isinstance(comp, list):  # n > 1: the variable holds every sample
                self._fill(comp[0])
            else:
                self._fill(comp)
            self._set(expr.name, comp, meta)
            return
        name = expr.name
        with self.cond:
            if name is not None:
                self.variables[name] = ""
        meta = {}
        for piece, meta in self.backend.generate_stream(prompt, params):
            with self.cond:
                self.text_ += piece
                if name is not None:
                    self.variables[name] += piece
                    self.meta_info[name] = meta
                    if piece:
                        self.stream_chunks.setdefault(name, []).append((piece, meta))
                self.cond.notify_all()
        self._set(name, self.variables.get(name, ""), meta)

    def _execute_select(self, expr: SglSelect) -> None:
        if self.spec is not None:
            self.spec.drop()
        decision = self.backend.select(self.text_, expr.choices, expr.temperature,
                                       expr.choices_method)
        self._fill(decision.decision)
        self._set(expr.name, decision.decision, decision.meta_info)

    def _execute_role_begin(self, expr: SglRoleBegin) -> None:
        if self.cur_role is not None:
            raise ProgramError(f"role {expr.role!r} begins inside role {self.cur_role!r}; "
                               "roles do not nest")
        default_system = self.chat_template.default_system_prompt
        if not self.messages_ and expr.role != "system" and default_system:
            self._execute_role_begin(SglRoleBegin("system"))
            self._fill(default_system)
            self._execute_role_end(SglRoleEnd("system"))
        prefix, _ = self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)
        if self.spec is not None:
            self.spec.drop()
        self.cur_role = expr.role
        self._fill(prefix)
        self.cur_role_begin_pos = len(self.text_)

    def _execute_role_end(self, expr: SglRoleEnd) -> None:
        if self.cur_role != expr.role:
            raise ProgramError(f"role {expr.role!r} ends but the open role is {self.cur_role!r}")
        if self._chat_spec_turn():
            for text, gen, meta in self.spec.finish_turn(self.backend, list(self.messages_)):
                self._fill(text)
                if gen is not None:
                    self._set(gen.name, text, meta)
        content = self.text_[self.cur_role_begin_pos:].lstrip()
        _, suffix = self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)
        self.cur_role = None
        self._fill(suffix)
        with self.cond:
            self.messages_.append({"role": expr.role, "content": content})

    def _execute_separate_reasoning(self, expr: SglSeparateReasoning) -> None:
        """Each target's text becomes its answer, the reasoning going to
        `{name}_reasoning_content` (`split_reasoning`)."""
        for name in expr.targets:
            text = self.variables.get(name)
            if not isinstance(text, str):
                raise ProgramError(f"separate_reasoning: {name!r} holds no generated text")
            reasoning, answer = split_reasoning(text)
            with self.cond:
                if self.text_.endswith(text):
                    self.text_ = self.text_[:len(self.text_) - len(text)] + answer
            self._set(name, answer, self.meta_info.get(name), event=False)
            self._set(name + "_reasoning_content", reasoning)

    def _execute_concate_and_append(self, expr: SglConcateAndAppend) -> None:
        for state in expr.states:
            child = state.stream_executor
            child.sync()
            if child.error_ is not None:
                raise child.error_
            self._fill(child.text_[child.fork_start_text_pos:])
