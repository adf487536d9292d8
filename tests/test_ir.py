"""The IR on its own (no model): the text form round-trips, the verifier rejects broken graphs
and shows them, and drawing works."""

import pytest

import sglc as sgl
from sglc.ir import Graph, IRError, Op, parse, verify
from sglc.ir.drawing import draw, to_dot, to_svg

TEXT = """program demo
%0 = begin
%1 = arg {name="question"}
%2 = text %0 {value="Q: \\"quoted\\" é\\n"}
%3 = append %2, %1
%4 = fork %3 {n=2}
%5 = child %4 {index=0}
%6 = gen %5 {name="a", max_tokens=8, stop=["\\n", "."], temperature=0.5}
%7 = child %4 {index=1}
%8 = select %7 {name="b", choices=["yes", "no"]}
%9 = join %3, %6, %8 {mode="gather_variable"}
%10 = get %9 {name="a"}
%11 = py %9, %10 {code="len(_1) > 1", pure=true}
%12 = branch %9, %11 {arm=true}
%13 = text %12 {value="long"}
%14 = branch %9, %11 {arm=false}
%15 = merge %13, %14
%16 = const {value={"k": [1, 2.5, null, false]}}
%17 = ret %15, %16
"""


def test_text_round_trips_exactly():
    g = parse(TEXT)
    assert str(g) == TEXT
    assert str(parse(str(g))) == TEXT
    assert isinstance(g, Graph) and g.number_of_nodes() == 18
    assert g.op(6) is Op.GEN and g.node(6).attrs["stop"] == ["\n", "."]
    assert sorted(g.predecessors(9)) == [3, 6, 8]


def test_parse_accepts_comments_and_spacing_and_prints_canonically():
    messy = ("# a comment\nprogram p\n%7 = begin   # start\n"
             "%9 =  text %7 {value = \"x\"}\n%3 = ret %9\n")
    assert str(parse(messy)) == 'program p\n%0 = begin\n%1 = text %0 {value="x"}\n%2 = ret %1\n'


def test_canonical_order_ignores_ids_but_keeps_dependencies():
    g = Graph(name="p")
    b = g.add(Op.BEGIN)
    r = g.add(Op.RET, [b], id=10)
    t = g.add(Op.TEXT, [b], {"value": "x"}, before=r)
    g.set_args(r, [t])
    assert str(g) == 'program p\n%0 = begin\n%1 = text %0 {value="x"}\n%2 = ret %1\n'
    assert str(g.canonical()) == str(g) and sorted(g.canonical().nodes) == [0, 1, 2]


def test_any_number_of_inserts_before_one_node():
    # ids are integers; the order is a sequence, so no insert can run out of room
    g = Graph(name="p")
    b = g.add(Op.BEGIN)
    r = g.add(Op.RET, [b])
    last = b
    for k in range(200):  # each goes just before `ret`: after the previous insert
        last = g.add(Op.TEXT, [last], {"value": str(k)}, before=r)
    g.set_args(r, [last])
    lines = str(g.canonical()).splitlines()
    assert len(lines) == 203 and lines[2] == '%1 = text %0 {value="0"}'
    assert lines[-2] == '%200 = text %199 {value="199"}' and lines[-1] == "%201 = ret %200"


def test_a_fork_with_many_inserted_turns_compiles():
    import sglc as sgl

    def prog(s):
        s += sgl.system("sys")
        forks = s.fork(2)
        for f in forks:
            for _ in range(17):
                f += sgl.user("Hello again.")
            f += sgl.assistant(sgl.gen("x", max_tokens=4))
        forks.join()

    c = sgl.compile(prog)
    assert c.compile_error is None and c.ir.count('"Hello again."') >= 17


@pytest.mark.parametrize("bad, message", [
    ("%0 = begin\n%1 = frobnicate %0", "unknown op"),
    ("%0 = begin\n%1 = text %2 {value=\"x\"}", "used before it is defined"),
    ("%0 = begin\n%0 = begin", "defined twice"),
    ("%0 = begin\n%1 = text %0 {value=\"x\", value=\"y\"}", "given twice"),
    ("%0 = begin\n%1 = ret %0 {", "cannot parse"),
])
def test_parse_errors_name_the_line(bad, message):
    with pytest.raises(IRError, match=message):
        parse("program p\n" + bad)


@pytest.mark.parametrize("bad, message", [
    ("%0 = begin\n%1 = arg {name=\"x\"}\n%2 = text %1 {value=\"y\"}\n%3 = ret %2",
     "is a value, expected a state"),
    ("%0 = begin\n%1 = text %0\n%2 = ret %1", "missing attribute"),
    ("%0 = begin\n%1 = text %0 {value=\"a\", colour=1}\n%2 = ret %1", "unknown attribute"),
    ("%0 = begin\n%1 = fork %0 {n=2}\n%2 = child %1 {index=5}\n%3 = ret %2", "outside the fork"),
    ("%0 = begin\n%1 = text %0 {value=\"a\"}", "no ret node"),
    ("%0 = begin\n%1 = py %0 {code=\"_3 + 1\"}\n%2 = ret %0, %1", "reads _3"),
    ("%0 = begin\n%1 = select %0 {choices=[]}\n%2 = ret %1", "non-empty list"),
    ("%0 = begin\n%1 = fork %0 {n=2}\n%2 = ret %1", "expected a state"),
])
def test_verifier_rejects_and_prints_the_graph(bad, message):
    with pytest.raises(IRError, match=message) as info:
        parse("program p\n" + bad)
    assert "program p\n%0 = begin" in str(info.value)  # the whole graph, printed
    assert "# <--" in str(info.value) or "no ret" in message  # the offending line marked


def test_verifier_catches_edges_out_of_step_and_cycles():
    g = parse("program p\n%0 = begin\n%1 = text %0 {value=\"a\"}\n%2 = ret %1\n")
    g.add_edge(0, 2)
    with pytest.raises(IRError, match="edges do not match"):
        verify(g)
    g.remove_edge(0, 2)
    g.add_edge(2, 1)
    with pytest.raises(IRError, match="cycle"):
        verify(g)


def test_sgl_ir_is_reachable_from_the_package():
    assert sgl.ir.parse is parse


def test_draw_svg_dot_and_png(tmp_path):
    g = parse(TEXT)
    svg = to_svg(g)
    assert svg.startswith("<svg") and "%6 = gen" in svg and svg.count("<rect") == 18
    assert "n6 -> n9;" in to_dot(g)
    assert draw(g, tmp_path / "g.svg").read_text() == svg
    pytest.importorskip("matplotlib")
    png = draw(g, tmp_path / "g.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="svg or .png"):
        draw(g, tmp_path / "g.bmp", engine="builtin")
