"""Constrained decoding end to end on the default model: every output is valid by construction,
with jump-forward on and off; bad constraints are rejected at submission."""

import json
import re

import jsonschema
import pytest

from sglc_runtime.engine import Engine
from sglc_runtime.errors import ConstraintError, InvalidRequestError

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
REGEXES = {
    "ipv4": (r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)",
             "Give me an IP address."),
    "date": (r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", "When was the moon landing?"),
    "number": (r"-?\d{1,6}(\.\d{1,3})?", "How tall is Mount Everest in meters?"),
    "quoted": (r'"[^"\n]{1,30}"', "Quote a famous line."),
    "alternation": (r"(red|green|blue)( and (red|green|blue))?", "Name a color."),
    "non_ascii": (r"(héllo|日本語|ñandú)( (héllo|日本語|ñandú)){0,2}", "Say something."),
}
SCHEMAS = {
    "person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "birthday": {"type": "string", "format": "date"}}, "required": ["name", "age"]},
    "nested": {"type": "object", "properties": {
        "title": {"type": "string", "maxLength": 20},
        "author": {"type": "object", "properties": {
            "first": {"type": "string", "maxLength": 10},
            "born": {"type": "integer", "minimum": 0, "maximum": 2100}},
            "required": ["first", "born"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
                 "minItems": 1, "maxItems": 3},
        "genre": {"enum": ["fiction", "science", "poetry"]},
        "available": {"type": "boolean"}},
        "required": ["title", "author", "tags", "genre", "available"]},
}


@pytest.mark.parametrize("name", sorted(REGEXES))
def test_sampled_outputs_fullmatch(engine, name):
    pattern, question = REGEXES[name]
    outs = engine.generate([CHAT.format(question)] * 8, {
        "regex": pattern, "temperature": 1.0, "max_new_tokens": 48, "seed": 1})
    for o in outs:
        assert o["meta_info"]["finish_reason"]["type"] == "stop", o
        assert re.fullmatch(pattern, o["text"]), (pattern, o["text"])


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_outputs_validate(engine, name):
    schema = SCHEMAS[name]
    outs = engine.generate([CHAT.format("Describe a book as JSON.")] * 4, {
        "json_schema": json.dumps(schema), "temperature": 1.0, "max_new_tokens": 160,
        "seed": 3})
    for o in outs:
        assert o["meta_info"]["finish_reason"]["type"] == "stop", o["text"]
        jsonschema.validate(json.loads(o["text"]), schema)


def test_dtypes_and_choices(engine):
    q = CHAT.format("How many legs does a spider have?")
    r = engine.generate(q, {"dtype": "int", "temperature": 0, "max_new_tokens": 8})
    int(r["text"].strip())
    r = engine.generate(q, {"dtype": "float", "temperature": 0, "max_new_tokens": 8})
    float(r["text"].strip())
    r = engine.generate(q, {"choices": ["six", "eight", "ten"], "temperature": 0,
                            "max_new_tokens": 8})
    assert r["text"] in ("six", "eight", "ten")


def test_jump_forward_on_and_off_both_valid(engine):
    """Report how often greedy text differs with jump-forward off, and check both are valid.
    They can differ because jump-forward re-tokenizes the forced text canonically, while
    token-by-token decoding lets the model pick its own split of the same characters; the
    model then conditions on different token ids."""
    off = Engine(dtype="float32", disable_regex_jump_forward=True)
    try:
        schema = SCHEMAS["person"]
        prompts = [CHAT.format(f"Describe person number {i} as JSON.") for i in range(6)]
        sp = {"json_schema": json.dumps(schema), "temperature": 0, "max_new_tokens": 80}
        on_out = engine.generate(prompts, sp)
        off_out = off.generate(prompts, sp)
    finally:
        off.shutdown()
    for o in on_out + off_out:
        jsonschema.validate(json.loads(o["text"]), schema)
    assert sum(o["meta_info"].get("jump_forward_tokens", 0) for o in on_out) > 0
    assert all("jump_forward_tokens" not in o["meta_info"] for o in off_out)
    differ = sum(a["text"] != b["text"] for a, b in zip(on_out, off_out))
    print(f"greedy text differs with jump-forward off in {differ}/{len(prompts)} prompts")


def test_length_mid_pattern_says_so(engine):
    r = engine.generate(CHAT.format("Count."), {"regex": r"(\d, ){20}\d", "temperature": 0,
                                               "max_new_tokens": 5})
    fr = r["meta_info"]["finish_reason"]
    assert fr["type"] == "length" and "constrained output was complete" in fr["message"]
    assert fr["incomplete"] is True


def test_the_budget_steers_a_sampled_regex_to_an_end(engine):
    """An unbounded column list sampled at temperature 0.7 used to come back as "SELECT id,
    name, price, price, ..." cut off at max_tokens; the budget is part of the mask now."""
    sql = r"SELECT (id|name|price)(, (id|name|price))* FROM products;"
    prompt = CHAT.format("Write an SQL query listing many columns of products.")
    outs = engine.generate([prompt] * 6, {"regex": sql, "temperature": 0.7, "seed": 3,
                                          "max_new_tokens": 12})
    for o in outs:
        assert re.fullmatch(sql, o["text"]), o["text"]
        assert not o["meta_info"]["finish_reason"].get("incomplete")


@pytest.mark.parametrize("params, word", [
    ({"regex": "(ab"}, "regex"),
    ({"regex": r"(?=a)b"}, "lookahead"),
    ({"regex": r"(a)\1"}, "backreference"),
    ({"regex": r"a^b"}, "anchor"),
    ({"json_schema": "{not json"}, "JSON"),
    ({"json_schema": json.dumps({"type": "object", "patternProperties": {"a": {}}})},
     "patternProperties"),
    ({"dtype": "complex"}, "dtype"),
    ({"regex": "a", "json_schema": "{}"}, "at most one"),
])
def test_bad_constraints_rejected_at_submit(engine, params, word):
    with pytest.raises((ConstraintError, InvalidRequestError), match=f"(?i){word}"):
        engine.generate("Hi", {**params, "max_new_tokens": 4})


def test_jump_forward_tokens_have_their_logprobs(engine):
    """One output logprob per completion token (SGLang's /generate invariant), the forced
    tokens scored too (from the extend that computes them), as a teacher-forced pass over the
    same tokens scores them; the request still ends where the constraint does."""
    regex = (r'\{\n  "name": "[A-Za-z ]{1,16}",\n  "house": "(Gryffindor|Slytherin|Ravenclaw|'
             r'Hufflepuff)",\n  "age": [1-9][0-9]?\n\}')
    ids = engine.tokenizer.encode("Hermione Granger is a character in Harry Potter. Fill in "
                                  "her information as JSON.\n")
    r = engine.generate(input_ids=ids, sampling_params={"regex": regex, "temperature": 0,
                                                        "max_new_tokens": 96},
                        return_logprob=True, top_logprobs_num=3)
    m = r["meta_info"]
    assert re.fullmatch(regex, r["text"]) and m["finish_reason"]["type"] == "stop"
    assert m["jump_forward_tokens"] > 0
    assert len(m["output_token_logprobs"]) == len(m["output_top_logprobs"]) == \
        m["completion_tokens"] == len(r["output_ids"])
    assert [t for _, t, _ in m["output_token_logprobs"]] == r["output_ids"]
    ref = engine.generate(input_ids=ids + r["output_ids"], sampling_params={"max_new_tokens": 0},
                          return_logprob=True, logprob_start_len=len(ids))
    forced = [lp for lp, _, _ in ref["meta_info"]["input_token_logprobs"]]
    assert [lp for lp, _, _ in m["output_token_logprobs"]] == pytest.approx(forced, abs=2e-3)


def test_the_callers_mirror_takes_back_logprobs_a_retokenization_replaced():
    """The engine process sends each step's new logprob entries; when jump-forward's
    re-tokenization replaced entries already sent, the mirror drops them before extending."""
    from sglc_runtime.engine_process import ProcessDriver, _updates
    from sglc_runtime.request import new_request
    from sglc_runtime.sampling_params import SamplingParams

    child = new_request([1, 2], SamplingParams(max_new_tokens=8), True, None, 0, rid=7)
    mirror = new_request([1, 2], SamplingParams(max_new_tokens=8), True, None, 0, rid=7)
    driver = object.__new__(ProcessDriver)  # (only its mirror bookkeeping)
    driver._reqs = {7: mirror}
    sent: dict = {}
    child.output_ids, child.output_token_logprobs = [5, 6, 7], [(-1.0, 5, None),
                                                                (-2.0, 6, None),
                                                                (-3.0, 7, None)]
    driver._apply(_updates([child], sent))
    child.output_ids = [5, 9, 10]  # tokens 6, 7 re-tokenized into 9, 10: their entries go
    del child.output_token_logprobs[1:]
    driver._apply(_updates([child], sent))
    child.output_token_logprobs += [(-0.5, 9, None), (-0.25, 10, None)]  # (the next extend)
    driver._apply(_updates([child], sent))
    assert mirror.output_token_logprobs == child.output_token_logprobs
