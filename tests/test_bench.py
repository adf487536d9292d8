"""`sglc bench`: its workloads compile and run, the optimal hit rate, the report."""

import json
import subprocess
import sys

import pytest

import sglc as sgl
from sglc.bench.run import optimal_hit_rate, table
from sglc.bench.workloads import WORKLOADS


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_every_workload_compiles_and_its_data_is_deterministic(name):
    w = WORKLOADS[name]
    assert sgl.compile(w.program, strict=True).compile_error is None
    assert [w.make_args(i) for i in range(3)] == [w.make_args(i) for i in range(3)]
    assert w.make_args(0) != w.make_args(1)


class CharTokenizer:
    def encode(self, text):
        return [ord(c) for c in text]


def test_optimal_hit_rate_counts_each_request_longest_earlier_prefix():
    log = [("abcd", "XY"), ("abcdXYz", ""), ("abQ", ""), ("zzzz", "")]
    # 0 of 4; "abcdXY" of 7; "ab" of 3; 0 of 4
    assert optimal_hit_rate(log, CharTokenizer()) == pytest.approx(8 / 18)
    assert optimal_hit_rate([("same", ""), ("same", "")], CharTokenizer()) == \
        pytest.approx(3 / 8)  # a repeat still computes its last token


def test_table_names_the_ratio_to_the_best_peer():
    results = {"sglc": {"w": {"programs_per_s": 10.0, "cache_hit_rate": 0.5,
                              "optimal_hit_rate": 0.6}},
               "sglc_compiled": {"w": {"programs_per_s": 12.0}},
               "hf": {"w": {"programs_per_s": 2.0}}, "llama_server": {"w": {"programs_per_s": 4.0}}}
    text = table(results, ["w"], ["sglc", "sglc_compiled", "hf", "llama_server"])
    assert "| w | 10.00 | 12.00 | 2.00 | 4.00 | 3.0x | 50% (60%) |" in text


@pytest.mark.model
def test_sglc_bench_runs_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "sglc", "bench", "--workload", "json_decode",
                           "--systems", "sglc", "sglc_compiled", "llama_server", "--num", "2",
                           "--repeat", "2", "--llama-server", "", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SKIPPING llama_server: no llama-server binary" in proc.stderr
    data = json.loads(out.read_text())
    for system in ("sglc", "sglc_compiled"):
        r = data["results"][system]["json_decode"]
        assert r["programs_per_s"] > 0 and r["output_tokens_per_s"] > 0
        assert 0 <= r["cache_hit_rate"] <= 1 and r["latency_p50_s"] <= r["latency_p99_s"]
        assert len(r["runs_programs_per_s"]) == 2  # best of two runs, each from empty caches
        assert r["programs_per_s"] == max(r["runs_programs_per_s"])
    assert 0 < data["results"]["sglc"]["json_decode"]["optimal_hit_rate"] <= 1
    assert "llama_server" in data["skipped"] and out.with_suffix(".png").stat().st_size > 0
    assert "| json_decode |" in proc.stdout
