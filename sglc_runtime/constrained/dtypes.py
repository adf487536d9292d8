"""Regexes for `gen(dtype=...)`, `gen_int` and `gen_string`, after SGLang's REGEX_* constants.

SGLang allows unbounded trailing whitespace (`[ \\n]*`) after numbers; here it is bounded so a
model cannot loop on it, and `str` is a double-quoted JSON string (escapes allowed, no raw
control characters) instead of SGLang's `"[\\w\\d\\s]*"`.
"""

from __future__ import annotations

from ..errors import ConstraintError

_WS = r"[ \n]{0,2}"
JSON_STRING = r'"([^"\\\x00-\x1f]|\\["\\/bfnrt])*"'

DTYPE_REGEX = {
    "int": r"[-+]?[0-9]+" + _WS,
    "float": r"[-+]?[0-9]*\.?[0-9]+" + _WS,
    "bool": r"(True|False)",
    "str": JSON_STRING,
}


def dtype_regex(dtype) -> str:
    """The regex for `dtype`: 'int' | 'float' | 'bool' | 'str', or the Python type itself."""
    name = dtype.__name__ if isinstance(dtype, type) else dtype
    if name not in DTYPE_REGEX:
        raise ConstraintError(f"unsupported dtype {dtype!r}: expected one of "
                              f"{', '.join(DTYPE_REGEX)} (or the Python types int/float/bool/str)")
    return DTYPE_REGEX[name]
