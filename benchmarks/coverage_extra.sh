#!/bin/bash
# The coverage grid's missing cells at 29 px: ribosome full and half, 5j0n quarter (cpu profile's settings).
set -e
source .venv/bin/activate
export DATA_MIRROR=/work/shared/data TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0
W=build/coverage-extra
mkdir -p $W/sim $W/out $W/nb
sim() { [ -f $W/sim/$1.h5 ] || cryo-orient simulate --set volume="\"$2\"" --set n_projections=5000 --set sampling="\"$3\"" --set coverage="$4" --set seed=0 --out $W/sim/$1.h5 --quiet; }
sim ribosome-full-so3 70s-ribosome uniform_so3 "[2.0, 1.0, 2.0]"
sim ribosome-half 70s-ribosome uniform_euler "[2.0, 0.4, 2.0]"
sim 5j0n-quarter-so3 5j0n uniform_so3 "[2.0, 1.0, 0.4]"
jupytext --quiet --to ipynb --set-kernel python3 --output $W/nb/coverage.source.ipynb experiments/coverage.py
papermill --log-level WARNING -k python3 --cwd . $W/nb/coverage.source.ipynb $W/nb/coverage.ipynb \
  -p profile cpu -p out_dir $W/out -p sim_dir $W/sim -p cache_dir $W/cache \
  -y '{"datasets": ["ribosome-full-so3", "ribosome-half", "5j0n-quarter-so3"], "proteins": ["70S ribosome (stand-in for 5a1a)", "70S ribosome (stand-in for 5a1a)", "5j0n"], "coverages": ["full", "half", "quarter"], "input_sizes": [29], "n_features": 512, "batch_size": 32, "epochs": 20}'
