"""`Runtime` (the engine's Python-API backend) next to the other backends of `sglc.lang`."""

from ...backend.runtime import Runtime, RuntimeBackend

__all__ = ["Runtime", "RuntimeBackend"]
