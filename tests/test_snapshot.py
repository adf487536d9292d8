"""CPU tests of the pure program-state steps (`sglc/lang/snapshot.py`) that the eager
interpreter and the compiled executor share: values in, values out, nothing changed in place."""

import dataclasses

import pytest

import sglc as sgl
from sglc.lang.chat_template import get_chat_template
from sglc.lang.primitives import (
    ProgramError,
    SglConstantText,
    SglExprList,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    SglSeparateReasoning,
    SglVarScopeBegin,
    SglVarScopeEnd,
)
from sglc.lang.snapshot import Snapshot, apply, join, sampling_params

CHATML = get_chat_template("chatml")


def _turn(role, text):
    return SglExprList([SglRoleBegin(role), SglConstantText(text), SglRoleEnd(role)])


def test_apply_returns_a_new_state_and_leaves_the_old_one():
    s0 = Snapshot()
    s1 = apply(s0, SglConstantText("Hello"), CHATML)
    s2 = s1.with_var("x", 1, {"m": 2})
    assert (s0.text, dict(s0.variables)) == ("", {})
    assert (s1.text, dict(s1.variables)) == ("Hello", {})
    assert (dict(s2.variables), dict(s2.meta_info)) == ({"x": 1}, {"x": {"m": 2}})
    with pytest.raises(TypeError):
        s2.variables["y"] = 3  # a read-only mapping
    with pytest.raises(dataclasses.FrozenInstanceError):
        s2.text = "changed"


def test_roles_render_the_template_and_record_messages():
    s = apply(Snapshot(), _turn("system", "Be brief."), CHATML)
    s = apply(s, _turn("user", "Hi"), CHATML)
    s = apply(s, SglRoleBegin("assistant"), CHATML)
    assert s.role == "assistant" and s.text[s.role_begin:] == ""
    s = apply(s, SglConstantText(" Hello!"), CHATML)
    s = apply(s, SglRoleEnd("assistant"), CHATML)
    assert s.text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                      "<|im_start|>assistant\n Hello!<|im_end|>\n")
    assert [dict(m) for m in s.messages] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}]
    assert s.role is None


def test_a_default_system_prompt_opens_the_first_turn():
    template = dataclasses.replace(CHATML, default_system_prompt="You are kind.")
    s = apply(Snapshot(), _turn("user", "Hi"), template)
    assert [m["role"] for m in s.messages] == ["system", "user"]
    assert s.text.startswith("<|im_start|>system\nYou are kind.<|im_end|>")


def test_role_misuse_raises_program_errors():
    open_user = apply(Snapshot(), SglRoleBegin("user"), CHATML)
    with pytest.raises(ProgramError, match="roles do not nest"):
        apply(open_user, SglRoleBegin("assistant"), CHATML)
    with pytest.raises(ProgramError, match="open role is 'user'"):
        apply(open_user, SglRoleEnd("assistant"), CHATML)


def test_var_scope_captures_what_it_wraps():
    s = apply(Snapshot(text="A "), SglExprList([SglVarScopeBegin("v"), SglConstantText("inside"),
                                                SglVarScopeEnd("v"), SglConstantText(".")]),
              CHATML)
    assert (s.text, s.get_var("v")) == ("A inside.", "inside")
    with pytest.raises(ProgramError, match="never began"):
        apply(Snapshot(), SglVarScopeEnd("w"), CHATML)
    with pytest.raises(ProgramError, match="no variable 'w'.*'v'"):
        s.get_var("w")


def test_separate_reasoning_splits_text_and_variable():
    s = Snapshot(text="Q: ").generated("a", "<think>hmm</think>42")
    s = apply(s, SglSeparateReasoning(None, sgl.gen("a")), CHATML)
    assert (s.text, s.get_var("a"), s.get_var("a_reasoning_content")) == ("Q: 42", "42", "hmm")
    with pytest.raises(ProgramError, match="holds no generated text"):
        apply(Snapshot(), SglSeparateReasoning(None, sgl.gen("b")), CHATML)


def test_model_calls_are_not_pure_steps():
    with pytest.raises(AssertionError, match="not a pure step"):
        apply(Snapshot(), SglSelect("c", ["x", "y"], 0.0, None), CHATML)


def test_join_gathers_new_variables_or_appends_branch_texts():
    parent = Snapshot(text="P.").with_var("old", 0)
    kids = [parent.fork_child().generated("ans", f" a{i}").with_var("old", 9) for i in range(3)]
    assert [k.branch_text() for k in kids] == [" a0", " a1", " a2"]
    gathered = join(parent, kids, "gather_variable")
    assert dict(gathered.variables) == {"old": 0, "ans": [" a0", " a1", " a2"]}
    assert gathered.text == "P."
    assert join(parent, kids, "concate_and_append").text == "P. a0 a1 a2"
    with pytest.raises(ProgramError, match="mode must be"):
        join(parent, kids, "zip")


def test_sampling_params_stop_at_end_of_turn_only_in_assistant_turns():
    asked = []

    def ids(strs):
        asked.append(strs)
        return (7,)

    defaults, own = SglSamplingParams(max_new_tokens=9), SglSamplingParams(temperature=0.5)
    outside = sampling_params(Snapshot(), defaults, own, CHATML, ids)
    assert (outside.max_new_tokens, outside.temperature, asked) == (9, 0.5, [])
    turn = apply(Snapshot(), SglRoleBegin("assistant"), CHATML)
    inside = sampling_params(turn, defaults, own, CHATML, ids)
    sp, _ = inside.to_request()
    assert "<|im_end|>" in sp["stop"] and 7 in sp["stop_token_ids"]
    assert asked == [tuple(CHATML.stop_str)]
