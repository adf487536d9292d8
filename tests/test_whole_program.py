"""Whole-program execution: a gen/text/gen segment runs as one engine request that continues in
place (sglc_runtime/continuation.py), and gives exactly what gen-by-gen requests give."""

import json
import re

import pytest

import sglc as sgl
from sglc.lang.chat_template import ChatTemplate, get_chat_template
from sglc_runtime.errors import InvalidRequestError

pytestmark = pytest.mark.model

PROMPT = "Question: What is the capital of France?\nAnswer:"
PROGRAM = [
    {"gen": {"max_new_tokens": 8, "temperature": 0, "stop": "\n"}},
    {"text": "\nQuestion: And the capital of Italy?\nAnswer:"},
    {"gen": {"max_new_tokens": 8, "temperature": 0, "stop": ["\n", "."]}},
    {"text": "\nAda Lovelace was born in the year "},
    {"gen": {"max_new_tokens": 6, "temperature": 0, "regex": r"1[0-9]{3}"}},
    {"text": ".\nIs Paris in France (True/False)? "},
    {"gen": {"max_new_tokens": 4, "temperature": 0, "dtype": "bool"}},
    {"text": "!"},
]


def gen_by_gen(engine, prompt, program):
    """The same program as one request per gen, the text so far as each prompt."""
    text, results = prompt, []
    for step in program:
        if "text" in step:
            text += step["text"]
        else:
            out = engine.generate(prompt=text, sampling_params=step["gen"])
            results.append(out)
            text += out["text"]
    return text, results


def test_program_equals_gen_by_gen_requests(engine):
    before = engine.stats()
    out = engine.generate_program(PROMPT, PROGRAM)
    after = engine.stats()
    text, reference = gen_by_gen(engine, PROMPT, PROGRAM)
    assert [g["text"] for g in out["gens"]] == [r["text"] for r in reference]
    assert PROMPT + out["text"] == text
    for got, want in zip(out["gens"], reference):  # each gen saw the same prompt tokens
        assert got["meta_info"]["prompt_tokens"] == want["meta_info"]["prompt_tokens"]
        assert got["meta_info"]["finish_reason"] == want["meta_info"]["finish_reason"]
    assert re.fullmatch(r"1[0-9]{3}", out["gens"][2]["text"])
    assert out["gens"][3]["text"] in ("True", "False")
    # later gens kept the K/V of everything before them (no re-prefill, no re-match)
    assert all(g["meta_info"]["cached_tokens"] >= r["meta_info"]["prompt_tokens"] - 16
               for g, r in zip(out["gens"][1:], reference[:-1]))
    assert after["num_prompt_tokens"] - before["num_prompt_tokens"] == sum(
        r["meta_info"]["prompt_tokens"] for r in reference)
    engine.check_invariants()


def test_retokenized_tail_is_recomputed(engine):
    """A gen whose ids do not survive re-tokenization (a skipped special token mid-output):
    the K/V from the first changed token on must be recomputed, not reused."""
    prompt = ("<|im_start|>user\nWhat is 2+2? Answer with one word.<|im_end|>\n"
              "<|im_start|>assistant\n")
    program = [{"gen": {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}},
               {"text": "<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n"},
               {"gen": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}}]
    assert engine.flush_cache()
    text, reference = gen_by_gen(engine, prompt, program)
    assert engine.flush_cache()
    out = engine.generate_program(prompt, program)
    assert out["gens"][1]["text"].strip()
    # exactly the tokens a new request would find in the cache are kept
    assert out["gens"][1]["meta_info"]["cached_tokens"] == \
        reference[1]["meta_info"]["cached_tokens"]
    first = reference[0]["output_ids"]
    assert engine.tokenizer.encode(prompt + reference[0]["text"])[-len(first):] != first
    assert prompt + out["text"] == text
    assert out["gens"][1]["meta_info"]["prompt_tokens"] == \
        reference[1]["meta_info"]["prompt_tokens"]
    engine.check_invariants()


def test_async_program_and_concurrent_programs(engine):
    import asyncio

    prompts = [f"Write the number {i} in words:" for i in range(4)]
    program = [{"gen": {"max_new_tokens": 5, "temperature": 0}}, {"text": " and in digits:"},
               {"gen": {"max_new_tokens": 3, "temperature": 0}}]

    async def run_all():
        return await asyncio.gather(*[engine.async_generate_program(p, program)
                                      for p in prompts])

    outs = asyncio.run(run_all())
    for p, out in zip(prompts, outs):
        text, _ = gen_by_gen(engine, p, program)
        assert p + out["text"] == text
    engine.check_invariants()


@pytest.mark.parametrize("program, message", [
    ([{"text": "hi"}], "at least one gen"),
    ([{"gen": {"max_new_tokens": 2}}, {"txt": "x"}], "program step 1"),
    ([{"gen": {"max_new_tokens": 2, "n": 2}}], "n=2"),
    ([{"gen": {"max_tokens": 2}}], "unknown sampling parameter"),
    ("gen", "must be a list"),
])
def test_bad_programs_are_refused_by_name(engine, program, message):
    with pytest.raises(InvalidRequestError, match=message):
        engine.generate_program("Hello", program)
    assert engine.generate(prompt="Hello", sampling_params={"max_new_tokens": 2})["text"]


def test_program_outgrowing_the_context_fails_alone(engine):
    filler = " word" * engine.context_length
    program = [{"gen": {"max_new_tokens": 2, "temperature": 0}}, {"text": filler},
               {"gen": {"max_new_tokens": 2}}]
    with pytest.raises(InvalidRequestError, match="context length"):
        engine.generate_program("Hello", program)
    engine.check_invariants()
    assert engine.generate(prompt="Hello", sampling_params={"max_new_tokens": 2})["text"]


# ---- compiled programs ---------------------------------------------------------------------------
@sgl.function
def interview(s, name):
    s += sgl.system("You are a helpful assistant. Answer in one short sentence.")
    s += sgl.user(f"Who was {name}?")
    s += sgl.assistant(sgl.gen("who", max_tokens=24))
    s += sgl.user(name)  # an argument: known before the first gen, so it rides along
    s += sgl.assistant(sgl.gen("again", max_tokens=16))
    s += "\nBorn in: " + sgl.gen("year", regex=r"1[0-9]{3}", max_tokens=6) + "\n"


class CountingRuntime(sgl.Runtime):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = {"generate": 0, "program": 0}

    def generate(self, prompt, params=None, **kwargs):
        self.calls["generate"] += 1
        return super().generate(prompt, params, **kwargs)

    def generate_program(self, prompt, steps):
        self.calls["program"] += 1
        return super().generate_program(prompt, steps)


@pytest.fixture
def counting(engine):
    return CountingRuntime(engine=engine)


def test_compiled_program_runs_as_one_request_per_program(counting):
    args = [{"name": n} for n in ("Ada Lovelace", "Alan Turing", "Grace Hopper")]
    eager = interview.run_batch(args, backend=counting, temperature=0)
    assert counting.calls == {"generate": 9, "program": 0}
    counting.calls.update(generate=0, program=0)
    compiled = sgl.compile(interview, strict=True, backend=counting)
    got = compiled.run_batch(args, backend=counting, temperature=0)
    assert counting.calls == {"generate": 0, "program": 3}
    assert [s.text() for s in got] == [s.text() for s in eager]
    assert [s.messages() for s in got] == [s.messages() for s in eager]
    for s, e in zip(got, eager):
        assert re.fullmatch(r"1[0-9]{3}", s["year"])
        assert s.get_meta_info("who")["finish_reason"] == e.get_meta_info("who")["finish_reason"]


class ContentTemplate(ChatTemplate):
    """A template whose user turn names the length of the previous answer: the text after a
    gen then depends on what it generated, so a segment's prediction is wrong."""

    def get_prefix_and_suffix(self, role, hist_messages):
        prefix, suffix = super().get_prefix_and_suffix(role, hist_messages)
        if role == "user" and hist_messages and hist_messages[-1]["role"] == "assistant":
            prefix += f"(after {len(hist_messages[-1]['content'])} characters) "
        return prefix, suffix


def test_wrong_prediction_goes_on_node_by_node(engine):
    base = get_chat_template("chatml")
    template = ContentTemplate(**{k: getattr(base, k) for k in (
        "name", "default_system_prompt", "role_prefix_and_suffix", "stop_str", "style")})
    rt = CountingRuntime(engine=engine, chat_template=template)
    eager = interview.run(name="Ada Lovelace", backend=rt, temperature=0)
    rt.calls.update(generate=0, program=0)
    got = sgl.compile(interview, strict=True, backend=rt).run(name="Ada Lovelace",
                                                              backend=rt, temperature=0)
    assert got.text() == eager.text() and "characters) Ada Lovelace" in got.text()
    # the first segment stopped at the mispredicted gen, which started a segment of its own
    assert rt.calls == {"generate": 0, "program": 2}


def test_compiled_program_over_http_uses_the_program_route(base_url, runtime):
    endpoint = sgl.RuntimeEndpoint(base_url)
    assert endpoint.supports_programs
    calls = []
    inner = endpoint.engine.generate_program
    endpoint.engine.generate_program = lambda *a: calls.append(a) or inner(*a)
    compiled = sgl.compile(interview, strict=True, backend=endpoint)
    remote = compiled.run(name="Alan Turing", backend=endpoint, temperature=0)
    local = interview.run(name="Alan Turing", backend=runtime, temperature=0)
    assert len(calls) == 1 and remote.text() == local.text()


def test_program_route_refuses_bad_input(base_url):
    import urllib.error
    import urllib.request

    body = json.dumps({"text": "Hi", "program": [{"gen": {"n": 3}}]}).encode()
    req = urllib.request.Request(base_url + "/generate_program", data=body,
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400 and "n=3" in e.value.read().decode()
