"""Shared benchmark helpers: timing, the HF and llama.cpp peers, result files and plots."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def median_ms(fns: dict, reps: int) -> dict:
    """Run the functions in turns `reps` times; median milliseconds of each."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def machine_info() -> dict:
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    from sglc_runtime.kernels.cpu_kernels import cpu_q4_linear_isa

    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu,
            "q4_kernel": cpu_q4_linear_isa(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "git": os.environ.get("SGLC_BENCH_GIT") or subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                cwd=Path(__file__).parent).stdout.strip()}


def load_hf():
    """HF transformers on the same GGUF (float32), or None if transformers is missing."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    from sglc_runtime.model_source import default_model_path

    p = default_model_path()
    return AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name,
                                                torch_dtype=torch.float32).eval()


def load_llama_cpp(n_ctx: int = 4096):
    """llama.cpp through llama-cpp-python on the same GGUF, or None if it is not installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from sglc_runtime.model_source import default_model_path

    return Llama(model_path=str(default_model_path()), n_ctx=n_ctx, n_threads=os.cpu_count(),
                 n_batch=512, verbose=False, logits_all=False)


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result["command"] = " ".join([Path(sys.executable).name] + sys.argv)
    result["machine"] = machine_info()
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def bar_plot(path: Path, title: str, groups: dict[str, dict[str, float]], ylabel: str) -> None:
    """One subplot per metric, one bar per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.8))
    if len(groups) == 1:
        axes = [axes]
    for ax, (metric, vals) in zip(axes, groups.items()):
        names = list(vals)
        bars = ax.bar(names, [vals[n] for n in names],
                      color=["#3b7dd8", "#8fb5ea", "#c9dbf5", "#6f8fb8", "#e0823d", "#5aa469",
                             "#b65fcf"][:len(names)])
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_title(metric, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
