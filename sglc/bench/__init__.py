"""`sglc bench`: the SGLang paper's workload table on this machine, side by side with peers.

`workloads.py` holds the programs and their deterministic data, `backends.py` the peers as
backends of the same programs (HF transformers, llama.cpp's own server), `run.py` runs each
system in its own process and writes the table, JSON and PNG."""
