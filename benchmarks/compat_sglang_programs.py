"""How many of SGLang's own frontend test programs (`sglang/test/test_programs.py` from the
PyPI wheel, installed apart with --no-deps as .ci/run does) run on sglc with only the import
changed. Each program runs on the default model; failures are classified (assertion on the
model's answer quality vs an API error). SGLang's file is read at run time, never committed.

Run: python benchmarks/compat_sglang_programs.py [--frontend DIR]"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import save


def load_programs(frontend: Path) -> types.ModuleType:
    src = (frontend / "sglang" / "test" / "test_programs.py").read_text()
    src = src.replace("from sglang.srt.utils import is_hip", "is_hip = lambda: False")
    src = src.replace("import sglang as sgl", "import sglc as sgl")
    src = src.replace("from sglang.", "from sglc.")  # the only change a user makes
    module = types.ModuleType("sglang_test_programs")
    exec(compile(src, "sglang/test/test_programs.py", "exec"), module.__dict__)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frontend", default=os.environ.get(
        "SGLC_SGLANG_FRONTEND", str(Path.home() / ".cache" / "sglc" / "sglang-frontend")))
    args = ap.parse_args()
    import sglc as sgl

    module = load_programs(Path(args.frontend))
    backend = sgl.Runtime()
    sgl.set_default_backend(backend)
    results = {}
    for name in sorted(n for n in dir(module) if n.startswith("test_")):
        fn = getattr(module, name)
        kwargs = {"check_answer": False} if "check_answer" in fn.__code__.co_varnames[
            :fn.__code__.co_argcount] else {}  # SGLang's CI passes it; the answer checks
        try:                                    # that remain still run
            fn(**kwargs)
            results[name] = {"outcome": "passed"}
        except AssertionError as e:
            results[name] = {"outcome": "model answer check failed", "detail": str(e)[:300]}
        except Exception as e:  # noqa: BLE001 - recorded per program
            tb = traceback.extract_tb(e.__traceback__)[-1]
            results[name] = {"outcome": f"error: {type(e).__name__}", "detail": str(e)[:300],
                             "where": f"{Path(tb.filename).name}:{tb.lineno}"}
        print(f"{name}: {results[name]['outcome']}", flush=True)
    backend.shutdown()
    counts: dict[str, int] = {}
    for r in results.values():
        key = r["outcome"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    save("compat_sglang_programs", {"programs": results, "counts": counts,
                                    "total": len(results)})
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
