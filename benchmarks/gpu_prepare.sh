#!/usr/bin/env bash
# Here, before a GPU check (benchmarks/gpu_check.sh): what the lent GPU machine lacks and cannot
# fetch (it reaches no registry), laid out in .device/ (ignored by git) to travel with the device
# tool's `carry`, which takes at most 64 MiB a call:
#   .device/wheels/  the project's pure dependencies the machine's image does not hold (for its
#                    Python 3.12): gguf, interegular, lark, llguidance
#   .device/model1/, .device/model2/  the default model's GGUF file in two halves (93 MB): the
#                    first call carries one half, the second the other (a warm machine keeps
#                    the first: ignored paths already there stay between calls)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF "/.device/" .git/info/exclude 2>/dev/null || echo "/.device/" >> .git/info/exclude
rm -rf .device && mkdir -p .device/wheels .device/model1 .device/model2
for pkg in gguf==0.19.0 interegular==0.3.3 lark==1.3.1 llguidance==1.9.1; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .device/wheels "$pkg"
done
gguf_file=$(python3 -c "from sglc_runtime.model_source import default_model_path as p; print(p())")
half=$(( ($(stat -c %s "$gguf_file") + 1) / 2 ))
split -b "$half" -d "$gguf_file" .device/part
mv .device/part00 .device/model1/part00 && mv .device/part01 .device/model2/part01
sha256sum "$gguf_file" | cut -d' ' -f1 > .device/model2/sha256
du -sh .device/*
