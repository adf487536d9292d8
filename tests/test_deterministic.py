"""Deterministic inference (on by default in bf16 on the CPU's kernels): at temperature 0 a
request's tokens are the same cold, with its prefix cached, batched with strangers, in a
program run twice, compiled or eager, and through the server; on each instruction set the
4-bit kernel has here (AVX-512 forced on an AMX machine too)."""

import json
import urllib.request

import pytest
from test_compiler import SAMPLES
from test_compiler_model import GreedyRuntime, sample_args

import sglc as sgl
from sglc_runtime.kernels.cpu_kernels import cpu_kernels_available, cpu_q4_linear_available

pytestmark = pytest.mark.model


def _isas() -> list[str]:
    from sglc_runtime.kernels.cpu_kernels import _amx_granted

    if not (cpu_kernels_available() and cpu_q4_linear_available()):
        return []
    return ["avx512", "amx"] if _amx_granted() else ["avx512"]


QUESTIONS = ["Tell me about Italy.", "What is the capital of France?",
             "Write a short poem about rain.", "Explain photosynthesis in two sentences."]
SP = {"temperature": 0, "max_new_tokens": 40, "ignore_eos": True}


@pytest.fixture(scope="module", params=_isas() or [None])
def det_engine(request):
    """The default engine (bf16 where the CPU has it), its 4-bit kernel on one instruction set
    (the engine process reads SGLC_CPU_Q4_ISA)."""
    if request.param is None:
        pytest.skip("deterministic inference runs on the CPU's bf16 kernels (AVX-512-BF16)")
    eng = _engine(request.param, max_total_tokens=16384)
    eng.isa = request.param  # (for engines a test builds beside it)
    assert eng.config.enable_deterministic_inference
    yield eng
    eng.shutdown()


def _engine(isa: str, **kwargs):
    """An engine whose process runs the 4-bit kernel on `isa`."""
    from sglc_runtime.engine import Engine

    mp = pytest.MonkeyPatch()
    mp.setenv("SGLC_CPU_Q4_ISA", isa)
    try:
        return Engine(**kwargs)
    finally:
        mp.undo()


def _prompts(eng) -> list[list[int]]:
    tok = eng.tokenizer
    system = [{"role": "system", "content": "You are a helpful assistant."}]
    return [tok.encode(tok.apply_chat_template(system + [{"role": "user", "content": q}], True))
            for q in QUESTIONS]


def test_cold_cached_batched_and_among_strangers_agree(det_engine):
    eng = det_engine
    prompts = _prompts(eng)
    cold = []
    for p in prompts:
        eng.flush_cache()
        cold.append(eng.generate(input_ids=p, sampling_params=SP)["output_ids"])
    cached = [eng.generate(input_ids=p, sampling_params=SP) for p in prompts]
    assert all(r["meta_info"]["cached_tokens"] > 0 for r in cached)  # (the prefix was reused)
    assert [r["output_ids"] for r in cached] == cold
    eng.flush_cache()
    batched = [r["output_ids"] for r in eng.generate(input_ids=prompts, sampling_params=SP)]
    assert batched == cold
    # strangers: long prompts, so steps run past the kernels' 128 rows and rows of every length
    # share a step; each question's own prefix is cached by another question first
    eng.flush_cache()
    eng.generate(input_ids=prompts[0][:-6], sampling_params={"max_new_tokens": 1})
    strangers = [eng.tokenizer.encode("Once upon a time, " * (40 + 13 * i) + str(i))
                 for i in range(3)]
    mixed = eng.generate(input_ids=strangers + prompts, sampling_params=SP)
    assert [r["output_ids"] for r in mixed[3:]] == cold


def test_a_prompt_prefilled_in_chunks_gives_the_same_tokens(det_engine):
    """Chunked prefill (chunks of 64 here): each chunk's rows attend the keys the chunks
    before them stored, and the steps that sample nothing hand the LM head no rows."""
    prompt = det_engine.tokenizer.encode("A list of colors: " + ", ".join(
        ["red", "green", "blue", "yellow", "purple", "orange"] * 20) + ". The next one is")
    assert len(prompt) > 200
    det_engine.flush_cache()
    whole = det_engine.generate(input_ids=prompt, sampling_params=SP)["output_ids"]
    chunked = _engine(det_engine.isa, max_total_tokens=4096, chunked_prefill_size=64,
                      max_prefill_tokens=64)
    try:
        assert chunked.generate(input_ids=prompt, sampling_params=SP)["output_ids"] == whole
    finally:
        chunked.shutdown()


@pytest.mark.parametrize("program", SAMPLES)
def test_samples_tell_the_same_story_twice_and_compiled_equals_eager(det_engine, program):
    greedy = GreedyRuntime(engine=det_engine)
    args = sample_args(program)
    det_engine.flush_cache()
    first = program.run(backend=greedy, temperature=0, **args)
    again = program.run(backend=greedy, temperature=0, **args)  # its prompts cached now
    compiled = sgl.compile(program).run(backend=greedy, temperature=0, **args)
    assert again.text() == first.text()
    assert compiled.text() == first.text()


def test_the_server_answers_the_same_cold_and_cached(det_engine):
    pytest.importorskip("fastapi")
    from conftest import start_server

    from sglc_runtime.server.app import create_app

    url, stop = start_server(create_app(det_engine, "smol"))
    try:
        def complete(prompt: str) -> str:
            body = json.dumps({"model": "smol", "prompt": prompt, "max_tokens": 32,
                               "temperature": 0}).encode()
            req = urllib.request.Request(url + "/v1/completions", body,
                                         {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read())["choices"][0]["text"]

        prompt = "The three largest cities of Italy are"
        urllib.request.urlopen(urllib.request.Request(url + "/flush_cache", b"", method="POST"),
                               timeout=60).read()
        cold = complete(prompt)
        assert complete(prompt) == cold  # cached
        assert complete(prompt + " Rome") != cold  # (a different prompt: a real comparison)
        assert complete(prompt) == cold
    finally:
        stop()
