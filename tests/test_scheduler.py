"""The scheduler through the real EngineCore on a fake model runner (no weights, CPU, fast):
admission by token budget, chunked prefill, LPM order, retraction under memory pressure, and
the KV accounting after every step."""

from types import SimpleNamespace

import torch

from sglc_runtime.config import EngineConfig
from sglc_runtime.engine_core import EngineCore
from sglc_runtime.forward_batch import build_forward_batch
from sglc_runtime.kv_pool import ReqToTokenPool, TokenToKVPool
from sglc_runtime.request import new_request
from sglc_runtime.sampling_params import SamplingParams

VOCAB = 64
EOS = 0


class FakeTokenizer:
    """Token i decodes to chr(ord('a') + i % 26); EOS is special."""

    eos_token_ids = (EOS,)
    special_ids = frozenset({EOS})

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i % 26) for i in ids if not (skip_special_tokens and i == EOS))


class FakeRunner:
    """Real KV and request pools; the "model" predicts last token + 1 (mod VOCAB, skipping EOS)
    and records every batch it ran."""

    def __init__(self, pool_size: int, max_reqs: int = 16, context: int = 512):
        self.tokenizer = FakeTokenizer()
        self.model_config = SimpleNamespace(eos_token_ids=(EOS,), vocab_size=VOCAB)
        self.context_length = context
        self.kv_pool = TokenToKVPool(pool_size, 1, 1, 2, torch.float32, "cpu")
        self.req_pool = ReqToTokenPool(max_reqs + 1, context + 1, "cpu")
        self.batches: list[tuple[bool, list[int]]] = []
        self.order: list[int] = []  # request ids in the order they first ran

    def build_batch(self, is_decode, reqs, extend_lens, out_cache_loc):
        self.batches.append((is_decode, list(extend_lens)))
        self.order += [r.rid for r in reqs if r.rid not in self.order]
        return build_forward_batch(self.req_pool.req_to_token, is_decode, reqs, extend_lens,
                                   out_cache_loc, "cpu", cascade=False)

    def forward(self, fb, logit_rows):
        ids = fb.input_ids if logit_rows is None else fb.input_ids[logit_rows]
        nxt = ids % (VOCAB - 1) + 1  # never EOS
        return torch.nn.functional.one_hot(nxt, VOCAB).float() * 10


def core(pool_size=4096, **cfg) -> EngineCore:
    config = EngineConfig(device="cpu", dtype="float32", check_invariants=True, **cfg)
    c = EngineCore(config, runner=FakeRunner(pool_size, config.max_running_requests))
    return c


def run(c: EngineCore, reqs, max_steps=10_000):
    for r in reqs:
        c.add_request(r)
    steps = 0
    while c.scheduler.has_work():
        c.step()
        c.scheduler.check_invariants()
        steps += 1
        assert steps < max_steps, "the scheduler does not make progress"
    return reqs


def req(ids, n=4):
    return new_request(ids, SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True),
                       False, -1, 0)


def expected(ids, n):
    out, last = [], ids[-1]
    for _ in range(n):
        last = last % (VOCAB - 1) + 1
        out.append(last)
    return out


def test_outputs_follow_the_fake_model_and_kv_is_accounted():
    c = core()
    reqs = run(c, [req([5, 6, 7], 4), req([9] * 10, 6)])
    assert [r.output_ids for r in reqs] == [expected([5, 6, 7], 4), expected([9] * 10, 6)]
    assert all(r.finished and r.finish_reason["type"] == "length" for r in reqs)


def test_chunked_prefill_splits_a_long_prompt():
    c = core(chunked_prefill_size=64, max_prefill_tokens=64)
    (r,) = run(c, [req(list(range(1, 60)) * 3, 2)])  # 177 prompt tokens
    extends = [lens for is_decode, lens in c.runner.batches if not is_decode]
    assert [sum(x) for x in extends[:3]] == [64, 64, 49]
    assert r.output_ids == expected(r.input_ids, 2)


def test_admission_by_token_budget():
    c = core(max_prefill_tokens=100, chunked_prefill_size=100)
    reqs = run(c, [req([k + 1] * 40, 2) for k in range(5)])
    first_extend = next(lens for is_decode, lens in c.runner.batches if not is_decode)
    assert sum(first_extend) <= 100 and len(first_extend) < 5  # not all in one extend
    assert all(r.output_ids == expected(r.input_ids, 2) for r in reqs)


def test_lpm_admits_the_longest_cached_prefix_first():
    c = core(max_running_requests=1)  # one at a time: the order is the admission order
    shared = list(range(1, 41))
    run(c, [req(shared, 1)])  # now cached
    cold, warm = req([50] * 30 + [1], 2), req(shared + [3], 2)
    run(c, [cold, warm])
    assert warm.cached_tokens == 40 and cold.cached_tokens == 0
    assert c.runner.order[-2:] == [warm.rid, cold.rid]  # arrived second, ran first
    fcfs = core(max_running_requests=1, schedule_policy="fcfs")
    run(fcfs, [req(shared, 1)])
    cold, warm = req([50] * 30 + [1], 2), req(shared + [3], 2)
    run(fcfs, [cold, warm])
    assert fcfs.runner.order[-2:] == [cold.rid, warm.rid]  # arrival order


def test_retraction_under_memory_pressure_keeps_outputs():
    prompts = [[k + 1] * 12 for k in range(8)]
    big = run(core(), [req(p, 30) for p in prompts])
    small = core(pool_size=160)
    got = run(small, [req(p, 30) for p in prompts])
    assert small.scheduler.num_retractions > 0
    assert [r.output_ids for r in got] == [r.output_ids for r in big]


class _BrokenConstraint:
    """A constraint whose matcher has failed (as an llguidance matcher can, mid-request)."""

    initial_state = 0

    def allowed_mask(self, state, tokens_left=None):
        from sglc_runtime.errors import ConstraintError

        raise ConstraintError("grammar matcher failed: a parser limit")


class _NarrowConstraint:
    """Allows only token 7, with a mask narrower than the logits (a padded model vocabulary)."""

    initial_state = 0

    def allowed_mask(self, state, tokens_left=None):
        m = torch.zeros(VOCAB - 8, dtype=torch.bool)
        m[7] = True
        return m

    def next_state(self, state, token):
        return state

    def is_accepting(self, state):
        return True

    def is_finished(self, state):
        return False

    def forced_bytes(self, state):
        return b""


def test_a_failing_constraint_fails_only_its_request_and_masks_fit_the_logits():
    c = core(disable_regex_jump_forward=True)
    ok, broken, narrow = req([5, 6, 7], 3), req([9, 10], 3), req([11, 12], 3)
    broken.constraint, narrow.constraint = _BrokenConstraint(), _NarrowConstraint()
    run(c, [ok, broken, narrow])
    assert ok.output_ids == expected([5, 6, 7], 3) and ok.error is None
    assert broken.finish_reason["type"] == "abort" and "parser limit" in str(broken.error)
    assert narrow.error is None and narrow.output_ids == [7, 7, 7]


def test_kv_pool_buffers_ask_for_huge_pages():
    """Where Linux has transparent huge pages in "madvise" or "always" mode, the pool's large
    CPU buffers are advised (their scattered first writes would each fault a 4 KB page)."""
    from pathlib import Path

    from sglc_runtime.kv_pool import advise_huge_pages

    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    thp = mode.exists() and "[never]" not in mode.read_text()
    pool = TokenToKVPool(20000, 2, 3, 64, torch.bfloat16, "cpu")  # 7.7 MB per buffer
    assert pool.huge_page_buffers == (4 if thp else 0)
    assert not advise_huge_pages(torch.empty(1000))  # under one 2 MB page: nothing to ask
    small = TokenToKVPool(100, 2, 3, 64, torch.bfloat16, "cpu")
    assert small.huge_page_buffers == 0
