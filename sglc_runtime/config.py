"""Configuration dataclasses: the model's shape and the engine's knobs, each validating itself."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import InvalidRequestError

ATTENTION_BACKENDS = ("auto", "torch", "sdpa", "matmul", "triton")


@dataclass
class ModelConfig:
    """Shape of a Llama-family model, read from GGUF metadata or a Hugging Face config.json."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    name: str = "llama"

    def __post_init__(self) -> None:
        assert self.num_attention_heads % self.num_key_value_heads == 0, (
            f"{self.num_attention_heads} query heads do not divide into "
            f"{self.num_key_value_heads} KV heads")


def default_dtype() -> torch.dtype:
    """bfloat16 on CPUs with native bf16 matmul (measured ~3x faster than fp32 here), and GPUs."""
    if torch.cuda.is_available():
        return torch.bfloat16
    try:
        return torch.bfloat16 if torch.backends.mkldnn.is_available() and \
            torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    except (AttributeError, RuntimeError):
        return torch.float32


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Map 'auto'/None/'bfloat16'/torch.dtype to a torch dtype."""
    if dtype is None or dtype == "auto":
        return default_dtype()
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise InvalidRequestError(f"dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


@dataclass
class EngineConfig:
    """Engine knobs, named like SGLang's server arguments."""

    model_path: str | None = None
    dtype: str | torch.dtype | None = "auto"
    device: str = "auto"
    max_total_tokens: int | None = None
    max_running_requests: int = 256
    max_prefill_tokens: int = 4096
    chunked_prefill_size: int = 2048
    disable_radix_cache: bool = False
    schedule_policy: str = "lpm"
    disable_regex_jump_forward: bool = False
    disable_cascade_attention: bool = False  # attend a batch's shared prefix once (attention/)
    # attention (attention/): "sdpa" torch's fused kernels; "matmul" `attend` for 16-bit
    # floats on the CPU; "triton" decode reads the KV pool in place (CUDA); "torch" = SDPA on
    # CUDA, the CPU's faster of sdpa/matmul; "auto" = triton on CUDA when the package is
    # there, else as "torch" (on the CPU the runner times both once: fastest_cpu_attention)
    attention_backend: str = "auto"
    disable_cuda_graph: bool = False  # on CUDA, replay decode steps as graphs (cuda_graph.py)
    cuda_graph_max_bs: int = 160  # larger decode batches run eagerly
    # on the CPU, linears call oneDNN with weights reordered once at load (packed_linear.py)
    disable_prepacked_linear: bool = False
    # in 16 bits, each row's top logits are recomputed in float32 (model/llama.py)
    disable_fp32_logits: bool = False
    # on AVX-512-BF16 CPUs, bf16 decode attention (reading the KV pool in place) and RMSNorm
    # run as C kernels (kernels/cpu_kernels.py) instead of PyTorch ops
    disable_cpu_kernels: bool = False
    # a GGUF's float32 dequantization is cached (538 MB for the default model) and read back
    # in ~1 s instead of dequantized again (~20 s); SGLC_DEQUANT_CACHE=0 turns it off too
    disable_dequant_cache: bool = False
    context_length: int | None = None
    num_threads: int | None = None
    check_invariants: bool = False  # verify KV accounting after every step (tests)
    # a row's tokens do not depend on what shares its step or on what the prefix cache holds
    # (SGLang's flag; on by default here, where it costs nothing: benchmarks/README.md): on the
    # CPU's bf16 kernels, linears at every row count through the 4-bit kernel, every extend's
    # attention as the decode kernel's one-query rows, no cascade
    enable_deterministic_inference: bool = True
    # "int4": batches of <= 4 rows (8 in float32) read int4 copies of the weights (CPU decode is
    # bound by memory traffic; ~1.7x faster at batch 1; results then depend on batch size).
    # None: float weights only. "auto": int4 on the CPU in bfloat16 when the checkpoint's
    # projections already are 4-bit group-32 blocks (model_runner.resolve_quantization).
    quantization: str | None = "auto"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.schedule_policy not in ("lpm", "fcfs"):
            raise InvalidRequestError(
                f"schedule_policy must be 'lpm' or 'fcfs', got {self.schedule_policy!r}")
        if self.max_total_tokens is not None and self.max_total_tokens < 16:
            raise InvalidRequestError(f"max_total_tokens={self.max_total_tokens} is too small")
        if self.chunked_prefill_size <= 0:
            raise InvalidRequestError("chunked_prefill_size must be positive")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = parse_dtype(self.dtype)
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise InvalidRequestError(f"attention_backend must be one of "
                                      f"{', '.join(ATTENTION_BACKENDS)}, got "
                                      f"{self.attention_backend!r}")
        if self.attention_backend == "torch":  # PyTorch only: SDPA on CUDA, measured on CPU
            self.attention_backend = "sdpa" if self.device == "cuda" else "auto"
        if self.attention_backend == "auto" and self.device == "cuda":
            from .kernels.decode_attention import triton_available

            self.attention_backend = "triton" if triton_available() else "sdpa"
        if self.attention_backend == "triton" and self.device != "cuda":
            raise InvalidRequestError("attention_backend='triton' needs device='cuda'")
        if self.quantization in ("none", ""):
            self.quantization = None
        if self.quantization not in (None, "int4", "auto"):
            raise InvalidRequestError(f"quantization must be auto, none or int4, got "
                                      f"{self.quantization!r}")
        if self.quantization == "auto" and self.device != "cpu":
            self.quantization = None
        if self.quantization == "int4":
            from .model.int4 import int4_available

            if self.device != "cpu" or not int4_available():
                raise InvalidRequestError("quantization='int4' needs the CPU and a torch with "
                                          "_weight_int4pack_mm_for_cpu")
