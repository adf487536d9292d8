"""CUDA graphs for decode steps: one captured model forward per (batch bucket, KV-length
bucket), replayed with the batch padded up to the bucket. A decode step of a small model is
bound by kernel launches (~1000 per step, measured ~25 ms of CPU on an H100 against ~1.5 ms of
GPU work); a replay launches them all at once.

Padding rows read token 0 at position 0, write their K/V to the scratch slot 0 and see only
slot 0; their logits are dropped. The attention backend owns its metadata's static buffers
(`AttentionBackend.init_graph_state` and friends). Cascade (shared-prefix) batches run
eagerly."""

from __future__ import annotations

import logging

import torch

from .attention import AttentionBackend
from .forward_batch import ForwardBatch

logger = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)
LEN_STEP = 256  # KV lengths are padded up to a multiple of this


class CudaGraphRunner:
    """`can_run(fb)` says whether a batch fits; `run(fb)` returns its logits (b, vocab)."""

    def __init__(self, model, pool, max_batch: int, max_len: int, device: str,
                 attention: AttentionBackend):
        self.model, self.pool = model, pool
        self.max_batch = max(b for b in BATCH_BUCKETS if b <= max(1, max_batch))
        self.max_len = -(-max_len // LEN_STEP) * LEN_STEP
        n, L = self.max_batch, self.max_len
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.out_cache_loc = torch.zeros(n, dtype=torch.int64, device=device)
        self.attention = attention
        attention.init_graph_state(n, L, device)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool_handle = None

    def can_run(self, fb: ForwardBatch) -> bool:
        return fb.is_decode and fb.attention is self.attention and \
            self.attention.can_capture(fb.attn, self.max_batch, self.max_len)

    def run(self, fb: ForwardBatch) -> torch.Tensor:
        b, cur = fb.batch_size, fb.attn.padded_kv_indices.shape[1]
        bs = next(x for x in BATCH_BUCKETS if x >= b)
        L = -(-cur // LEN_STEP) * LEN_STEP
        self.input_ids[:bs].zero_()
        self.input_ids[:b] = fb.input_ids
        self.positions[:bs].zero_()
        self.positions[:b] = fb.positions
        self.out_cache_loc[:bs].zero_()
        self.out_cache_loc[:b] = fb.out_cache_loc
        self.attention.load_graph_metadata(fb.attn, bs, L)
        key = (bs, L)
        if key not in self.graphs:
            self.graphs[key] = self._capture(bs, L)
        graph, logits = self.graphs[key]
        graph.replay()
        return logits[:b]

    def _static_batch(self, bs: int, L: int) -> ForwardBatch:
        return ForwardBatch(True, self.input_ids[:bs], self.positions[:bs],
                            self.out_cache_loc[:bs], [0] * bs, [1] * bs, self.attention,
                            self.attention.graph_metadata(bs, L))

    def _capture(self, bs: int, L: int):
        fb = self._static_batch(bs, L)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels and workspaces outside the graph
                self.model(fb, self.pool, None)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool_handle):
            logits = self.model(fb, self.pool, None)
        if self.pool_handle is None:
            self.pool_handle = graph.pool()
        logger.debug("captured decode graph for batch %d, KV length %d", bs, L)
        return graph, logits
