"""Load the model and its tokenizer, size the KV pools, and run one ForwardBatch."""

from __future__ import annotations

import logging
import time

import torch

from .attention import create_attention_backend
from .config import EngineConfig, ModelConfig
from .cuda_graph import CudaGraphRunner
from .forward_batch import ForwardBatch, build_forward_batch
from .kv_pool import ReqToTokenPool, TokenToKVPool
from .loader import load_gguf, load_hf_folder
from .model.llama import LlamaForCausalLM
from .model_source import resolve_model_path
from .plan_log import log_plan
from .tokenizer import Tokenizer

logger = logging.getLogger(__name__)


_LOADED: dict = {}  # (path, dtype, device) -> (config, model, tokenizer); weights are read-only


def load_model(cfg: EngineConfig) -> tuple[ModelConfig, LlamaForCausalLM, Tokenizer]:
    """Resolve `cfg.model_path`, read weights and tokenizer, build the model in `cfg.dtype`.
    Engines in one process share a loaded model (inference never writes the weights)."""
    path = resolve_model_path(cfg.model_path)
    asked_int4 = cfg.quantization == "int4"  # (asked for: kept even where it is not exact)
    cfg.quantization = resolve_quantization(path, cfg)
    key = (str(path.resolve()), cfg.dtype, cfg.device, cfg.quantization,
           cfg.disable_prepacked_linear, cfg.disable_fp32_logits, cfg.disable_cpu_kernels,
           cfg.enable_deterministic_inference)
    if key not in _LOADED:
        _LOADED[key] = _load(path, cfg, asked_int4)
    return _LOADED[key]


def resolve_quantization(path, cfg: EngineConfig) -> str | None:
    """'auto' -> 'int4' on the CPU in bfloat16 when the GGUF's projections are 4-bit group-32
    blocks: small-batch decode then reads the file's own codes (a quarter of bf16's memory
    traffic) and stays as close to exact float32 as dense bf16 does (quant_accuracy.json:
    26.6 vs 22 greedy tokens before the first difference, llama.cpp 12.6). Otherwise None."""
    if cfg.quantization != "auto":
        return cfg.quantization
    from .loader import gguf_projections_are_4bit
    from .model.int4 import int4_available

    if cfg.device != "cpu" or cfg.dtype != torch.bfloat16 or not int4_available() or \
            path.is_dir():
        return None
    return "int4" if gguf_projections_are_4bit(path) else None


def _load(path, cfg: EngineConfig, asked_int4: bool = False
          ) -> tuple[ModelConfig, LlamaForCausalLM, Tokenizer]:
    t0 = time.perf_counter()
    if path.is_dir():
        mcfg, weights = load_hf_folder(path)
        tok = Tokenizer.from_folder(path, mcfg.eos_token_ids, mcfg.bos_token_id)
    else:
        mcfg, weights, reader = load_gguf(path, cache=not cfg.disable_dequant_cache)
        tok = Tokenizer.from_gguf(reader)
    if tok.eos_token_ids:
        mcfg.eos_token_ids = tuple(dict.fromkeys((*mcfg.eos_token_ids, *tok.eos_token_ids)))
    with torch.device("meta"):
        model = LlamaForCausalLM(mcfg)
    model = model.to_empty(device="cpu")
    model.model.rotary_emb.__init__(mcfg.head_dim, mcfg.max_position_embeddings, mcfg.rope_theta)
    model.load_weights(weights)
    lm_head32 = model.lm_head.weight.detach().float().clone() \
        if cfg.dtype != torch.float32 and not cfg.disable_fp32_logits else None
    model = model.to(device=cfg.device, dtype=cfg.dtype).eval()
    model.model.rotary_emb.float()
    if lm_head32 is not None:  # kept out of .to(): it stays float32
        model.lm_head_fp32 = lm_head32.to(cfg.device)
    if cfg.quantization == "int4":
        from .kernels.cpu_kernels import cpu_q4_linear_available
        from .model.int4 import enable_int4_decode

        q4 = q8 = None
        if not path.is_dir() and cfg.dtype == torch.bfloat16 and not cfg.disable_cpu_kernels \
                and cpu_q4_linear_available():
            from .loader import gguf_q4_projections, gguf_q8_head

            q4, q8 = gguf_q4_projections(reader, mcfg), gguf_q8_head(reader)
        if q4 is None and cfg.enable_deterministic_inference and not asked_int4:
            logger.info("int4 decode off: without the file's own Q4_0/Q4_1 codes it would run "
                        "torch's int4 on requantized weights at <= 4 rows, which deterministic "
                        "inference rules out (--quantization int4 asks for it anyway)")
        else:
            enable_int4_decode(model, q4=q4, head_q8=q8,
                               all_rows=cfg.enable_deterministic_inference)
    if cfg.device == "cpu" and not cfg.disable_prepacked_linear:
        from .model.packed_linear import prepack_linears, prepacked_linear_available

        if prepacked_linear_available():
            prepack_linears(model)
    if cfg.device == "cpu" and not cfg.disable_cpu_kernels:
        from .model.llama import LlamaAttention, LlamaMLP, LlamaRMSNorm

        for m in model.modules():
            if isinstance(m, (LlamaRMSNorm, LlamaAttention, LlamaMLP)):
                m.cpu_kernel = True  # bf16 rows through kernels/cpu_kernels.py where it runs
        from .model.fused_decoder import FusedDecoder

        model.model.fused = FusedDecoder.build(model.model)  # small steps: one C call
    logger.info("loaded %s (%s, %d layers) in %.1fs as %s on %s", mcfg.name, path.name,
                mcfg.num_hidden_layers, time.perf_counter() - t0, cfg.dtype, cfg.device)
    return mcfg, model, tok


class ModelRunner:
    """Owns the model and the KV pools; turns scheduled requests into a ForwardBatch and runs it."""

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if cfg.device == "cpu":
            torch.set_flush_denormal(True)  # denormal floats are ~100x slower on x86
        self.model_config, self.model, self.tokenizer = load_model(cfg)
        mc = self.model_config
        self.context_length = min(cfg.context_length or mc.max_position_embeddings,
                                  mc.max_position_embeddings)
        size = cfg.max_total_tokens or self._default_pool_size()
        self.kv_pool = TokenToKVPool(size, mc.num_hidden_layers, mc.num_key_value_heads,
                                     mc.head_dim, cfg.dtype, cfg.device)
        self.req_pool = ReqToTokenPool(cfg.max_running_requests + 1, self.context_length + 1,
                                       cfg.device)
        logger.info("KV pool: %d token slots (%.0f MB)", size, self._bytes_per_token() * size / 1e6)
        # config resolved "auto" on CUDA; on the CPU the faster implementation for the dtype
        self.attention = create_attention_backend(
            cfg.attention_backend, cfg.dtype, cpu_kernel=not cfg.disable_cpu_kernels,
            heads=(mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim),
            deterministic=cfg.enable_deterministic_inference)
        log_plan(cfg, self.model, self.attention)
        self.cuda_graphs = None
        if cfg.device == "cuda" and not cfg.disable_cuda_graph:
            self.cuda_graphs = CudaGraphRunner(self.model, self.kv_pool, cfg.cuda_graph_max_bs,
                                               self.context_length, cfg.device,
                                               self.attention)

    def _bytes_per_token(self) -> int:
        mc = self.model_config
        return 2 * mc.num_hidden_layers * mc.num_key_value_heads * mc.head_dim * \
            torch.tensor([], dtype=self.cfg.dtype).element_size()

    def _default_pool_size(self) -> int:
        if self.cfg.device == "cuda":
            free, _ = torch.cuda.mem_get_info()
            return int(free * 0.6 // self._bytes_per_token())
        return max(min(2 * 1024**3 // self._bytes_per_token(), 65536), 4096)  # ~2 GB on CPU

    def forward(self, fb: ForwardBatch, logit_rows: torch.Tensor | None) -> torch.Tensor:
        if self.cuda_graphs is not None and self.cuda_graphs.can_run(fb):
            logits = self.cuda_graphs.run(fb)
            return logits if logit_rows is None else logits[logit_rows]
        return self.model(fb, self.kv_pool, logit_rows)

    def build_batch(self, is_decode: bool, reqs, extend_lens: list[int],
                    out_cache_loc: torch.Tensor) -> ForwardBatch:
        """Write new slots into req_to_token and lay the batch out flat."""
        return build_forward_batch(self.req_pool.req_to_token, is_decode, reqs, extend_lens,
                                   out_cache_loc, self.cfg.device,
                                   cascade=not self.cfg.disable_cascade_attention,
                                   attention=self.attention)
