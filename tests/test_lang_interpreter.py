"""CPU tests of the language and interpreter on a fake backend: semantics, concurrency, errors,
streaming and prefix tracing, without a model."""

import asyncio
import threading
import time

import pytest

import sglc as sgl
from sglc.lang import api
from sglc.lang.backend import BaseBackend
from sglc.lang.chat_template import ChatTemplate, get_chat_template
from sglc.lang.choices import ChoicesDecision
from sglc.lang.primitives import SglExprList, SglGen, SglSamplingParams, SglSelect
from sglc.lang.tracer import constant_prefix
from sglc_runtime.errors import InvalidRequestError


class FakeBackend(BaseBackend):
    """Generates `<N>` (N = prompt length), records every call, tracks concurrency."""

    def __init__(self, delay: float = 0.0, template: ChatTemplate | None = None):
        self.delay = delay
        self.template = template or get_chat_template("chatml")
        self.calls: list[tuple[str, dict, dict]] = []
        self.prefixes: list[str] = []
        self.selects: list[tuple[str, list]] = []
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()

    def get_chat_template(self):
        return self.template

    def stop_token_ids(self, stop_strs):
        return (2,) if "<|im_end|>" in stop_strs else ()

    def _enter(self):
        with self.lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        time.sleep(self.delay)
        with self.lock:
            self.inflight -= 1

    def generate(self, prompt, params):
        sp, lp = params.to_request()
        if sp.get("temperature", 1.0) < 0:
            raise InvalidRequestError("sampling parameter temperature: must be >= 0")
        self._enter()
        with self.lock:
            self.calls.append((prompt, sp, lp))
        return f"<{len(prompt)}>", {"prompt_tokens": len(prompt), "sp": sp}

    def generate_stream(self, prompt, params):
        text, meta = self.generate(prompt, params)
        for ch in text:
            time.sleep(0.001)
            yield ch, meta

    def select(self, prompt, choices, temperature, choices_method):
        self._enter()
        with self.lock:
            self.selects.append((prompt, choices))
        best = max(choices, key=len)
        return ChoicesDecision(best, {"method": repr(choices_method)})

    def cache_prefix(self, prefix):
        with self.lock:
            self.prefixes.append(prefix)


@pytest.fixture
def fake():
    backend = FakeBackend()
    before = sgl.get_default_backend()  # the session's runtime fixture may have set one
    sgl.set_default_backend(backend)
    yield backend
    sgl.set_default_backend(before)


# ---- primitives ---------------------------------------------------------------------------------
def test_expr_concatenation_and_gen_choices():
    e = "a" + sgl.gen("x") + "b"
    assert isinstance(e, SglExprList)
    assert [type(x).__name__ for x in e.flatten()] == ["SglConstantText", "SglGen",
                                                       "SglConstantText"]
    assert isinstance(sgl.gen("c", choices=["a", "b"]), SglSelect)
    assert isinstance(sgl.gen("g", 5), SglGen) and sgl.gen("g", 5).sampling_params.max_new_tokens == 5


def test_bad_gen_arguments_raise_sglc_errors():
    with pytest.raises(sgl.SglcError, match="dtype"):
        sgl.gen("x", dtype=list)
    with pytest.raises(sgl.SglcError, match="regex"):
        sgl.gen("x", regex="[a-")
    with pytest.raises(sgl.SglcError, match="choices"):
        sgl.select("x", choices=[])


def test_sampling_params_merge_and_request():
    defaults = SglSamplingParams(max_new_tokens=7, temperature=0.0, stop=["\n"])
    sp, lp = defaults.merge(SglSamplingParams(max_new_tokens=3, return_logprob=True)).to_request()
    assert sp == {"max_new_tokens": 3, "temperature": 0.0, "stop": ["\n"]}
    assert lp == {"return_logprob": True}
    sp, _ = SglSamplingParams(dtype=int).to_request()
    assert sp == {"dtype": "int", "stop": [" ", "\n"]}
    sp, _ = SglSamplingParams(json_schema={"type": "integer"}).to_request()
    assert sp == {"json_schema": '{"type": "integer"}'}
    extra = SglSamplingParams(stop="x").with_extra_stop(("<|im_end|>",), (2,))
    assert extra.stop == ["x", "<|im_end|>"] and extra.stop_token_ids == [2]


# ---- state ----------------------------------------------------------------------------------------
def test_gen_variables_text_and_meta(fake):
    @sgl.function
    def prog(s, q):
        s += "Q: " + q + "\nA:" + sgl.gen("a", max_tokens=5, stop="\n")
        assert "a" in s and "zzz" not in s
        s += " then " + sgl.gen("b")
        s["c"] = "set"

    st = prog.run(q="hi", temperature=0)
    assert st["a"] == "<8>" and st.text() == "Q: hi\nA:<8> then <17>"
    assert st["c"] == "set" and st.get_meta_info("a")["sp"]["max_new_tokens"] == 5
    assert fake.calls[0][1] == {"max_new_tokens": 5, "stop": ["\n"], "temperature": 0,
                                "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                                "frequency_penalty": 0.0, "presence_penalty": 0.0,
                                "ignore_eos": False}
    assert fake.calls[1][1]["max_new_tokens"] == 128  # run's default
    with pytest.raises(sgl.ProgramError, match="no variable 'nope'"):
        st["nope"]


def test_gen_parameters_reach_the_backend(fake):
    @sgl.function
    def prog(s):
        s += sgl.system_begin() + "sys" + sgl.system_end()
        s += sgl.user_begin() + "hi" + sgl.user_end()
        s += "x" + sgl.gen("g", 4, min_tokens=2, stop=["a", "b"], stop_token_ids=[5],
                           temperature=0.5, top_p=0.9, top_k=3, min_p=0.1,
                           frequency_penalty=0.5, presence_penalty=0.2, ignore_eos=True,
                           return_logprob=True, logprob_start_len=0, top_logprobs_num=2,
                           regex="[a-z]+")
        s.sync()
        assert s.text().endswith("x" + s["g"])

    prog.run(repetition_penalty=1.1)
    _, sp, lp = fake.calls[0]
    assert sp == {"max_new_tokens": 4, "min_new_tokens": 2, "stop": ["a", "b"],
                  "stop_token_ids": [5], "temperature": 0.5, "top_p": 0.9, "top_k": 3,
                  "min_p": 0.1, "frequency_penalty": 0.5, "presence_penalty": 0.2,
                  "repetition_penalty": 1.1, "ignore_eos": True, "regex": "[a-z]+"}
    assert lp == {"return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 2}


def test_roles_chat_template_and_messages(fake):
    @sgl.function
    def chat(s):
        s += sgl.system("Be brief.")
        s += sgl.user("Hi")
        s += sgl.assistant(sgl.gen("r1", stop="."))
        with s.user():
            s += "More"
        s += sgl.assistant_begin() + sgl.gen("r2") + sgl.assistant_end()

    st = chat.run()
    tail = "<|im_start|>user\nMore<|im_end|>\n<|im_start|>assistant\n"
    assert st.text().startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
                                "Hi<|im_end|>\n<|im_start|>assistant\n<")
    assert tail in st.text() and st.text().endswith("<|im_end|>\n")
    assert st.messages() == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": st["r1"]}, {"role": "user", "content": "More"},
        {"role": "assistant", "content": st["r2"]}]
    # the template's end of turn stops gens inside an assistant role
    assert fake.calls[0][1]["stop"] == [".", "<|im_end|>"]
    assert fake.calls[0][1]["stop_token_ids"] == [2]


def test_default_system_prompt_and_gen_outside_assistant(fake):
    fake.template = ChatTemplate("t", "Default sys.", get_chat_template("chatml")
                                 .role_prefix_and_suffix, ("<|im_end|>",))

    @sgl.function
    def chat(s):
        s += sgl.user("Hi " + sgl.gen("x"))

    st = chat.run()
    assert st.messages()[0] == {"role": "system", "content": "Default sys."}
    assert "stop" not in fake.calls[0][1]


def test_role_misuse_raises_with_location(fake):
    @sgl.function
    def nested(s):
        s += sgl.user_begin()
        s += sgl.assistant_begin()

    with pytest.raises(sgl.ProgramError, match="roles do not nest") as exc:
        nested.run()
    assert any("test_lang_interpreter.py" in n for n in exc.value.__notes__)

    @sgl.function
    def mismatched(s):
        s += sgl.user_begin() + "x" + sgl.assistant_end()

    with pytest.raises(sgl.ProgramError, match="open role is 'user'"):
        mismatched.run()


def test_var_scope_and_bind(fake):
    @sgl.function
    def prog(s, a, b):
        s += "start "
        with s.var_scope("scoped"):
            s += a + b + sgl.gen("g")

    st = prog.bind(a="x").run(b="y")
    assert st["scoped"] == "xy<8>"
    with pytest.raises(sgl.ProgramError, match="no parameter"):
        prog.bind(c=1)


# ---- forks ----------------------------------------------------------------------------------------
def test_fork_copies_state_and_join_gathers_lists(fake):
    @sgl.function
    def prog(s):
        s += sgl.user("Question")
        s += "A" + sgl.gen("first")
        forks = s.fork(3)
        assert fake.prefixes == [s.text()]  # the shared prefix is committed once
        forks += lambda i: f" branch {i}:"
        forks += sgl.gen("ans")
        for f in forks:
            assert f["first"] == s["first"] and f.messages() == s.messages()
        expected = [f"<{len(s.text() + f' branch {i}:')}>" for i in range(3)]
        assert [forks[i]["ans"] for i in range(3)] == expected
        forks.join()
        return expected

    st = prog.run()
    assert st["ans"] == st.ret_value and "ans" not in st.text()


def test_fork_before_text_fork1_nested_and_concat(fake):
    @sgl.function
    def prog(s):
        forks = s.fork(2)  # before any text: nothing to commit
        forks += ["x", "yy"]
        forks += sgl.gen("g")
        forks.join("concate_and_append")
        one = s.fork(1)  # a single branch never commits
        one += sgl.gen("solo")
        one.join()
        outer = s.fork(2)
        for f in outer:
            inner = f.fork(2)
            inner += sgl.gen("leaf")
            inner.join()
        outer.join()

    st = prog.run()
    assert st.text() == "x<1>yy<2>"
    assert fake.prefixes == ["x<1>yy<2>", "x<1>yy<2>", "x<1>yy<2>"]  # outer, then 2 inner
    assert st["solo"] == ["<9>"] and st["leaf"] == [["<9>", "<9>"], ["<9>", "<9>"]]


def test_copy_context_manager(fake):
    @sgl.function
    def prog(s):
        s += "base"
        with s.copy() as c:
            c += sgl.gen("side")
        s += sgl.gen("main")

    st = prog.run()
    assert st["side"] == ["<4>"] and st.text() == "base<4>"
    with pytest.raises(sgl.ProgramError, match="has ended"):
        st += "more"


def test_forks_run_concurrently():
    fake = FakeBackend(delay=0.1)

    @sgl.function
    def prog(s):
        s += "p"
        forks = s.fork(8)
        forks += sgl.gen("x")
        forks.join()

    prog.run(backend=fake)
    assert fake.max_inflight == 8


# ---- run_batch ----------------------------------------------------------------------------------
def test_run_batch_concurrent_ordered_and_isolates_failures():
    fake = FakeBackend(delay=0.05)

    @sgl.function
    def prog(s, i):
        if i == 7:
            raise ValueError("program 7 fails")
        s += "item " + str(i) + ":" + sgl.gen("out", temperature=-1 if i == 9 else None)

    t0 = time.perf_counter()
    states = prog.run_batch([{"i": i} for i in range(48)], backend=fake, progress_bar=True)
    assert time.perf_counter() - t0 < 48 * 0.05 / 2
    assert fake.max_inflight >= 24
    assert isinstance(states[7].error(), ValueError)
    assert isinstance(states[9].error(), InvalidRequestError)
    for i, st in enumerate(states):
        if i not in (7, 9):
            assert st.error() is None and st["out"] == f"<{len(f'item {i}:')}>"
    assert prog.run_batch([(1,), (2,)], backend=fake)[1].text() == "item 2:<7>"
    assert prog.run_batch([], backend=fake) == []


def test_run_raises_program_and_backend_errors(fake):
    @sgl.function
    def boom(s):
        s += "x"
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        boom.run()

    @sgl.function
    def bad_param(s):
        s += "x" + sgl.gen("g", temperature=-1)
        s += "never" + sgl.gen("h")

    with pytest.raises(InvalidRequestError, match="temperature"):
        bad_param.run()
    assert len(fake.calls) == 0

    @sgl.function
    def reads_after_failure(s):
        s += "x" + sgl.gen("g", temperature=-1)
        s += "y" + sgl.gen("h")  # skipped; reading it must not hang
        return s["h"]

    with pytest.raises(InvalidRequestError):
        reads_after_failure.run()


# ---- streaming --------------------------------------------------------------------------------
def test_stream_pieces_concatenate(fake):
    @sgl.function
    def prog(s):
        s += "Hello" + sgl.gen("a") + " and " + sgl.gen("b")

    st = prog.run(stream=True)
    pieces = list(st.text_iter("b"))
    assert len(pieces) > 1 and "".join(pieces) == st["b"] == "<13>"
    st = prog.run(stream=True)
    assert "".join(st.text_iter()) == st.text() == "Hello<5> and <13>"

    async def collect():
        st = prog.run(stream=True)
        return [p async for p in st.text_async_iter("a")], st

    pieces, st = asyncio.run(collect())
    assert "".join(pieces) == st["a"]
    assert list(prog.run().text_iter("a")) == ["<5>"]  # not streaming: one piece


def test_stream_error_surfaces_from_text_iter(fake):
    @sgl.function
    def prog(s):
        s += "x" + sgl.gen("a", temperature=-1)

    st = prog.run(stream=True)
    with pytest.raises(InvalidRequestError):
        list(st.text_iter())
    assert isinstance(st.error(), InvalidRequestError)


# ---- tracing the batch's constant prefix ------------------------------------------------------------
FEW_SHOT = "Examples of questions and answers, repeated for length. " * 3


def test_constant_prefix_stops_at_varying_arguments(fake):
    @sgl.function
    def prog(s, shots, question):
        s += sgl.system(shots)
        s += sgl.user("Q: " + question)
        s += sgl.assistant(sgl.gen("a"))

    batch = [{"shots": FEW_SHOT, "question": q} for q in ("a?", "b?")]
    prefix = constant_prefix(prog, fake, batch, SglSamplingParams())
    assert prefix == f"<|im_start|>system\n{FEW_SHOT}<|im_end|>\n"
    prog.run_batch(batch)
    assert fake.prefixes == [prefix]
    all_same = [{"shots": FEW_SHOT, "question": "a?"}] * 2
    assert constant_prefix(prog, fake, all_same, SglSamplingParams()).endswith(
        "Q: a?<|im_end|>\n<|im_start|>assistant\n")


def test_constant_prefix_stops_on_branches_and_formatting(fake):
    @sgl.function
    def branchy(s, flag, name):
        s += FEW_SHOT
        try:
            s += f"Hello {name}"
        except Exception:  # noqa: BLE001 - a program's own handler does not swallow the trace's stop
            s += "WRONG"
        if flag:
            s += "yes"

    batch = [{"flag": True, "name": "a"}, {"flag": True, "name": "b"}]
    assert constant_prefix(branchy, fake, batch, SglSamplingParams()) == FEW_SHOT


# ---- backends ----------------------------------------------------------------------------------
def test_lazy_default_runtime_is_shared(monkeypatch):
    import sglc.backend.runtime as rt

    made = []
    monkeypatch.setattr(rt, "Runtime", lambda: made.append(object()) or made[-1])
    monkeypatch.setattr(api, "_lazy_runtime", None)
    monkeypatch.setattr(api, "_default_backend", None)
    assert api.resolve_backend() is api.resolve_backend() is made[0] and len(made) == 1
    explicit = FakeBackend()
    assert api.resolve_backend(explicit) is explicit


def test_lazy_exports():
    from sglc.backend.runtime import Runtime
    from sglc_runtime.engine import Engine

    assert sgl.Engine is Engine and sgl.Runtime is Runtime
    with pytest.raises(AttributeError):
        _ = sgl.nonexistent


def test_runtime_passes_engine_arguments(monkeypatch):
    import sglc.backend.runtime as rt

    class StubEngine:
        tokenizer = None

        def __init__(self, model_path=None, **kwargs):
            self.args = {"model_path": model_path, **kwargs}

        def shutdown(self):
            self.args["shut"] = True

    monkeypatch.setattr(rt, "Engine", StubEngine)
    r = sgl.Runtime("m.gguf", disable_radix_cache=True, max_total_tokens=512, port=30000)
    assert r.engine.args == {"model_path": "m.gguf", "disable_radix_cache": True,
                             "max_total_tokens": 512}
    r.shutdown()
    assert r.engine.args["shut"]
    shared = StubEngine()
    wrapped = sgl.Runtime(engine=shared)
    wrapped.shutdown()  # not its engine: left running
    assert "shut" not in shared.args


def test_reading_a_name_generated_twice_waits_for_the_last_write():
    backend = FakeBackend(delay=0.01)

    @sgl.function
    def prog(s):
        s += "a" + sgl.gen("v", max_tokens=4)
        s += "bb" + sgl.gen("v", max_tokens=4)
        s += "ccc" + sgl.gen("v", max_tokens=4)
        return s["v"]

    for _ in range(20):
        state = prog.run(backend=backend)
        assert state.ret_value == state["v"] == f"<{len(state.text()) - len(state['v'])}>"
        assert state.text().endswith("ccc" + state["v"])


def test_calling_a_function_on_a_state_runs_it_inline(fake):
    @sgl.function
    def greet(s, name):
        s += "Hello, " + name + ". " + sgl.gen("reply", max_tokens=4)

    @sgl.function
    def outer(s):
        s += "Start. "
        greet(s, "Ada")
        s += " End."

    state = outer.run(backend=fake)
    assert state.text().startswith("Start. Hello, Ada. <") and state.text().endswith(" End.")
    assert "reply" in state


def test_setting_variables_while_the_worker_appends_loses_nothing(fake):
    """`s[name] = v` (the program's thread) and queued appends (the worker) both change the
    state; neither may overwrite the other's change."""
    import sys

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        @sgl.function
        def prog(s, n):
            for i in range(n):
                s += "a"
                s[f"v{i}"] = i

        state = prog.run(n=4000, backend=fake)
    finally:
        sys.setswitchinterval(old)
    assert state.text() == "a" * 4000
    assert all(state[f"v{i}"] == i for i in range(4000))
