#!/bin/bash
# The coverage grid (issue 16) at another input size or seed than the cpu record's: the cpu
# profile's six cells and settings (20 epochs, 512 features, batch regime B = 32), the estimators
# trained on SIZE × SIZE px inputs with seed SEED (training and recovery). One notebook run per
# cell, in order of interest, so that each finished cell is kept (the cache is build/cpu/cache,
# keyed by content: a rerun resumes, and a finished grid is only re-read); then one run over the
# finished cells writes the record benchmarks/results/coverage-SIZEpx-seedSEED-DATE.{csv,json,png}.
#   SIZE=58 bash benchmarks/coverage_grid.sh
#   SIZE=29 SEED=1 CELLS="ribosome-quarter-so3 5j0n-half" bash benchmarks/coverage_grid.sh
set -e
source .venv/bin/activate
export DATA_MIRROR=${DATA_MIRROR:-/work/shared/data} TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0
SIZE=${SIZE:-58}
SEED=${SEED:-0}
W=build/coverage-grid/${SIZE}px-seed$SEED
OUT=benchmarks/results/coverage-${SIZE}px-seed$SEED-${DATE:-$(date +%F)}
CELLS=${CELLS:-"ribosome-quarter-so3 5j0n-half 5j0n-full-so3 ribosome-full-so3 5j0n-quarter-so3 ribosome-half"}
declare -A PROTEIN=([5j0n-full-so3]=5j0n [5j0n-half]=5j0n [5j0n-quarter-so3]=5j0n)
declare -A COVERAGE=([5j0n-full-so3]=full [5j0n-half]=half [5j0n-quarter-so3]=quarter
  [ribosome-full-so3]=full [ribosome-half]=half [ribosome-quarter-so3]=quarter)
mkdir -p $W/nb "$OUT"
make --no-print-directory $(for c in $CELLS; do echo data/simulated/cpu/$c.h5; done) PROFILE=cpu
jupytext --quiet --to ipynb --set-kernel python3 --output $W/nb/coverage.source.ipynb experiments/coverage.py
run() {  # run DIR CELL...: the notebook over these cells
  local dir=$1; shift
  local ds="" ps="" cs=""
  for c in "$@"; do
    ds+="\"$c\", "; ps+="\"${PROTEIN[$c]:-70S ribosome (stand-in for 5a1a)}\", "; cs+="\"${COVERAGE[$c]}\", "
  done
  papermill --log-level WARNING -k python3 --cwd . $W/nb/coverage.source.ipynb $dir/coverage.ipynb \
    -p profile cpu -p out_dir $dir -p sim_dir data/simulated/cpu -p cache_dir build/cpu/cache -p seed $SEED \
    -y "{\"datasets\": [${ds%, }], \"proteins\": [${ps%, }], \"coverages\": [${cs%, }], \"input_sizes\": [$SIZE], \"n_features\": 512, \"batch_size\": 32, \"epochs\": 20}"
}
done_cells=()
for c in $CELLS; do
  mkdir -p $W/$c
  echo "$(date +%T) $c at $SIZE px, seed $SEED"
  run $W/$c $c
  done_cells+=("$c")
done
run "$OUT" "${done_cells[@]}"
for f in csv json png; do mv "$OUT/coverage.$f" "$OUT.$f"; done
rm -rf "$OUT"
echo "record: $OUT.{csv,json,png}"
