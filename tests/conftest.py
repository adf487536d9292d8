"""Shared fixtures: one float32 engine on the default model, and the HF transformers oracle."""

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def engine():
    """The default model in float32 (what the HF oracle computes in), checking KV invariants
    after every step."""
    from sglc_runtime.engine import Engine

    eng = Engine(dtype="float32", check_invariants=True)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def hf_model():
    """Hugging Face transformers loading the same GGUF file: the reference implementation."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import torch

    from sglc_runtime.model_source import default_model_path

    path = default_model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def runtime(engine):
    """The language's in-process backend on the shared engine, set as the default backend."""
    import sglc as sgl

    rt = sgl.Runtime(engine=engine)
    sgl.set_default_backend(rt)
    yield rt
    sgl.set_default_backend(None)
