"""Programs on `sgl.RuntimeEndpoint` (HTTP to `sglc serve`) give what they give in-process."""

import pytest

import sglc as sgl


@pytest.fixture(scope="module")
def endpoint(base_url):
    return sgl.RuntimeEndpoint(base_url)


@sgl.function
def chat_then_pick(s, topic):
    s += sgl.system("You are a terse assistant.")
    s += sgl.user(f"Say one sentence about {topic}.")
    s += sgl.assistant(sgl.gen("line", max_tokens=24, temperature=0))
    s += sgl.user("Is that sentence positive or negative?")
    s += sgl.assistant(sgl.select("mood", choices=["positive", "negative"]))


@sgl.function
def forked(s):
    s += "List three fruits:\n"
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += f"{i + 1}." + sgl.gen("item", max_tokens=6, temperature=0, stop="\n")
    forks.join()


def test_program_matches_in_process(endpoint, runtime):
    remote = chat_then_pick.run(topic="the sea", backend=endpoint)
    local = chat_then_pick.run(topic="the sea", backend=runtime)
    assert remote["line"] == local["line"] and remote["line"]
    assert remote["mood"] == local["mood"] in ("positive", "negative")
    assert remote.text() == local.text()
    assert remote.messages() == local.messages()


def test_fork_and_stream_over_http(endpoint, runtime):
    remote = forked.run(backend=endpoint)
    local = forked.run(backend=runtime)
    assert remote["item"] == local["item"]
    st = chat_then_pick.run(topic="mountains", backend=endpoint, stream=True)
    pieces = "".join(st.text_iter("line"))
    assert pieces == st["line"]


def test_endpoint_errors_are_clear(endpoint):
    @sgl.function
    def bad(s):
        s += "Hi" + sgl.gen("x", max_tokens=4, top_p=5.0)

    with pytest.raises(sgl.SglcError, match="top_p"):
        bad.run(backend=endpoint)["x"]
    with pytest.raises(sgl.SglcError, match="cannot reach"):
        sgl.RuntimeEndpoint("http://127.0.0.1:9")


def test_constraints_and_n_over_http(endpoint, runtime):
    import json
    import re

    @sgl.function
    def constrained(s):
        s += "A phone number:" + sgl.gen("phone", regex=r" \d{3}-\d{4}", max_tokens=12)
        s += "\nA person:" + sgl.gen("person", max_tokens=48, json_schema={
            "type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]})
        s += "\nA color:" + sgl.gen("colors", max_tokens=4, n=3, temperature=1.0)

    remote = constrained.run(temperature=0, backend=endpoint)
    assert re.fullmatch(r" \d{3}-\d{4}", remote["phone"])
    assert isinstance(json.loads(remote["person"])["age"], int)
    assert isinstance(remote["colors"], list) and len(remote["colors"]) == 3
    local = constrained.run(temperature=0, backend=runtime)
    assert (remote["phone"], remote["person"]) == (local["phone"], local["person"])
