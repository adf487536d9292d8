"""Engine behaviour on the default model: prefix caching, batching, sampling, bad input."""

import threading

import pytest
import torch

from sglc_runtime.engine import Engine
from sglc_runtime.errors import InvalidRequestError, SglcError

pytestmark = pytest.mark.model  # every test here builds or uses an engine
GREEDY = {"temperature": 0, "max_new_tokens": 8}
FEWSHOT = "".join(f"Q: What is {a} plus {b}?\nA: {a + b}\n" for a, b in
                  [(1, 2), (3, 4), (10, 5), (7, 7), (20, 22), (6, 9)])


def test_single_and_batch_shapes(engine):
    one = engine.generate("Hello, my name is", GREEDY)
    assert isinstance(one, dict) and set(one) >= {"text", "output_ids", "meta_info"}
    meta = one["meta_info"]
    assert meta["completion_tokens"] == len(one["output_ids"]) <= 8
    assert meta["prompt_tokens"] == len(engine.tokenizer.encode("Hello, my name is"))
    many = engine.generate(["a", "b c"], GREEDY)
    assert isinstance(many, list) and len(many) == 2


def test_cached_tokens_report_prefix_hits(engine):
    first = engine.generate(FEWSHOT + "Q: What is 2 plus 2?\nA:", GREEDY)
    second = engine.generate(FEWSHOT + "Q: What is 8 plus 1?\nA:", GREEDY)
    n_shared = len(engine.tokenizer.encode(FEWSHOT))
    assert second["meta_info"]["cached_tokens"] >= n_shared - 1
    assert first["meta_info"]["cached_tokens"] < second["meta_info"]["cached_tokens"]


def test_outputs_identical_with_radix_cache_off(engine):
    prompts = [FEWSHOT + f"Q: What is {i} plus {i + 1}?\nA:" for i in range(6)]
    on = engine.generate(prompts, {"temperature": 0, "max_new_tokens": 6})
    off_engine = Engine(dtype="float32", disable_radix_cache=True, check_invariants=True)
    try:
        off = off_engine.generate(prompts, {"temperature": 0, "max_new_tokens": 6})
    finally:
        off_engine.shutdown()
    assert [o["output_ids"] for o in on] == [o["output_ids"] for o in off]
    assert all(o["meta_info"]["cached_tokens"] == 0 for o in off)
    assert sum(o["meta_info"]["cached_tokens"] for o in on) > 0


def test_64_concurrent_requests_in_small_pool_finish_exactly():
    eng = Engine(dtype="float32", max_total_tokens=600, check_invariants=True,
                 chunked_prefill_size=64)
    try:
        lens = [4 + (i * 7) % 29 for i in range(64)]
        prompts = [f"Request {i}: count slowly from {i} upwards:" for i in range(64)]
        results = [None] * 64

        def call(i):
            results[i] = eng.generate(prompts[i], {"temperature": 0.8, "ignore_eos": True,
                                                   "max_new_tokens": lens[i], "seed": i})

        threads = [threading.Thread(target=call, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        for i, r in enumerate(results):
            assert r is not None, f"request {i} never returned"
            assert r["meta_info"]["completion_tokens"] == lens[i]
            assert r["meta_info"]["finish_reason"]["type"] == "length"
        stats = eng.stats()
        assert stats["num_running"] == stats["num_waiting"] == 0
    finally:
        eng.shutdown()


def test_retracted_greedy_output_unchanged(engine):
    prompts = [f"List {i} fruits:" for i in range(12)]
    params = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
    ref = engine.generate(prompts, params)
    small = Engine(dtype="float32", max_total_tokens=160, check_invariants=True)
    try:
        got = small.generate(prompts, params)
        assert small.stats()["num_retractions"] > 0
    finally:
        small.shutdown()
    assert [o["output_ids"] for o in got] == [o["output_ids"] for o in ref]


def test_stop_strings_and_ids(engine):
    r = engine.generate("1, 2, 3, 4, 5,", {"temperature": 0, "max_new_tokens": 32, "stop": " 8"})
    assert r["meta_info"]["finish_reason"] == {"type": "stop", "matched": " 8"}
    assert r["text"] == " 6, 7,"
    kept = engine.generate("1, 2, 3, 4, 5,", {"temperature": 0, "max_new_tokens": 32,
                                              "stop": " 8", "no_stop_trim": True})
    assert kept["text"] == " 6, 7, 8"
    comma = engine.tokenizer.encode(",")[0]
    r = engine.generate("1, 2, 3, 4, 5,", {"temperature": 0, "max_new_tokens": 32,
                                           "stop_token_ids": [comma]})
    assert r["output_ids"][-1] == comma and r["meta_info"]["finish_reason"]["matched"] == comma


def test_stop_regex_and_none_means_default(engine):
    # SGLang's frontend sends every unset sampling field as None
    r = engine.generate("1, 2, 3, 4, 5,", {"temperature": 0, "max_new_tokens": 32,
                                           "stop_regex": r" [89],", "top_k": None,
                                           "min_p": None, "regex": None})
    assert r["text"] == " 6, 7," and r["meta_info"]["finish_reason"]["type"] == "stop"
    with pytest.raises(InvalidRequestError, match="stop_regex"):
        engine.generate("Hi", {"stop_regex": "(unclosed"})


def test_eos_and_ignore_eos(engine):
    prompt = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    r = engine.generate(prompt, {"temperature": 0, "max_new_tokens": 64})
    assert r["meta_info"]["finish_reason"]["type"] == "stop"
    assert r["output_ids"][-1] in engine.eos_ids and "<|im_end|>" not in r["text"]
    r2 = engine.generate(prompt, {"temperature": 0, "max_new_tokens": 20, "ignore_eos": True})
    assert r2["meta_info"]["completion_tokens"] == 20


def test_sampling_parameters(engine):
    p = "The weather today is"
    a = engine.generate(p, {"temperature": 1.0, "max_new_tokens": 12, "seed": 7})
    b = engine.generate(p, {"temperature": 1.0, "max_new_tokens": 12, "seed": 7})
    assert a["output_ids"] == b["output_ids"]
    top1 = engine.generate(p, {"temperature": 1.5, "top_k": 1, "max_new_tokens": 12})
    greedy = engine.generate(p, {"temperature": 0, "max_new_tokens": 12})
    assert top1["output_ids"] == greedy["output_ids"]
    tiny_p = engine.generate(p, {"temperature": 1.0, "top_p": 1e-6, "max_new_tokens": 12})
    assert tiny_p["output_ids"] == greedy["output_ids"]
    rep = engine.generate("the the the the the", {"temperature": 0, "max_new_tokens": 12,
                                                  "repetition_penalty": 2.0})
    the = engine.tokenizer.encode(" the")[0]
    assert rep["output_ids"].count(the) < 12
    n3 = engine.generate(p, {"temperature": 1.0, "max_new_tokens": 6, "n": 3})
    assert isinstance(n3, list) and len(n3) == 3
    minp = engine.generate(p, {"temperature": 1.0, "min_p": 0.99, "max_new_tokens": 8})
    assert minp["output_ids"] == greedy["output_ids"][:8]
    mn = engine.generate("<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n",
                         {"temperature": 0, "max_new_tokens": 40, "min_new_tokens": 30})
    assert mn["meta_info"]["completion_tokens"] >= 30


def test_max_new_tokens_zero_returns_empty(engine):
    r = engine.generate("Hello", {"max_new_tokens": 0})
    assert r["text"] == "" and r["output_ids"] == []


@pytest.mark.parametrize("params, word", [
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"max_tokens": 5}, "max_tokens"),
    ({"stop": 5}, "stop"),
])
def test_bad_sampling_params_raise_naming_them(engine, params, word):
    with pytest.raises(InvalidRequestError, match=word):
        engine.generate("Hello", params)


def test_bad_prompts_raise(engine):
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.generate("", GREEDY)
    with pytest.raises(InvalidRequestError, match="context length"):
        engine.generate(input_ids=[100] * 9000, sampling_params=GREEDY)
    with pytest.raises(SglcError, match="input_ids"):
        engine.generate(input_ids=[10**9], sampling_params=GREEDY)
    # the engine keeps serving after rejecting bad requests
    assert engine.generate("Hello", GREEDY)["meta_info"]["completion_tokens"] > 0


def test_stream_pieces_concatenate(engine):
    params = {"temperature": 0, "max_new_tokens": 20}
    full = engine.generate("Tell me a story:", params)
    pieces = list(engine.generate("Tell me a story:", params, stream=True))
    assert "".join(p["text"] for p in pieces) == full["text"]
    assert pieces[-1]["meta_info"]["finish_reason"] == full["meta_info"]["finish_reason"]


def test_async_generate(engine):
    import asyncio

    async def main():
        return await asyncio.gather(*[engine.async_generate(f"Number {i}:", GREEDY)
                                      for i in range(4)])

    outs = asyncio.run(main())
    assert len(outs) == 4 and all(o["meta_info"]["completion_tokens"] > 0 for o in outs)


def test_two_long_prompts_that_cannot_both_fit_finish():
    """Both are admitted, both chunk-prefill, neither fits beside the other: one is retracted
    and must wait (no re-admission bounce) until the other finishes."""
    eng = Engine(dtype="float32", max_total_tokens=300, chunked_prefill_size=128,
                 check_invariants=True)
    try:
        prompts = [[(i * 13 + j * 7) % 30000 + 200 for j in range(200)] for i in range(2)]
        outs = eng.generate(input_ids=prompts, sampling_params={
            "temperature": 0, "max_new_tokens": 16, "ignore_eos": True})
        assert [o["meta_info"]["completion_tokens"] for o in outs] == [16, 16]
    finally:
        eng.shutdown()


def test_cancelled_async_request_is_aborted_and_freed(engine):
    import asyncio

    async def main():
        task = asyncio.create_task(engine.async_generate(
            "Write a long story:", {"max_new_tokens": 2000, "ignore_eos": True}))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    import time
    for _ in range(100):
        if engine.stats()["num_running"] == engine.stats()["num_waiting"] == 0:
            break
        time.sleep(0.05)
    assert engine.stats()["num_running"] == 0
    assert engine.generate("Hi", GREEDY)["meta_info"]["completion_tokens"] > 0


def test_closing_a_stream_early_aborts(engine):
    it = engine.generate("Count to a thousand:", {"max_new_tokens": 2000, "ignore_eos": True},
                         stream=True)
    next(it)
    it.close()
    import time
    for _ in range(100):
        if not engine.stats()["num_running"]:
            break
        time.sleep(0.05)
    assert engine.stats()["num_running"] == 0


def test_n_with_seed_gives_distinct_samples(engine):
    outs = engine.generate("My favourite animal is", {"temperature": 1.0, "max_new_tokens": 8,
                                                      "n": 3, "seed": 5})
    assert len({tuple(o["output_ids"]) for o in outs}) > 1


def test_shutdown_rejects_new_requests():
    eng = Engine(dtype="float32", max_total_tokens=256)
    eng.shutdown()
    with pytest.raises(SglcError, match="shut down"):
        eng.generate("Hi", GREEDY)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_decode_equals_eager(engine):
    """Decode steps replayed from CUDA graphs give the eager engine's tokens (float32, greedy),
    for batch sizes that pad up to a bucket."""
    from sglc_runtime.engine import Engine

    engine = Engine(dtype="float32", engine_in_process=True)  # its runner is inspected
    assert engine.core.runner.cuda_graphs is not None
    prompts = [engine.tokenizer.encode(p) for p in
               ["The capital of France is", "def add(a, b):", "Three colors:", "Once upon"]]
    sp = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
    eager = Engine(dtype="float32", disable_cuda_graph=True)
    try:
        for batch in (prompts[:1], prompts[:3], prompts):
            engine.flush_cache()
            assert [o["output_ids"] for o in engine.generate(input_ids=batch, sampling_params=sp)] \
                == [o["output_ids"] for o in eager.generate(input_ids=batch, sampling_params=sp)]
        assert engine.core.runner.cuda_graphs.graphs  # the graphs were used
    finally:
        eager.shutdown()
        engine.shutdown()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton decode kernel runs on CUDA")
def test_triton_decode_attention_equals_torch_backend(engine):
    pytest.importorskip("triton")
    from sglc_runtime.engine import Engine

    engine = Engine(dtype="float32", engine_in_process=True)  # its runner is inspected
    assert engine.core.runner.attention.name == "triton"
    prompts = [engine.tokenizer.encode(p) for p in ["The capital of France is", "def add(a, b):"]]
    sp = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
    plain = Engine(dtype="float32", attention_backend="torch")
    try:
        engine.flush_cache()
        assert [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=sp)] \
            == [o["output_ids"] for o in plain.generate(input_ids=prompts, sampling_params=sp)]
    finally:
        plain.shutdown()
        engine.shutdown()


def test_triton_backend_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA is here")
    with pytest.raises(InvalidRequestError, match="attention_backend"):
        Engine(dtype="float32", attention_backend="triton")
