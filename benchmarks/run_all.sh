#!/usr/bin/env bash
# Every benchmark at full size, one after another on a quiet machine (results/ holds the output).
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/bench_engine.py --repeats 5
python benchmarks/bench_cpu_ops.py
python benchmarks/bench_quant_accuracy.py
python benchmarks/bench_constrained.py
python benchmarks/bench_fsm.py --repeats 5
python benchmarks/bench_lang.py --num-programs 32
python benchmarks/bench_compiler.py
python benchmarks/bench_server.py
python benchmarks/bench_dp.py
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    python benchmarks/bench_gpu.py  # on a GPU machine
fi
python benchmarks/bench_precision.py --repeats 3
