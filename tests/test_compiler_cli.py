"""`sglc compile` and `sglc run` (the latter on a fake backend)."""

import pytest
from test_compiler import GOLDEN, ROOT, FakeBackend

from sglc.cli import main

FEW_SHOT = str(ROOT / "samples" / "few_shot_qa.py")
JSON = str(ROOT / "samples" / "json_extraction.py")


def test_compile_prints_the_final_ir(capsys):
    assert main(["compile", FEW_SHOT]) == 0
    assert capsys.readouterr().out == (GOLDEN / "few_shot_qa.few_shot_qa.ir").read_text()


def test_compile_every_program_of_a_file_or_one(capsys, tmp_path):
    assert main(["compile", JSON]) == 0
    out = capsys.readouterr().out
    assert "program extract_fields" in out and "program extract_json" in out
    target = tmp_path / "out.ir"
    assert main(["compile", JSON, "--function", "extract_json", "-o", str(target)]) == 0
    assert target.read_text() == (GOLDEN / "json_extraction.extract_json.ir").read_text()


def test_compile_passes_and_print_after_all(capsys):
    assert main(["compile", FEW_SHOT, "--passes", "none"]) == 0
    assert "commit" not in capsys.readouterr().out
    assert main(["compile", FEW_SHOT, "--passes", "merge_text,hoist_prefix",
                 "--print-ir-after-all"]) == 0
    err = capsys.readouterr().err
    assert "IR after merge_text" in err and "IR after hoist_prefix" in err
    assert "IR after dce" not in err


def test_compile_draws_the_graph(tmp_path, capsys):
    svg = tmp_path / "g.svg"
    assert main(["compile", JSON, "--dot", str(svg)]) == 0
    assert (tmp_path / "g_extract_json.svg").read_text().startswith("<svg")
    assert (tmp_path / "g_extract_fields.svg").exists()


def test_user_errors_exit_nonzero_naming_the_line(tmp_path, capsys):
    prog = tmp_path / "prog.py"
    prog.write_text("import sglc as sgl\n\n\n@sgl.function\ndef p(s, x):\n"
                    "    s += sgl.gen('a', max_tokens='lots')\n")
    assert main(["compile", str(prog)]) == 2
    err = capsys.readouterr().err
    assert f"{prog}:6:34:" in err and "max_tokens='lots'" in err and "^" in err
    assert main(["compile", str(prog), "--function", "nope"]) == 2
    assert "no program 'nope'" in capsys.readouterr().err
    assert main(["compile", str(tmp_path / "missing.py")]) == 2
    assert main(["compile", FEW_SHOT, "--passes", "bogus"]) == 2
    assert "unknown pass" in capsys.readouterr().err


def test_run_one_program(monkeypatch, capsys):
    from sglc.backend import runtime

    class FakeRuntime(FakeBackend):
        def __init__(self, **engine_args):
            super().__init__()
            self.engine_args = engine_args

        def shutdown(self):
            pass

    monkeypatch.setattr(runtime, "Runtime", FakeRuntime)
    assert main(["run", FEW_SHOT, "--arg", "question=Why?", "--show-vars"]) == 0
    out = capsys.readouterr()
    assert out.out.rstrip().endswith("Question: Why?\nAnswer:<383>")
    assert "answer = '<383>'" in out.err
    assert main(["run", JSON, "--arg", "text=x"]) == 2
    assert "pick one with --function" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run"])


def test_compile_lists_programs_that_run_eagerly(tmp_path, capsys):
    prog = tmp_path / "prog.py"
    prog.write_text("import sglc as sgl\n\n\n@sgl.function\ndef ok(s):\n    s += 'a'\n\n\n"
                    "@sgl.function\ndef dyn(s):\n    while 'x' not in s.text():\n"
                    "        s += sgl.gen(max_tokens=1)\n")
    assert main(["compile", str(prog)]) == 0  # a fallback is not an error
    out, err = capsys.readouterr()
    assert "program ok" in out and "program dyn" not in out
    assert "1 of 2 programs compiled" in err and f"dyn runs eagerly: {prog}:11:" in err
    assert "while" in err and " object at 0x" not in err
    assert main(["compile", str(prog), "--strict"]) == 2
