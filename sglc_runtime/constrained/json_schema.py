"""JSON Schema → regex whose every match is a JSON document valid under the schema.

Contract: the regex's language is a *subset* of the schema's valid instances (never a superset),
laid out as `json.dumps` does (", " and ": ", no padding) by default, or with `whitespace` (e.g.
`[ ]?`, bounded so the model cannot loop on it) around every token; properties in schema order, optional properties may be left out,
extra properties are never generated. Keywords that would change validity and are not handled
raise ConstraintError naming the keyword and its location; annotations (title, description, …)
are ignored. Recursive `$ref`s are expanded `max_ref_depth` times; beyond that only the
non-recursive alternatives remain (an error if none does). Documented narrowings: `oneOf` is
treated as `anyOf`, a string `pattern` must match the whole string, strings use the escapes
`\\" \\\\ \\/ \\b \\f \\n \\r \\t` only (no `\\uXXXX`), bounded numbers have no exponent.
"""

from __future__ import annotations

import json
import re

from ..errors import ConstraintError
from .dtypes import JSON_STRING
from .number_regex import INTEGER, int_range_regex, number_range_regex
from .regex_fsm import normalize_pattern

WHITESPACE = r"[ ]?"
_CHAR = r'([^"\\\x00-\x1f]|\\["\\/bfnrt])'
_ANNOTATIONS = {"title", "description", "$comment", "examples", "example", "default",
                "$schema", "$id", "id", "deprecated", "readOnly", "writeOnly", "$defs",
                "definitions", "$anchor", "contentMediaType", "contentEncoding"}
_HANDLED = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "properties",
            "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
            "minLength", "maxLength", "pattern", "format", "minimum", "maximum",
            "exclusiveMinimum", "exclusiveMaximum"}
_FORMATS = {
    "date": r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    "time": r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
            r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "ipv4": r"((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
            r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
    "email": r"[a-zA-Z0-9._%+-]{1,64}@[a-zA-Z0-9-]{1,63}(\.[a-zA-Z0-9-]{1,63}){1,4}",
}
_FORMATS["uri"] = r"https?://[a-zA-Z0-9.-]{1,253}(:[0-9]{1,5})?(/[a-zA-Z0-9._~%!$&'()*+,;=:@/-]*)?"
_FORMATS["date-time"] = _FORMATS["date"] + "T" + _FORMATS["time"]
_TYPE_KEYWORDS = {"object": {"properties", "required", "additionalProperties"},
                  "array": {"items", "prefixItems", "minItems", "maxItems"},
                  "string": {"minLength", "maxLength", "pattern", "format"},
                  "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}}


def json_schema_to_regex(schema: str | dict | bool, whitespace: str | None = None,
                         max_ref_depth: int = 3, any_depth: int = 1) -> str:
    """Compile a JSON schema (a JSON string or a dict) to a regex (see the module docstring).

    `any_depth` bounds the nesting of values the schema leaves unconstrained (`{}`)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"json_schema is not valid JSON: {e}") from None
    if not isinstance(schema, (dict, bool)):
        raise ConstraintError(f"json_schema must be an object, got {type(schema).__name__}")
    regex = _Converter(schema, whitespace, max_ref_depth, any_depth).convert(schema, "#")
    if regex is None:
        raise ConstraintError("json_schema has no finite instance (a required recursive $ref "
                              f"deeper than max_ref_depth={max_ref_depth}, or 'false')")
    return regex


def _literal(value) -> str:
    return re.escape(json.dumps(value, ensure_ascii=False))


class _Converter:
    def __init__(self, root, ws: str | None, max_ref_depth: int, any_depth: int):
        # ws=None: json.dumps layout (", " and ": ", no padding) so keys and separators are
        # forced strings that jump-forward skips in one step; else `ws` around every token
        self.root, self.ws = root, ("" if ws is None else ws)
        self.comma = ", " if ws is None else f"{ws},{ws}"
        self.colon = ": " if ws is None else f"{ws}:{ws}"
        self.max_ref_depth, self.any_depth = max_ref_depth, any_depth
        self.ref_stack: list[str] = []

    def fail(self, path: str, what: str) -> ConstraintError:
        return ConstraintError(f"JSON schema at {path}: {what}")

    def convert(self, schema, path: str) -> str | None:
        """Regex for `schema`, or None if it has no instance within the recursion bound."""
        if schema is True:
            return self.any_value(self.any_depth)
        if schema is False:
            return None
        if not isinstance(schema, dict):
            raise self.fail(path, f"a schema must be an object or a boolean, got {schema!r}")
        unknown = sorted(set(schema) - _HANDLED - _ANNOTATIONS)
        if unknown:
            raise self.fail(path, f"unsupported keyword {unknown[0]!r}")
        keys = set(schema) - _ANNOTATIONS
        if "$ref" in schema:
            return self.ref(schema, keys, path)
        for combinator in ("anyOf", "oneOf", "allOf"):
            if combinator in schema:
                return self.combine(schema, combinator, keys, path)
        if "enum" in schema or "const" in schema:
            return self.enum(schema, keys, path)
        types = schema.get("type", self.infer_type(keys))
        if isinstance(types, list):
            alts = [self.typed(schema, t, path) for t in types]
            alts = [a for a in alts if a is not None]
            return "(" + "|".join(alts) + ")" if alts else None
        return self.typed(schema, types, path)

    def infer_type(self, keys: set[str]) -> str | None:
        for t, kws in _TYPE_KEYWORDS.items():
            if keys & kws:
                return t
        return None

    # ---- combinators, references, enums -------------------------------------------------------
    def ref(self, schema: dict, keys: set[str], path: str) -> str | None:
        ref = schema["$ref"]
        if keys != {"$ref"}:
            raise self.fail(path, f"keyword {min(keys - {'$ref'})!r} next to '$ref'")
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.fail(path, f"unsupported $ref {ref!r} (only local '#/...' references)")
        target = self.root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise self.fail(path, f"$ref {ref!r} does not resolve")
            target = target[part]
        if self.ref_stack.count(ref) >= self.max_ref_depth:
            return None
        self.ref_stack.append(ref)
        try:
            return self.convert(target, ref)
        finally:
            self.ref_stack.pop()

    def combine(self, schema: dict, combinator: str, keys: set[str], path: str) -> str | None:
        subs = schema[combinator]
        if keys != {combinator}:
            raise self.fail(path, f"keyword {min(keys - {combinator})!r} next to "
                                  f"{combinator!r}")
        if not isinstance(subs, list) or not subs:
            raise self.fail(path, f"{combinator!r} must be a non-empty list")
        if combinator == "allOf":
            if len(subs) != 1:
                raise self.fail(path, "'allOf' with more than one schema")
            return self.convert(subs[0], f"{path}/allOf/0")
        alts = [self.convert(s, f"{path}/{combinator}/{i}") for i, s in enumerate(subs)]
        alts = [a for a in alts if a is not None]
        return "(" + "|".join(alts) + ")" if alts else None

    def enum(self, schema: dict, keys: set[str], path: str) -> str | None:
        extra = keys - {"enum", "const", "type"}
        if extra:
            raise self.fail(path, f"keyword {min(extra)!r} next to 'enum'/'const'")
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list) or not values:
            raise self.fail(path, "'enum' must be a non-empty list")
        types = schema.get("type")
        if types is not None:
            types = types if isinstance(types, list) else [types]
            values = [v for v in values if any(_is_type(v, t) for t in types)]
        return "(" + "|".join(_literal(v) for v in values) + ")" if values else None

    # ---- types --------------------------------------------------------------------------------
    def typed(self, schema: dict, t, path: str) -> str | None:
        if t is None:
            return self.any_value(self.any_depth)
        if t == "string":
            return self.string(schema, path)
        if t in ("integer", "number"):
            return self.number(schema, t, path)
        if t == "boolean":
            return "(true|false)"
        if t == "null":
            return "null"
        if t == "array":
            return self.array(schema, path)
        if t == "object":
            return self.object(schema, path)
        raise self.fail(path, f"unknown type {t!r}")

    def string(self, schema: dict, path: str) -> str:
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        for kw in ("pattern", "format"):
            if kw in schema and ("minLength" in schema or "maxLength" in schema):
                raise self.fail(path, f"{kw!r} together with minLength/maxLength")
        if "pattern" in schema:
            try:
                return '"(' + normalize_pattern(schema["pattern"]) + ')"'
            except ConstraintError as e:
                raise self.fail(path, f"'pattern': {e}") from None
        if "format" in schema:
            fmt = schema["format"]
            if fmt not in _FORMATS:
                raise self.fail(path, f"unsupported string format {fmt!r} (supported: "
                                      f"{', '.join(sorted(_FORMATS))})")
            return '"' + _FORMATS[fmt] + '"'
        if not isinstance(lo, int) or lo < 0 or hi is not None and (not isinstance(hi, int)
                                                                   or hi < lo):
            raise self.fail(path, f"bad minLength/maxLength {lo!r}/{hi!r}")
        if lo == 0 and hi is None:
            return JSON_STRING
        return '"' + _CHAR + "{" + f"{lo},{'' if hi is None else hi}" + '}"'

    def number(self, schema: dict, t: str, path: str) -> str | None:
        bounds = {}
        for kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            v = schema.get(kw)
            if isinstance(v, bool):  # draft 4: exclusiveMinimum/Maximum flag the bound
                continue
            if v is not None:
                if not isinstance(v, (int, float)) or v != int(v):
                    raise self.fail(path, f"non-integer {kw!r} {v!r} is not supported")
                bounds[kw] = int(v)
        lo, excl_lo = _tighter(bounds.get("minimum"), bounds.get("exclusiveMinimum"), max)
        hi, excl_hi = _tighter(bounds.get("maximum"), bounds.get("exclusiveMaximum"), min)
        excl_lo |= schema.get("exclusiveMinimum") is True
        excl_hi |= schema.get("exclusiveMaximum") is True
        if t == "integer":
            if lo is None and hi is None:
                return INTEGER
            return int_range_regex(None if lo is None else lo + excl_lo,
                                   None if hi is None else hi - excl_hi)
        return number_range_regex(lo, hi, excl_lo, excl_hi)

    def array(self, schema: dict, path: str) -> str | None:
        ws, lo, hi = self.ws, schema.get("minItems", 0), schema.get("maxItems")
        if not isinstance(lo, int) or lo < 0 or hi is not None and (not isinstance(hi, int)
                                                                   or hi < lo):
            raise self.fail(path, f"bad minItems/maxItems {lo!r}/{hi!r}")
        items = schema.get("items", True)
        if isinstance(items, list) or "prefixItems" in schema:
            prefix = items if isinstance(items, list) else schema["prefixItems"]
            if not lo <= len(prefix) <= (len(prefix) if hi is None else hi):
                raise self.fail(path, "minItems/maxItems exclude the prefixItems length")
            parts = [self.convert(s, f"{path}/prefixItems/{i}") for i, s in enumerate(prefix)]
            if any(p is None for p in parts):
                return None
            return r"\[" + ws + self.comma.join(parts) + ws + r"\]"
        item = self.convert(items, f"{path}/items")
        if item is None or hi == 0:
            return r"\[" + ws + r"\]" if lo == 0 else None
        more = "*" if lo <= 1 and hi is None else \
            "{" + f"{max(lo - 1, 0)},{'' if hi is None else hi - 1}" + "}"
        body = f"{item}({self.comma}{item}){more}"
        return r"\[" + ws + (f"({body})?" if lo == 0 else body) + ws + r"\]"

    def object(self, schema: dict, path: str) -> str | None:
        ws = self.ws
        props, required = schema.get("properties", {}), schema.get("required", [])
        missing = [r for r in required if r not in props]
        if missing:
            raise self.fail(path, f"required property {missing[0]!r} is not in 'properties'")
        if not props:
            extra = schema.get("additionalProperties", True)
            value = self.convert(extra, f"{path}/additionalProperties")
            if value is None:
                return r"\{" + ws + r"\}"
            pair = f"{JSON_STRING}{self.colon}{value}"
            return r"\{" + ws + f"({pair}({self.comma}{pair})*)?" + ws + r"\}"
        entries = []  # (regex of `"key": value`, required)
        for key, sub in props.items():
            value = self.convert(sub, f"{path}/properties/{key}")
            if value is None:
                if key in required:
                    return None
                continue
            entries.append((_literal(key) + f"{self.colon}{value}", key in required))
        # After the first emitted property, each later one is ", prop" (optional ones `?`).
        tails = [""] * (len(entries) + 1)
        for i in range(len(entries) - 1, -1, -1):
            prop, req = entries[i]
            tails[i] = (f"{self.comma}{prop}" if req else f"({self.comma}{prop})?") + tails[i + 1]
        first_required = next((i for i, (_, r) in enumerate(entries) if r), len(entries) - 1)
        firsts = [entries[i][0] + tails[i + 1] for i in range(first_required + 1)]
        body = "(" + "|".join(firsts) + ")" if firsts else ""
        if firsts and not any(r for _, r in entries):
            body += "?"
        return r"\{" + ws + body + ws + r"\}"

    def any_value(self, depth: int) -> str:
        ws = self.ws
        alts = [JSON_STRING, number_range_regex(None, None), "true", "false", "null"]
        if depth > 0:
            inner = self.any_value(depth - 1)
            pair = f"{JSON_STRING}{self.colon}{inner}"
            alts.append(r"\[" + ws + f"({inner}({self.comma}{inner})*)?" + ws + r"\]")
            alts.append(r"\{" + ws + f"({pair}({self.comma}{pair})*)?" + ws + r"\}")
        return "(" + "|".join(alts) + ")"


def _tighter(inclusive: int | None, exclusive: int | None, pick) -> tuple[int | None, bool]:
    """Combine an inclusive and an exclusive bound into (bound, is_exclusive)."""
    if exclusive is None:
        return inclusive, False
    if inclusive is None or pick(inclusive, exclusive) == exclusive:  # exclusive is as tight
        return exclusive, True
    return inclusive, False


def _is_type(value, t: str) -> bool:
    return {"string": isinstance(value, str), "boolean": isinstance(value, bool),
            "null": value is None, "array": isinstance(value, list),
            "object": isinstance(value, dict),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
            }.get(t, False)
