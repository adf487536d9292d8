"""`build_regex_from_object` at SGLang's path: the regex sglc constrains a JSON schema to."""

from __future__ import annotations

import json


def build_regex_from_object(obj, whitespace_pattern: str | None = None) -> str:
    """The regex of a JSON schema given as a string, a dict, or a pydantic model class."""
    if hasattr(obj, "model_json_schema"):  # a pydantic model class
        obj = obj.model_json_schema()
    schema = obj if isinstance(obj, str) else json.dumps(obj)
    from sglc_runtime.constrained.json_schema import json_schema_to_regex

    return json_schema_to_regex(schema, whitespace=whitespace_pattern)
