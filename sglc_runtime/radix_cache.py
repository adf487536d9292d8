"""RadixAttention prefix cache: a radix tree from token-id sequences to their KV slots."""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple

import torch

_BLOCK = 32  # tokens compared per list slice before falling back to a per-token scan


class TreeNode:
    """One edge of the radix tree: `key` token ids and `value` their int64 slots, same length."""

    _ids = itertools.count()

    def __init__(self, key: list[int], value: torch.Tensor, parent: TreeNode | None = None):
        self.key = key
        self.value = value  # (len(key),) int64
        self.parent = parent
        self.children: dict[int, TreeNode] = {}  # keyed by child.key[0]
        self.ref_count = 0
        self.last_access = 0
        self.id = next(TreeNode._ids)  # heap tie-break


class MatchResult(NamedTuple):
    indices: torch.Tensor  # (n_matched,) int64 slots of the longest cached prefix of the key
    node: TreeNode  # deepest node of that match (root if nothing matched)


def _match_len(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of `a` and `b`."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i:i + _BLOCK] == b[i:i + _BLOCK]:
        i += _BLOCK
    n = min(n, i + _BLOCK)
    while i < n and a[i] == b[i]:
        i += 1
    return min(i, len(a), len(b))


class PrefixCache(ABC):
    """Maps token-id prefixes to KV slots. `free_fn` hands slots back to the KV pool.

    Ownership: a slot is owned either by the tree (after `cache_req` inserted it) or by exactly
    one running request. Tree nodes on a running request's matched path are locked (ref count
    > 0) so `evict` cannot free them.
    """

    def __init__(self, free_fn: Callable[[torch.Tensor], None]):
        self.free_fn = free_fn
        self.root = TreeNode([], torch.empty(0, dtype=torch.int64))

    @abstractmethod
    def match_prefix(self, key: list[int]) -> MatchResult:
        """Longest cached prefix of `key`. Mutates: splits the node where the match ends inside
        it (so `node`'s path is exactly the match) and refreshes last-access along the path."""

    @abstractmethod
    def cache_req(self, key: list[int], indices: torch.Tensor, num_cached: int, node: TreeNode,
                  finished: bool) -> MatchResult:
        """Insert `key` -> `indices` (same length) after a request computed their K/V.

        `indices[:num_cached]` came from the tree under the locked `node`; the rest belong to the
        request. Slots for positions the tree already held are duplicates and go to `free_fn`.
        finished: unlocks `node`; the tree owns all of the request's slots afterwards.
        unfinished: locks the node of `key` and unlocks `node`; the returned indices are the ones
        the request must use for `key` from now on.
        """

    @abstractmethod
    def lock(self, node: TreeNode) -> None:
        """Increment the ref count of `node` and its ancestors (root excluded), moving newly
        locked nodes from evictable to protected."""

    @abstractmethod
    def unlock(self, node: TreeNode) -> None:
        """Decrement the ref count of `node` and its ancestors (root excluded; never below 0),
        moving nodes that reach 0 from protected to evictable."""

    @abstractmethod
    def evict(self, num_tokens: int) -> int:
        """Free at least `num_tokens` slots from unlocked leaves, least recently used first,
        removing those nodes. Returns the number freed (less if not enough are evictable)."""

    @abstractmethod
    def evictable_size(self) -> int:
        """Slots held by the tree in nodes with ref count 0."""

    @abstractmethod
    def protected_size(self) -> int:
        """Slots held by the tree in nodes with ref count > 0."""

    def total_size(self) -> int:
        return self.evictable_size() + self.protected_size()

    @abstractmethod
    def reset(self) -> None:
        """Drop every node, freeing all slots; only legal when nothing is locked."""

    @abstractmethod
    def check_invariants(self) -> None:
        """Assert the counters equal a full recount and the tree is well formed."""

    def all_slots(self) -> torch.Tensor:
        """Every slot the tree holds, (total_size(),) int64 on the CPU (for invariant checks)."""
        values = [n.value.cpu() for n in self._nodes()]
        return torch.cat(values) if values else torch.empty(0, dtype=torch.int64)

    def _nodes(self) -> list[TreeNode]:
        """Every non-root node, parents before children."""
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    @abstractmethod
    def pretty_print(self) -> str:
        """A readable dump of the tree, one node per line."""


class RadixCache(PrefixCache):
    def __init__(self, free_fn: Callable[[torch.Tensor], None]):
        super().__init__(free_fn)
        self._clock = itertools.count(1)  # logical LRU time, deterministic
        self._evictable = 0
        self._protected = 0

    def match_prefix(self, key: list[int]) -> MatchResult:
        node, values = self._walk(key)
        return MatchResult(torch.cat(values) if values else self.root.value, node)

    def cache_req(self, key: list[int], indices: torch.Tensor, num_cached: int, node: TreeNode,
                  finished: bool) -> MatchResult:
        assert len(key) == indices.numel(), f"{len(key)} tokens but {indices.numel()} slots"
        num_present, match = self._insert(key, indices)
        assert num_present >= num_cached, "locked prefix vanished from the tree"
        if num_present > num_cached:
            self.free_fn(indices[num_cached:num_present])  # duplicates of slots the tree holds
        if finished:
            self.unlock(node)
        else:
            self.lock(match.node)
            self.unlock(node)
        return match

    def lock(self, node: TreeNode) -> None:
        while node is not self.root:
            if node.ref_count == 0:
                self._evictable -= len(node.key)
                self._protected += len(node.key)
            node.ref_count += 1
            node = node.parent

    def unlock(self, node: TreeNode) -> None:
        while node is not self.root:
            assert node.ref_count > 0, "unlock of an unlocked node"
            node.ref_count -= 1
            if node.ref_count == 0:
                self._evictable += len(node.key)
                self._protected -= len(node.key)
            node = node.parent

    def evict(self, num_tokens: int) -> int:
        heap = [(n.last_access, n.id, n) for n in self._nodes()
                if not n.children and n.ref_count == 0]
        heapq.heapify(heap)
        num_freed = 0
        while num_freed < num_tokens and heap:
            _, _, node = heapq.heappop(heap)
            self.free_fn(node.value)
            num_freed += len(node.key)
            self._evictable -= len(node.key)
            parent = node.parent
            del parent.children[node.key[0]]
            if parent is not self.root and not parent.children and parent.ref_count == 0:
                heapq.heappush(heap, (parent.last_access, parent.id, parent))
        return num_freed

    def evictable_size(self) -> int:
        return self._evictable

    def protected_size(self) -> int:
        return self._protected

    def reset(self) -> None:
        assert self._protected == 0, "reset while requests hold locked prefixes"
        for node in self._nodes():
            self.free_fn(node.value)
        self.root.children = {}
        self._evictable = 0

    def check_invariants(self) -> None:
        evictable = protected = 0
        slots = []
        for node in self._nodes():
            where = f"node {node.key[:8]}... under {node.parent.key[:8]}"
            assert node.key and len(node.key) == node.value.numel(), f"{where}: bad key/value"
            assert node.value.dtype == torch.int64, f"{where}: value dtype {node.value.dtype}"
            assert node.parent.children.get(node.key[0]) is node, f"{where}: not keyed by first"
            assert node.ref_count >= 0, f"{where}: negative ref count"
            assert node.parent is self.root or node.parent.ref_count >= node.ref_count, \
                f"{where}: ref count above its parent's"
            if node.ref_count:
                protected += len(node.key)
            else:
                evictable += len(node.key)
            slots.append(node.value.cpu())
        assert (evictable, protected) == (self._evictable, self._protected), \
            f"counters {(self._evictable, self._protected)} != recount {(evictable, protected)}"
        if slots:
            allslots = torch.cat(slots)
            assert allslots.unique().numel() == allslots.numel(), "a slot appears twice in tree"

    def pretty_print(self) -> str:
        lines = [f"root evictable={self._evictable} protected={self._protected}"]
        stack = [(child, 1) for child in reversed(self.root.children.values())]
        while stack:
            node, depth = stack.pop()
            key = node.key if len(node.key) <= 8 else [*node.key[:8], "..."]
            lines.append(f"{'  ' * depth}{key} -> {node.value[:8].tolist()} "
                         f"ref={node.ref_count} t={node.last_access}")
            stack.extend((c, depth + 1) for c in reversed(node.children.values()))
        return "\n".join(lines)

    # ---- internals ----

    def _walk(self, key: list[int]) -> tuple[TreeNode, list[torch.Tensor]]:
        """Follow `key` down the tree, refreshing last-access and splitting the node the match
        ends inside; returns the deepest node reached and the values along the way."""
        node, values, pos, now = self.root, [], 0, next(self._clock)
        while pos < len(key) and (child := node.children.get(key[pos])) is not None:
            n = _match_len(child.key, key[pos:pos + len(child.key)])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            values.append(child.value)
            node, pos = child, pos + n
        return node, values

    def _split(self, child: TreeNode, n: int) -> TreeNode:
        """Cut `child` after its first `n` tokens; returns the new upper node. Counters are
        unchanged: the upper part inherits the ref count."""
        upper = TreeNode(child.key[:n], child.value[:n], child.parent)
        upper.ref_count, upper.last_access = child.ref_count, child.last_access
        upper.children = {child.key[n]: child}
        child.parent.children[child.key[0]] = upper
        child.key, child.value, child.parent = child.key[n:], child.value[n:], upper
        return upper

    def _insert(self, key: list[int], indices: torch.Tensor) -> tuple[int, MatchResult]:
        """Add `key` -> `indices`; returns how many leading tokens were already present and the
        full match of `key`. New slots are copied (callers may pass views of a table)."""
        node, values = self._walk(key)
        num_present = sum(v.numel() for v in values)
        if num_present < len(key):
            leaf = TreeNode(list(key[num_present:]), indices[num_present:].to(torch.int64).clone(),
                            node)
            leaf.last_access = next(self._clock)
            node.children[leaf.key[0]] = leaf
            self._evictable += len(leaf.key)
            node = leaf
            values.append(leaf.value)
        return num_present, MatchResult(torch.cat(values) if values else self.root.value, node)


class NoPrefixCache(PrefixCache):
    """disable_radix_cache: nothing is ever cached (matches are empty, so a request owns all its
    slots); finished requests free them all."""

    def match_prefix(self, key: list[int]) -> MatchResult:
        return MatchResult(self.root.value, self.root)

    def cache_req(self, key: list[int], indices: torch.Tensor, num_cached: int, node: TreeNode,
                  finished: bool) -> MatchResult:
        assert num_cached == 0 and node is self.root, "NoPrefixCache never hands out a prefix"
        if finished:
            self.free_fn(indices)
        return MatchResult(self.root.value, self.root)  # the tree owns nothing

    def lock(self, node: TreeNode) -> None:
        pass

    def unlock(self, node: TreeNode) -> None:
        pass

    def evict(self, num_tokens: int) -> int:
        return 0

    def evictable_size(self) -> int:
        return 0

    def protected_size(self) -> int:
        return 0

    def reset(self) -> None:
        pass

    def check_invariants(self) -> None:
        assert not self.root.children, "NoPrefixCache grew a tree"

    def pretty_print(self) -> str:
        return "root (prefix caching disabled)"
