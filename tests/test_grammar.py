"""Context-free grammar constraints (llguidance) end to end on the default model: outputs parse
with the Python `lark` library under the same grammar, Lark and GBNF syntax, jump-forward over
forced text, bad grammars named with line and column before anything runs, grammars in
programs (eager and compiled)."""

import pytest

pytest.importorskip("llguidance")
lark = pytest.importorskip("lark")

import sglc as sgl
from sglc.lang.primitives import ProgramError
from sglc_runtime.errors import ConstraintError, InvalidRequestError

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"

# Lark syntax that both llguidance and the lark library read
GRAMMARS = {
    "arithmetic": ("""
start: expr
expr: term | term OP term | term OP term OP term
term: NUMBER | "(" expr ")"
OP: " + " | " - " | " * " | " / "
NUMBER: /[1-9][0-9]{0,2}/
""", "Write an arithmetic expression that equals 10."),
    "sql": ("""
start: "SELECT " cols " FROM " TABLE where? ";"
cols: COL (", " COL)*
where: " WHERE " COL " = " VALUE
COL: "name" | "age" | "city" | "email"
TABLE: "users" | "orders"
VALUE: /[0-9]{1,4}/ | /'[a-z]{1,12}'/
""", "Write a SQL query that lists the names of users aged 30."),
    "nested_list": ("""
start: list
list: "[" items? "]"
items: item | item ", " item | item ", " item ", " item | item ", " item ", " item ", " item
item: WORD | inner
inner: "[" words? "]"
words: WORD | WORD ", " WORD | WORD ", " WORD ", " WORD
WORD: /[a-z]{1,8}/
""", "Write a nested list of fruits and vegetables."),
}

GBNF_ARITHMETIC = r"""
root ::= expr
expr ::= term | term op term | term op term op term
term ::= number | "(" expr ")"
op ::= " + " | " - " | " * " | " / "
number ::= [1-9] [0-9]? [0-9]?
"""


def _parse(grammar: str, text: str):
    return lark.Lark(grammar, start="start", parser="earley").parse(text)


def _gen(engine, grammar, prompt, **sp):
    return engine.generate(CHAT.format(prompt), {
        "grammar": grammar, "max_new_tokens": 64, "temperature": 0, **sp})


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_outputs_parse_with_the_grammar(engine, name):
    grammar, prompt = GRAMMARS[name]
    for sp in ({"temperature": 0}, {"temperature": 1.0, "seed": 3}, {"temperature": 1.0, "seed": 4}):
        out = _gen(engine, grammar, prompt, **sp)
        reason = out["meta_info"]["finish_reason"]
        assert reason["type"] == "stop", (name, sp, out["text"], reason)
        _parse(grammar, out["text"])  # raises if the output is not in the grammar


def test_gbnf_grammar_and_ebnf_name(engine):
    lark_twin = GRAMMARS["arithmetic"][0]
    for key in ("grammar", "ebnf"):  # ebnf: SGLang's name for the same parameter
        out = engine.generate(CHAT.format("Write an arithmetic expression."),
                              {key: GBNF_ARITHMETIC, "max_new_tokens": 64, "temperature": 0})
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        _parse(lark_twin, out["text"])


def test_jump_forward_over_forced_grammar_text(engine):
    grammar = GRAMMARS["sql"][0]
    prompt = CHAT.format(GRAMMARS["sql"][1])
    on = engine.generate(prompt, {"grammar": grammar, "max_new_tokens": 64, "temperature": 0})
    assert on["meta_info"].get("jump_forward_tokens", 0) >= 2, on["meta_info"]  # "SELECT ", ...
    assert on["text"].startswith("SELECT ")
    _parse(grammar, on["text"])
    from sglc_runtime.engine import Engine

    plain = Engine(dtype="float32", disable_regex_jump_forward=True)
    try:
        off = plain.generate(prompt, {"grammar": grammar, "max_new_tokens": 64, "temperature": 0})
    finally:
        plain.shutdown()
    assert "jump_forward_tokens" not in off["meta_info"]
    _parse(grammar, off["text"])
    # the model computed fewer tokens with jump-forward: forced text is not decoded token by token
    assert on["meta_info"]["completion_tokens"] - on["meta_info"]["jump_forward_tokens"] < \
        off["meta_info"]["completion_tokens"]


def test_bad_grammar_is_named_with_line_and_column_and_the_engine_goes_on(engine):
    bad = 'start: item+\nitem: "a" | undefined_rule\n'
    with pytest.raises(ConstraintError, match=r"at 2\(\d+\).*undefined_rule"):
        engine.generate("hi", {"grammar": bad, "max_new_tokens": 4})
    with pytest.raises(ConstraintError, match=r"invalid regex"):
        engine.generate("hi", {"grammar": 'start: /[a-/', "max_new_tokens": 4})
    with pytest.raises(InvalidRequestError, match="at most one"):
        engine.generate("hi", {"grammar": 'start: "a"', "regex": "a", "max_new_tokens": 4})
    with pytest.raises(ConstraintError, match="matcher fails at the start"):  # compiles, but
        engine.generate("hi", {"grammar": "start: a\na: start\n", "max_new_tokens": 4})  # loops
    out = engine.generate("hi", {"grammar": 'start: "yes" | "no"', "max_new_tokens": 4})
    assert out["text"] in ("yes", "no")


def test_an_unknown_name_is_placed_where_it_is_used():
    """The grammar's own line and column, with a caret under the name (llguidance places it
    at the rule), and an unknown name in a rule `start` never reaches is refused too."""
    from sglc_runtime.constrained.grammar import check_grammar

    with pytest.raises(ConstraintError) as e:
        check_grammar('start: "a"\n  | foo')
    lines = str(e.value).splitlines()
    assert lines[0].startswith("grammar error at 2(5): unknown name: 'foo'")
    assert lines[-2:] == ["   2 |   | foo", " " * 11 + "^"]
    with pytest.raises(ConstraintError, match=r"at 3\(13\): unknown name: 'bar'"):
        check_grammar('start: "a"\n// bar in a comment, "bar" and /bar/ are not names\n'
                      'unused: "b" bar')
    check_grammar('start: x\nx: "foo" /foo+/ // foo\n  | "y"\n')  # names in strings: fine
    check_grammar('root ::= "a" | "b"')  # GBNF is llguidance's to check


def test_a_huge_forced_text_jumps_only_as_far_as_the_budget(engine):
    out = engine.generate("hi", {"grammar": 'start: /a{20000}/', "max_new_tokens": 8})
    meta = out["meta_info"]
    assert meta["finish_reason"]["type"] == "length" and meta["completion_tokens"] <= 8
    assert out["text"] and set(out["text"]) == {"a"}


def test_grammar_in_a_program_eager_and_compiled(runtime):
    grammar = GRAMMARS["nested_list"][0]

    @sgl.function
    def lists(s, topic):
        s += sgl.user("Write a nested list about " + topic + ".")
        s += sgl.assistant(sgl.gen("items", grammar=grammar, max_tokens=64))

    compiled = sgl.compile(lists)
    for f in (lists, compiled):
        state = f.run(topic="fruit", temperature=0)
        _parse(grammar, state["items"])
    assert lists.run(topic="fruit", temperature=0)["items"] == \
        compiled.run(topic="fruit", temperature=0)["items"]


def test_bad_grammar_in_a_program_fails_where_it_is_written():
    with pytest.raises(ProgramError, match=r"at 1\(\d+\).*nowhere"):
        sgl.gen("x", grammar="start: nowhere")
    with pytest.raises(ProgramError, match="at most one"):
        sgl.gen("x", grammar='start: "a"', regex="a")


def test_a_grammar_cut_by_max_tokens_says_incomplete_in_the_programs_meta_info(runtime):
    """llguidance gives no distance to acceptance, so a grammar's budget cannot steer: the
    gen's meta info says the value is not a sentence (a regex's budget steers instead:
    test_constrained_engine.py)."""
    expr = 'start: "(" term (("+" | "-") term)* ")"\nterm: /[0-9]{1,3}/\n'

    @sgl.function
    def calc(s):
        s += sgl.user("Write a very long arithmetic expression.")
        s += sgl.assistant(sgl.gen("e", grammar=expr, max_tokens=2, temperature=0))

    state = calc.run()
    reason = state.get_meta_info("e")["finish_reason"]
    assert reason["type"] == "length" and reason["incomplete"] is True, (state["e"], reason)
    with pytest.raises(lark.exceptions.LarkError):
        _parse(expr, state["e"])
