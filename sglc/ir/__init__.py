"""The program IR: `Op`, `Node`, `Graph` (a networkx DAG), its text form (`parse`, `str`), the
verifier and a drawing helper. Loaded lazily, so `import sglc` stays light."""

from __future__ import annotations

_EXPORTS = {
    "Op": "ops", "Kind": "ops", "SIGNATURES": "ops",
    "Node": "graph", "Graph": "graph",
    "parse": "text", "verify": "verifier", "IRError": "errors", "draw": "drawing",
}

__all__ = ["SIGNATURES", "Graph", "IRError", "Kind", "Node", "Op", "draw", "parse", "verify"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sglc.ir' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
