"""SGLang frontend API gaps (issue 16), one test each, in SGLang's program style."""

import asyncio
import re

import pytest

import sglc as sgl
from sglc.lang.choices import ChoicesDecision  # noqa: F401 - importable as in SGLang


# ---- no model needed ---------------------------------------------------------------------------
def test_choices_methods_against_hand_computed_logprobs():
    choices = ["A", "BB", "CCC"]
    lps = [[(-1.0, 1, "A")], [(-0.5, 2, "B"), (-2.5, 3, "B")], [(-0.2, 4, "C"), (-0.2, 5, "C"),
                                                                (-0.2, 6, "C")]]
    # the backend's normalized logprobs decide, even where they disagree with the token means
    d = sgl.token_length_normalized(choices=choices, normalized_prompt_logprobs=[-0.1, -1.5, -0.3],
                                    input_token_logprobs=lps, output_token_logprobs=[[]] * 3)
    assert d.decision == "A"
    d = sgl.greedy_token_selection(choices=choices, normalized_prompt_logprobs=[0, 0, 0],
                                   input_token_logprobs=lps, output_token_logprobs=[[]] * 3)
    assert d.decision == "CCC"  # first tokens: -1.0, -0.5, -0.2
    uncond = [[(None, 1, "A")], [(None, 2, "B"), (-0.5, 3, "B")],
              [(None, 4, "C"), (-0.1, 5, "C"), (-0.1, 6, "C")]]
    d = sgl.unconditional_likelihood_normalized(
        choices=choices, normalized_prompt_logprobs=[0, 0, 0], input_token_logprobs=lps,
        output_token_logprobs=[[]] * 3, unconditional_token_logprobs=uncond)
    # means of (cond - uncond): A -1.0, BB (-0.5 - 2.0)/2 = -1.25, CCC (-0.2 - 0.1 - 0.1)/3
    assert d.decision == "CCC"
    assert d.meta_info["normalized_unconditional_prompt_logprobs"] == pytest.approx(
        [-1.0, -1.25, -0.4 / 3])


def test_module_paths_and_names_programs_import():
    from sglc.lang.backend.base_backend import BaseBackend
    from sglc.lang.backend.openai import OpenAI
    from sglc.lang.backend.runtime_endpoint import RuntimeEndpoint
    from sglc.lang.chat_template import get_chat_template
    from sglc.lang.ir import SglExpr, SglGen, SglSelect
    from sglc.srt.constrained.outlines_backend import build_regex_from_object
    from sglc.utils import dump_state_text, print_highlight, read_jsonl  # noqa: F401

    assert issubclass(OpenAI, BaseBackend) and issubclass(RuntimeEndpoint, BaseBackend)
    assert isinstance(sgl.gen("x"), SglGen) and isinstance(sgl.select("y", ["a"]), SglSelect)
    assert issubclass(SglGen, SglExpr) and get_chat_template("chatml").stop_str
    regex = build_regex_from_object({"type": "object", "properties": {
        "age": {"type": "integer"}}, "required": ["age"]})
    assert re.fullmatch(regex, '{"age": 42}') and not re.fullmatch(regex, '{"age": "x"}')

    class Person:  # a pydantic-style model class
        @staticmethod
        def model_json_schema():
            return {"type": "object", "properties": {"name": {"type": "string"}},
                    "required": ["name"]}

    assert re.fullmatch(build_regex_from_object(Person), '{"name": "Ada"}')


def test_global_config_and_image_video_errors():
    old = sgl.global_config.default_backend
    try:
        sentinel = object()
        sgl.global_config.default_backend = sentinel
        assert sgl.get_default_backend() is sentinel
    finally:
        sgl.set_default_backend(old)
    with pytest.raises(sgl.SglcError, match="text-only"):
        sgl.image("cat.png")
    with pytest.raises(sgl.SglcError, match="text-only"):
        sgl.video("clip.mp4")


def test_gen_arguments_in_sglangs_order():
    g = sgl.gen("x", 16, 2, 3, ["\n"], [7], r"\d+")  # name, max, min, n, stop, ids, stop_regex
    sp = g.sampling_params
    assert (sp.max_new_tokens, sp.min_new_tokens, sp.n, sp.stop, sp.stop_token_ids,
            sp.stop_regex) == (16, 2, 3, ["\n"], [7], r"\d+")


def test_unknown_engine_arguments_name_close_matches_and_sglang_ones_are_accepted():
    from sglc_runtime.engine import engine_arguments
    from sglc_runtime.errors import InvalidRequestError

    assert engine_arguments({"tp_size": 2, "mem_fraction_static": 0.8,
                             "incremental_streaming_output": True, "dtype": "float32"}) == \
        {"dtype": "float32"}
    with pytest.raises(InvalidRequestError, match="did you mean 'disable_radix_cache'"):
        engine_arguments({"disable_radix_cach": True})


# ---- on the default model ------------------------------------------------------------------------
@pytest.mark.model
def test_max_tokens_zero_top_logprobs_gives_the_next_token_top_k(runtime, engine):
    @sgl.function
    def next_token(s):
        s += "The capital of France is"
        s += sgl.gen("nxt", max_tokens=0, return_logprob=True, top_logprobs_num=5,
                     return_text_in_logprobs=True)

    top = next_token.run(temperature=0).get_meta_info("nxt")["output_top_logprobs"][0]
    assert len(top) == 5 and all(len(t) == 3 for t in top)
    greedy = engine.generate("The capital of France is", {"max_new_tokens": 1, "temperature": 0})
    assert top[0][1] == greedy["output_ids"][0]  # the top-1 is what greedy picks


@pytest.mark.model
def test_stop_regex_n_use_thread_and_generator_style(runtime):
    @sgl.function
    def count(s):
        s += "1, 2, 3, 4, 5," + sgl.gen("rest", max_tokens=30, stop_regex=r" [89],")

    assert count.run(temperature=0)["rest"] == " 6, 7,"
    assert count.run(temperature=0, use_thread=False)["rest"] == " 6, 7,"

    @sgl.function
    def q(s, question):
        s += "Q: " + question + "\nA:" + sgl.gen("a", max_tokens=6, stop="\n")

    args = [{"question": x} for x in ("What is 2+2?", "Name a color.", "Name a fruit.")]
    gen = q.run_batch(args, temperature=0, generator_style=True)
    assert not isinstance(gen, list)
    assert [s["a"] for s in gen] == [s["a"] for s in q.run_batch(args, temperature=0)]
    many = sgl.gen("m", max_tokens=3, n=2, temperature=1.0)

    @sgl.function
    def samples(s):
        s += "Colors:" + many

    assert len(samples.run()["m"]) == 2


@pytest.mark.model
def test_stream_meta_data_per_chunk(runtime):
    @sgl.function
    def story(s):
        s += "Once upon a time" + sgl.gen("story", max_tokens=12, return_logprob=True)

    async def read():
        state = story.run(temperature=0, stream=True)
        chunks = []
        async for piece, meta in state.text_async_iter("story", return_meta_data=True):
            chunks.append((piece, meta))
        return state, chunks

    state, chunks = asyncio.run(read())
    assert chunks and "".join(p for p, _ in chunks) == state["story"]
    seen = 0
    for piece, meta in chunks:  # SGLang's form: each chunk carries its own tokens' logprobs
        assert piece and meta["completion_tokens"] == meta["output_token_logprobs_length"]
        assert len(meta["output_token_logprobs"]) == meta["completion_tokens"] - seen
        seen = meta["completion_tokens"]
    assert seen == state.get_meta_info("story")["completion_tokens"] > 0


@pytest.mark.model
def test_separate_reasoning_trace_cache_and_token_usage(runtime):
    @sgl.function
    def think(s):
        s += "Reply with <think>why</think> then the answer. Q: 2+2?\nA:"
        s += sgl.separate_reasoning(sgl.gen("answer", max_tokens=20,
                                            regex=r"<think>[a-z ]{1,12}</think> [0-9]"),
                                    model_type="deepseek-r1")

    st = think.run(temperature=0)
    assert re.fullmatch(r"[a-z ]{1,12}", st["answer_reasoning_content"])
    assert re.fullmatch(r"[0-9]", st["answer"])
    assert st.text().endswith("\nA:" + st["answer"])  # the reasoning left the text

    @sgl.function
    def fewshot(s, question):
        s += "Answer briefly.\n\nQ: What is the capital of Spain?\nA: Madrid\n\nQ: "
        s += question + "\nA:" + sgl.gen("a", max_tokens=4)

    prefix = fewshot.trace()
    assert prefix.endswith("A: Madrid\n\nQ: ") and "{" not in prefix
    assert fewshot.cache() == prefix
    runtime.token_usage.reset()
    st = fewshot.run(question="What is the capital of Italy?", temperature=0)
    assert st.get_meta_info("a")["cached_tokens"] > 0  # the cached prefix was found
    assert runtime.token_usage.num_calls == 1 and runtime.token_usage.completion_tokens > 0


def test_every_package_is_installed():
    """A package folder missing from pyproject's list would vanish from a non-editable install."""
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {str(p.parent.relative_to(root)).replace("/", ".")
             for top in ("sglc", "sglc_runtime") for p in (root / top).rglob("__init__.py")}
    assert found == listed, (found ^ listed)


def test_sglang_api_spellings_compile_trace_last_node_and_reasoning_names():
    """SglFunction.compile() (SGLang's spelling up to 0.5.5) is sgl.compile; a trace's
    `last_node.print_graph_dfs()` prints the program (its compiled graph);
    SglSeparateReasoning names its variable as SGLang does."""
    from test_compiler import FakeBackend

    from sglc.compiler import CompiledProgram
    from sglc.lang.primitives import ProgramError, SglSeparateReasoning

    @sgl.function
    def few_shot_qa(s, prompt, question):
        s += prompt
        s += "Q: What is the capital of France?\nA: Paris\n"
        s += "Q: " + question + "\nA:" + sgl.gen("answer", stop="\n")

    bound = few_shot_qa.bind(prompt="The following are questions with answers.\n\n")
    compiled = bound.compile()
    assert isinstance(compiled, CompiledProgram) and compiled.ir == sgl.compile(bound).ir
    assert compiled.compile().ir == compiled.ir
    graph = bound.trace(backend=FakeBackend()).last_node.print_graph_dfs()
    assert graph == compiled.ir and "gen" in graph and "program few_shot_qa" in graph
    sep = SglSeparateReasoning("deepseek-r1", sgl.gen("answer"))
    assert sep.process_name_for_reasoning("x") == "x_reasoning_content"
    assert sep.name == "answer_reasoning_content"
    with pytest.raises(ProgramError):
        sep.process_name_for_reasoning("")


@pytest.mark.model
def test_runtime_endpoint_and_model_name(runtime):
    """SGLang's tests read `default_backend.endpoint.get_model_name()`."""
    from sglc_runtime.model_source import default_model_path

    assert runtime.endpoint is runtime
    assert runtime.endpoint.get_model_name() == str(default_model_path())
