"""The SGLang language: primitives, the eager interpreter and program states (see api.py)."""
