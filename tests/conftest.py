"""Shared fixtures: one float32 engine on the default model, and the HF transformers oracle."""

import os
import socket
import threading
import time

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the oracle loads a local GGUF; never the hub


# Fixtures that load the default model: a test using one is marked `model` (so
# `pytest -m "not model"` runs without the model); modules that build engines themselves carry
# `pytestmark = pytest.mark.model`.
MODEL_FIXTURES = {"engine", "hf_model", "runtime", "base_url", "local_engine", "tok"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)
        reasons = " ".join(str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif"))
        if "CUDA" in reasons or "GPU" in reasons:  # skipped without a GPU: a GPU test
            item.add_marker(pytest.mark.gpu)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if not _cuda():  # Triton kernels run through the interpreter on the CPU (before triton loads)
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(params=["amx", "avx512"])
def isa(request):
    """The 4-bit kernel (kernels/cpu_q4_linear.c) on one instruction set for the test, in this
    process: AMX where it runs, AVX-512 (the path of CPUs without AMX) everywhere it builds."""
    from sglc_runtime.kernels.cpu_kernels import (
        cpu_q4_linear_available,
        cpu_q4_linear_isa,
        set_cpu_q4_isa,
    )

    if not cpu_q4_linear_available():
        pytest.skip("the 4-bit kernel needs AVX-512-BF16 and a C compiler")
    before = cpu_q4_linear_isa()
    if set_cpu_q4_isa(request.param) != request.param:
        set_cpu_q4_isa(before)
        pytest.skip(f"{request.param} does not run here")
    yield request.param
    set_cpu_q4_isa(before)


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


def start_server(app):
    """Run `app` with uvicorn on a free loopback port; returns (base_url, stop)."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "the test server did not start"

    def stop():
        server.should_exit = True
        th.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop


@pytest.fixture(scope="session")
def base_url(engine):
    """`sglc serve` over the shared engine, on a free loopback port."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    from sglc_runtime.server.app import create_app

    url, stop = start_server(create_app(engine, "smol"))
    yield url
    stop()
