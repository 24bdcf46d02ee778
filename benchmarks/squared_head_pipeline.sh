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
python - "$W" <<'PY'
"""Collect the runs' summaries (E_OR, L_OR beside L at the truth, topology, estimator) into one record."""
import datetime
import json
import subprocess
import sys
from pathlib import Path

from cryo_orient import artifacts

work = Path(sys.argv[1])
rows = []
for summary_path in sorted(work.glob("*/summary.json")):
    s = json.loads(summary_path.read_text())
    run, config = s["summary"], s["config"]
    rows.append(
        {
            "case": summary_path.parent.name,
            "recovery_mode": config["recovery_mode"],
            "recovery_restarts": config["recovery_restarts"],
            "training": config["training"],
            "estimator": {k: v for k, v in run["estimator"].items() if not isinstance(v, (list, dict))},
            **{k: run[k] for k in ("n_test", "test_pair_mae", "L_OR", "L_at_true_orientations", "E_OR_median", "E_OR_mean")},
            "unwound": run["topology"]["unwound"],
            "frustrated_fraction": run["topology"]["frustrated_fraction"],
            "fsc_0.5_angstrom": {k: v["resolution_0.5"] for k, v in run["fsc"].items()},
        }
    )
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
record = {"command": "bash benchmarks/squared_head_pipeline.sh", "commit": commit, "rows": rows}
day = datetime.date.today().isoformat()
artifacts.save_text(json.dumps(record, indent=1) + "\n", f"benchmarks/results/squared-head-pipeline-{day}.json")
for r in rows:
    print(f"{r['case']}: E_OR median {r['E_OR_median']:.3f} / mean {r['E_OR_mean']:.3f} rad, L_OR {r['L_OR']:.4f} "
          f"(truth {r['L_at_true_orientations']:.4f}){', unwound' if r['unwound'] else ''}")
PY
