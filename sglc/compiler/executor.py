"""The graph executor: runs compiled programs as dataflow over the backend interface.

Every program instance of a `run_batch` is one copy of the graph's node states. A single
scheduler loop evaluates the cheap nodes (text, roles, gets, Python expressions, branches) as
soon as their operands are ready, and submits the model calls that became ready in the same
round together, so the engine sees them at once: a fork's sibling gens (one `group`) go out as
one `generate_many` call, and a batch's shared constant prefix (`commit {batch=true}`) is
prefilled once for all instances. States are immutable `Snapshot`s; each op applies the same
pure step the eager interpreter applies (`sglc/lang/snapshot.py`), so compiled and eager runs
produce the same text."""

from __future__ import annotations

import copy
import heapq
import logging
import queue
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from ..ir.ops import Op
from ..lang.backend import BaseBackend
from ..lang.interpreter import StreamExecutor
from ..lang.primitives import SglSamplingParams, SglSelect, as_expr
from ..lang.snapshot import Snapshot, apply, join, sampling_params
from .plan import Instance, SnapshotView, appends_model_call, node_expr
from .segments import run_segment, usable_segment

logger = logging.getLogger(__name__)

DEAD = type("Dead", (), {"__repr__": lambda self: "DEAD"})()  # the value of an untaken path
MIN_BATCH_PREFIX_CHARS = 64  # shorter shared prefixes are not worth a request (as the tracer)


class GraphExecutor:
    """Runs a list of instances to completion (see the module docstring)."""

    def __init__(self, backend: BaseBackend, stream: bool = False, max_active: int | None = None,
                 max_workers: int = 256, progress=None, segments: bool = True):
        self.backend = backend
        self.stream = stream
        self.max_active = max_active
        self.max_workers = max_workers
        self.progress = progress
        self.batched_generate = type(backend).generate_many is not BaseBackend.generate_many
        # whole-program execution: gen/text/gen runs go to the engine as one request
        self.segments = segments and bool(backend.supports_programs) and not stream
        self._done: queue.Queue = queue.Queue()
        self._inflight = 0
        self._commits: dict = {}  # (plan, node) -> instances waiting on one shared commit
        self._committed: dict = {}
        self._ready: list = []
        self._num_done = 0

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, instances: list[Instance]) -> None:
        self.instances = instances
        self.plan_count = defaultdict(int)
        for inst in instances:
            self.plan_count[id(inst.plan)] += 1
        waiting = list(range(len(instances)))[::-1]
        limit = self.max_active or len(instances)

        def can_start() -> bool:
            return bool(waiting) and len(instances) - len(waiting) - self._num_done < limit

        with ThreadPoolExecutor(self.max_workers, thread_name_prefix="sglc-exec") as pool:
            self.pool = pool
            while True:
                while can_start():
                    self._start(waiting.pop())
                jobs: list = []  # every model call that became ready this round, together
                while self._ready:
                    _, i, n = heapq.heappop(self._ready)
                    if not instances[i].failed and n not in instances[i].values:
                        self._step(i, instances[i], n, jobs)  # (a segment may have run it)
                for job in jobs:
                    self._submit(*job)
                if not self._inflight and not self._ready and not waiting:
                    break
                if self._ready or can_start():
                    continue
                self._handle(self._done.get())
                while True:
                    try:
                        self._handle(self._done.get_nowait())
                    except queue.Empty:
                        break
        for inst in instances:
            if not inst.finished and not inst.failed:
                self._fail(inst, AssertionError("the program graph stopped before its end "
                                                "(a scheduling bug)"))

    def _start(self, i: int) -> None:
        inst = self.instances[i]
        if self.stream:
            for name in inst.plan.var_names:
                inst.mirror.variable_event[name] = threading.Event()
        for n in inst.plan.sources:
            heapq.heappush(self._ready, (inst.plan.rank[n], i, n))

    def _resolve(self, i: int, inst: Instance, n, value) -> None:
        inst.values[n] = value
        plan = inst.plan
        if self.stream and n in plan.main and value is not DEAD:
            self._show(inst, n, value)
        if n == plan.ret:
            return self._finish(inst)
        for u in plan.users[n]:
            inst.remaining[u] -= 1
            if not inst.remaining[u]:
                heapq.heappush(self._ready, (plan.rank[u], i, u))

    def _handle(self, item) -> None:
        self._inflight -= 1
        i, nodes, values, err = item
        inst = self.instances[i]
        key = (id(inst.plan), nodes[0])
        shared = self._commits.pop(key, None)  # a batch's shared commit: others wait on it
        if shared is not None:
            self._committed[key] = True
        waiters = shared[1:] if shared else []
        if not inst.failed:
            if err is not None:
                self._fail(inst, err, nodes[0])
            else:
                for n, v in zip(nodes, values):
                    self._resolve(i, inst, n, v)
        for j in waiters:  # the commit only warms the cache: they go on even if it failed
            other = self.instances[j]
            if not other.failed:
                self._resolve(j, other, nodes[0], other.values[inst.plan.nodes[nodes[0]].args[0]])

    # ---- one node -----------------------------------------------------------------------------
    def _step(self, i: int, inst: Instance, n, jobs: list) -> None:
        node = inst.plan.nodes[n]
        args = [inst.values[a] for a in node.args]
        if node.op is not Op.MERGE and any(v is DEAD for v in args):
            if n in inst.plan.group_of:
                self._group_member(i, inst, n, None, jobs)
            return self._resolve(i, inst, n, DEAD)
        try:
            if node.op is Op.MERGE:
                live = [v for v in args if v is not DEAD]
                assert len(live) <= 1, f"merge %{n} got {len(live)} live operands (a gating bug)"
                return self._resolve(i, inst, n, live[0] if live else DEAD)
            if n in inst.plan.group_of:
                return self._group_member(i, inst, n, args, jobs)
            if node.op is Op.GEN and self.segments and inst.plan.segments.get(n):
                segment = usable_segment(inst, inst.plan.segments[n])
                if segment:
                    return jobs.append((i, [n] + segment))  # whole-program execution
            if node.op in (Op.GEN, Op.SELECT) or (node.op is Op.APPEND and
                                                   appends_model_call(node, args[1])):
                return jobs.append((i, [n]))
            if node.op is Op.COMMIT:
                return self._commit(i, inst, n, args[0], jobs)
            value = self._eval(inst, n, node, args)
        except Exception as e:  # noqa: BLE001 - the program's error, kept on its state
            return self._fail(inst, e, n)
        self._resolve(i, inst, n, value)

    def _eval(self, inst: Instance, n, node, args):
        """The value of a node that needs no model call."""
        op, a = node.op, node.attrs
        if op is Op.ARG:
            return inst.arguments[a["name"]]
        if op is Op.CONST:
            return copy.deepcopy(a["value"])
        if op is Op.BEGIN:
            return Snapshot()
        if op is Op.BRANCH:
            return args[0] if bool(args[1]) == a["arm"] else DEAD
        if op is Op.GET:
            return args[0].get_var(a["name"])
        if op is Op.PY:
            env = dict(inst.env[node.fn])
            for k, v in enumerate(args[1:], 1):
                env[f"_{k}"] = SnapshotView(v, inst.mirror) if isinstance(v, Snapshot) else v
            return eval(inst.plan.code[n], env)
        if op is Op.FORK:
            return args[0]
        if op is Op.CHILD:
            return args[0].fork_child()
        if op is Op.RET:
            return None
        if op is Op.JOIN:
            return join(args[0], args[1:], a["mode"])
        return apply(args[0], node_expr(node, args), inst.mirror.chat_template)

    # ---- model calls --------------------------------------------------------------------------
    def _group_member(self, i: int, inst: Instance, n, args, jobs: list) -> None:
        """Hold a fork's sibling gens until every one is ready (or dead), then submit them as
        one request group."""
        gid = inst.plan.group_of[n]
        if args is not None:
            inst.group_ready[gid].append(n)
        inst.group_resolved[gid] += 1
        if inst.group_resolved[gid] == len(inst.plan.groups[gid]) and inst.group_ready[gid]:
            jobs.append((i, sorted(inst.group_ready[gid], key=inst.plan.rank.get)))

    def _commit(self, i: int, inst: Instance, n, state, jobs: list) -> None:
        """A fork's commit runs as eager forks do; a batch commit runs once per batch."""
        if not inst.plan.nodes[n].attrs.get("batch"):
            return jobs.append((i, [n]))
        key = (id(inst.plan), n)
        if self.plan_count[id(inst.plan)] < 2 or len(state.text) < MIN_BATCH_PREFIX_CHARS \
                or key in self._committed:
            return self._resolve(i, inst, n, state)
        if key not in self._commits:
            self._commits[key] = []
            jobs.append((i, [n]))
        self._commits[key].append(i)

    def _submit(self, i: int, nodes: list) -> None:
        inst = self.instances[i]
        plan = inst.plan
        if len(nodes) > 1 and nodes[0] in plan.segments:
            return self._spawn(i, nodes, lambda: run_segment(self, inst, nodes))
        ins = [inst.values[plan.nodes[n].args[0]] for n in nodes]
        if len(nodes) > 1 and plan.nodes[nodes[0]].op is Op.GEN and self.batched_generate:
            return self._spawn(i, nodes, lambda: self._gen_many(inst, nodes, ins))
        for n in nodes:
            args = [inst.values[a] for a in plan.nodes[n].args]
            self._spawn(i, [n], lambda n=n, args=args: [self.call_model(inst, n, args)])

    def _spawn(self, i: int, nodes: list, fn) -> None:
        self._inflight += 1

        def job():
            try:
                self._done.put((i, nodes, fn(), None))
            except BaseException as e:  # noqa: BLE001 - delivered to the scheduler
                self._done.put((i, nodes, None, e))
        self.pool.submit(job)

    def call_model(self, inst: Instance, n, args):
        """Run one model op on a pool thread; returns the node's value."""
        node = inst.plan.nodes[n]
        state, name = args[0], node.attrs.get("name")
        if node.op is Op.COMMIT:
            if state.text:
                self.backend.cache_prefix(state.text)
            return state
        if node.op is Op.SELECT:
            temperature, method = inst.plan.selects[n]
            choices = node.attrs.get("choices", args[1] if len(args) > 1 else None)
            sel = SglSelect(name, choices, temperature, method)  # (checks the choices)
            decision = self.backend.select(state.text, sel.choices, temperature, method)
            return state.generated(name, decision.decision, decision.meta_info)
        if node.op is Op.APPEND:  # a value holding gens or selects: the interpreter runs it
            m = inst.mirror
            exe = StreamExecutor(self.backend, m.arguments, m.default_params, m.chat_template,
                                 use_thread=False, state=state)
            exe.apply(as_expr(args[1]))
            return exe.state
        params = self.gen_params(inst, n, state)
        if self.stream and n in inst.plan.main:
            return self._gen_stream(inst, n, state, params)
        text, meta = self.backend.generate(state.text, params)
        return state.generated(name, text, meta)

    def gen_params(self, inst: Instance, n, state: Snapshot) -> SglSamplingParams:
        m = inst.mirror
        params = sampling_params(state, m.default_params, inst.plan.params[n], m.chat_template,
                                 m.stop_token_ids)
        extra = inst.plan.nodes[n].attrs.get("extra_stop")
        return params.with_extra_stop(tuple(extra), ()) if extra else params

    def _gen_many(self, inst: Instance, nodes: list, states: list) -> list:
        params = [self.gen_params(inst, n, state) for n, state in zip(nodes, states)]
        outs = self.backend.generate_many([state.text for state in states], params)
        return [state.generated(inst.plan.nodes[n].attrs.get("name"), text, meta)
                for n, state, (text, meta) in zip(nodes, states, outs)]

    def _gen_stream(self, inst: Instance, n, state: Snapshot, params) -> Snapshot:
        name = inst.plan.nodes[n].attrs.get("name")
        self._show(inst, None, state)
        pieces, meta = [], {}
        for piece, meta in self.backend.generate_stream(state.text, params):
            pieces.append(piece)
            inst.mirror.show_piece(name, piece)
        return state.generated(name, "".join(pieces), meta)

    # ---- the caller's state -------------------------------------------------------------------
    def _show(self, inst: Instance, n, state: Snapshot) -> None:
        """Make the caller's state show main-chain state `state` (streaming)."""
        rank = inst.plan.rank[n] if n is not None else inst.shown
        if rank < inst.shown:
            return
        inst.shown = rank
        inst.mirror.show(state, events=n is not None)

    def _finish(self, inst: Instance) -> None:
        plan = inst.plan
        ret = plan.nodes[plan.ret]
        final = inst.values[ret.args[0]]
        if final is DEAD:
            return self._fail(inst, AssertionError("no path of the program graph reached ret"))
        inst.state.ret_value = inst.values[ret.args[1]] if len(ret.args) > 1 else None
        m = inst.mirror
        with m.cond:  # (re-entrant) shown and finished at once
            m.show(final, done=True)
            inst.finished = m.is_finished = True
            m.cond.notify_all()
        self._num_done += 1
        if self.progress is not None:
            self.progress.update()

    def _fail(self, inst: Instance, err: BaseException, n=None) -> None:
        if n is not None and hasattr(err, "add_note"):
            node = inst.plan.nodes[n]
            err.add_note(f"while running %{n} = {node.op.value}"
                         f"{f' from {node.loc}' if node.loc else ''}")
        inst.failed = True
        m = inst.mirror
        m.fail(err)
        with m.cond:
            m.is_finished = True
            m.cond.notify_all()
        self._num_done += 1
        if self.progress is not None:
            self.progress.update()
