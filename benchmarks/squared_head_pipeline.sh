#!/bin/bash
# The whole pipeline (figure 10's cases) with the squared head, the cpu profile's [pipeline]
# settings otherwise (29 px, 80 epochs, batch regime): our recovery and the paper's, on 5j0n full
# SO(3), noiseless (DATASETS: also e.g. ribosome-quarter-so3). Issue 16's target: full-SO(3)
# numbers no worse than the paper's head gives (figure 10a, median 0.163 rad).
set -euo pipefail
source .venv/bin/activate
export DATA_MIRROR=${DATA_MIRROR:-/work/shared/data} TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0
W=build/squared-head
training='{"input_size": 29, "n_features": 512, "regime": "batch", "batch_size": 32, "epochs": 80, "seed": 0, "feature_distance": "squared_cosine"}'
for dataset in ${DATASETS:-5j0n-full-so3}; do
  make --no-print-directory data/simulated/cpu/$dataset.h5 PROFILE=cpu
  cryo-orient run --dataset data/simulated/cpu/$dataset.h5 --profile cpu --set "training=$training" \
    --cache-dir build/cpu/cache --out $W/$dataset-ours --quiet
  cryo-orient run --dataset data/simulated/cpu/$dataset.h5 --profile cpu --set "training=$training" \
    --set recovery_mode=faithful --set recovery_restarts=1 --cache-dir build/cpu/cache --out $W/$dataset-paper --quiet
done
PYTHONPATH=lib python benchmarks/collect_pipeline_runs.py "$W" "benchmarks/results/squared-head-pipeline-$(date +%F).json" \
  "bash benchmarks/squared_head_pipeline.sh"
