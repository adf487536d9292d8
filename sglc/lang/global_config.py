"""`sgl.global_config` (SGLang's `sglang.lang.global_config`): `default_backend` reads and sets
the backend programs run on; the output flags are read by the in-process backend."""

from __future__ import annotations


class GlobalConfig:
    """Process-wide language settings, as in SGLang."""

    def __init__(self) -> None:
        self.verbosity = 0
        self.skip_special_tokens_in_output = True
        self.spaces_between_special_tokens_in_out = True

    @property
    def default_backend(self):
        from .api import get_default_backend

        return get_default_backend()

    @default_backend.setter
    def default_backend(self, backend) -> None:
        from .api import set_default_backend

        set_default_backend(backend)


global_config = GlobalConfig()
