"""SGLang's own frontend (`sglang.lang`, from the PyPI wheel installed with --no-deps) drives
`sglc serve` through its `RuntimeEndpoint`: gen, select, regex, streaming, run_batch and fork.

It runs in a subprocess: importing `sglang` patches transformers, which the oracle tests use.
.ci/install installs the frontend into ~/.cache/sglc/sglang-frontend (SGLC_SGLANG_FRONTEND
overrides); without it the test skips, saying so."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sglc as sgl

FRONTEND = Path(os.environ.get("SGLC_SGLANG_FRONTEND",
                               Path.home() / ".cache" / "sglc" / "sglang-frontend"))

SCRIPT = r'''
import json, sys
import sglang as sgl

backend = sgl.RuntimeEndpoint(sys.argv[1])

@sgl.function
def prog(s, question):
    s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=12, stop="\n")
    s += "\nIs that right?" + sgl.select("check", choices=[" yes", " no"])
    s += "\nA number:" + sgl.gen("num", regex=r" [0-9]{1,4}", max_tokens=6)

@sgl.function
def forked(s):
    s += "Three colors:"
    f = s.fork(2)
    f += sgl.gen("color", max_tokens=4, stop="\n")
    f.join()

out = {}
st = prog.run(question="What is the capital of France?", temperature=0, backend=backend)
out["prog"] = {"text": st.text(), "answer": st["answer"], "check": st["check"], "num": st["num"]}
st = prog.run(question="What is 2+2?", temperature=0, backend=backend, stream=True)
out["stream"] = "".join(st.text_iter())
states = prog.run_batch([{"question": q} for q in ["Why is the sky blue?", "Who wrote Hamlet?"]],
                        temperature=0, backend=backend)
out["batch"] = [s["answer"] for s in states]
out["fork"] = forked.run(temperature=0, backend=backend)["color"]
print("RESULT " + json.dumps(out))
'''


@sgl.function
def prog(s, question):
    s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=12, stop="\n")
    s += "\nIs that right?" + sgl.select("check", choices=[" yes", " no"])
    s += "\nA number:" + sgl.gen("num", regex=r" [0-9]{1,4}", max_tokens=6)


def test_sglang_frontend_drives_sglc_serve(base_url, runtime):
    if not (FRONTEND / "sglang" / "lang").is_dir():
        pytest.skip(f"SGLang's frontend is not installed in {FRONTEND} (.ci/install, which "
                    "quickstart.sh and .ci/run call, installs it: pip install --no-deps "
                    "--target DIR sglang==0.5.23 and what its frontend imports)")
    env = {**os.environ, "PYTHONPATH": str(FRONTEND)}
    r = subprocess.run([sys.executable, "-c", SCRIPT, base_url], env=env, capture_output=True,
                       text=True, timeout=600)
    lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT "):])
    ours = prog.run(question="What is the capital of France?", temperature=0, backend=runtime)
    assert out["prog"]["answer"] == ours["answer"]  # same server text for the same prompt
    assert out["prog"]["check"] in (" yes", " no")
    assert out["prog"]["num"] == ours["num"] if out["prog"]["check"] == ours["check"] else True
    assert out["prog"]["text"].startswith("Q: What is the capital of France?\nA:")
    assert out["stream"].startswith("Q: What is 2+2?\nA:") and "A number:" in out["stream"]
    assert len(out["batch"]) == 2 and all(isinstance(a, str) for a in out["batch"])
    assert len(out["fork"]) == 2
