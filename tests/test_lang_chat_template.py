"""CPU tests of chat templates: reading role prefixes off jinja templates, and the fallbacks."""

import jinja2
import jinja2.sandbox
import pytest

from sglc.lang.chat_template import get_chat_template, read_jinja_template, template_for_model

SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
           "Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
           "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
           "{{ '<|im_start|>assistant\n' }}{% endif %}")

LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
          "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
          " + message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")

# Content-dependent: the first user turn is rendered differently, so no fixed prefix exists.
IRREGULAR = ("{% for m in messages %}{% if loop.index == 2 %}<|im_start|>first {{ m['content'] }}"
             "{% else %}<|im_start|>{{ m['role'] }} {{ m['content'] }}{% endif %}\n{% endfor %}")


def renderer(source: str):
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    tmpl = env.from_string(source)
    return lambda messages, add_generation_prompt: tmpl.render(
        messages=messages, add_generation_prompt=add_generation_prompt)


def test_reads_smollm2_chatml_with_default_system_prompt():
    t = read_jinja_template(renderer(SMOLLM2))
    assert t.role_prefix_and_suffix == get_chat_template("chatml").role_prefix_and_suffix
    assert t.default_system_prompt.startswith("You are a helpful AI assistant named SmolLM")
    assert t.stop_str == ("<|im_end|>",)
    msgs = [{"role": "user", "content": "Hi"}]
    assert t.get_prompt(msgs, add_generation_prompt=True) == renderer(SMOLLM2)(msgs, True)


def test_reads_llama3_style_template():
    t = read_jinja_template(renderer(LLAMA3))
    assert t.default_system_prompt is None and t.stop_str == ("<|eot_id|>",)
    assert t.role_prefix_and_suffix == get_chat_template("llama-3-instruct").role_prefix_and_suffix


def test_irregular_template_falls_back_by_marker():
    with pytest.raises(ValueError):
        read_jinja_template(renderer(IRREGULAR))
    assert template_for_model(renderer(IRREGULAR), IRREGULAR).name == "chatml"
    assert template_for_model(None, None).name == "default"


def test_llama2_style_folds_system_into_first_user_turn():
    t = get_chat_template("llama-2-chat")
    text = t.get_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                         {"role": "assistant", "content": "A"}])
    assert text == "[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST]A </s><s>"


def test_unknown_template_name():
    from sglc import ProgramError

    with pytest.raises(ProgramError, match="unknown chat template"):
        get_chat_template("nope")
