"""SGLang's `sglang.srt` names that programs import, at the same paths (see README)."""
