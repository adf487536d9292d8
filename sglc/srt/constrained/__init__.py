"""Constrained-decoding helpers at SGLang's `sglang.srt.constrained` paths."""
