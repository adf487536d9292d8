"""The language on the real default model through the in-process runtime backend."""

import json

import pytest

import sglc as sgl
from sglc_runtime.errors import InvalidRequestError

FEW_SHOT = """Answer with one word.
Question: What color is snow?
Answer: White
Question: What animal barks?
Answer: Dog
Question: What is frozen water called?
Answer: Ice
"""


@sgl.function
def qa(s, question):
    s += FEW_SHOT + "Question: " + question + "\nAnswer:"
    s += sgl.gen("answer", max_tokens=4, stop="\n")


def test_gen_matches_engine_generate(runtime, engine):
    st = qa.run(question="What is the color of grass?", temperature=0)
    prompt = FEW_SHOT + "Question: What is the color of grass?\nAnswer:"
    direct = engine.generate(prompt=prompt, sampling_params={
        "temperature": 0, "max_new_tokens": 4, "stop": ["\n"]})
    assert st["answer"] == direct["text"] and st.text() == prompt + direct["text"]
    meta = st.get_meta_info("answer")
    assert meta["prompt_tokens"] == direct["meta_info"]["prompt_tokens"]


def test_run_batch_many_programs_share_the_prefix(runtime):
    questions = [f"What is {i} plus one?" for i in range(44)]
    states = qa.run_batch([{"question": q} for q in questions], temperature=0, max_new_tokens=3)
    assert len(states) == 44 and all(st.error() is None for st in states)
    assert all(isinstance(st["answer"], str) for st in states)
    cached = [st.get_meta_info("answer")["cached_tokens"] for st in states]
    # the traced constant prefix was committed before the fan-out: every program reuses it
    few_shot_tokens = len(runtime.tokenizer.encode(FEW_SHOT + "Question:"))
    assert min(cached) >= few_shot_tokens - 2


def test_roles_render_with_the_model_template(runtime, engine):
    @sgl.function
    def chat(s):
        s += sgl.user("Say hello.")
        s += sgl.assistant(sgl.gen("reply", max_tokens=24))

    st = chat.run(temperature=0)
    msgs = st.messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    tok = engine.tokenizer
    assert st.text() == tok.apply_chat_template(msgs, add_generation_prompt=False)
    prompt = tok.apply_chat_template(msgs[:2], add_generation_prompt=True)
    direct = engine.generate(prompt=prompt, sampling_params={"temperature": 0,
                                                             "max_new_tokens": 24})
    assert st["reply"] == direct["text"]
    reason = st.get_meta_info("reply")["finish_reason"]
    assert reason["type"] == "length" or reason["matched"] in (2, "<|im_end|>")


@pytest.mark.parametrize("method", [sgl.token_length_normalized, sgl.greedy_token_selection,
                                    sgl.unconditional_likelihood_normalized])
def test_select_methods_return_a_choice(runtime, method):
    @sgl.function
    def pick(s):
        s += "The capital of France is" + sgl.select("city", [" Paris", " a banana", " Rome"],
                                                     choices_method=method)

    st = pick.run()
    assert st["city"] in (" Paris", " a banana", " Rome")
    assert st.text().endswith(st["city"])
    meta = st.get_meta_info("city")
    assert len(meta["input_token_logprobs"]) == 3
    if method.requires_unconditional_logprobs:
        assert [len(x) for x in meta["unconditional_token_logprobs"]] == \
            [len(x) for x in meta["input_token_logprobs"]]


def test_greedy_select_agrees_with_greedy_generation(runtime, engine):
    prompt = "Q: Name a primary color.\nA:"
    out = engine.generate(prompt=prompt, sampling_params={"temperature": 0, "max_new_tokens": 1},
                          return_logprob=True, top_logprobs_num=5)
    top = [t for _, t, _ in out["meta_info"]["output_top_logprobs"][0]]
    greedy = engine.tokenizer.decode([top[0]])
    other = engine.tokenizer.decode([top[3]])

    @sgl.function
    def pick(s):
        s += prompt + sgl.select("c", [other, greedy], choices_method=sgl.greedy_token_selection)

    st = pick.run()
    assert st["c"] == greedy
    lps = st.get_meta_info("c")["input_token_logprobs"]
    first = [choice_lps[0][0] for choice_lps in lps]  # logprob of each choice's first token
    assert first[1] == pytest.approx(out["meta_info"]["output_top_logprobs"][0][0][0], abs=1e-3)
    assert first[1] > first[0]


def test_fork_children_hit_the_committed_prefix(runtime):
    @sgl.function
    def prog(s):
        s += FEW_SHOT + "Question: Name a fruit.\n"
        forks = s.fork(3)
        forks += lambda i: f"Answer {i}:" + sgl.gen("a", max_tokens=3, stop="\n")
        forks.join()
        return [f.get_meta_info("a")["cached_tokens"] for f in forks]

    st = prog.run(temperature=0)
    assert len(st["a"]) == 3
    shared = len(runtime.tokenizer.encode(FEW_SHOT + "Question: Name a fruit.\n"))
    assert min(st.ret_value) >= shared - 1


def test_streaming_pieces_concatenate(runtime):
    @sgl.function
    def prog(s):
        s += "Count to five: 1, 2," + sgl.gen("count", max_tokens=10)

    st = prog.run(stream=True, temperature=0)
    pieces = list(st.text_iter("count"))
    assert len(pieces) > 1 and "".join(pieces) == st["count"]
    assert st.text() == "Count to five: 1, 2," + st["count"]


def test_bad_sampling_param_raises_and_engine_keeps_serving(runtime):
    with pytest.raises(sgl.SglcError, match="top_p"):
        qa.run(question="x?", top_p=5.0)

    @sgl.function
    def prog(s, i):
        s += "Number " + str(i) + ":" + sgl.gen("n", max_tokens=2, top_p=3.0 if i == 1 else None)

    states = prog.run_batch([{"i": i} for i in range(4)], temperature=0)
    assert isinstance(states[1].error(), InvalidRequestError)
    assert all(states[i].error() is None for i in (0, 2, 3))
    answer = qa.run(question="What is ice?", temperature=0)["answer"]  # the engine still serves
    assert isinstance(answer, str) and answer.strip()


def test_constrained_gens(runtime):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"]}

    @sgl.function
    def prog(s):
        s += "Alice is 30 years old.\nName: " + sgl.gen("name", max_tokens=6, regex=r"[A-Z][a-z]+")
        s += "\nAge: " + sgl.gen_int("age", max_tokens=4)
        s += "\nAdult: " + sgl.gen("adult", dtype=bool)
        s += "\nQuote: " + sgl.gen_string("quote", max_tokens=10)
        s += "\nJSON: " + sgl.gen("j", max_tokens=30, json_schema=json.dumps(schema))

    st = prog.run(temperature=0)
    assert st["name"][0].isupper() and st["name"].isalpha()
    int(st["age"])
    assert st["adult"] in ("True", "False")
    assert st["quote"].startswith('"')
    obj = json.loads(st["j"])
    assert isinstance(obj["name"], str) and isinstance(obj["age"], int)


def test_return_logprob(runtime):
    @sgl.function
    def prog(s):
        s += "Hello," + sgl.gen("g", max_tokens=3, return_logprob=True, top_logprobs_num=2)

    meta = prog.run(temperature=0).get_meta_info("g")
    assert len(meta["output_token_logprobs"]) == meta["completion_tokens"]
    assert len(meta["output_top_logprobs"][0]) == 2
