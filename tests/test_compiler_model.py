"""Compiled and eager runs of every sample give the same text on the default model at
temperature 0, and compiled batches reuse the shared prefix."""

import dataclasses
import inspect

import pytest
from test_compiler import SAMPLES, load_module

import sglc as sgl
from sglc.lang.primitives import SglSamplingParams
from sglc.parser import CompileWarning

pytestmark = pytest.mark.model

ARGS = {
    "question": "Why is the sky blue?",
    "review": "Terrible service, I will never come back.",
    "text": "Marie Curie was a physicist and chemist born in Warsaw in 1867.",
    "topic": "sleeping well",
    "question_1": "What is the capital of Italy?",
    "question_2": "Name one landmark there.",
}


class GreedyRuntime(sgl.Runtime):
    """Every generation greedy, even a gen that asks for sampling, so runs are comparable."""

    def generate(self, prompt, params=None, **kwargs):
        if isinstance(params, SglSamplingParams):
            params = dataclasses.replace(params, temperature=0.0)
        return super().generate(prompt, params, **kwargs)

    def generate_stream(self, prompt, params):
        return super().generate_stream(prompt, dataclasses.replace(params, temperature=0.0))

    def generate_many(self, prompts, params):
        return super().generate_many(
            prompts, [dataclasses.replace(p, temperature=0.0) for p in params])

    def generate_program(self, prompt, steps):
        return super().generate_program(prompt, [
            (k, dataclasses.replace(v, temperature=0.0) if k == "gen" else v) for k, v in steps])


@pytest.fixture(scope="module")
def greedy(engine):
    return GreedyRuntime(engine=engine)


def sample_args(program) -> dict:
    params = list(inspect.signature(program.func).parameters.values())[1:]
    missing = [p.name for p in params if p.name not in ARGS and p.default is p.empty]
    assert not missing, f"add test values for {missing} to ARGS"
    return {p.name: ARGS[p.name] for p in params if p.name in ARGS}


@pytest.mark.parametrize("program", SAMPLES)
def test_compiled_matches_eager_at_temperature_0(program, greedy):
    args = sample_args(program)
    eager = program.run(backend=greedy, temperature=0, **args)
    compiled = sgl.compile(program, strict=True, backend=greedy)
    got = compiled.run(backend=greedy, temperature=0, **args)
    assert got.text() == eager.text()
    assert got.ret_value == eager.ret_value
    assert got.messages() == eager.messages()


def test_compiled_run_batch_shares_the_prefix_and_matches_eager(greedy, engine):
    few_shot = load_module(_sample_path("few_shot_qa"))
    questions = few_shot.QUESTIONS[:6]
    compiled = sgl.compile(few_shot.few_shot_qa, strict=True)
    states = compiled.run_batch([{"question": q} for q in questions], backend=greedy,
                                temperature=0)
    eager = [few_shot.few_shot_qa.run(question=q, backend=greedy, temperature=0)
             for q in questions]
    assert [st.text() for st in states] == [st.text() for st in eager]
    prefix_tokens = len(engine.tokenizer.encode(few_shot.EXAMPLES))
    cached = [st.get_meta_info("answer")["cached_tokens"] for st in states]
    assert min(cached) >= prefix_tokens - 2


def test_streamed_compiled_chat_matches_eager(greedy):
    chat = load_module(_sample_path("multi_turn_chat")).multi_turn_question
    args = {"question_1": ARGS["question_1"], "question_2": ARGS["question_2"]}
    eager = chat.run(backend=greedy, temperature=0, **args)
    st = sgl.compile(chat, strict=True).run(backend=greedy, temperature=0, stream=True, **args)
    assert "".join(st.text_iter("answer_2")) == eager["answer_2"]
    assert st.text() == eager.text()


def test_constraint_fsms_are_built_at_compile_time(greedy):
    from sglc_runtime.constrained import compile as fsm_compile

    extract = load_module(_sample_path("json_extraction")).extract_json
    compiled = sgl.compile(extract, strict=True, backend=greedy)
    (regex,) = [a["regex"] for n in compiled.graph.nodes
                for a in [compiled.graph.node(n).attrs] if "regex" in a]
    assert any(key[0] == regex for key in fsm_compile._MEMORY)


def _sample_path(stem: str):
    from test_compiler import ROOT

    return ROOT / "samples" / f"{stem}.py"


# ---- constructs the compiler follows since issue 12: compiled == eager at temperature 0 ---------
@sgl.function
def zip_judge(s, answer):
    dims = ["accuracy", "clarity", "style"]
    s += "Answer: " + answer + "\n"
    forks = s.fork(3)
    for f, dim in zip(forks, dims):
        f += f"Rate the {dim} from 1 to 5: " + sgl.gen("score", max_tokens=3, stop="\n")
    forks.join()
    s += "Scores: " + ", ".join(s["score"])


@sgl.function
def enumerate_inline_fork(s, answer):
    s += "Answer: " + answer + "\n"
    forks = s.fork(2)
    for i, (f, word) in enumerate(zip(forks, ["good", "bad"]), start=1):
        f += f"Reason {i} it is {word}:" + sgl.gen("why", max_tokens=6, stop="\n")
    forks.join()
    s += "Done: " + str(len(s["why"]))


@sgl.function
def while_counted(s, answer):
    s += "Answer: " + answer + "\nSteps:"
    n = 0
    while n < 3:
        s += f"\n{n + 1}." + sgl.gen("step", max_tokens=5, stop="\n")
        n += 1


@sgl.function
def while_generated(s, answer):
    s += "Answer: " + answer + "\nGive short reasons, one per line; write DONE when done.\n"
    step, done = 0, False
    while not done and step < 4:  # ends on generated text, bounded by the counter
        s += f"{step + 1}." + sgl.gen("reason", max_tokens=8, stop="\n") + "\n"
        done = "done" in s["reason"].lower() or len(s["reason"]) < 3
        step += 1
    s += f"({step} steps)"


@sgl.function
def helper(s, topic, n=2):
    s += f"Write {n} words about {topic}:" + sgl.gen("words", max_tokens=6, stop="\n")


@sgl.function
def helper_and_try(s, answer):
    helper(s, "the answer", n=3)
    try:
        s += "\nIs it right?" + sgl.select("ok", choices=[" yes", " no"])
    except Exception:
        s += "failed"
    forks = s.fork(2)
    forks += "\nAnother view:" + sgl.gen("view", max_tokens=5, stop="\n")
    views = [f["view"] for f in forks]
    s += "\nViews: " + " | ".join(views)


@pytest.mark.parametrize("program", [zip_judge, enumerate_inline_fork, while_counted,
                                     while_generated, helper_and_try])
def test_new_constructs_compile_and_match_eager(program, greedy):
    args = {"answer": "The sky is blue because of Rayleigh scattering."}
    compiled = sgl.compile(program, strict=True, backend=greedy)
    assert compiled.compile_error is None
    assert compiled.run(backend=greedy, temperature=0, **args).text() == \
        program.run(backend=greedy, temperature=0, **args).text()


def test_data_dependent_while_runs_eagerly_with_a_plain_reason(greedy):
    @sgl.function
    def until_yes(s):
        s += "Say yes:"
        while "yes" not in s.text().lower()[-20:] and len(s.text()) < 60:
            s += sgl.gen(max_tokens=3)

    with pytest.warns(CompileWarning, match="while.*nothing bounds it"):
        compiled = sgl.compile(until_yes)
    assert compiled.compile_error is not None and " object at 0x" not in str(compiled.compile_error)
    assert compiled.run(backend=greedy, temperature=0).text() == \
        until_yes.run(backend=greedy, temperature=0).text()
