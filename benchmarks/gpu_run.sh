#!/usr/bin/env bash
# One prepared command for a GPU session (see benchmarks/gpu.py): the GPU-only tests,
# then the benchmark, each into a file under ${OUT:-gpu_results}.
set -uo pipefail
out="${OUT:-gpu_results}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1
python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_students.py \
    tests/test_hf_student.py tests/test_evaluation.py 2>&1 | tee "$out/pytest_gpu.txt"
timeout 400 python benchmarks/gpu.py 2>&1 | tee "$out/benchmark_gpu.txt"
