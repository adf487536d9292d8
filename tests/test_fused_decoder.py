"""The decoder in one C call (model/fused_decoder.py, kernels/cpu_decoder.c) against the
Python path it replaces, on the default model in bf16: the same bits, and taken exactly where
that path would run the same kernels; on each instruction set of the 4-bit kernel here, and
with and without deterministic inference (which makes every extend a fused step)."""

from types import SimpleNamespace

import pytest
import torch

from sglc_runtime.model.int4 import Q4_MAX_ROWS

pytestmark = pytest.mark.model


def _runner(deterministic: bool):
    from sglc_runtime.config import EngineConfig
    from sglc_runtime.model_runner import ModelRunner

    r = ModelRunner(EngineConfig(max_total_tokens=16384,
                                 enable_deterministic_inference=deterministic))
    if r.model.model.fused is None:
        pytest.skip("the fused decoder needs the 4-bit kernels (AVX-512-BF16)")
    return r


@pytest.fixture(scope="module")
def runner():
    """Kernels picked by row count: past Q4_MAX_ROWS the Python path's linears are oneDNN's."""
    return _runner(deterministic=False)


@pytest.fixture(scope="module")
def det_runner():
    """Deterministic inference: the 4-bit kernel at every row count, every extend padded."""
    return _runner(deterministic=True)


def _prefilled(runner, prompt_lens, seed):
    """Requests whose prompts sit in the runner's pool (computed by the Python path)."""
    g = torch.Generator().manual_seed(seed)
    reqs = []
    for row, n in enumerate(prompt_lens):
        ids = torch.randint(300, 40000, (n + 40,), generator=g).tolist()
        reqs.append(SimpleNamespace(row=row, kv_len=0, fill_ids=ids))
    fused, runner.model.model.fused = runner.model.model.fused, None
    try:
        fb = runner.build_batch(False, reqs, prompt_lens, runner.kv_pool.alloc(sum(prompt_lens)))
        runner.model.model(fb, runner.kv_pool)
    finally:
        runner.model.model.fused = fused
    for r, n in zip(reqs, prompt_lens):
        r.kv_len = n
    return reqs


def _both_ways(runner, reqs, extend_lens):
    """The decoder's output for this step through the fused call and through Python."""
    model = runner.model.model
    slots = runner.kv_pool.alloc(sum(extend_lens))
    fb = runner.build_batch(all(n == 1 for n in extend_lens), reqs, extend_lens, slots)
    assert model.fused.applies(fb, sum(extend_lens), runner.kv_pool)
    fused_out = model(fb, runner.kv_pool)
    k_fused = runner.kv_pool.k_buffer[-1][slots].clone()
    keep, model.fused = model.fused, None
    try:
        plain_out = model(fb, runner.kv_pool)
    finally:
        model.fused = keep
    k_plain = runner.kv_pool.k_buffer[-1][slots]
    for r, n in zip(reqs, extend_lens):
        r.kv_len += n
    return fused_out, plain_out, k_fused, k_plain


@pytest.mark.parametrize("prompt_lens", [[40], [40, 7, 130], [30] * 16, list(range(3, 103))])
def test_fused_decode_step_is_the_python_path_bit_for_bit(runner, prompt_lens, isa):
    reqs = _prefilled(runner, prompt_lens, seed=len(prompt_lens))
    for _ in range(2):  # two decode steps: the second reads keys the first one stored
        fused, plain, k_fused, k_plain = _both_ways(runner, reqs, [1] * len(reqs))
        assert fused.dtype == torch.bfloat16 and fused.shape == plain.shape
        assert torch.equal(fused, plain)
        assert torch.equal(k_fused, k_plain)  # the last layer's stored keys too


def test_fused_short_extends_are_the_python_path(runner, isa):
    """A mixed step: requests adding a few tokens each, and decode rows."""
    reqs = _prefilled(runner, [50, 20, 90, 33], seed=7)
    fused, plain, k_fused, k_plain = _both_ways(runner, reqs, [5, 1, 12, 1])
    assert torch.equal(fused, plain) and torch.equal(k_fused, k_plain)


def test_fused_decoder_is_not_taken_outside_its_kernels(runner):
    """A request extending past the padded rows has its own attention call in the Python
    path: no fused step then. From one row up the projections take the 4-bit kernel (torch's
    int4 stays unused)."""
    model = runner.model.model
    assert (model.fused.min_rows, model.fused.max_rows) == (1, Q4_MAX_ROWS)
    assert model.layers[0].mlp.down_proj.packed is None
    reqs = _prefilled(runner, [20] * 3, seed=3)
    fb = runner.build_batch(False, reqs, [40, 1, 1], runner.kv_pool.alloc(42))
    assert not model.fused.applies(fb, 42, runner.kv_pool)


def test_past_the_kernel_rows_the_fused_step_runs_in_chunks(runner):
    """More rows than the 4-bit kernel takes: the fused decoder runs them in chunks, each
    chunk's rows reading keys the chunk itself or an earlier one stored: bit for bit one call
    over all rows. The Python path multiplies the same bf16 weights through oneDNN there: equal
    to bf16 precision over 30 layers (measured 0.85% of the final hidden state's norm)."""
    model = runner.model.model
    n = Q4_MAX_ROWS + 30
    reqs = _prefilled(runner, [12 + i % 50 for i in range(n // 2)], seed=11)
    extend_lens = [1, 3] * (n // 4) + [1] * (n // 2 - 2 * (n // 4))
    T = sum(extend_lens)
    assert T > Q4_MAX_ROWS
    slots = runner.kv_pool.alloc(T)
    fb = runner.build_batch(False, reqs, extend_lens, slots)
    assert model.fused.applies(fb, T, runner.kv_pool)
    chunked = model(fb, runner.kv_pool)
    keys = runner.kv_pool.k_buffer[-1][slots].clone()
    model.fused.max_rows = 10 ** 6
    try:
        whole = model(fb, runner.kv_pool)  # one call: the kernel makes its passes itself
    finally:
        model.fused.max_rows = Q4_MAX_ROWS
    assert torch.equal(chunked, whole)
    assert torch.equal(keys, runner.kv_pool.k_buffer[-1][slots])
    keep, model.fused = model.fused, None
    try:
        plain = model(fb, runner.kv_pool)
    finally:
        model.fused = keep
    diff = (chunked.float() - plain.float()).norm() / plain.float().norm()
    assert 0 < diff < 0.02, float(diff)


def test_with_deterministic_inference_every_extend_is_a_fused_step(det_runner, isa):
    """Long extends too (past SHORT_EXTEND, past the 4-bit kernel's rows): they attend as
    padded one-query rows, so the fused decoder takes them, and the Python path, whose linears
    then run the 4-bit kernel at every row count, gives the same bits."""
    model = det_runner.model.model
    assert model.layers[0].mlp.down_proj.q4_max_rows > 10 ** 9
    reqs = _prefilled(det_runner, [10, 60, 5, 33, 12], seed=13)  # (each has 40 more ids)
    extend_lens = [40, 1, 40, 40, 40]  # 161 rows, four past SHORT_EXTEND
    fused, plain, k_fused, k_plain = _both_ways(det_runner, reqs, extend_lens)
    assert torch.equal(fused, plain) and torch.equal(k_fused, k_plain)
