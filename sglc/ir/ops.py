"""The op enum and each op's signature: what its operands are, what it yields, which attributes
it takes. Every IR node is one `Node(op, args, attrs)`; this table is the whole instruction set.

Three kinds of value flow through the graph: a program *state* (text, variables, chat turns;
immutable in SSA, every state op yields a new one), a plain Python *value*, and a fork's *group*
of branch states. Data-dependent control flow is gating: `branch` passes its first operand on
only when the condition matches its arm (otherwise the result is *dead*, and so is everything
computed from it); `merge` yields whichever one of its operands is live."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

from ..lang.primitives import SglSamplingParams


class Kind(enum.Enum):
    STATE = "state"
    VALUE = "value"
    GROUP = "group"
    NONE = "none"  # `ret` yields nothing
    SAME = "same"  # branch/merge: the kind of their first operand


class Op(enum.Enum):
    ARG = "arg"                  # a program argument
    CONST = "const"              # a JSON-literal constant value
    BEGIN = "begin"              # the empty state a program starts from
    TEXT = "text"                # state + constant text
    APPEND = "append"            # state + a run-time value (text, number or sgl expression)
    GEN = "gen"                  # state + generated text, stored as variable `name`
    SELECT = "select"            # state + the most likely of `choices`
    ROLE_BEGIN = "role_begin"    # open a chat turn
    ROLE_END = "role_end"        # close it
    SCOPE_BEGIN = "scope_begin"  # start capturing text into variable `name`
    SCOPE_END = "scope_end"      # stop
    COMMIT = "commit"            # have the backend cache the text so far
    FORK = "fork"                # a group of `n` copies of a state
    CHILD = "child"              # branch `index` of a fork
    JOIN = "join"                # gather the branches back into the parent state
    GET = "get"                  # a state's variable `name`
    PY = "py"                    # a Python expression evaluated at run time
    BRANCH = "branch"            # operand 0 if bool(operand 1) == arm, else dead
    MERGE = "merge"              # the one live operand
    RET = "ret"                  # the program's final state and return value


S, V, G = Kind.STATE, Kind.VALUE, Kind.GROUP

#: gen attributes besides the sampling parameters
GEN_EXTRA = ("name", "group", "extra_stop")
#: sampling-parameter attributes of `gen`, named as `sgl.gen`'s arguments: every field of the
#: language's sampling parameters but `n` (a gen with n > 1 yields a list and runs eagerly)
GEN_PARAMS = tuple(SglSamplingParams.gen_arg(f.name) for f in fields(SglSamplingParams)
                   if f.name != "n")


@dataclass(frozen=True)
class Signature:
    operands: tuple[Kind, ...]       # fixed leading operands
    rest: Kind | None                # kind of any further operands (None: no more allowed)
    result: Kind
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    min_rest: int = 0


SIGNATURES: dict[Op, Signature] = {
    Op.ARG: Signature((), None, V, ("name",), ("value",)),
    Op.CONST: Signature((), None, V, ("value",)),
    Op.BEGIN: Signature((), None, S),
    Op.TEXT: Signature((S,), None, S, ("value",)),
    Op.APPEND: Signature((S, V), None, S, (), ("format", "conversion")),
    Op.GEN: Signature((S,), None, S, (), GEN_EXTRA + GEN_PARAMS),
    Op.SELECT: Signature((S,), V, S, (), ("name", "choices", "temperature", "choices_method",
                                          "group")),
    Op.ROLE_BEGIN: Signature((S,), None, S, ("role",)),
    Op.ROLE_END: Signature((S,), None, S, ("role",)),
    Op.SCOPE_BEGIN: Signature((S,), None, S, ("name",)),
    Op.SCOPE_END: Signature((S,), None, S, ("name",)),
    Op.COMMIT: Signature((S,), None, S, (), ("batch",)),
    Op.FORK: Signature((S,), None, G, ("n",)),
    Op.CHILD: Signature((G,), None, S, ("index",)),
    Op.JOIN: Signature((S,), S, S, ("mode",), min_rest=1),
    Op.GET: Signature((S,), None, V, ("name",)),
    Op.PY: Signature((S,), Kind.SAME, V, ("code",), ("pure",)),  # rest: states or values
    Op.BRANCH: Signature((Kind.SAME, V), None, Kind.SAME, ("arm",)),
    Op.MERGE: Signature((Kind.SAME,), Kind.SAME, Kind.SAME),
    Op.RET: Signature((S,), V, Kind.NONE),
}

#: ops that call the model (or the backend's cache) and so run off the scheduler's thread
MODEL_OPS = frozenset({Op.GEN, Op.SELECT, Op.COMMIT})
#: ops that take a state and yield the next version of that same state
STATE_OPS = frozenset({Op.TEXT, Op.APPEND, Op.GEN, Op.SELECT, Op.ROLE_BEGIN, Op.ROLE_END,
                       Op.SCOPE_BEGIN, Op.SCOPE_END, Op.COMMIT, Op.JOIN})
