"""Programs on `sgl.OpenAI` against `sglc serve` (the real `openai` client over loopback):
chat and completion models, select through prompt logprobs, constraints, n=, fork batching and
API speculative execution, each checked against the in-process engine or by counting calls."""

import json
import logging
import re

import pytest

import sglc as sgl

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def chat(base_url):
    return sgl.OpenAI("smol", base_url=base_url + "/v1", api_key="test-key-123")


@pytest.fixture(scope="module")
def completion(base_url, runtime):
    return sgl.OpenAI("smol", base_url=base_url + "/v1", api_key="test-key-123",
                      is_chat_model=False, chat_template=runtime.get_chat_template())


@sgl.function
def qa(s, question):
    s += sgl.system("You answer in one short sentence.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=24))


def test_chat_program_matches_engine(chat, engine):
    state = qa.run(question="What is the capital of France?", temperature=0, backend=chat)
    msgs = [{"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"}]
    ref = engine.generate(engine.tokenizer.apply_chat_template(msgs),
                          {"max_new_tokens": 24, "temperature": 0})
    assert state["answer"] == ref["text"]
    assert state.messages()[-1] == {"role": "assistant", "content": ref["text"].lstrip()}
    assert state.get_meta_info("answer")["completion_tokens"] == \
        ref["meta_info"]["completion_tokens"]


@sgl.function
def few_shot(s, name):
    s += "Name: Alan Turing\nJob: mathematician\nCity: London\n\n"
    s += "Name: Pablo Picasso\nJob: painter\nCity: Paris\n\n"
    s += f"Name: {name}\nJob:" + sgl.gen("job", stop="\n", max_tokens=16)
    s += "\nCity:" + sgl.gen("city", stop="\n", max_tokens=16)


def test_completion_program_matches_in_process(completion, runtime):
    args = {"name": "Marie Curie"}
    remote = few_shot.run(**args, temperature=0, backend=completion)
    local = few_shot.run(**args, temperature=0, backend=runtime)
    assert (remote["job"], remote["city"]) == (local["job"], local["city"])
    assert remote.text() == local.text()


@sgl.function
def pick(s, question):
    s += question + "\nAnswer:" + sgl.select("answer", choices=[" Paris", " London", " Rome"])


def test_select_through_prompt_logprobs_matches_in_process(completion, runtime):
    q = "What is the capital of France?"
    remote = pick.run(question=q, backend=completion)
    local = pick.run(question=q, backend=runtime)
    assert remote["answer"] == local["answer"]
    assert remote.get_meta_info("answer")["normalized_prompt_logprobs"] == pytest.approx(
        local.get_meta_info("answer")["normalized_prompt_logprobs"], abs=1e-4)


def test_constraints_pass_through(chat, completion):
    @sgl.function
    def constrained(s):
        s += sgl.user("Give a phone number and a person as JSON.")
        s += sgl.assistant(sgl.gen("phone", regex=r"\d{3}-\d{4}", max_tokens=16))
        s += sgl.user("Now the person.")
        s += sgl.assistant(sgl.gen("person", max_tokens=64, json_schema={
            "type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                             "age": {"type": "integer"}},
            "required": ["name", "age"]}))

    jsonschema = pytest.importorskip("jsonschema")
    state = constrained.run(temperature=0, backend=chat)
    assert re.fullmatch(r"\d{3}-\d{4}", state["phone"])
    jsonschema.validate(json.loads(state["person"]), {
        "type": "object", "required": ["name", "age"],
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}})

    @sgl.function
    def number(s):
        s += "The year the Eiffel Tower was finished:" + sgl.gen_int("year", max_tokens=8)

    assert re.fullmatch(r"[-+]?\d+", number.run(temperature=0, backend=completion)["year"]
                        .strip())


def test_gen_n_and_fork_become_one_call(chat):
    @sgl.function
    def many(s):
        s += sgl.user("Name an animal.")
        s += sgl.assistant(sgl.gen("animals", max_tokens=6, n=3))

    chat.token_usage.reset()
    state = many.run(temperature=1.0, backend=chat)
    assert isinstance(state["animals"], list) and len(state["animals"]) == 3
    assert chat.token_usage.num_calls == 1

    @sgl.function
    def forked(s):
        s += sgl.user("Tell me a fun fact.")
        forks = s.fork(3)
        forks += sgl.assistant(sgl.gen("fact", max_tokens=10))
        forks.join()

    chat.token_usage.reset()
    state = forked.run(temperature=0.8, backend=chat)
    assert len(state["fact"]) == 3 and all(isinstance(f, str) and f for f in state["fact"])
    assert (chat.token_usage.num_calls, chat.token_usage.num_calls_saved) == (1, 2)


def test_speculative_chat_turn_is_one_call(chat):
    @sgl.function(num_api_spec_tokens=48)
    def profile(s, name):
        s += sgl.user(f"Describe {name}. Answer as 'Job: <job>' and 'City: <city>' lines.")
        s += sgl.assistant("Job: " + sgl.gen("job", stop="\n", max_tokens=12)
                           + "\nCity: " + sgl.gen("city", stop="\n", max_tokens=12))

    chat.token_usage.reset()
    state = profile.run(name="Marie Curie", temperature=0, backend=chat)
    assert (chat.token_usage.num_calls, chat.token_usage.num_calls_saved) == (1, 1)
    assert "\n" not in state["job"] and "\n" not in state["city"]
    assert state.messages()[-1]["content"] == f"Job: {state['job']}\nCity: {state['city']}"


def test_speculative_completion_saves_a_call(completion):
    spec = sgl.function(few_shot.func, num_api_spec_tokens=32)
    completion.token_usage.reset()
    fast = spec.run(name="Marie Curie", temperature=0, backend=completion)
    assert (completion.token_usage.num_calls, completion.token_usage.num_calls_saved) == (1, 1)
    slow = few_shot.run(name="Marie Curie", temperature=0, backend=completion)
    assert (fast["job"], fast["city"]) == (slow["job"], slow["city"])


def test_what_a_backend_cannot_do_is_a_clear_error(chat, base_url, caplog):
    with pytest.raises(sgl.SglcError, match=r"select is not supported by OpenAI\('smol'"):
        pick.run(question="Capital of France?", backend=chat)

    @sgl.function
    def written_turn(s):
        s += sgl.user("Hi")
        s += sgl.assistant("Sure: " + sgl.gen("x", max_tokens=4))

    with pytest.raises(sgl.SglcError, match="right after sgl.assistant"):
        written_turn.run(backend=chat)
    plain = sgl.OpenAI("smol", base_url=base_url + "/v1", api_key="test-key-123",
                       extensions=False)

    @sgl.function
    def regex_gen(s):
        s += sgl.user("Number?")
        s += sgl.assistant(sgl.gen("n", regex=r"\d+", max_tokens=4))

    with pytest.raises(sgl.SglcError, match=r"gen: regex is not supported by OpenAI"):
        regex_gen.run(backend=plain)
    with pytest.raises(sgl.SglcError, match="no API key"), pytest.MonkeyPatch.context() as mp:
        mp.delenv("OPENAI_API_KEY", raising=False)
        sgl.OpenAI("gpt-4o-mini")
    with caplog.at_level(logging.DEBUG):
        qa.run(question="Hi", max_new_tokens=2, backend=chat)
    assert "test-key-123" not in repr(chat) and "test-key-123" not in caplog.text


def test_json_schema_as_response_format_elsewhere(base_url):
    plain = sgl.OpenAI("smol", base_url=base_url + "/v1", api_key="k", extensions=False)

    @sgl.function
    def person(s):
        s += sgl.user("A person as JSON.")
        s += sgl.assistant(sgl.gen("p", max_tokens=48, json_schema={
            "type": "object", "properties": {"name": {"type": "string", "maxLength": 10}},
            "required": ["name"]}))

    assert isinstance(json.loads(person.run(temperature=0, backend=plain)["p"])["name"], str)


def test_streamed_program_on_the_api(chat):
    state = qa.run(question="Name a planet.", temperature=0, backend=chat, stream=True)
    pieces = list(state.text_iter("answer"))
    assert len(pieces) > 1 and "".join(pieces) == state["answer"]
    assert state["answer"] == qa.run(question="Name a planet.", temperature=0,
                                     backend=chat)["answer"]
