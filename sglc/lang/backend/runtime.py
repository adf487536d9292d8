"""`Runtime` (the in-process engine backend) next to the other backends of `sglc.lang`."""

from ...backend.runtime import Runtime, RuntimeBackend

__all__ = ["Runtime", "RuntimeBackend"]
