# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Table 1: the train/validation/test split and the pairs each set uses
#
# The paper splits P = 5,000 projections with scikit-learn (`test_size=0.33, random_state=42`,
# then `test_size=0.25, random_state=1`) and trains on 1 % of the ordered pairs of each set,
# drawn with replacement (so the count includes (i, i) pairs and both orders); the test set uses
# all of its pairs. This notebook computes the table from `cryo_orient.data.splits` for the profile's P.

# %% tags=["parameters"]
profile = "tiny"
out_dir = "figures/tiny"
sim_dir = "data/simulated/tiny"
cache_dir = "build/tiny/cache"
n_projections = 5000
test_size = 0.33
val_size = 0.25
seeds = [42, 1]
pair_fraction = 0.01

# %%
from pathlib import Path

import numpy as np

from cryo_orient import artifacts
from cryo_orient.data import splits
from cryo_orient.workflow import records

train, val, test = splits.train_val_test_split(n_projections, test_size, val_size, tuple(seeds))
assert len(np.intersect1d(train, val)) == len(np.intersect1d(train, test)) == len(np.intersect1d(val, test)) == 0
rows = [
    ("Training", len(train), splits.pair_count(len(train), pair_fraction)),
    ("Validation", len(val), splits.pair_count(len(val), pair_fraction)),
    ("Test", len(test), splits.pair_count(len(test), 1.0)),
]

lines = ["| Set | P | P² | Used pairs |", "|---|---|---|---|"]
for name, size, used in rows:
    lines.append(f"| {name} | {size:,} ({100 * size / n_projections:.0f}%) | {size**2:,} | {used:,} |")
table = "\n".join(lines)
print(table)

csv = "set,projections,fraction,all_pairs,used_pairs\n" + "".join(
    f"{name.lower()},{size},{size / n_projections:.4f},{size**2},{used}\n" for name, size, used in rows
)
out = Path(out_dir)
artifacts.save_text(table + "\n", out / "table-1.md")
artifacts.save_text(csv, out / "table-1.csv")
results = {name.lower(): {"projections": size, "all_pairs": size**2, "used_pairs": used} for name, size, used in rows}
records.publish("table-1", globals(), outputs=["table-1.md", "table-1.csv"], results=results)
