"""The cache-aware router's choices (pure logic, no engines)."""

import pytest

from sglc_runtime.errors import EngineDiedError
from sglc_runtime.router import PrefixIndex, Router


def test_prefix_index_matches_longest_prefix_and_bounds_itself():
    idx = PrefixIndex(max_tokens=10)
    idx.insert([1, 2, 3, 4])
    assert (idx.match([1, 2, 3, 9]), idx.match([7]), idx.match([1, 2, 3, 4, 5])) == (3, 0, 4)
    idx.insert(list(range(100, 110)))  # past the bound: starts over
    assert idx.size == 0 and idx.match([1, 2]) == 0


def test_requests_sharing_a_prefix_stay_on_one_replica():
    r = Router(2)
    loads = [0, 0]
    system_a, system_b = list(range(100)), list(range(1000, 1100))
    first_a = r.choose(system_a + [1], loads, [True, True])
    loads[first_a] += 1
    first_b = r.choose(system_b + [1], loads, [True, True])  # no match: the idle replica
    loads[first_b] += 1
    assert first_a != first_b
    for k in range(2, 6):
        for sysp, want in ((system_a, first_a), (system_b, first_b)):
            assert r.choose(sysp + [k], loads, [True, True]) == want
            loads[want] += 1


def test_skewed_load_goes_to_the_least_loaded_replica():
    r = Router(2, balance_abs=4, balance_rel=1.5)
    prefix = list(range(50))
    loads = [0, 0]
    picks = []
    for k in range(20):  # all share one prefix; without balancing all would go to one replica
        i = r.choose(prefix + [k], loads, [True, True])
        loads[i] += 1
        picks.append(i)
    assert picks.count(0) >= 5 and picks.count(1) >= 5
    assert max(loads) - min(loads) <= 5


def test_finished_output_counts_as_cached():
    r = Router(2, min_match_tokens=4)
    r.finished(1, [5, 6, 7, 8, 9, 10])
    assert r.choose([5, 6, 7, 8, 9, 10, 11, 12], [0, 0], [True, True]) == 1


def test_a_short_shared_start_does_not_pull_requests_together():
    r = Router(2)  # "Long story 1:", "Long story 2:": 4 of 5 tokens shared, but only 4
    loads = [0, 0]
    for k in range(4):
        i = r.choose([7, 8, 9, 10, k], loads, [True, True])
        loads[i] += 1
    assert loads == [2, 2]


def test_round_robin_random_and_dead_replicas():
    rr = Router(3, policy="round_robin")
    assert [rr.choose([1], [0, 0, 0], [True, True, True]) for _ in range(4)] == [0, 1, 2, 0]
    assert {rr.choose([1], [0, 0, 0], [True, False, True]) for _ in range(6)} == {0, 2}
    rnd = Router(2, policy="random")
    assert {rnd.choose([k], [0, 0], [True, True]) for k in range(40)} == {0, 1}
    with pytest.raises(EngineDiedError, match="every engine replica"):
        Router(2).choose([1], [0, 0], [False, False])
    with pytest.raises(ValueError, match="policy"):
        Router(2, policy="fastest")
