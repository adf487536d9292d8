"""Regexes for `gen(dtype=...)`, `gen_int` and `gen_string`, after SGLang's REGEX_* constants.

SGLang allows unbounded trailing whitespace (`[ \\n]*`) after numbers; here it and the digits
are bounded so a model cannot loop on them, and `str` is a double-quoted JSON string (escapes
allowed, no raw control characters) instead of SGLang's `"[\\w\\d\\s]*"`.
"""

from __future__ import annotations

from ..errors import ConstraintError

_WS = r"[ \n]{0,2}"
JSON_STRING = r'"([^"\\\x00-\x1f]|\\["\\/bfnrt])*"'

# Numbers are bounded to 19 digits a part (an int64), as a model otherwise can loop on digits
# until max_tokens (seen: gen_int on the default model wrote 24000000000000... to the end).
_DIGITS = "[0-9]{1,19}"
DTYPE_REGEX = {
    "int": r"[-+]?" + _DIGITS + _WS,
    "float": r"[-+]?[0-9]{0,19}\.?" + _DIGITS + _WS,
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
