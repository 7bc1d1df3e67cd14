#!/usr/bin/env bash
# The device checks in one script, for a machine with an NVIDIA GPU (about 5 minutes on one GPU):
# the CUDA tests, the sampling benchmark on the GPU, mixed-precision training on the GPU, and a
# one-process NCCL launch of `flowkit fit` through torchrun. Figures go to $OUT (default /tmp/flowkit-gpu).
#
#     bash experiments/gpu_checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/flowkit-gpu}"
mkdir -p "$OUT"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"

# 1. every test that needs CUDA (they skip on a CPU machine), and the precision tests
python -m pytest -q -p no:cacheprovider -k "cuda or CUDA" tests/ | tail -3
python -m pytest -q -p no:cacheprovider tests/test_precision.py | tail -3

# 2. exact sampling on the GPU, flowkit's engine against the D-pass loop and the peers
python experiments/bench_sampling.py --device cuda --out "$OUT" | tail -20

# 3. a training step at each precision on the GPU: a MADE 784-[500, 500] on binarized MNIST-sized data
python - <<'PY'
import statistics, time, torch, flowkit
from flowkit.train import fit
x = torch.bernoulli(torch.full((20000, 784), 0.3))
for precision in ("fp32", "bf16", "fp16"):
    model = flowkit.BernoulliMADE(784, [500, 500], seed=0)
    times = []
    for _ in range(3):
        torch.cuda.synchronize(); began = time.perf_counter()
        fit(model, x, epochs=1, batch_size=100, precision=precision, device="cuda")
        torch.cuda.synchronize(); times.append(time.perf_counter() - began)
    print(f"{precision}: {statistics.median(times) / 200 * 1e3:.2f} ms per step (median of 3 epochs of 200 steps)")
PY

# 4. one process over NCCL through torchrun, as a multi-GPU launch runs each rank
torchrun --standalone --nproc-per-node 1 -m flowkit fit --device cuda --epochs 2 --out "$OUT/run-nccl" --overwrite
