"""OpenAI tool calls: `tools` + `tool_choice` become a grammar constraint (llguidance, with each
tool's JSON schema inline), the tools are described to the model in the system message, and an
output that is a call comes back as `tool_calls`.

The model answers a call as one JSON object `{"name": <tool>, "arguments": {...}}`, constrained
to the named tool's parameter schema, so the arguments always validate. tool_choice:
  "required"                  a call to one of the tools;
  {"type": "function", ...}   a call to that tool;
  "auto" (the default)        either a call or a plain text answer (one not starting with "{");
  "none"                      no tools: a plain completion.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from ..errors import InvalidRequestError


class ToolError(InvalidRequestError):
    """`tools` / `tool_choice` / a tool message is malformed; `param` names the field."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class Tools:
    functions: list[dict]  # {"name", "description", "parameters"} per tool
    choice: str  # "auto", "required", or the one tool's name

    @property
    def offered(self) -> list[dict]:
        """The tools the model may call under this choice."""
        if self.choice in ("auto", "required"):
            return self.functions
        return [f for f in self.functions if f["name"] == self.choice]


def parse_tools(body: dict) -> Tools | None:
    """The request's tools, or None when there are none or tool_choice is "none"."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools in (None, []):
        if choice not in (None, "none"):
            raise ToolError("tool_choice", "tool_choice needs tools")
        return None
    if not isinstance(tools, list):
        raise ToolError("tools", "tools must be a list of {type: function, function: {...}}")
    functions = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ToolError("tools", f"tools[{i}] must be {{type: 'function', function: "
                                     f"{{name, description?, parameters?}}}}")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise ToolError("tools", f"tools[{i}].function.parameters must be a JSON schema "
                                     f"object")
        functions.append({"name": fn["name"], "description": fn.get("description", ""),
                          "parameters": params})
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names):
        raise ToolError("tools", f"tool names must be unique, got {names}")
    if choice is None:
        choice = "auto"
    if isinstance(choice, dict):
        fn = choice.get("function") if choice.get("type") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if name not in names:
            raise ToolError("tool_choice", f"tool_choice names {name!r}, which is not one of "
                                           f"the tools {names}")
        choice = name
    elif choice == "none":
        return None
    elif choice not in ("auto", "required"):
        raise ToolError("tool_choice", f"tool_choice={choice!r}: must be 'none', 'auto', "
                                       f"'required' or {{type: 'function', function: {{name}}}}")
    return Tools(functions, choice)


# JSON as the model reads it best: one line, ", " and ": " (llguidance's x-guidance options)
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


_SUBSCHEMA = ("items", "anyOf", "oneOf", "allOf", "not", "prefixItems", "additionalProperties",
              "contains", "if", "then", "else")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def strict(schema):
    """`schema` with every object that names its properties closed to others (as OpenAI's
    strict mode): the model cannot invent arguments. An explicit additionalProperties is kept,
    and an object naming no properties stays free-form."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) if k in _SUBSCHEMA
           else {n: strict(v2) for n, v2 in v.items()}
           if k in _SCHEMA_MAPS and isinstance(v, dict) else v
           for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def call_schema(fn: dict) -> dict:
    return {"type": "object", "properties": {"name": {"const": fn["name"]},
                                             "arguments": strict(fn["parameters"])},
            "required": ["name", "arguments"], "additionalProperties": False}


def tool_grammar(tools: Tools) -> str:
    """The Lark grammar (llguidance dialect: `%json` embeds a JSON schema) of an answer."""
    offered = tools.offered
    schema = call_schema(offered[0]) if len(offered) == 1 else \
        {"anyOf": [call_schema(f) for f in offered]}
    schema["x-guidance"] = _JSON_STYLE
    rules = f"call: %json {json.dumps(schema)}\n"
    if tools.choice == "auto":
        return "start: call | TEXT\nTEXT: /[^{\\s][\\s\\S]*/\n" + rules
    return "start: call\n" + rules


def system_prompt(tools: Tools) -> str:
    """How the model learns of the tools (the chat template has no place for them)."""
    listing = "\n".join(json.dumps(f) for f in tools.offered)
    ask = ("Answer with a tool call" if tools.choice != "auto"
           else "To call a tool, answer with only")
    return (f"You can call these tools:\n{listing}\n{ask} a JSON object "
            '{"name": <tool name>, "arguments": <its arguments>}.')


def with_tools(messages: list[dict], tools: Tools) -> list[dict]:
    """`messages` with the tools described in (or as) the system message."""
    text = system_prompt(tools)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + text},
                *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def call_text(tool_calls: list, i: int) -> str:
    """An assistant message's earlier `tool_calls` as the model writes a call."""
    parts = []
    for c in tool_calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ToolError("messages", f"messages[{i}].tool_calls entries need "
                                        f"function.name and function.arguments")
        args = fn.get("arguments") or "{}"
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            raise ToolError("messages", f"messages[{i}]: tool call arguments are not "
                                        f"JSON: {args!r}") from None
        parts.append(json.dumps({"name": fn["name"], "arguments": args}))
    return "\n".join(parts)


def parse_calls(text: str, tools: Tools) -> list[dict] | None:
    """OpenAI `tool_calls` for an answer that is a call, else None (a text answer)."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    names = {f["name"] for f in tools.offered}
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    return [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
             "function": {"name": obj["name"],
                          "arguments": json.dumps(obj.get("arguments", {}))}}]
