"""`sgl.compile`: parse a program's source into the IR, optimize it with the pass pipeline, and
run the graph with the dataflow executor behind the same `run` / `run_batch` / streaming /
`ProgramState` API as an eagerly run `@sgl.function`."""

from __future__ import annotations

import inspect
import logging
import sys
import threading
import warnings

from .. import ir  # noqa: F401 - so `sgl.ir.parse` works after `import sglc`
from ..lang.function import SglFunction
from ..lang.primitives import ProgramError

logger = logging.getLogger(__name__)


class CompiledProgram(SglFunction):
    """A compiled program: `.run`, `.run_batch`, `.ir` (the optimized graph's text), `.graph`
    (the networkx DAG), `.source_graph` (before the passes). A program the compiler cannot
    handle runs eagerly (`.compile_error` says why; with `strict=True` that error is raised).

    An argument that sets a loop's range or a fork's size is compiled in as a constant (the
    graph is *specialized* on it, defaults first); calls with other values compile and cache
    another graph."""

    def __init__(self, program: SglFunction, strict: bool = False, passes=None,
                 static: dict | None = None, print_ir_after_all: bool = False, backend=None,
                 whole_program: bool = True):
        super().__init__(program.func, program.num_api_spec_tokens, program.bind_arguments)
        self.eager = program
        self.strict = strict
        self.whole_program = whole_program
        self.pass_names = passes
        self.print_ir_after_all = print_ir_after_all
        self.static = dict(static or {})
        self.compile_error = None
        self.static_names: tuple[str, ...] = ()
        self._graphs: dict = {}   # static values -> (source graph, graph, plan)
        self._prepared: set = set()
        self._lock = threading.Lock()
        self._tokenizer = None
        try:
            self._specialize(self.static)
        except Exception as e:
            from ..parser import CompileError, CompileWarning, ProgramCheckError

            if strict or not isinstance(e, CompileError) or isinstance(e, ProgramCheckError):
                raise  # a mistake in the program fails eagerly too: say so now
            self.compile_error = e
            warnings.warn(f"{e.location}: sglc cannot compile {self.__name__}: {e.message}; "
                          "it runs eagerly", CompileWarning, stacklevel=3)
        if backend is not None:
            self.prepare(backend)

    # ---- graphs -------------------------------------------------------------------------------
    def _specialize(self, static_values: dict):
        """(source graph, optimized graph, plan) for these values of the static arguments."""
        from ..parser import lower_program
        from ..passes import PassContext, PassManager, select_passes
        from .plan import Plan

        static_values = {**self.static, **static_values}
        with self._lock:
            key = self._key(static_values)
            if key in self._graphs:
                return self._graphs[key]
            source, used = lower_program(self.eager, static_values)
            self.static_names = tuple(sorted(set(self.static_names) | set(used)))
            key = self._key({**used, **static_values})
            manager = PassManager(select_passes(self.pass_names),
                                  print_after_all=self.print_ir_after_all)
            graph = manager.run(source, PassContext(self._tokenizer))
            entry = (source.canonical(), graph, Plan(graph, self.func))
            self._graphs[key] = entry
            self.pass_records = manager.records
            return entry

    def _key(self, values: dict) -> tuple:
        params = inspect.signature(self.func).parameters
        key = []
        for n in self.static_names:
            if n in values:
                key.append(values[n])
            elif n in self.bind_arguments:
                key.append(self.bind_arguments[n])
            else:
                key.append(params[n].default)
        try:
            hash(tuple(key))
        except TypeError:
            raise ProgramError(f"{self.__name__}: the compiled graph is specialized on "
                               f"{', '.join(self.static_names)}, so they must be hashable; got "
                               f"{key!r}") from None
        return tuple(key)

    def _entry_for(self, arguments: dict):
        if not self.static_names:
            return self._specialize({})
        values = {n: arguments.get(n) for n in self.static_names}
        entry = self._specialize(values)
        return entry

    @property
    def graph(self):
        """The optimized graph (specialized on the static arguments' defaults)."""
        return None if self.compile_error else self._specialize(self.static)[1]

    @property
    def source_graph(self):
        """The graph as parsed, before the passes."""
        return None if self.compile_error else self._specialize(self.static)[0]

    @property
    def ir(self) -> str | None:
        """The optimized graph's canonical text."""
        g = self.graph
        return None if g is None else str(g)

    def prepare(self, backend) -> None:
        """Build the constraint FSMs of every compiled graph with the tokenizer of `backend`'s
        in-process engine (once per backend), so no request pays for building one. (A remote
        server builds and caches its own.)"""
        tokenizer = _local_tokenizer(backend)
        if tokenizer is None or id(backend) in self._prepared or self.compile_error:
            return
        self._prepared.add(id(backend))
        self._tokenizer = tokenizer
        from ..passes import lower_constraints

        try:
            for _, graph, _ in list(self._graphs.values()):
                lower_constraints.warm(graph, tokenizer)
        except ImportError:
            pass

    # ---- running ------------------------------------------------------------------------------
    def _runs_eagerly(self, backend) -> bool:
        """Programs that did not compile, and programs on API backends (chat messages, `n=`
        batching and speculative execution are the interpreter's), run eagerly."""
        if self.compile_error is not None:
            return True
        return bool(backend.is_chat_model or backend.speculative_execution or backend.supports_n)

    def _arguments(self, args: tuple, kwargs: dict) -> dict:
        sig = inspect.signature(self.func)
        try:
            bound = sig.bind(None, *args, **{**self.bind_arguments, **kwargs})
        except TypeError as e:
            raise ProgramError(f"{self.__name__}: {e}") from None
        bound.apply_defaults()
        out = dict(bound.arguments)
        out.pop(next(iter(sig.parameters)))
        return out

    def _instance(self, backend, arguments: dict, defaults, stream: bool, envs=None):
        from ..lang.state import ProgramState
        from .plan import CallerView, Envs, Instance

        mirror = CallerView(backend, arguments, defaults, stream=stream,
                            num_api_spec_tokens=self.num_api_spec_tokens, use_thread=False)
        state = ProgramState(mirror)
        _, _, plan = self._entry_for(arguments)
        return Instance(plan, arguments, state, envs if envs is not None else Envs(self.func))

    # ---- execution hooks of SglFunction.run / run_batch ---------------------------------------
    def _run(self, backend, args: tuple, kwargs: dict, defaults, stream: bool, use_thread: bool):
        if self._runs_eagerly(backend):
            return self.eager._run(backend, args, kwargs, defaults, stream, use_thread)
        from .executor import GraphExecutor

        self.prepare(backend)
        inst = self._instance(backend, self._arguments(args, kwargs), defaults, stream)
        executor = GraphExecutor(backend, stream=stream, segments=self.whole_program)
        if stream:
            thread = threading.Thread(target=executor.run, args=([inst],), daemon=True,
                                      name="sglc-compiled-stream")
            inst.mirror.program_thread = thread
            thread.start()
            return inst.state
        executor.run([inst])
        if inst.mirror.error_ is not None:
            raise inst.mirror.error_
        return inst.state

    def _run_batch(self, backend, batch_kwargs: list[dict], defaults, num_threads,
                   progress_bar: bool, generator_style: bool):
        """All instances in one dataflow schedule; a failed program's error is on its state."""
        if self._runs_eagerly(backend):
            return self.eager._run_batch(backend, batch_kwargs, defaults, num_threads,
                                         progress_bar, generator_style)
        from .executor import GraphExecutor
        from .plan import Envs

        self.prepare(backend)
        instances, states, envs = [], [], Envs(self.func)
        for item in batch_kwargs:
            try:
                inst = self._instance(backend, self._arguments((), item), defaults, False, envs)
            except Exception as e:  # noqa: BLE001 - e.g. a bad argument: kept on its state
                states.append(self._failed_state(backend, defaults, e))
                continue
            instances.append(inst)
            states.append(inst.state)
        pbar = None
        if progress_bar:
            import tqdm

            pbar = tqdm.tqdm(total=len(instances))
        max_active = None if num_threads == "auto" else max(1, int(num_threads))
        GraphExecutor(backend, max_active=max_active, progress=pbar,
                      segments=self.whole_program).run(instances)
        if pbar is not None:
            pbar.close()
        return iter(states) if generator_style else states

    def _failed_state(self, backend, defaults, err: BaseException):
        from ..lang.interpreter import StreamExecutor
        from ..lang.state import ProgramState

        exe = StreamExecutor(backend, {}, defaults, use_thread=False)
        exe.fail(err)
        exe.is_finished = True
        return ProgramState(exe)

    def bind(self, **kwargs) -> CompiledProgram:
        return CompiledProgram(self.eager.bind(**kwargs), self.strict, self.pass_names,
                               self.static, self.print_ir_after_all,
                               whole_program=self.whole_program)

    def __repr__(self) -> str:
        return f"CompiledProgram({self.__name__})"


def _local_tokenizer(backend):
    """The tokenizer of the engine `backend` runs in this process, or None."""
    engine_module = sys.modules.get("sglc_runtime.engine")  # loaded if there is such an engine
    engine = getattr(backend, "engine", None)
    if engine_module is None or not isinstance(engine, engine_module.Engine):
        return None
    return engine.tokenizer


def compile(fn=None, *, strict: bool = False, passes: list[str] | None = None,
            static: dict | None = None, backend=None, print_ir_after_all: bool = False,
            whole_program: bool = True):
    """`@sgl.compile`, `@sgl.compile(strict=True)` or `sgl.compile(fn)`: compile a program (a
    plain function or an `@sgl.function`) ahead of time. `passes` names the passes to run
    (default: the whole pipeline); `static` fixes compile-time arguments; `backend` builds the
    constraint FSMs with its tokenizer now; `whole_program=False` sends every gen as a request
    of its own instead of running gen/text/gen segments as one continuing request."""
    options = {"strict": strict, "passes": passes, "static": static, "backend": backend,
               "print_ir_after_all": print_ir_after_all, "whole_program": whole_program}
    if fn is None:
        return lambda f: compile(f, **options)
    if isinstance(fn, CompiledProgram):
        fn = fn.eager
    if not isinstance(fn, SglFunction):
        fn = SglFunction(fn)
    return CompiledProgram(fn, **options)
