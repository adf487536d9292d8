"""Model sources: the default GGUF, a Hugging Face folder, bad paths; dtypes."""

import json

import pytest

from sglc_runtime.engine import Engine
from sglc_runtime.errors import InvalidRequestError, ModelLoadError
from sglc_runtime.model_source import resolve_model_path

PROMPTS = ["The capital of France is", "<|im_start|>user\nName a fruit.<|im_end|>\n"
           "<|im_start|>assistant\n"]
GREEDY = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}


def test_hf_folder_loads_and_matches_gguf(engine, hf_model, tmp_path):
    """Save the oracle's weights as a HF folder (safetensors + config + tokenizer.json) and
    check that folder runs to the same greedy tokens as the GGUF."""
    from safetensors.torch import save_file

    cfg = hf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    if cfg.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp_path / "model.safetensors"))
    engine.tokenizer.tk.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": engine.tokenizer.chat_template, "eos_token": "<|im_end|>",
        "add_bos_token": False}))
    folder = Engine(model_path=str(tmp_path), dtype="float32")
    try:
        got = folder.generate(PROMPTS, GREEDY)
        assert folder.tokenizer.chat_template == engine.tokenizer.chat_template
        assert folder.tokenizer.eos_token_ids == engine.tokenizer.eos_token_ids
    finally:
        folder.shutdown()
    ref = engine.generate(PROMPTS, GREEDY)
    assert [o["output_ids"] for o in got] == [o["output_ids"] for o in ref]


@pytest.mark.model
@pytest.mark.parametrize("kwargs", [{"dtype": "bfloat16"}, {"quantization": "int4"}])
def test_bfloat16_and_int4_generate_sensible_text(kwargs):
    eng = Engine(**kwargs)
    try:
        r = eng.generate("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                         "<|im_start|>assistant\n", {"temperature": 0, "max_new_tokens": 16})
        assert "Paris" in r["text"], (kwargs, r["text"])
    finally:
        eng.shutdown()


def test_bad_model_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_path(tmp_path / "missing.gguf")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        resolve_model_path(tmp_path / "notes.txt")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(ModelLoadError, match="not a readable GGUF"):
        Engine(model_path=str(bad))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        Engine(model_path=str(empty))


def test_bad_engine_arguments():
    with pytest.raises(InvalidRequestError, match="schedule_policy"):
        Engine(schedule_policy="random")
    with pytest.raises(InvalidRequestError, match="dtype"):
        Engine(dtype="float8")


@pytest.mark.model
def test_auto_quantization_uses_the_gguf_4bit_codes_only_in_bfloat16(tmp_path):
    """quantization='auto' (the default) turns on int4 small-batch decode only on the CPU in
    bfloat16 and only for a GGUF whose projections already are 4-bit group-32 blocks."""
    import gguf
    import numpy as np

    from sglc_runtime.config import EngineConfig
    from sglc_runtime.loader import gguf_projections_are_4bit
    from sglc_runtime.model.int4 import int4_available
    from sglc_runtime.model_runner import resolve_quantization
    from sglc_runtime.model_source import default_model_path

    gguf_path = default_model_path()  # SmolLM2: Q4_1 projections
    assert gguf_projections_are_4bit(gguf_path)
    bf16 = EngineConfig(dtype="bfloat16", device="cpu")
    assert resolve_quantization(gguf_path, bf16) == ("int4" if int4_available() else None)
    assert resolve_quantization(gguf_path, EngineConfig(dtype="float32", device="cpu")) is None
    assert resolve_quantization(gguf_path, EngineConfig(dtype="bfloat16",
                                                        quantization=None)) is None
    assert resolve_quantization(tmp_path, bf16) is None  # a HF folder: float weights
    # a GGUF with 8-bit projections keeps its float weights
    w = gguf.GGUFWriter(str(tmp_path / "q8.gguf"), "llama")
    data = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    w.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert not gguf_projections_are_4bit(tmp_path / "q8.gguf")
    assert resolve_quantization(tmp_path / "q8.gguf", bf16) is None


def test_the_dequantized_cache_can_be_turned_off_and_holds_the_same_weights(tmp_path,
                                                                             monkeypatch):
    """`--disable-dequant-cache` (cache=False) dequantizes anew and writes nothing; the cached
    float32 weights are the fresh dequantization's, bit for bit."""
    import torch

    from sglc_runtime.loader import _dequant_cache_path, load_gguf
    from sglc_runtime.model_source import default_model_path

    path = default_model_path()
    _, cached, _ = load_gguf(path)  # (the shared cache: written by an earlier load, or now)
    assert _dequant_cache_path(path).exists()
    monkeypatch.setenv("SGLC_CACHE_DIR", str(tmp_path))
    _, fresh, _ = load_gguf(path, cache=False)
    assert not (tmp_path / "dequantized").exists()
    assert cached.keys() == fresh.keys()
    assert all(torch.equal(cached[k], fresh[k]) for k in fresh)
    monkeypatch.setenv("SGLC_DEQUANT_CACHE", "0")
    load_gguf(path)
    assert not (tmp_path / "dequantized").exists()
