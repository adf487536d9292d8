"""CPU tests of the radix prefix cache: unit cases and a stateful check against a fake pool."""

import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sglc_runtime.radix_cache import NoPrefixCache, RadixCache


class FakePool:
    """A slot allocator that records every free and fails on double frees and foreign slots."""

    def __init__(self, size: int):
        self.size = size
        self.free_slots = list(range(size - 1, -1, -1))
        self.freed: list[int] = []  # every slot freed, in order

    def alloc(self, n: int) -> torch.Tensor | None:
        if n > len(self.free_slots):
            return None
        out = [self.free_slots.pop() for _ in range(n)]
        return torch.tensor(out, dtype=torch.int64)

    def free(self, idx: torch.Tensor) -> None:
        assert idx.dtype == torch.int64
        for s in idx.tolist():
            assert 0 <= s < self.size and s not in self.free_slots, f"double free of slot {s}"
            self.free_slots.append(s)
            self.freed.append(s)


def t(*xs: int) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.int64)


def new_cache(size: int = 64) -> tuple[RadixCache, FakePool]:
    pool = FakePool(size)
    return RadixCache(pool.free), pool


def finish(cache: RadixCache, pool: FakePool, key: list[int]):
    """A request with no cached prefix computes `key` and finishes."""
    m = cache.match_prefix(key)
    cache.lock(m.node)
    n = m.indices.numel()
    idx = torch.cat([m.indices, pool.alloc(len(key) - n)])
    return cache.cache_req(key, idx, n, m.node, finished=True), idx


def test_match_empty_tree():
    cache, _ = new_cache()
    m = cache.match_prefix([1, 2, 3])
    assert m.indices.numel() == 0 and m.node is cache.root
    assert cache.match_prefix([]).node is cache.root
    cache.check_invariants()


def test_insert_then_exact_partial_longer_match():
    cache, _ = new_cache()
    cache.cache_req([1, 2, 3, 4], t(10, 11, 12, 13), 0, cache.root, finished=True)
    assert cache.match_prefix([1, 2, 3, 4]).indices.tolist() == [10, 11, 12, 13]
    assert cache.match_prefix([1, 2, 3, 4, 5, 6]).indices.tolist() == [10, 11, 12, 13]
    m = cache.match_prefix([1, 2, 9])
    assert m.indices.tolist() == [10, 11] and m.node.key == [1, 2]
    assert cache.match_prefix([7]).indices.numel() == 0
    assert cache.total_size() == cache.evictable_size() == 4
    cache.check_invariants()


def test_split_keeps_both_branches_and_values():
    cache, pool = new_cache()
    cache.cache_req([1, 2, 3, 4], pool.alloc(4), 0, cache.root, finished=True)  # slots 0..3
    cache.cache_req([1, 2, 7, 8], pool.alloc(4), 0, cache.root, finished=True)  # slots 4..7
    assert pool.freed == [4, 5]
    assert cache.match_prefix([1, 2, 3, 4]).indices.tolist() == [0, 1, 2, 3]
    assert cache.match_prefix([1, 2, 7, 8]).indices.tolist() == [0, 1, 6, 7]
    assert sorted(cache.root.children[1].children) == [3, 7]
    assert cache.total_size() == 6
    cache.check_invariants()
    assert "[1, 2]" in cache.pretty_print()


def test_long_keys_match_across_block_boundaries():
    cache, pool = new_cache(128)
    key = list(range(100))
    cache.cache_req(key, pool.alloc(100), 0, cache.root, finished=True)
    for n in (1, 31, 32, 33, 64, 99):
        m = cache.match_prefix(key[:n] + [-1])
        assert m.indices.tolist() == list(range(n)) and len(m.node.key) <= n
    cache.check_invariants()


def test_cache_req_frees_duplicate_slots():
    cache, pool = new_cache()
    # two requests both miss, compute the same prefix into different slots
    a, b = pool.alloc(3), pool.alloc(4)
    cache.cache_req([1, 2, 3], a, 0, cache.root, finished=True)
    assert pool.freed == []
    m = cache.cache_req([1, 2, 3, 4], b, 0, cache.root, finished=True)
    assert pool.freed == b[:3].tolist()
    assert m.indices.tolist() == a.tolist() + [b[3].item()]
    assert cache.total_size() == 4
    cache.check_invariants()


def test_tree_copies_inserted_slots():
    cache, pool = new_cache()
    row = pool.alloc(3)  # stands in for a req_to_token row the engine reuses afterwards
    cache.cache_req([1, 2, 3], row, 0, cache.root, finished=True)
    row.fill_(-1)
    assert cache.match_prefix([1, 2, 3]).indices.tolist() == [0, 1, 2]
    cache.check_invariants()


def test_unfinished_cache_req_relocks_and_returns_tree_slots():
    cache, pool = new_cache()
    finish(cache, pool, [1, 2, 3])
    m = cache.match_prefix([1, 2, 3, 4, 5])
    cache.lock(m.node)
    assert cache.protected_size() == 3
    idx = torch.cat([m.indices, pool.alloc(2)])
    m2 = cache.cache_req([1, 2, 3, 4, 5], idx, 3, m.node, finished=False)
    assert m2.indices.tolist() == idx.tolist() and m2.node.ref_count == 1
    assert cache.protected_size() == 5 and cache.evictable_size() == 0
    cache.check_invariants()
    cache.cache_req([1, 2, 3, 4, 5], m2.indices, 5, m2.node, finished=True)
    assert cache.protected_size() == 0 and cache.evictable_size() == 5
    cache.check_invariants()


def test_lock_protects_and_unlock_makes_evictable():
    cache, pool = new_cache()
    finish(cache, pool, [1, 2, 3])
    finish(cache, pool, [1, 2, 4])
    m = cache.match_prefix([1, 2, 3])
    cache.lock(m.node)
    assert cache.protected_size() == 3 and cache.evictable_size() == 1
    assert cache.evict(100) == 1  # only the unlocked [4] branch can go
    assert cache.match_prefix([1, 2, 4]).indices.numel() == 2
    cache.check_invariants()
    cache.unlock(m.node)
    assert cache.evictable_size() == 3 and cache.protected_size() == 0
    assert cache.evict(100) == 3 and cache.total_size() == 0
    assert sorted(pool.free_slots) == list(range(64))
    cache.check_invariants()


def test_unlock_below_zero_asserts():
    cache, pool = new_cache()
    finish(cache, pool, [1])
    try:
        cache.unlock(cache.match_prefix([1]).node)
    except AssertionError:
        return
    raise AssertionError("unlock of an unlocked node must assert")


def test_evict_lru_order_and_freed_values():
    cache, pool = new_cache()
    finish(cache, pool, [1, 1])  # slots 0, 1
    finish(cache, pool, [2, 2])  # slots 2, 3
    finish(cache, pool, [3, 3])  # slots 4, 5
    cache.match_prefix([1, 1])  # [1, 1] becomes most recent; [2, 2] is now the oldest
    assert cache.evict(1) == 2
    assert pool.freed == [2, 3]
    assert cache.evict(2) == 2
    assert pool.freed == [2, 3, 4, 5]
    assert cache.match_prefix([1, 1]).indices.tolist() == [0, 1]
    cache.check_invariants()


def test_evict_cascades_to_parent_and_reset_frees_all():
    cache, pool = new_cache()
    finish(cache, pool, [1, 2, 3])
    finish(cache, pool, [1, 2, 4])
    assert cache.evict(4) == 4 and cache.total_size() == 0
    finish(cache, pool, [5, 6])
    cache.reset()
    assert cache.total_size() == 0 and len(pool.free_slots) == 64
    cache.check_invariants()


def test_no_prefix_cache():
    pool = FakePool(8)
    cache = NoPrefixCache(pool.free)
    m = cache.match_prefix([1, 2, 3])
    assert m.indices.numel() == 0 and m.node is cache.root
    cache.lock(m.node)
    idx = pool.alloc(3)
    m2 = cache.cache_req([1, 2, 3], idx, 0, m.node, finished=False)
    assert m2.indices.numel() == 0 and m2.node is cache.root and not pool.freed
    m3 = cache.cache_req([1, 2, 3], idx, 0, m2.node, finished=True)
    assert m3.indices.numel() == 0 and sorted(pool.freed) == idx.tolist()
    assert cache.total_size() == cache.evict(5) == 0
    cache.reset()
    cache.check_invariants()


# ---- stateful model check ----

POOL = 48
tokens = st.lists(st.integers(0, 2), min_size=1, max_size=7)


class Req:
    def __init__(self, key, indices, num_cached, node):
        self.key, self.indices, self.num_cached, self.node = key, indices, num_cached, node


class CacheMachine(RuleBasedStateMachine):
    """Requests arrive, extend, cache and finish over a shared tree; the model is a dict from
    every cached token prefix to its slot, pruned by what the fake pool saw freed."""

    def __init__(self):
        super().__init__()
        self.pool = FakePool(POOL)
        self.cache = RadixCache(self.pool.free)
        self.model: dict[tuple, int] = {}
        self.reqs: list[Req] = []

    def expected_match(self, key):
        n = 0
        while n < len(key) and tuple(key[:n + 1]) in self.model:
            n += 1
        return [self.model[tuple(key[:i + 1])] for i in range(n)]

    def sync(self):
        """Drop model entries whose slots were freed since the last step."""
        freed = set(self.pool.freed)
        self.pool.freed.clear()
        self.model = {k: s for k, s in self.model.items() if s not in freed}

    def alloc(self, n):
        idx = self.pool.alloc(n)
        if idx is None:
            self.cache.evict(n - len(self.pool.free_slots))
            self.sync()
            idx = self.pool.alloc(n)
        return idx

    @rule(key=tokens)
    def arrive(self, key):
        m = self.cache.match_prefix(key)
        assert m.indices.tolist() == self.expected_match(key)
        self.cache.lock(m.node)
        new = self.alloc(len(key) - m.indices.numel())
        if new is None:
            self.cache.unlock(m.node)
            return
        self.reqs.append(Req(key, torch.cat([m.indices, new]), m.indices.numel(), m.node))

    @precondition(lambda self: self.reqs)
    @rule(i=st.integers(0, 1000), extra=tokens)
    def extend(self, i, extra):
        req = self.reqs[i % len(self.reqs)]
        new = self.alloc(len(extra))
        if new is not None:
            req.key, req.indices = req.key + extra, torch.cat([req.indices, new])

    @precondition(lambda self: self.reqs)
    @rule(i=st.integers(0, 1000), finished=st.booleans())
    def cache_req(self, i, finished):
        req = self.reqs[i % len(self.reqs)]
        expected = self.expected_match(req.key)
        m = len(expected)
        for p in range(m, len(req.key)):
            self.model[tuple(req.key[:p + 1])] = req.indices[p].item()
        dup = req.indices[req.num_cached:m].tolist()
        out = self.cache.cache_req(req.key, req.indices, req.num_cached, req.node, finished)
        assert self.pool.freed == dup
        self.pool.freed.clear()
        assert out.indices.tolist() == expected + req.indices[m:].tolist()
        if finished:
            self.reqs.remove(req)
        else:
            req.indices, req.num_cached, req.node = out.indices, len(req.key), out.node

    @rule(n=st.integers(0, 20))
    def evict(self, n):
        before = self.cache.evictable_size()
        freed = self.cache.evict(n)
        assert freed >= min(n, before) and freed <= before
        assert len(self.pool.freed) == freed
        self.sync()

    @rule(key=tokens)
    def match(self, key):
        assert self.cache.match_prefix(key).indices.tolist() == self.expected_match(key)

    @invariant()
    def consistent(self):
        self.cache.check_invariants()
        owned = [s for r in self.reqs for s in r.indices[r.num_cached:].tolist()]
        tree = list(self.model.values())
        assert len(self.pool.free_slots) + self.cache.total_size() + len(owned) == POOL
        assert len(tree) == self.cache.total_size()
        everything = self.pool.free_slots + tree + owned
        assert sorted(everything) == list(range(POOL)), "a slot leaked or has two owners"
        for r in self.reqs:  # a running request's cached prefix is locked, so still in the tree
            assert r.indices[:r.num_cached].tolist() == self.expected_match(r.key[:r.num_cached])
            assert r.node.ref_count > 0 or r.num_cached == 0


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
