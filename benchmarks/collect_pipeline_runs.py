"""Collect ``cryo-orient run`` summaries (E_OR, L_OR beside L at the truth, topology, estimator, FSC)
from the run folders under WORK into one JSON record.

    python benchmarks/collect_pipeline_runs.py WORK RECORD.json "COMMAND THAT MADE THE RUNS"
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cryo_orient import artifacts


def collect(work: Path) -> list[dict]:
    """One row per ``WORK/*/summary.json``, in name order."""
    rows = []
    for summary_path in sorted(work.glob("*/summary.json")):
        s = json.loads(summary_path.read_text())
        run, config = s["summary"], s["config"]
        rows.append(
            {
                "case": summary_path.parent.name,
                "recovery_mode": config["recovery_mode"],
                "recovery_restarts": config["recovery_restarts"],
                "seed": config["seed"],
                "training": config["training"],
                "estimator": {k: v for k, v in run["estimator"].items() if not isinstance(v, (list, dict))},
                **{
                    k: run[k]
                    for k in ("n_test", "test_pair_mae", "L_OR", "L_at_true_orientations", "E_OR_median", "E_OR_mean")
                },
                "unwound": run["topology"]["unwound"],
                "frustrated_fraction": run["topology"]["frustrated_fraction"],
                "fsc_0.5_angstrom": {k: v["resolution_0.5"] for k, v in run["fsc"].items()},
            }
        )
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(f"usage: {Path(__file__).name} WORK RECORD.json COMMAND", file=sys.stderr)
        return 2
    work, record_path, command = Path(argv[0]), Path(argv[1]), argv[2]
    rows = collect(work)
    if not rows:
        print(f"error: no run summaries (*/summary.json) under {work}; run the pipeline first", file=sys.stderr)
        return 1
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    artifacts.save_text(json.dumps({"command": command, "commit": commit, "rows": rows}, indent=1) + "\n", record_path)
    for r in rows:
        print(
            f"{r['case']}: E_OR median {r['E_OR_median']:.3f} / mean {r['E_OR_mean']:.3f} rad, L_OR {r['L_OR']:.4f} "
            f"(truth {r['L_at_true_orientations']:.4f}){', unwound' if r['unwound'] else ''}"
        )
    print(f"record: {record_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
