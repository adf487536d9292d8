"""Grammars and OpenAI tool calls through the server, with the real `openai` client: tool calls
come back as `tool_calls` whose arguments validate against the tool's schema (constrained, so
always), streamed or not; `grammar` / `ebnf` in extra_body; a bad grammar is a 400 naming its
line and column, and the server goes on."""

import json

import jsonschema
import lark
import openai
import pytest

pytest.importorskip("llguidance")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0)


def _valid_call(call, names):
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_tool_call_validates(client):
    r = client.chat.completions.create(model="smol", messages=ASK, tools=[WEATHER, ADD],
                                       tool_choice="required", temperature=0, max_tokens=64)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    assert len(c.message.tool_calls) == 1
    _valid_call(c.message.tool_calls[0], {"get_weather", "add"})


def test_named_tool_choice_calls_that_tool_even_when_sampled(client):
    for seed in (1, 2, 3):
        r = client.chat.completions.create(
            model="smol", messages=ASK, tools=[WEATHER, ADD], temperature=1.0, seed=seed,
            tool_choice={"type": "function", "function": {"name": "add"}}, max_tokens=64)
        _valid_call(r.choices[0].message.tool_calls[0], {"add"})


def test_auto_answers_text_or_a_valid_call(client):
    for msgs in (ASK, [{"role": "user", "content": "Say hello."}]):
        r = client.chat.completions.create(model="smol", messages=msgs, tools=[WEATHER],
                                           temperature=0, max_tokens=48)
        c = r.choices[0]
        if c.message.tool_calls:
            assert c.finish_reason == "tool_calls"
            _valid_call(c.message.tool_calls[0], {"get_weather"})
        else:
            assert c.message.content and not c.message.content.startswith("{")


def test_streamed_tool_call(client):
    stream = client.chat.completions.create(model="smol", messages=ASK, tools=[WEATHER],
                                            tool_choice="required", temperature=0,
                                            max_tokens=64, stream=True)
    calls, finish = [], None
    for chunk in stream:
        d = chunk.choices[0].delta
        calls += d.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and len(calls) == 1
    _valid_call(calls[0], {"get_weather"})


def test_streamed_text_answer_with_tools_streams_as_it_comes(client):
    stream = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Say hello in one sentence."}],
        tools=[WEATHER], tool_choice="auto", temperature=0, max_tokens=24, stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and
              c.choices[0].delta.content]
    assert pieces and not pieces[0].startswith("{"), pieces  # (greedy: this model answers text)
    assert len(pieces) > 1, pieces  # streamed as it came, not as one piece at the end


def test_conversation_with_a_tool_result(client):
    first = client.chat.completions.create(model="smol", messages=ASK, tools=[WEATHER],
                                           tool_choice="required", temperature=0, max_tokens=64)
    call = first.choices[0].message.tool_calls[0]
    msgs = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                  {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"}]
    r = client.chat.completions.create(model="smol", messages=msgs, tools=[WEATHER],
                                       tool_choice="none", temperature=0, max_tokens=24)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls


def test_grammar_and_ebnf_in_extra_body(client):
    grammar = 'start: "The answer is " NUMBER "."\nNUMBER: /[0-9]{1,3}/\n'
    gbnf = 'root ::= "The answer is " [0-9] [0-9]? [0-9]? "."'
    for extra in ({"grammar": grammar}, {"ebnf": gbnf}):
        r = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "What is 6 times 7?"}],
            temperature=0, max_tokens=16, extra_body=extra)
        lark.Lark(grammar, start="start").parse(r.choices[0].message.content)
        r = client.completions.create(model="smol", prompt="6 times 7 is", max_tokens=16,
                                      temperature=0, extra_body=extra)
        lark.Lark(grammar, start="start").parse(r.choices[0].text)


def test_malformed_tool_fields_are_400(client):
    bad = [dict(tool_choice={"type": "function", "function": "get_weather"}),
           dict(messages=ASK + [{"role": "assistant", "content": [{"type": "text", "text": "x"}],
                                 "tool_calls": [{"function": {"arguments": "{}"}}]}]),
           dict(messages=ASK + [{"role": "user", "content": "x", "tool_calls": []}] +
                [{"role": "user", "content": "y", "tool_calls": [{"x": 1}]}])]
    for kw in bad:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(**{"model": "smol", "messages": ASK,
                                              "tools": [WEATHER], "max_tokens": 4, **kw})
    ok = ASK + [{"role": "assistant", "content": [{"type": "text", "text": "Let me see."}],
                 "tool_calls": [{"id": "c1", "type": "function", "function": {
                     "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "18 C"}]
    r = client.chat.completions.create(model="smol", messages=ok, max_tokens=4)
    assert r.choices[0].message.content is not None


def test_bad_grammar_is_400_with_line_and_column(client):
    with pytest.raises(openai.BadRequestError, match=r"at 2\(\d+\)"):
        client.completions.create(model="smol", prompt="Hi", max_tokens=4,
                                  extra_body={"grammar": 'start: a\na: "x" | missing\n'})
    r = client.completions.create(model="smol", prompt="Hi", max_tokens=2)
    assert r.choices[0].text is not None  # still serving


def test_strict_closes_objects_that_name_their_properties_only():
    from sglc_runtime.server.tools import strict

    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "integer"}}},
        "free": {"type": "object"},
        "list": {"type": "array", "items": {"type": "object", "properties": {"x": {}}}},
        "open": {"type": "object", "properties": {"y": {}}, "additionalProperties": True}}}
    s = strict(schema)
    assert s["additionalProperties"] is False
    p = s["properties"]
    assert p["a"]["additionalProperties"] is False
    assert "additionalProperties" not in p["free"]  # free-form stays free-form
    assert p["list"]["items"]["additionalProperties"] is False
    assert p["open"]["additionalProperties"] is True  # an explicit choice is kept
    jsonschema.validate({"a": {"b": 1}, "free": {"anything": 2}}, s)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"a": {"b": 1, "c": 2}}, s)
