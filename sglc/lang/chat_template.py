"""Chat templates as per-role (prefix, suffix) strings: read off the model's own jinja template
when it has one, else taken from a small registry (chatml, llama-2, llama-3, plain)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Render = Callable[[list, bool], str]  # (messages, add_generation_prompt) -> text


@dataclass(frozen=True)
class ChatTemplate:
    """`role_prefix_and_suffix[role]` wraps a message's content; `stop_str` ends an assistant
    turn (added to the stop strings of gens inside an assistant role)."""

    name: str
    default_system_prompt: str | None
    role_prefix_and_suffix: dict[str, tuple[str, str]]
    stop_str: tuple[str, ...] = ()
    style: str = "plain"  # "llama2" folds the first system message into the first user turn

    def get_prefix_and_suffix(self, role: str, hist_messages: list[dict]) -> tuple[str, str]:
        prefix, suffix = self.role_prefix_and_suffix.get(role, ("", ""))
        if self.style == "llama2":
            if role == "system" and not hist_messages:
                user_prefix = self.role_prefix_and_suffix["user"][0]
                return user_prefix + prefix, suffix
            if role == "user" and len(hist_messages) == 1 and \
                    hist_messages[0]["role"] == "system":
                return "", suffix
        return prefix, suffix

    def get_prompt(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """Render OpenAI-style messages, inserting the default system prompt if there is none."""
        if messages and messages[0]["role"] != "system" and self.default_system_prompt:
            messages = [{"role": "system", "content": self.default_system_prompt}, *messages]
        text = ""
        for i, m in enumerate(messages):
            prefix, suffix = self.get_prefix_and_suffix(m["role"], messages[:i])
            text += prefix + m["content"] + suffix
        if add_generation_prompt:
            text += self.get_prefix_and_suffix("assistant", messages)[0]
        return text


chat_template_registry: dict[str, ChatTemplate] = {}


def register_chat_template(template: ChatTemplate) -> None:
    chat_template_registry[template.name] = template


def get_chat_template(name: str) -> ChatTemplate:
    if name not in chat_template_registry:
        from .primitives import ProgramError

        raise ProgramError(f"unknown chat template {name!r}; known: "
                           f"{', '.join(sorted(chat_template_registry))}")
    return chat_template_registry[name]


register_chat_template(ChatTemplate(
    name="default", default_system_prompt=None,
    role_prefix_and_suffix={"system": ("SYSTEM:", "\n"), "user": ("USER:", "\n"),
                            "assistant": ("ASSISTANT:", "\n")}))
register_chat_template(ChatTemplate(  # chat APIs: roles travel as messages, not as text
    name="chatgpt", default_system_prompt=None,
    role_prefix_and_suffix={"system": ("", ""), "user": ("", ""), "assistant": ("", "")}))
register_chat_template(ChatTemplate(
    name="chatml", default_system_prompt=None,
    role_prefix_and_suffix={"system": ("<|im_start|>system\n", "<|im_end|>\n"),
                            "user": ("<|im_start|>user\n", "<|im_end|>\n"),
                            "assistant": ("<|im_start|>assistant\n", "<|im_end|>\n")},
    stop_str=("<|im_end|>",)))
register_chat_template(ChatTemplate(
    name="llama-2-chat", default_system_prompt=None,
    role_prefix_and_suffix={"system": ("<<SYS>>\n", "\n<</SYS>>\n\n"),
                            "user": ("[INST] ", " [/INST]"), "assistant": ("", " </s><s>")},
    style="llama2"))
register_chat_template(ChatTemplate(
    name="llama-3-instruct", default_system_prompt=None,
    role_prefix_and_suffix={
        r: (f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>")
        for r in ("system", "user", "assistant")},
    stop_str=("<|eot_id|>",)))

# Marker tokens -> registry name, for jinja templates we cannot read off exactly.
_MARKERS = (("<|im_start|>", "chatml"), ("<|start_header_id|>", "llama-3-instruct"),
            ("[INST]", "llama-2-chat"))


def _between(text: str, a: str | None, b: str | None) -> str:
    """The text after marker `a` (or from the start) and before marker `b` (or to the end)."""
    start = 0 if a is None else text.index(a) + len(a)
    end = len(text) if b is None else text.index(b, start)
    return text[start:end]


def read_jinja_template(render: Render, name: str = "model") -> ChatTemplate:
    """Read each role's prefix and suffix off a jinja chat template by rendering conversations
    of marker strings; raise ValueError if the template is not of that shape (checked by
    re-rendering with the result)."""
    S, U1, A1, U2, A2 = "SGLCSYS0", "SGLCUSR1", "SGLCAST1", "SGLCUSR2", "SGLCAST2"

    def msgs(*pairs):
        return [{"role": r, "content": c} for r, c in pairs]

    full = render(msgs(("system", S), ("user", U1), ("assistant", A1), ("user", U2),
                       ("assistant", A2)), False)
    head = msgs(("system", S), ("user", U1))
    with_gen, without_gen = render(head, True), render(head, False)
    if not with_gen.startswith(without_gen):
        raise ValueError("add_generation_prompt does not append to the conversation")
    asst_prefix = with_gen[len(without_gen):]
    asst_suffix = _between(full, A2, None)
    a1_u2 = _between(full, A1, U2)
    u1_a1 = _between(full, U1, A1)
    if not a1_u2.startswith(asst_suffix) or not u1_a1.endswith(asst_prefix):
        raise ValueError("role markers are not a fixed prefix and suffix")
    user_prefix = a1_u2[len(asst_suffix):]
    user_suffix = u1_a1[:len(u1_a1) - len(asst_prefix)]
    s_u1 = _between(full, S, U1)
    if not s_u1.endswith(user_prefix):
        raise ValueError("the system suffix is not followed by the user prefix")
    sys_prefix = _between(full, None, S)
    sys_suffix = s_u1[:len(s_u1) - len(user_prefix)]

    lone = _between(render(msgs(("user", U1)), False), None, U1)
    default_system = None
    if lone != user_prefix:
        inner = lone[len(sys_prefix):len(lone) - len(sys_suffix + user_prefix)]
        if sys_prefix + inner + sys_suffix + user_prefix != lone:
            raise ValueError("cannot find the default system prompt")
        default_system = inner

    end = asst_suffix.strip()
    template = ChatTemplate(
        name=name, default_system_prompt=default_system,
        role_prefix_and_suffix={"system": (sys_prefix, sys_suffix),
                                "user": (user_prefix, user_suffix),
                                "assistant": (asst_prefix, asst_suffix)},
        stop_str=(end,) if end else ())
    for conv in (msgs(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")),
                 msgs(("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"))):
        for gen_prompt in (False, True):
            if template.get_prompt(conv, gen_prompt) != render(conv, gen_prompt):
                raise ValueError("re-rendering a conversation does not match the jinja template")
    return template


def template_for_model(render: Render | None, jinja_source: str | None,
                       name: str = "model") -> ChatTemplate:
    """The model's own template when it can be read off its jinja source, else the registry
    template whose marker tokens the source uses, else the plain `default` template."""
    if render is not None and jinja_source:
        try:
            return read_jinja_template(render, name)
        except (ValueError, KeyError, TypeError) as e:
            logger.info("chat template not read off jinja (%s); using a registry template", e)
        except Exception as e:  # noqa: BLE001 - the template's own raise_exception etc.
            logger.info("chat template failed to render (%s); using a registry template", e)
        for marker, reg_name in _MARKERS:
            if marker in jinja_source:
                return get_chat_template(reg_name)
    return get_chat_template("default")
