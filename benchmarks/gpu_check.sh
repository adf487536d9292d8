#!/usr/bin/env bash
# The GPU check, for the moment a GPU machine is lent (the device tool; under 8 minutes of its
# time): the GPU tests at the model's sizes (CUDA graphs, the Triton decode kernel), the engine
# benchmark against HF transformers on the same GPU (bench_gpu.py: engine_gpu.json) and the
# workload table with sglc and HF on the GPU (bench_gpu_table.json); results in
# benchmarks/results/ and, on the device machine, in $OUT (which comes back).
#
# The machine reaches no registry, so first, here: `bash benchmarks/gpu_prepare.sh` (wheels and
# the model in two halves under .device/, ignored by git). Then two device calls on one warm
# machine (each call carries at most 64 MiB):
#   1. carry [".device/wheels", ".device/model1"], command "true"          (a minute or two)
#   2. carry [".device/model2"], command "bash benchmarks/gpu_check.sh", timeout_s 540
# (GPU_CHECK_SETUP_ONLY=1 stops after the setup: a dry run here.)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out" benchmarks/results
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/sglc-site .device/wheels/*.whl || { echo "no wheels: run gpu_prepare.sh"; exit 1; }
export PYTHONPATH="/tmp/sglc-site:$PWD" SGLC_CACHE_DIR=/tmp/sglc-cache PYTHONUNBUFFERED=1
model="$SGLC_CACHE_DIR/models/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$(dirname "$model")"
cat .device/model1/part00 .device/model2/part01 > "$model" || exit 1
echo "$(cat .device/model2/sha256)  $model" | sha256sum -c --quiet - || exit 1
python3 -c "import sglc, sglc_runtime.engine, gguf, lark, interegular, llguidance" || exit 1
[ "${GPU_CHECK_SETUP_ONLY:-0}" = 1 ] && { echo "setup ok"; exit 0; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_device.txt"
rc=0
# the tests that need CUDA (marked gpu by tests/conftest.py), at the model's sizes
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels.py \
  tests/test_engine.py 2>&1 | tee "$out/gpu_tests.log" || rc=1
timeout 120 python3 benchmarks/bench_gpu.py --quick --repeats 2 2>&1 | tail -20 || rc=1
cp benchmarks/results/engine_gpu_quick.json "$out/" 2>/dev/null
timeout 180 python3 -m sglc bench --systems sglc hf --num 16 --seq-num 4 \
  --out benchmarks/results/bench_gpu_table.json 2>&1 | grep -v "it/s\]" | tail -16 || rc=1
cp benchmarks/results/bench_gpu_table.json benchmarks/results/bench_gpu_table.png "$out/" \
  2>/dev/null
exit "$rc"
