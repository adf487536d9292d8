"""Regexes for JSON integers and numbers, optionally bounded by integer-valued limits.

`int_range_regex(lo, hi)` matches exactly the canonical decimal spellings (no leading zeros,
no "-0") of the integers in [lo, hi] (None = unbounded). `number_range_regex` matches a subset
of the JSON numbers in the range: the integers, plus decimals with a non-zero fraction whose
whole interval between two consecutive integers lies in the range (no exponents when bounded).
"""

from __future__ import annotations

INTEGER = r"-?(0|[1-9][0-9]*)"
NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"
_FRACTION = r"\.[0-9]*[1-9][0-9]*"  # a non-zero fraction, so x is strictly between integers


def _group(alts: list[str]) -> str:
    return alts[0] if len(alts) == 1 else "(" + "|".join(alts) + ")"


def _digit(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"[{lo}-{hi}]"


def _same_length(lo: str, hi: str) -> list[str]:
    """Alternatives matching the digit strings in [lo, hi], both of the same length."""
    if not lo:
        return [""]
    if lo == hi:
        return [lo]
    if lo[0] == hi[0]:
        return [lo[0] + _group(_same_length(lo[1:], hi[1:]))]
    rest = len(lo) - 1
    lo_full, hi_full = lo[1:] == "0" * rest, hi[1:] == "9" * rest
    first, last = int(lo[0]) + (not lo_full), int(hi[0]) - (not hi_full)
    alts = [] if lo_full else [lo[0] + _group(_same_length(lo[1:], "9" * rest))]
    if first <= last:
        alts.append(_digit(first, last) + ("" if rest == 0 else "[0-9]" if rest == 1 else
                                           f"[0-9]{{{rest}}}"))
    if not hi_full:
        alts.append(hi[0] + _group(_same_length("0" * rest, hi[1:])))
    return alts


def nat_range_regex(lo: int, hi: int | None) -> str | None:
    """Canonical spellings of the naturals in [lo, hi] (hi None = unbounded); None if empty."""
    assert lo >= 0
    if hi is not None and lo > hi:
        return None
    alts, n = [], len(str(lo))
    top = (10 ** n - 1) if hi is None else hi
    for length in range(n, len(str(top)) + 1):
        a, b = max(lo, 10 ** (length - 1) if length > 1 else 0), min(top, 10 ** length - 1)
        if a <= b:
            alts += _same_length(str(a), str(b))
    if hi is None:
        alts.append(f"[1-9][0-9]{{{n},}}")
    return _group(alts)


def int_range_regex(lo: int | None, hi: int | None) -> str | None:
    """Canonical spellings of the integers in [lo, hi] (None = unbounded); None if empty."""
    if lo is None and hi is None:
        return INTEGER
    alts = []
    if lo is None or lo < 0:  # negatives -m, m in [max(1, -hi), -lo]
        neg = nat_range_regex(1 if hi is None or hi >= 0 else -hi, None if lo is None else -lo)
        if neg is not None:
            alts.append("-" + neg)
    if hi is None or hi >= 0:
        pos = nat_range_regex(0 if lo is None or lo < 0 else lo, hi)
        if pos is not None:
            alts.append(pos)
    return _group(alts) if alts else None


def number_range_regex(lo: int | None, hi: int | None, exclusive_lo: bool = False,
                       exclusive_hi: bool = False) -> str | None:
    """A subset of the JSON numbers x with lo <(=) x <(=) hi; None if that subset is empty."""
    if lo is None and hi is None:
        return NUMBER
    alts = []
    ints = int_range_regex(None if lo is None else lo + exclusive_lo,
                           None if hi is None else hi - exclusive_hi)
    if ints is not None:
        alts.append(ints)
    # x = I.f in (I, I+1): needs I >= lo and I + 1 <= hi.
    pos = nat_range_regex(0 if lo is None or lo < 0 else lo, None if hi is None else hi - 1)
    if pos is not None:
        alts.append(pos + _FRACTION)
    # x = -M.f in (-M-1, -M): needs -M-1 >= lo and -M <= hi.
    if lo is None or lo <= -1:
        neg = nat_range_regex(0 if hi is None or hi >= 0 else -hi, None if lo is None else -lo - 1)
        if neg is not None:
            alts.append("-" + neg + _FRACTION)
    return _group(alts) if alts else None
