"""A tiny training run that kills itself with SIGKILL at a chosen point (for test_interruptions).

    python tests/interrupt_child.py OUT_DIR KILL [REGIME]

KILL is ``none`` (train to the end and print the history and a digest of the weights as JSON),
``before:N`` / ``after:N`` (SIGKILL just before / after the N-th ``os.replace`` into OUT_DIR in this
process: every atomic step of a checkpoint and of its copies is one) or ``mid-save:N`` (SIGKILL in
the middle of the N-th Keras save, after half of the file is written).
"""

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

out_dir, kill = Path(sys.argv[1]).resolve(), sys.argv[2]
regime = sys.argv[3] if len(sys.argv) > 3 else "batch"
mode, _, count = kill.partition(":")
target = int(count or 0)
calls = {"replace": 0, "save": 0}


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


original_replace = os.replace


def replace(src, dst, *args, **kwargs):
    inside = str(Path(dst).resolve()).startswith(str(out_dir))
    if inside:
        calls["replace"] += 1
        if mode == "before" and calls["replace"] == target:
            die()
    result = original_replace(src, dst, *args, **kwargs)
    if inside and mode == "after" and calls["replace"] == target:
        die()
    return result


os.replace = replace

import keras  # noqa: E402

original_save = keras.Model.save


def save(self, filepath, *args, **kwargs):
    calls["save"] += 1
    if mode == "mid-save" and calls["save"] == target:
        original_save(self, filepath, *args, **kwargs)
        size = os.path.getsize(filepath)
        with open(filepath, "r+b") as fh:
            fh.truncate(size // 2)
        die()
    return original_save(self, filepath, *args, **kwargs)


keras.Model.save = save

from cryo_orient.estimation import siamese  # noqa: E402

rng = np.random.default_rng(5)
images = rng.normal(size=(60, 16, 16)).astype(np.float32)
q = rng.normal(size=(60, 4))
q /= np.linalg.norm(q, axis=1, keepdims=True)
config = dict(input_size=16, n_features=8, regime=regime, batch_size=10, epochs=3, seed=1, pair_fraction=0.05)
result = siamese.train(images[:40], q[:40], images[40:], q[40:], config, out_dir=out_dir, progress=False)
weights = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in result.model.get_weights())).hexdigest()
loaded = siamese.load_run(out_dir)
loaded_weights = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in loaded.model.get_weights())).hexdigest()
print(
    json.dumps(
        {
            "loss": result.history["loss"],
            "val_mae": result.history["val_mae"],
            "epochs": result.history["epoch"],
            "weights": weights,
            "loaded_weights": loaded_weights,
            "loaded_val_mae": loaded.history["val_mae"],
            "stop_reason": result.stop_reason,
        }
    )
)
