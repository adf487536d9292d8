#!/usr/bin/env bash
# The quickstart's first command: install everything (.ci/install) and run the main job, a
# batch of SGLang programs on the default model (downloaded once into ~/.cache/sglc).
set -euo pipefail
cd "$(dirname "$0")"
bash .ci/install
python3 samples/few_shot_qa.py
