"""Fork `n=` batching and API speculative execution on a scripted fake API backend (no model):
who calls what, that a failed branch never hangs its siblings, that mismatches raise."""

import threading

import pytest

import sglc as sgl
from sglc.lang.backend import BaseBackend, TokenUsage
from sglc.lang.chat_template import get_chat_template


class FakeAPI(BaseBackend):
    """Answers from `script(prompt, params)`; records every call."""

    speculative_execution = True
    supports_n = True

    def __init__(self, chat: bool, script):
        self.is_chat_model = chat
        self.script = script
        self.calls: list[tuple] = []
        self.lock = threading.Lock()
        self.token_usage = TokenUsage()

    def get_chat_template(self):
        return get_chat_template("chatgpt" if self.is_chat_model else "default")

    def generate(self, prompt, params):
        with self.lock:
            self.calls.append(("generate", prompt, params.max_new_tokens, params.stop))
        return self.script(prompt, params), {}

    def generate_n(self, prompt, params, n):
        with self.lock:
            self.calls.append(("generate_n", prompt, n))
        return [(f"{self.script(prompt, params)}#{i}", {}) for i in range(n)]


def test_fork_gens_batch_per_distinct_prompt():
    api = FakeAPI(chat=False, script=lambda p, sp: "x")

    @sgl.function
    def prog(s):
        s += "Q:"
        f = s.fork(4)
        f[3] += " different"
        f += sgl.gen("a", max_tokens=3)
        f.join()

    state = prog.run(backend=api)
    assert sorted(c[0] for c in api.calls) == ["generate", "generate_n"]
    assert ("generate_n", "Q:", 3) in api.calls
    assert sorted(state["a"]) == ["x", "x#0", "x#1", "x#2"]
    assert api.token_usage.num_calls_saved == 2


def test_failed_branch_does_not_hang_its_siblings():
    api = FakeAPI(chat=False, script=lambda p, sp: "ok")

    @sgl.function
    def prog(s):
        f = s.fork(3)
        f[1] += sgl.select("bad", choices=["a", "b"])  # the fake cannot select: branch 1 fails
        f += sgl.gen("a", max_tokens=2)
        f.join()

    done = threading.Event()
    result = {}

    def run():
        try:
            prog.run(backend=api)
        except Exception as e:  # noqa: BLE001
            result["error"] = e
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(30), "a failed branch left its siblings waiting"
    assert "error" in result
    assert ("generate_n", "", 2) in api.calls


def test_chat_speculation_fills_a_turn_from_one_call_or_raises():
    api = FakeAPI(chat=True, script=lambda p, sp: "Job: chemist\nCity: Paris\nmore")

    @sgl.function(num_api_spec_tokens=32)
    def prog(s):
        s += sgl.user("Who?")
        s += sgl.assistant("Job: " + sgl.gen("job", stop="\n") + "\nCity: "
                           + sgl.gen("city", stop="\n"))

    state = prog.run(backend=api)
    assert (state["job"], state["city"]) == ("chemist", "Paris")
    assert len(api.calls) == 1 and api.calls[0][1] == [{"role": "user", "content": "Who?"}]
    assert api.token_usage.num_calls_saved == 1
    api.script = lambda p, sp: "I will not follow the format."
    with pytest.raises(sgl.SglcError, match="does not follow"):
        prog.run(backend=api)


def test_completion_speculation_reuses_then_drops_the_rest():
    api = FakeAPI(chat=False, script=lambda p, sp: "A\nB: b1\nC: c1\n")

    @sgl.function(num_api_spec_tokens=32)
    def prog(s, second):
        s += "A:" + sgl.gen("a", stop="\n") + second + sgl.gen("b", stop="\n")

    state = prog.run(second="\nB:", backend=api)
    assert (state["a"], state["b"], len(api.calls)) == ("A", " b1", 1)
    api.calls.clear()
    state = prog.run(second="\nOther:", backend=api)  # the rest does not match: a new call
    assert (state["a"], state["b"], len(api.calls)) == ("A", "A", 2)
    assert [c[3] for c in api.calls] == [None, None]  # both calls speculate past the stop


def test_a_branch_failing_inside_the_same_append_does_not_hang_the_others():
    api = FakeAPI(chat=False, script=lambda p, sp: "ok")

    @sgl.function
    def prog(s):
        f = s.fork(3)
        f[2] += sgl.user_begin()  # so branch 2's next role fails, before its gen
        f += sgl.user("q") + sgl.gen("a", max_tokens=2)
        f.join()

    done = threading.Event()
    threading.Thread(target=lambda: (pytest.raises(sgl.SglcError, prog.run, backend=api),
                                     done.set()), daemon=True).start()
    assert done.wait(30), "branch 2's failure left branches 0 and 1 waiting"
    assert ("generate_n", "USER:q\n", 2) in api.calls
