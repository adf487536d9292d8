"""JSON schema → regex → TokenFSM (random walks validate), number ranges, dtypes, select."""

import json
import random
import re

import jsonschema
import numpy as np
import pytest

from sglc_runtime.constrained import (
    compile_regex,
    dtype_regex,
    greedy_token_selection,
    json_schema_to_regex,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from sglc_runtime.constrained.number_regex import int_range_regex, number_range_regex
from sglc_runtime.errors import ConstraintError, InvalidRequestError

SCHEMAS = {
    "nested": {"type": "object", "properties": {
        "user": {"type": "object", "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 8},
            "id": {"type": "integer", "minimum": 1, "maximum": 1000}},
            "required": ["name", "id"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5},
                 "minItems": 1, "maxItems": 3}},
        "required": ["user", "tags"]},
    "optional": {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "boolean"}, "c": {"type": "null"},
        "d": {"type": "number", "exclusiveMinimum": -5, "maximum": 5}},
        "required": ["c"]},
    "all_optional": {"type": "object", "properties": {
        "x": {"type": "string", "format": "date"}, "y": {"type": ["integer", "null"]}}},
    "enum": {"type": "object", "properties": {
        "color": {"enum": ["red", "green", 1, None, "日本"]}, "kind": {"const": "fixed"},
        "size": {"type": "string", "enum": ["S", "M", 3]}},
        "required": ["color", "kind", "size"]},
    "refs": {"$defs": {"node": {"type": "object", "properties": {
        "value": {"type": "integer", "minimum": -3, "maximum": 3},
        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
        "required": ["value"]}}, "$ref": "#/$defs/node"},
    "anyof_array": {"type": "array", "items": {"anyOf": [
        {"type": "string", "pattern": "^[a-z]{2,4}$"}, {"type": "integer"},
        {"oneOf": [{"type": "boolean"}]}]}, "maxItems": 4},
    "free": {"type": "object", "properties": {"meta": {}, "map": {
        "type": "object", "additionalProperties": {"type": "integer"}}}, "required": ["meta"]},
    "tuple": {"type": "array", "prefixItems": [{"type": "string", "format": "uuid"},
                                               {"type": "number"}]},
}


@pytest.fixture(scope="module")
def tok():
    import gguf

    from sglc_runtime.model_source import default_model_path
    from sglc_runtime.tokenizer import Tokenizer

    return Tokenizer.from_gguf(gguf.GGUFReader(str(default_model_path())))


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLC_CACHE_DIR", str(tmp_path))


def random_walk(fsm, tok, rng, budget=30) -> bytes:
    """Random allowed tokens with jump-forward; past `budget`, head for acceptance greedily."""
    trans, dist = fsm.dfa.trans, np.where(fsm.dfa.accepting, 0, 10**9)
    while True:
        new = np.minimum(dist, np.where(trans >= 0, dist[np.maximum(trans, 0)] + 1, 10**9)
                         .min(axis=1))
        if (new == dist).all():
            break
        dist = new
    state, out = fsm.initial_state, b""
    for step in range(10_000):
        if fsm.is_accepting(state) and (fsm.is_finished(state) or rng.random() < 0.2
                                        or step > budget):
            return out
        if step < budget:
            t = rng.choice([t for t in fsm.allowed_tokens(state).tolist()
                            if t not in tok.eos_token_ids])
        else:  # the token whose next state is closest to acceptance
            lo, hi = fsm.index.ptr[state], fsm.index.ptr[state + 1]
            t = int(fsm.index.tokens[lo + np.argmin(dist[fsm.index.next_states[lo:hi]])])
        state = fsm.next_state(state, t)
        out += tok.token_bytes[t]
        if forced := fsm.forced_bytes(state):
            state, out = fsm.advance_bytes(state, forced), out + forced
    raise AssertionError("walk did not terminate")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_random_walks_validate(tok, name):
    schema = SCHEMAS[name]
    fsm = compile_regex(json_schema_to_regex(schema), tok)
    rng = random.Random(name)
    for _ in range(10):
        text = random_walk(fsm, tok, rng).decode("utf-8")
        jsonschema.validate(json.loads(text), schema)


def test_schema_regex_shapes():
    r = json_schema_to_regex(json.dumps(SCHEMAS["optional"]), whitespace=r"[ ]?")
    for doc in ('{"c":null}', '{"a":1, "c": null}', '{ "b":true,"c":null,"d":4.5 }',
                '{"a":-7,"b":false,"c":null,"d":-4.25}'):
        assert re.fullmatch(r, doc), doc
    for doc in ('{}', '{"a":1}', '{"c":null,"a":1}', '{"c":null,"d":-5}', '{"c":null,"d":5.5}',
                '{"c":null,,"d":1}', '{  "c":null}'):
        assert not re.fullmatch(r, doc), doc
    dumps = json_schema_to_regex(json.dumps(SCHEMAS["optional"]))  # json.dumps layout
    assert re.fullmatch(dumps, '{"a": 1, "c": null}')
    assert not re.fullmatch(dumps, '{"a":1, "c": null}') and not re.fullmatch(dumps, '{ "c": null}')
    free = json_schema_to_regex(SCHEMAS["free"])
    assert re.fullmatch(free, '{"meta": [1, "x", null], "map": {"a": 1, "b": -2}}')
    assert re.fullmatch(free, '{"meta": {"k": 1.5e3}}')
    assert re.fullmatch(json_schema_to_regex({"type": "string", "format": "date-time"}),
                        '"2024-02-29T13:05:59.123+01:00"')


def test_custom_whitespace_is_bounded():
    r = json_schema_to_regex({"type": "array", "items": {"type": "integer"}},
                             whitespace=r"[\n ]{0,3}")
    assert re.fullmatch(r, "[\n  1,\n  2\n]") and not re.fullmatch(r, "[1,    2]")


@pytest.mark.parametrize("schema, construct", [
    ({"not": {"type": "string"}}, "'not'"),
    ({"type": "array", "uniqueItems": True}, "'uniqueItems'"),
    ({"type": "object", "patternProperties": {"^a": {}}}, "'patternProperties'"),
    ({"$ref": "#/$defs/missing"}, "does not resolve"),
    ({"$ref": "https://example.com/s.json"}, "only local"),
    ({"type": "object", "required": ["x"]}, "'x'"),
    ("{not json", "not valid JSON"),
    ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf"),
    ({"type": "number", "minimum": 0.5}, "'minimum'"),
    ({"type": "integer", "multipleOf": 2}, "'multipleOf'"),
    ({"type": "string", "format": "hostname"}, "'hostname'"),
    ({"type": "string", "pattern": "a(?=b)"}, "lookahead"),
    ({"type": "widget"}, "'widget'"),
    ({"type": "string", "anyOf": [{"maxLength": 2}]}, "next to 'anyOf'"),
    ({"$defs": {"n": {"$ref": "#/$defs/n"}}, "$ref": "#/$defs/n"}, "no finite instance"),
    ({"properties": {"a": {"if": {}}}}, "#/properties/a"),
])
def test_bad_schemas_name_the_construct(schema, construct):
    with pytest.raises(ConstraintError, match=re.escape(construct)):
        json_schema_to_regex(schema)


# ---- numbers ------------------------------------------------------------------------------
@pytest.mark.parametrize("lo, hi", [(0, 0), (1, 1000), (-3, 3), (-120, -7), (7, 1234),
                                    (None, 42), (-42, None), (0, None), (95, 105), (None, -10)])
def test_int_range_regex_exact(lo, hi):
    r = re.compile(int_range_regex(lo, hi))
    for x in range(-1500, 1500):
        inside = (lo is None or x >= lo) and (hi is None or x <= hi)
        assert bool(r.fullmatch(str(x))) == inside, (lo, hi, x)
    assert not r.fullmatch("-0") and not r.fullmatch("007") and not r.fullmatch("+5")
    if hi is None:
        assert r.fullmatch("123456789") or (lo is not None and lo > 123456789)


@pytest.mark.parametrize("lo, hi, xlo, xhi", [(0, 10, False, False), (-5, 5, True, False),
                                              (-10, -2, False, True), (3, None, True, False),
                                              (None, 0, False, True)])
def test_number_range_regex_subset(lo, hi, xlo, xhi):
    r = re.compile(number_range_regex(lo, hi, xlo, xhi))
    ok = lambda v: ((lo is None or (v > lo if xlo else v >= lo))
                    and (hi is None or (v < hi if xhi else v <= hi)))
    samples = [f"{i}" for i in range(-20, 21)] + [f"{i}.{f}" for i in range(-20, 21)
                                                  for f in ("5", "05", "0", "999", "10")]
    samples += ["-0.5", "-0.25", "0.5", "1e3", "-0"]
    for s in samples:
        if r.fullmatch(s):
            assert ok(float(s)), (s, lo, hi)
    assert all(r.fullmatch(str(i)) for i in range(-20, 21) if ok(i))


# ---- dtypes -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, parse", [("int", int), (float, float),
                                          ("bool", lambda s: {"True": 1, "False": 0}[s]),
                                          (str, json.loads)])
def test_dtype_walks_parse(tok, dtype, parse):
    fsm = compile_regex(dtype_regex(dtype), tok)
    rng = random.Random(str(dtype))
    for _ in range(10):
        text = random_walk(fsm, tok, rng, budget=8).decode("utf-8")
        parse(text)


def test_dtype_regex_names():
    assert dtype_regex(int) == dtype_regex("int") and dtype_regex(bool) == "(True|False)"
    assert re.fullmatch(dtype_regex(str), r'"a \"quoted\" word\n"')
    with pytest.raises(ConstraintError, match="'complex'"):
        dtype_regex("complex")


# ---- select scoring -----------------------------------------------------------------------
def test_token_length_normalized():
    d = token_length_normalized(["a", "b"], [[-1.0, -1.0], [-0.5, -2.0]])
    assert d.decision == "a" and d.index == 0
    assert d.normalized_prompt_logprobs == [-1.0, -1.25]
    tuples = token_length_normalized(["x", "y"], [[(-3.0, 5, "x")], [(-2.0, 6, "y")]])
    assert tuples.decision == "y" and tuples.input_token_logprobs == [[-3.0], [-2.0]]


def test_greedy_token_selection():
    assert greedy_token_selection(["a", "b"], [[-1.0, -1.0], [-0.5, -2.0]]).decision == "b"
    tie = greedy_token_selection(["a", "b", "c"], [[-1.0, -2.0], [-1.0, -1.0], [-3.0]])
    assert tie.decision == "b" and tie.greedy_logprob_matrix[2] == [-3.0, -3.0]
    # a shorter choice is padded with its own mean when compared to longer ones
    pad = greedy_token_selection(["ab", "abc"], [[-1.0, -3.0], [-1.0, -3.0, -0.1]])
    assert pad.decision == "abc"


def test_unconditional_likelihood_normalized():
    assert unconditional_likelihood_normalized.requires_unconditional_logprobs
    d = unconditional_likelihood_normalized(
        ["a", "b"], [[-1.0, -1.0], [-2.0, -2.0]],
        unconditional_token_logprobs=[[None, -3.0], [None, -0.5]])
    assert d.decision == "a"
    assert d.normalized_unconditional_prompt_logprobs == [0.5, -1.75]
    with pytest.raises(InvalidRequestError):
        token_length_normalized([], [])
