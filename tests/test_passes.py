"""Each pass as "IR in, pass, IR expected out", each idempotent; the pass manager verifies after
every pass and can print the IR after each."""

import io
import textwrap

import pytest

from sglc.ir import Graph, IRError, Op, parse
from sglc.passes import PASSES, PIPELINE, PassContext, PassManager, select_passes


def ir(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def run_pass(name: str, text: str, ctx=None) -> str:
    return str(PASSES[name](parse(text).clone(), ctx or PassContext()).canonical())


CASES = {
    "dce": (ir("""
        program p
        %0 = begin
        %1 = arg {name="x"}
        %2 = text %0 {value="Q: "}
        %3 = fork %2 {n=2}
        %4 = child %3 {index=0}
        %5 = gen %4 {name="unused"}
        %6 = child %3 {index=1}
        %7 = get %2 {name="x"}
        %8 = py %2, %7 {code="_1.strip()", pure=true}
        %9 = py %2 {code="print('side effect')"}
        %10 = gen %2 {name="a"}
        %11 = ret %10
        """), ir("""
        program p
        %0 = begin
        %1 = arg {name="x"}
        %2 = text %0 {value="Q: "}
        %3 = py %2 {code="print('side effect')"}
        %4 = gen %2 {name="a"}
        %5 = ret %4
        """)),
    "merge_text": (ir("""
        program p
        %0 = begin
        %1 = text %0 {value="Question: "}
        %2 = text %1 {value="What?"}
        %3 = text %2 {value="\\n"}
        %4 = get %1 {name="v"}
        %5 = text %3 {value="A:"}
        %6 = gen %5 {name="a"}
        %7 = ret %6, %4
        """), ir("""
        program p
        %0 = begin
        %1 = text %0 {value="Question: "}
        %2 = text %1 {value="What?\\nA:"}
        %3 = get %1 {name="v"}
        %4 = gen %2 {name="a"}
        %5 = ret %4, %3
        """)),
    "hoist_prefix": (ir("""
        program p
        %0 = begin
        %1 = arg {name="q"}
        %2 = text %0 {value="Examples, long enough to be worth caching once for the batch."}
        %3 = append %2, %1
        %4 = fork %3 {n=2}
        %5 = child %4 {index=0}
        %6 = text %5 {value="Answer:"}
        %7 = gen %6 {name="a"}
        %8 = child %4 {index=1}
        %9 = text %8 {value="Answer:"}
        %10 = gen %9 {name="a"}
        %11 = join %3, %7, %10 {mode="gather_variable"}
        %12 = ret %11
        """), ir("""
        program p
        %0 = begin
        %1 = arg {name="q"}
        %2 = text %0 {value="Examples, long enough to be worth caching once for the batch."}
        %3 = commit %2 {batch=true}
        %4 = append %3, %1
        %5 = text %4 {value="Answer:"}
        %6 = commit %5
        %7 = fork %6 {n=2}
        %8 = child %7 {index=0}
        %9 = gen %8 {name="a"}
        %10 = child %7 {index=1}
        %11 = gen %10 {name="a"}
        %12 = join %4, %9, %11 {mode="gather_variable"}
        %13 = ret %12
        """)),
    "batch_forks": (ir("""
        program p
        %0 = begin
        %1 = fork %0 {n=2}
        %2 = child %1 {index=0}
        %3 = gen %2 {name="a"}
        %4 = text %3 {value="rate:"}
        %5 = select %4 {name="r", choices=["1", "2"]}
        %6 = child %1 {index=1}
        %7 = gen %6 {name="a"}
        %8 = get %3 {name="a"}
        %9 = append %7, %8
        %10 = select %9 {name="r", choices=["1", "2"]}
        %11 = join %0, %5, %10 {mode="gather_variable"}
        %12 = ret %11
        """), ir("""
        program p
        %0 = begin
        %1 = fork %0 {n=2}
        %2 = child %1 {index=0}
        %3 = gen %2 {name="a", group=0}
        %4 = text %3 {value="rate:"}
        %5 = select %4 {name="r", choices=["1", "2"]}
        %6 = child %1 {index=1}
        %7 = gen %6 {name="a", group=0}
        %8 = get %3 {name="a"}
        %9 = append %7, %8
        %10 = select %9 {name="r", choices=["1", "2"]}
        %11 = join %0, %5, %10 {mode="gather_variable"}
        %12 = ret %11
        """)),
    "lower_constraints": (ir("""
        program p
        %0 = begin
        %1 = gen %0 {name="n", dtype="int"}
        %2 = gen %1 {name="b", dtype="bool"}
        %3 = gen %2 {name="o", json_schema="{\\"type\\": \\"integer\\"}"}
        %4 = gen %3 {name="bad", json_schema="not json"}
        %5 = gen %4 {name="r", regex="[a-z]+"}
        %6 = ret %5
        """), ir("""
        program p
        %0 = begin
        %1 = gen %0 {name="n", extra_stop=[" ", "\\n"], regex="[-+]?[0-9]{1,19}[ \\\\n]{0,2}"}
        %2 = gen %1 {name="b", regex="(True|False)"}
        %3 = gen %2 {name="o", regex="-?(0|[1-9][0-9]*)"}
        %4 = gen %3 {name="bad", json_schema="not json"}
        %5 = gen %4 {name="r", regex="[a-z]+"}
        %6 = ret %5
        """)),
}


def test_every_pass_has_a_case():
    assert set(CASES) == set(PASSES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_pass_ir_in_ir_out(name):
    before, expected = CASES[name]
    assert run_pass(name, before) == expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_pass_is_idempotent(name):
    before, expected = CASES[name]
    assert run_pass(name, expected) == expected
    assert run_pass(name, run_pass(name, before)) == expected


def test_hoisting_leaves_concat_joined_forks_and_unequal_branches_alone():
    text = ir("""
        program p
        %0 = begin
        %1 = fork %0 {n=2}
        %2 = child %1 {index=0}
        %3 = text %2 {value="x"}
        %4 = child %1 {index=1}
        %5 = text %4 {value="x"}
        %6 = join %0, %3, %5 {mode="concate_and_append"}
        %7 = fork %6 {n=2}
        %8 = child %7 {index=0}
        %9 = text %8 {value="a"}
        %10 = child %7 {index=1}
        %11 = text %10 {value="b"}
        %12 = join %6, %9, %11 {mode="gather_variable"}
        %13 = ret %12
        """)
    out = run_pass("hoist_prefix", text)
    assert out.count("= text") == 4 and out.count("= commit") == 2


def test_lower_constraints_warms_the_fsm_cache_with_the_tokenizer(monkeypatch):
    from sglc_runtime import constrained

    built = []
    monkeypatch.setattr(constrained, "build_constraint",
                        lambda tok, regex: built.append((tok, regex)))
    run_pass("lower_constraints", CASES["lower_constraints"][0], PassContext(tokenizer="tok"))
    assert sorted(r for _, r in built) == sorted([r"[-+]?[0-9]{1,19}[ \n]{0,2}", "(True|False)",
                                                  "-?(0|[1-9][0-9]*)", "[a-z]+"])


def test_pipeline_is_idempotent_on_the_cases():
    manager = PassManager(list(PIPELINE))
    for before, _ in CASES.values():
        once = manager.run(parse(before))
        assert str(manager.run(once)) == str(once)


def test_manager_names_the_pass_that_broke_the_graph_and_those_before():
    def breaks(g: Graph, ctx) -> Graph:
        (r,) = g.nodes_of(Op.RET)
        g.node(r).attrs["bogus"] = 1
        return g

    manager = PassManager([("dce", PASSES["dce"]), ("breaks", breaks)])
    with pytest.raises(IRError, match=r"pass 'breaks' left an invalid graph \(passes before "
                                      r"it: dce\).*unknown attribute"):
        manager.run(parse(CASES["dce"][0]))


def test_manager_prints_ir_after_each_pass_and_records_changes():
    out = io.StringIO()
    manager = PassManager(select_passes(["dce", "merge_text"]), print_after_all=True, out=out)
    manager.run(parse(CASES["merge_text"][0]))
    printed = out.getvalue()
    assert "IR after input" in printed and "IR after dce (unchanged)" in printed
    assert "IR after merge_text -----" in printed
    assert [(r.name, r.changed) for r in manager.records] == [("dce", False),
                                                              ("merge_text", True)]
    with pytest.raises(IRError, match="unknown pass"):
        select_passes(["nope"])
