"""One sampling-parameter schema: the engine's `SamplingParams` is the source, the language's
`SglSamplingParams` mirrors it (unset = None), and every other spelling (gen's and run's
arguments, the IR's gen attributes, the server's extra_body keys) is derived from or checked
against them here, so a parameter added in one place and forgotten in another fails a test."""

import inspect
from dataclasses import fields

import sglc as sgl
from sglc.ir.ops import GEN_PARAMS
from sglc.lang.function import SglFunction, _defaults
from sglc.lang.primitives import _LOGPROB_KEYS, SglSamplingParams
from sglc_runtime.sampling_params import SamplingParams
from sglc_runtime.server.openai_protocol import _SAMPLING

LANG = [f.name for f in fields(SglSamplingParams)]
ENGINE = {f.name for f in fields(SamplingParams) if f.init}
# gen arguments that are not sampling parameters
GEN_OTHER = {"name", "choices", "choices_method", "return_text_in_logprobs"}
# run / run_batch arguments that are not sampling parameters
RUN_OTHER = {"self", "args", "kwargs", "batch_kwargs", "return_text_in_logprobs", "stream",
             "backend", "use_thread", "num_threads", "progress_bar", "generator_style"}


def test_gen_takes_every_language_parameter_and_nothing_else():
    gen_args = set(inspect.signature(sgl.gen).parameters) - GEN_OTHER
    assert gen_args == {SglSamplingParams.gen_arg(n) for n in LANG}


def test_the_language_mirrors_the_engine():
    assert set(LANG) - set(_LOGPROB_KEYS) <= ENGINE, set(LANG) - set(_LOGPROB_KEYS) - ENGINE


def test_ir_gen_attributes_are_the_gen_arguments():
    assert set(GEN_PARAMS) == {SglSamplingParams.gen_arg(n) for n in LANG if n != "n"}


def test_run_and_run_batch_take_the_same_defaults():
    run = set(inspect.signature(SglFunction.run).parameters) - RUN_OTHER
    batch = set(inspect.signature(SglFunction.run_batch).parameters) - RUN_OTHER
    assert run == batch == set(inspect.signature(_defaults).parameters)
    assert run <= set(LANG)


def test_server_takes_every_engine_parameter():
    assert set(_SAMPLING.values()) == ENGINE


def test_a_gen_with_every_parameter_set_is_a_valid_engine_request():
    p = SglSamplingParams(
        max_new_tokens=8, min_new_tokens=1, n=2, stop=["x"], stop_token_ids=[5],
        stop_regex="y+", temperature=0.5, top_p=0.9, top_k=4, min_p=0.1, frequency_penalty=0.1,
        presence_penalty=0.1, repetition_penalty=1.1, ignore_eos=True, return_logprob=True,
        logprob_start_len=0, top_logprobs_num=2, dtype=None, regex="a|b")
    assert {f.name for f in fields(p) if getattr(p, f.name) is not None} == \
        set(LANG) - {"dtype", "json_schema", "grammar"}  # one constraint at a time
    sp, lp = p.to_request()
    SamplingParams.from_dict(sp)  # raises on an unknown key or a bad value
    assert set(lp) == set(_LOGPROB_KEYS)
