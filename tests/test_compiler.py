"""The compiler without a model: golden IR and round trips for every sample, compiled and eager
runs agreeing on a fake backend, the parser's constructs, strict-mode errors, the executor's
batching, streaming and errors.

Regenerate the golden files with SGLC_UPDATE_GOLDEN=1 python -m pytest tests/test_compiler.py"""

import importlib.util
import inspect
import os
import threading
import time
import warnings
from pathlib import Path

import pytest

import sglc as sgl
from sglc.ir import Op, parse
from sglc.lang.backend import BaseBackend
from sglc.lang.chat_template import get_chat_template
from sglc.lang.choices import ChoicesDecision
from sglc.parser import CompileError, CompileWarning, ProgramCheckError
from sglc.passes import PIPELINE, PassManager

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


class FakeBackend(BaseBackend):
    """Generates `<N>` (N = prompt length); selects by prompt length; records every call and
    the most requests in flight at once."""

    def __init__(self, delay: float = 0.0, batched: bool = False):
        self.delay = delay
        self.calls, self.prefixes, self.batches = [], [], []
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        if batched:  # an instance attribute does not count: the class must override it
            self.__class__ = BatchedFakeBackend

    def get_chat_template(self):
        return get_chat_template("chatml")

    def stop_token_ids(self, stop_strs):
        return (2,) if "<|im_end|>" in stop_strs else ()

    def generate(self, prompt, params):
        sp, _ = params.to_request()
        with self.lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        time.sleep(self.delay)
        with self.lock:
            self.inflight -= 1
            self.calls.append((prompt, sp))
        if sp.get("dtype") == "bool" or sp.get("regex") == "(True|False)":
            return "True", {"prompt_tokens": len(prompt)}
        return f"<{len(prompt)}>", {"prompt_tokens": len(prompt)}

    def generate_stream(self, prompt, params):
        text, meta = self.generate(prompt, params)
        for ch in text:
            time.sleep(0.001)
            yield ch, meta

    def select(self, prompt, choices, temperature, choices_method):
        with self.lock:
            self.calls.append((prompt, list(choices)))
        return ChoicesDecision(choices[len(prompt) % len(choices)], {"n": len(prompt)})

    def cache_prefix(self, prefix):
        with self.lock:
            self.prefixes.append(prefix)


class BatchedFakeBackend(FakeBackend):
    def generate_many(self, prompts, params):
        with self.lock:
            self.batches.append(list(prompts))
        return [self.generate(p, sp) for p, sp in zip(prompts, params)]


# ---- the samples ------------------------------------------------------------------------------
def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"sample_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_programs():
    out = []
    for path in sorted((ROOT / "samples").glob("*.py")):
        module = load_module(path)
        for name, obj in vars(module).items():
            if isinstance(obj, sgl.SglFunction) and obj.func.__module__ == module.__name__:
                out.append(pytest.param(obj, id=f"{path.stem}.{name}"))
    return out


SAMPLES = sample_programs()
TEXT_ARGS = ("question", "review", "text", "topic", "question_1", "question_2")


def fake_args(program) -> dict:
    params = list(inspect.signature(program.func).parameters)[1:]
    return {p: f"<{p} value>" for p in params if p in TEXT_ARGS}


def test_samples_are_found():
    assert len(SAMPLES) >= 8


@pytest.mark.parametrize("program", SAMPLES)
def test_sample_golden_ir(program, request):
    name = request.node.callspec.id
    path = GOLDEN / f"{name}.ir"
    ir = sgl.compile(program, strict=True).ir
    if os.environ.get("SGLC_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(ir)
    assert path.exists(), f"no golden IR for {name}: run with SGLC_UPDATE_GOLDEN=1"
    assert ir == path.read_text()


@pytest.mark.parametrize("program", SAMPLES)
def test_sample_ir_round_trips(program):
    compiled = sgl.compile(program, strict=True)
    for text in (compiled.ir, str(compiled.source_graph)):
        assert str(parse(text)) == text


@pytest.mark.parametrize("program", SAMPLES)
def test_sample_passes_are_idempotent(program):
    compiled = sgl.compile(program, strict=True)
    for name, fn in PIPELINE:
        once = PassManager([(name, fn)]).run(compiled.source_graph)
        assert str(PassManager([(name, fn)]).run(once)) == str(once), name
    assert str(PassManager(PIPELINE).run(compiled.graph)) == compiled.ir


@pytest.mark.parametrize("program", SAMPLES)
def test_sample_compiled_matches_eager_on_a_fake_backend(program):
    args = fake_args(program)
    eager = program.run(backend=FakeBackend(), temperature=0, **args)
    compiled = sgl.compile(program, strict=True)
    got = compiled.run(backend=FakeBackend(), temperature=0, **args)
    assert got.text() == eager.text()
    assert got.ret_value == eager.ret_value
    assert got.messages() == eager.messages()
    assert dict(got.stream_executor.variables) == dict(eager.stream_executor.variables)
    batch = compiled.run_batch([args] * 3, backend=FakeBackend(), temperature=0)
    assert [st.text() for st in batch] == [eager.text()] * 3


# ---- the parser's constructs ------------------------------------------------------------------
@sgl.function
def helper(s, topic, n=2):
    s += f"Topic: {topic}\n"
    for i in range(n):
        s += f"{i}:" + sgl.gen(f"h{i}", max_tokens=3) + "\n"
    if s["h0"] == "<x>":
        return "early"
    return s["h1"]


def plain_helper(s, word):
    s += "plain " + word + "\n"


@sgl.function
def kitchen_sink(s, topic, k=3, flag=True):
    """Every construct the parser supports, checked against the eager interpreter."""
    r = helper.func(s, topic)
    plain_helper(s, "x")
    s += "ret=" + r + "\n"
    with s.var_scope("scoped"):
        s += "inside " + sgl.gen("g", max_tokens=2)
    with s.copy() as c:
        c += "copy " + sgl.gen("cg")
    x = 0
    for j in range(k):
        if j == 1:
            continue
        s += f"[{j}]" + sgl.gen("loop", max_tokens=1)
        if len(s["loop"]) > 100:
            break
        x += 1
    s += f"x={x:>3}|{topic!r}\n"
    forks = s.fork(2)
    forks += ["a", "bb"]
    forks += sgl.gen("fg")
    forks.join("concate_and_append")
    for i, f in enumerate(s.fork(2)):
        f += f"branch {i}" + sgl.gen("b")
    if flag:
        s += "flag on"
    else:
        s += "flag off"
    name = "dyn" + str(len(topic))
    s += sgl.gen(name, max_tokens=len(topic))
    s += sgl.select("pick", choices=[topic, "other"])
    with s.user():
        s += "user turn"
    s += sgl.assistant(sgl.gen("reply", max_tokens=4))
    a, b = x, x + 1
    return a, b


@pytest.mark.parametrize("kwargs", [{"topic": "cats"}, {"topic": "dogs!", "k": 5,
                                                         "flag": False}])
def test_kitchen_sink_matches_eager(kwargs):
    eager = kitchen_sink.run(backend=FakeBackend(), **kwargs)
    got = sgl.compile(kitchen_sink, strict=True).run(backend=FakeBackend(), **kwargs)
    assert got.text() == eager.text() and got.ret_value == eager.ret_value
    assert dict(got.stream_executor.variables) == dict(eager.stream_executor.variables)
    assert got.messages() == eager.messages()


@sgl.function
def paths(s, pad, n=6):
    s += pad
    total, found = 0, None
    for i in range(n):
        s += f"step {i}:" + sgl.gen("v", max_tokens=2) + "\n"
        v = int(s["v"][1:-1])
        if v % 3 == 0:
            continue
        if v % 2 == 0:
            total += v
            if v > 60:
                found = i
                break
        else:
            total -= 1
    s += f"total={total} found={found}"
    return total, found


def test_data_dependent_branches_take_the_same_paths_as_eager():
    compiled = sgl.compile(paths, strict=True)
    results = set()
    for k in range(8):
        eager = paths.run(pad="x" * k, backend=FakeBackend())
        got = compiled.run(pad="x" * k, backend=FakeBackend())
        assert got.text() == eager.text() and got.ret_value == eager.ret_value
        results.add(got.ret_value)
    assert len(results) > 3  # the pads drive different paths through the loop


def test_folding_unrolling_and_inlining_show_in_the_ir():
    ir = sgl.compile(kitchen_sink, strict=True).ir
    assert 'gen %' in ir and 'name="h1"' in ir  # f"h{i}" folded in the unrolled loop
    assert 'plain x' in ir  # the plain helper was inlined, its argument folded in
    assert 'arg {name="k", value=3}' in ir  # specialized on k
    assert "branch %" in ir and "merge %" in ir  # if / break / continue / early return
    assert 'code="sgl.gen(_1, max_tokens=len(_2))"' in ir  # a run-time gen: an opaque node


def test_static_arguments_specialize_the_graph():
    compiled = sgl.compile(kitchen_sink, strict=True)
    states = compiled.run_batch([{"topic": "a", "k": 2}, {"topic": "bb", "k": 4},
                                 {"topic": "c"}], backend=FakeBackend())
    assert [st.ret_value for st in states] == [(1, 2), (3, 4), (2, 3)]
    assert compiled.static_names == ("k",)
    assert sorted(compiled._graphs) == [(2,), (3,), (4,)]
    with pytest.raises(sgl.ProgramError, match="hashable"):
        compiled.run(topic="a", k=[1], backend=FakeBackend())


def compile_error(source_fn, **kwargs) -> CompileError:
    with pytest.raises(CompileError) as info:
        sgl.compile(source_fn, strict=True, **kwargs)
    return info.value


def test_strict_errors_name_file_line_col_with_a_caret():
    def prog(s, x):
        s += "a"
        while x:  # the unsupported line
            s += "b"

    err = compile_error(prog)  # the caret is under the condition known only at run time
    line = prog.__code__.co_firstlineno + 2
    assert err.filename == __file__ and err.line == line and err.col == 14
    text = str(err)
    assert text.startswith(f"{__file__}:{line}:15: ")
    assert "while x:  # the unsupported line\n" + " " * 18 + "^" in text


@pytest.mark.parametrize("body, message", [
    ("s += sgl.gen('qs')\n    for q in s['qs']:\n        s += q", "unrolls loops"),
    ("s = 1", "cannot be reassigned"),
    ("print(s)", "passes a program state"),
    ("f = s.fork(s['n'])", "fork branches must be known at compile time"),
    ("s['x'] = 1", "assigning to names only"),
    ("try:\n        pass\n    finally:\n        pass", "try ... finally"),
    ("for i in range(2):\n        with s.user():\n            break", "inside a `with`"),
    ("y = s.fork(2)\n    y[0].fork(2)", ".fork(...)"),
])
def test_strict_errors(tmp_path, body, message):
    path = tmp_path / "prog.py"
    path.write_text(f"import sglc as sgl\n\n\ndef prog(s, x):\n    {body}\n")
    module = load_module(path)
    err = compile_error(module.prog)
    assert message in err.message and err.filename == str(path) and err.line >= 5


def test_a_variable_no_gen_writes_is_a_program_mistake():
    def prog(s, x):
        s += "Q: " + sgl.gen("answer", max_tokens=4)
        forks = s.fork(2)
        forks += sgl.gen("branch", max_tokens=2)
        s += s["anwser"]  # the typo

    for strict in (True, False):  # a program mistake: raised, never run eagerly
        with pytest.raises(ProgramCheckError) as info:
            sgl.compile(prog, strict=strict)
        err = info.value
        assert err.line == prog.__code__.co_firstlineno + 4 and err.col == 13
        assert "'anwser' is read here" in err.message and "did you mean 'answer'" in err.message
        assert 's += s["anwser"]  # the typo\n' + " " * 17 + "^" in str(err)

    def unjoined(s):
        forks = s.fork(2)
        forks += sgl.gen("branch", max_tokens=2)
        s += s["branch"]  # only the branches have it until they are joined

    assert "'branch' is read here" in compile_error(unjoined).message

    def fine(s):
        with s.var_scope("scoped"):
            s += "text"
        forks = s.fork(2)
        forks += sgl.gen("branch", max_tokens=2)
        forks.join()
        s += s["scoped"] + str(len(s["branch"]))

    assert sgl.compile(fine, strict=True).run(backend=FakeBackend()).text() == "texttext2"


def test_a_read_an_appended_run_time_value_might_write_compiles():
    def prog(s, part, options):
        s += part  # could be sgl.gen("x") passed in
        s += "Pick:" + sgl.select("pick", choices=options)  # choices known at run time only
        s += s["x"] + s["pick"]

    compiled = sgl.compile(prog, strict=True)
    state = compiled.run(part="a" + sgl.gen("x", max_tokens=2), options=["p", "q"],
                         backend=FakeBackend())
    assert state.error() is None and state.text().startswith("a<")
    assert state.text().endswith(state["x"] + state["pick"])


class StepBackend(FakeBackend):
    """Answers "finish" once the prompt holds more than `finish_after` steps."""

    def __init__(self, finish_after: int):
        super().__init__()
        self.finish_after = finish_after

    def generate(self, prompt, params):
        n = prompt.count("Step ")
        return ("finish" if n > self.finish_after else f"act{n}"), {"prompt_tokens": len(prompt)}


def agent_loop(s, task):
    s += "Task: " + task + "\n"
    step, done = 0, False
    while not done and step < 4:  # the condition reads generated text; the counter bounds it
        s += f"Step {step}: " + sgl.gen("action", max_tokens=8, stop="\n") + "\n"
        done = "finish" in s["action"]
        step += 1
    s += "Steps taken: " + str(step)
    return step


def until_stop_or_three(s, task):
    s += task
    i = 0
    while True:
        s += "Step " + sgl.gen("a", max_tokens=2) + ";"
        if s["a"] == "finish" or i == 2:  # `i == 2` decides it at compile time
            break
        i += 1
    s += str(i)


@pytest.mark.parametrize("program", [agent_loop, until_stop_or_three])
def test_while_loops_that_read_generated_text_compile(program):
    compiled = sgl.compile(program, strict=True)
    assert compiled.compile_error is None
    ops = [compiled.graph.node(n).op for n in compiled.graph.nodes]
    assert Op.BRANCH in ops and Op.MERGE in ops  # the loop's exits are run-time branches
    for finish_after in range(6):
        eager = sgl.function(program).run(task="t", backend=StepBackend(finish_after))
        got = compiled.run(task="t", backend=StepBackend(finish_after))
        assert eager.error() is None and got.error() is None
        assert got.text() == eager.text() and got.ret_value == eager.ret_value, finish_after


def test_a_while_loop_nothing_bounds_runs_eagerly_with_advice():
    def prog(s):
        s += "x" + sgl.gen("a", max_tokens=2)
        while s["a"] != "stop":
            s += sgl.gen("a", max_tokens=2)

    err = compile_error(prog)
    assert "nothing bounds it" in err.message and "step < 8" in err.message
    assert err.line == prog.__code__.co_firstlineno + 2


def test_a_loop_over_a_list_argument_falls_back_once_located():
    def chat(s, questions):
        for q in questions:
            s += q + sgl.gen("a", max_tokens=2)

    with pytest.warns(CompileWarning, match="sets a loop range"):
        compiled = sgl.compile(chat)  # a fallback, not a program mistake
    err = compiled.compile_error
    assert not isinstance(err, ProgramCheckError)
    assert str(err).count(f"{__file__}:") == 1  # one location, not the wrapped message's too
    state = compiled.run(questions=["a", "b"], backend=FakeBackend())
    assert state.error() is None and state.text().startswith("a<")


def test_static_argument_without_default_needs_a_value():
    def prog(s, n):
        for _ in range(n):
            s += "x"

    assert "give it a default" in compile_error(prog).message
    compiled = sgl.compile(prog, strict=True, static={"n": 2})
    assert compiled.run(n=2, backend=FakeBackend()).text() == "xx"


def test_non_strict_falls_back_to_eager_with_a_warning_naming_the_line():
    def prog(s, n):
        s += "a"
        while n:
            s += "b"
            n -= 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = sgl.compile(prog)
    (w,) = [w for w in caught if issubclass(w.category, CompileWarning)]
    assert f"{__file__}:{prog.__code__.co_firstlineno + 2}:" in str(w.message)
    assert compiled.ir is None and compiled.compile_error is not None
    assert compiled.run(n=2, backend=FakeBackend()).text() == "abb"
    assert [st.text() for st in compiled.run_batch([{"n": 1}], backend=FakeBackend())] == ["ab"]


def test_decorator_forms():
    @sgl.compile
    def a(s):
        s += "a"

    @sgl.compile(strict=True, passes=[])
    @sgl.function
    def b(s):
        s += "b"

    assert isinstance(a, sgl.SglFunction) and a.run(backend=FakeBackend()).text() == "a"
    assert b.run(backend=FakeBackend()).text() == "b" and '{value="b"}' in b.ir
    assert str(sgl.ir.parse(b.ir)) == b.ir  # the text form reads back to the same graph
    assert str(b.graph) == b.ir and b.source_graph is not None
    assert b.bind().run(backend=FakeBackend()).text() == "b"


# ---- the executor -----------------------------------------------------------------------------
@sgl.function
def fan_out(s, q):
    s += "A long shared instruction that every program in the batch starts with. " * 2
    s += "Q: " + q + "\n"
    forks = s.fork(3)
    forks += "Answer:" + sgl.gen("a", max_tokens=4)
    forks.join()
    s += "Best:" + sgl.gen("best", max_tokens=2)


def test_fork_siblings_go_out_as_one_request_group_and_the_prefix_once():
    backend = FakeBackend(batched=True)
    states = sgl.compile(fan_out, strict=True).run_batch([{"q": f"q{i}"} for i in range(4)],
                                                         backend=backend)
    assert all(st.error() is None and len(st["a"]) == 3 for st in states)
    assert len(backend.batches) == 4 and all(len(b) == 3 for b in backend.batches)
    shared = "A long shared instruction that every program in the batch starts with. " * 2 + "Q: "
    assert backend.prefixes.count(shared) == 1  # the batch's constant prefix, once
    assert sum(p.endswith("Answer:") for p in backend.prefixes) == 4  # each fork's commit


def test_a_failed_batch_commit_fails_only_the_program_that_made_it():
    class Flaky(FakeBackend):
        def cache_prefix(self, prefix):
            if not prefix.endswith("Answer:"):
                raise RuntimeError("cache down")

    states = sgl.compile(fan_out, strict=True).run_batch([{"q": f"q{i}"} for i in range(3)],
                                                         backend=Flaky())
    assert [type(st.error()).__name__ for st in states] == ["RuntimeError", "NoneType",
                                                            "NoneType"]


def test_ready_requests_of_all_instances_are_in_flight_together():
    backend = FakeBackend(delay=0.05)
    states = sgl.compile(fan_out, strict=True).run_batch([{"q": f"q{i}"} for i in range(6)],
                                                         backend=backend)
    assert all(st.error() is None for st in states)
    assert backend.max_inflight >= 12  # 6 programs x 3 branches, not one program at a time


def test_run_raises_and_run_batch_keeps_errors_on_states():
    @sgl.function
    def prog(s, bad):
        s += "x" + sgl.gen("g")
        if not bad:
            s += sgl.gen("late")
        if bad:  # written on another path only: it fails when it runs
            s += s["late"]

    compiled = sgl.compile(prog, strict=True)
    with pytest.raises(sgl.ProgramError, match="no variable 'late'") as info:
        compiled.run(bad=True, backend=FakeBackend())
    assert any("while running %" in note for note in info.value.__notes__)
    ok, failed = compiled.run_batch([{"bad": False}, {"bad": True}], backend=FakeBackend())
    assert ok.error() is None and ok.text().startswith("x<") and ok.text().count("<") == 2
    assert isinstance(failed.error(), sgl.ProgramError)
    (bad_args,) = compiled.run_batch([{"nope": 1}], backend=FakeBackend())
    assert isinstance(bad_args.error(), sgl.ProgramError)


def test_snapshots_are_read_only_in_python_code():
    @sgl.function
    def prog(s):
        forks = s.fork(2)
        forks += sgl.gen("x")
        views = [f for f in forks]
        s += str(len(views))
        return sorted(v["x"] for v in views)

    compiled = sgl.compile(prog, strict=True)
    assert compiled.run(backend=FakeBackend()).ret_value == ["<0>", "<0>"]


@sgl.function
def _length(s):
    return len(s.text())


def test_python_code_reads_snapshots_as_program_states():
    """A snapshot in a compiled program's Python code is a (read-only) ProgramState: an
    @sgl.function called on it runs inline, text_iter reads it; appending or setting raises."""
    @sgl.function
    def prog(s):
        forks = s.fork(2)
        forks += sgl.gen("x")
        views = [f for f in forks]
        s += str(_length(views[0])) + "".join(views[1].text_iter("x"))
        return views

    eager = prog.run(backend=FakeBackend())
    compiled = sgl.compile(prog, strict=True).run(backend=FakeBackend())
    assert compiled.text() == eager.text() == "3<0>"
    view = compiled.ret_value[0]
    for mistake in (lambda: view.__iadd__("more"), lambda: view.user("hi"),
                    lambda: view.__setitem__("x", 1), lambda: view.fork(2)):
        with pytest.raises(sgl.ProgramError, match="snapshot"):
            mistake()


def test_streaming_pieces_concatenate_and_state_api_matches():
    @sgl.function
    def chat(s, q):
        s += sgl.system("sys")
        s += sgl.user(q)
        s += sgl.assistant(sgl.gen("a1", max_tokens=4))
        s += sgl.user("more")
        s += sgl.assistant(sgl.gen("a2", max_tokens=4))

    compiled = sgl.compile(chat, strict=True)
    eager = chat.run(q="hi", backend=FakeBackend())
    st = compiled.run(q="hi", stream=True, backend=FakeBackend())
    pieces = list(st.text_iter("a2"))
    assert "".join(pieces) == st["a2"] == eager["a2"] and len(pieces) >= 1
    st = compiled.run(q="hi", stream=True, backend=FakeBackend())
    assert "".join(st.text_iter()) == st.text() == eager.text()
    assert st.messages() == eager.messages()


def test_graph_is_a_networkx_dag_of_nodes():
    import networkx as nx

    g = sgl.compile(fan_out, strict=True).graph
    assert isinstance(g, nx.DiGraph) and nx.is_directed_acyclic_graph(g)
    assert {g.op(n) for n in g.nodes} >= {Op.BEGIN, Op.FORK, Op.CHILD, Op.JOIN, Op.GEN, Op.RET}


# ---- random control flow, compiled against eager ----------------------------------------------
def random_program(seed: int) -> str:
    """A program of nested ifs, loops, breaks, continues and returns on generated values."""
    import random

    rng = random.Random(seed)
    lines = ["import sglc as sgl", "", "", "@sgl.function", "def prog(s, pad):",
             "    s += pad + sgl.gen('v', max_tokens=2)", "    acc, x, w = 0, 0, s['v']"]

    def cond() -> str:
        return rng.choice([f"int(s['v'][1:-1]) % {rng.randint(2, 4)} == {rng.randint(0, 1)}",
                           f"acc > {rng.randint(0, 60)}", f"x == {rng.randint(0, 2)}"])

    def block(depth: int, in_loop: bool, indent: str) -> None:
        lines.append(f"{indent}pass")
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(["gen", "text", "x", "acc", "if", "for", "exit", "fork"]
                              if depth < 3 else ["gen", "text", "x", "acc", "exit"])
            if kind == "gen":  # read at once: the eager interpreter may return a stale value
                lines.append(f"{indent}s += '|{rng.randint(0, 9)}:' + sgl.gen('v', max_tokens=2)")
                lines.append(f"{indent}w = s['v']")  # of a name re-generated before a read
            elif kind == "text":
                lines.append(f"{indent}s += f'<{{acc}},{{x}}>'")
            elif kind == "x":
                lines.append(f"{indent}x = int(s['v'][1:-1]) % {rng.randint(2, 5)}")
            elif kind == "acc":
                lines.append(f"{indent}acc += x + {rng.randint(1, 9)}")
            elif kind == "if":
                lines.append(f"{indent}if {cond()}:")
                block(depth + 1, in_loop, indent + "    ")
                if rng.random() < 0.5:
                    lines.append(f"{indent}else:")
                    block(depth + 1, in_loop, indent + "    ")
            elif kind == "for":
                lines.append(f"{indent}for i{depth} in range({rng.randint(1, 3)}):")
                block(depth + 1, True, indent + "    ")
            elif kind == "fork":
                lines.append(f"{indent}forks = s.fork({rng.randint(1, 3)})")
                lines.append(f"{indent}forks += '|f' + sgl.gen('fv', max_tokens=2)")
                lines.append(f"{indent}for f in forks:")
                lines.append(f"{indent}    if int(f['fv'][1:-1]) % 2 == {rng.randint(0, 1)}:")
                lines.append(f"{indent}        f += 'even' + sgl.gen('fw', max_tokens=2)")
                if rng.random() < 0.3:
                    lines.append(f"{indent}        {rng.choice(['break', 'continue'])}")
                lines.append(f"{indent}forks.join({rng.choice(['', repr('concate_and_append')])})")
                lines.append(f"{indent}acc += len(s.text()) % 7")
            elif rng.random() < 0.3:
                lines.append(f"{indent}return acc")
            elif in_loop:
                lines.append(f"{indent}{rng.choice(['break', 'continue'])}")

    block(0, False, "    ")
    lines += ["    s += f'end {acc} {x}'", "    return acc, x", ""]
    return "\n".join(lines)


@pytest.mark.parametrize("seed", range(int(os.environ.get("SGLC_RANDOM_PROGRAMS", "40"))))
def test_random_control_flow_matches_eager(seed, tmp_path):
    path = tmp_path / f"prog_{seed}.py"
    path.write_text(random_program(seed))
    prog = load_module(path).prog
    compiled = sgl.compile(prog, strict=True)
    for pad in ("", "x", "xyz", "wxyz!", "abcdefg"):
        eager = prog.run(pad=pad, backend=FakeBackend())
        got = compiled.run(pad=pad, backend=FakeBackend())
        assert (got.text(), got.ret_value) == (eager.text(), eager.ret_value), path.read_text()
    assert str(parse(compiled.ir)) == compiled.ir
