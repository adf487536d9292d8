"""Building the CPU kernels' C libraries: the system C compiler (`CC`, which may carry
arguments; gcc over clang, whose OpenMP runtime would be a second one beside torch's), explicit
AVX-512 flags (never -march=native, which can fault on VMs that advertise AMX), one build per
machine into the sglc cache keyed by the sources, headers, flags and the compiler's version,
older builds deleted. `load` returns the ctypes library, or None where the CPU, a compiler or
the cache is missing (the PyTorch paths run then)."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

_HERE = Path(__file__).parent
_HEADERS = (_HERE / "bf16.h", _HERE / "exp512.h", _HERE / "cpu_kernels.h",  # (cache key too)
            _HERE / "q4_dequant.h")
_FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma",
          "-fopenmp", "-fno-math-errno", "-shared", "-fPIC"]
_NEEDS = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "fma"}


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def compiler() -> tuple[tuple[str, ...], str] | None:
    """The C compiler's command (`CC` may carry arguments: "ccache gcc") and its version line
    (part of the build's cache key), or None. Clang is passed over for gcc where gcc exists:
    its -fopenmp links LLVM's libomp, a second OpenMP runtime beside the libgomp torch loads."""
    def probe(cmd: list[str]):
        exe = shutil.which(cmd[0]) if cmd else None
        if exe is None:
            return None
        try:
            v = subprocess.run([exe, *cmd[1:], "--version"], capture_output=True, text=True,
                               timeout=30, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return (exe, *cmd[1:]), (v.splitlines() or ["?"])[0].strip()

    found = probe(shlex.split(os.environ.get("CC", "cc"))) or probe(["gcc"])
    if found is not None and "clang" in found[1].lower():
        gcc = probe(["gcc"])
        if gcc is not None and "clang" not in gcc[1].lower():
            logger.info("building the CPU kernels with %s, not %s (clang's OpenMP runtime "
                        "would be a second one beside torch's libgomp)", gcc[1], found[1])
            return gcc
        logger.warning("building the CPU kernels with %s: its OpenMP runtime (libomp) will run "
                       "beside torch's libgomp; set CC=gcc where gcc is installed", found[1])
    return found


def build(out: Path, sources: tuple[Path, ...], cc: tuple[str, ...]) -> bool:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            so = Path(tmp) / out.name
            proc = subprocess.run([*cc, *_FLAGS, *map(str, sources), "-o", str(so), "-lm"],
                                  capture_output=True, text=True, check=False, timeout=300)
            if proc.returncode == 0:
                os.replace(so, out)  # atomic: engines building at once each see a whole file
                remove_stale(out)
                return True
    except (OSError, subprocess.SubprocessError) as e:
        logger.warning("could not build the CPU kernels %s into %s (%s): they stay on PyTorch",
                       out.stem, out.parent, e)
        return False
    logger.warning("the CPU kernels %s did not compile (%s): they stay on PyTorch", out.stem,
                   (proc.stderr.strip().splitlines() or ["?"])[-1])
    return False


_OLD_STEMS = ("cpu_amx",)  # libraries of earlier versions, under names no longer built


def remove_stale(out: Path) -> None:
    """Delete this library's older builds (other sources, flags or compilers). A process that
    has one loaded keeps its mapping; an older install sharing the cache rebuilds its own."""
    stem = out.name.rsplit("_", 1)[0]
    for old in out.parent.glob("*.so"):
        if old != out and old.name.rsplit("_", 1)[0] in (stem, *_OLD_STEMS):
            try:
                old.unlink()
            except OSError:
                pass


def load(stem: str, sources: tuple[Path, ...], signatures: dict):
    """The library of `sources`, built once per machine into the sglc cache; None where the
    CPU, a compiler or the cache is missing. The cache key covers the sources, the headers,
    the flags and the compiler's version line."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64") \
            or not _NEEDS <= cpu_flags() or not all(p.is_file() for p in sources + _HEADERS):
        return None
    from ..model_source import cache_dir

    cc = compiler()
    if cc is None:
        logger.warning("no C compiler found (set CC): the CPU kernels stay on PyTorch")
        return None
    text = b"".join(p.read_bytes() for p in sources + _HEADERS) + \
        " ".join(_FLAGS).encode() + b"\0" + cc[1].encode()
    out = cache_dir() / "kernels" / f"{stem}_{hashlib.sha256(text).hexdigest()[:16]}.so"
    if out.exists():
        logger.info("CPU kernels %s: %s (built earlier)", stem, out)
    else:
        t0 = time.perf_counter()
        if not build(out, sources, cc[0]):
            return None
        logger.info("CPU kernels %s: built with %s in %.1f s into %s", stem, cc[1],
                    time.perf_counter() - t0, out)
    try:
        lib = ctypes.CDLL(str(out))
    except OSError as e:
        logger.warning("could not load %s (%s): the CPU kernels stay on PyTorch", out, e)
        return None
    for name, (args, res) in signatures.items():
        getattr(lib, name).argtypes, getattr(lib, name).restype = args, res
    return lib
