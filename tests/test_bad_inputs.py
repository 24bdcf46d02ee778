"""Bad inputs through the command line and the Python API: each gives one clear line (no
traceback), the right exit status, and leaves nothing behind.

The cases are one list (:data:`CASES`); the same list renders ``docs/bad-inputs.md`` (every case's
input, message and exit status), and each case checks that its row there is what it printed, so
the table cannot drift from what the tests run. After changing a message, rewrite the table with

    UPDATE_BAD_INPUTS=1 python -m pytest tests/test_bad_inputs.py
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import h5py
import mrcfile
import numpy as np
import pytest

from cryo_orient import artifacts, cli, data, validation
from cryo_orient.data import relion
from cryo_orient.data.dataset import read_dataset
from cryo_orient.data.registry import DataFile
from cryo_orient.estimation import siamese
from cryo_orient.geometry import rotations
from cryo_orient.orientation import recovery, topology
from cryo_orient.simulation import simulate
from cryo_orient.tomography import fsc, projection, reconstruct
from cryo_orient.workflow import pipeline

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bad-inputs.md"
UPDATE = os.environ.get("UPDATE_BAD_INPUTS") == "1"
#: A fixed memory limit, so that the messages (and the table) do not depend on this machine.
MEMORY_LIMIT = "8GiB"


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # "cli" or "api"
    input: str  # the command line (with {placeholders}) or the Python call shown in the table
    expect: str  # a regular expression the message must contain
    code: int  # the exit status (for the API: the status the CLI gives that error)
    call: object = None  # for the API: a function of the fixtures' namespace
    needs: str = ""  # "ro" for a case that needs a read-only mount


def cli_case(id, args, code, expect, needs=""):
    return Case(id, "cli", args, expect, code, needs=needs)


def api_case(id, shown, call, expect, code=2):
    return Case(id, "api", shown, expect, code, call)


SIM = "simulate --out {w}/out.h5 --quiet --set volume={blob} --set n_projections=10 --set size=24"
TRAIN = "train --dataset {d} --out {w}/run --quiet"
GENERAL = "train-general --out {w}/general --quiet"
RUN = "run --dataset {d} --out {w}/runout --quiet"
GAUGE = "gauge --dataset {d} --out {w}/g.star --quiet"
RECON = "reconstruct --dataset {d} --out {w}/v.mrc --quiet"
EMBED = "embed --dataset {d} --out {w}/e.npz --quiet"
RECOVER = "recover --out {w}/r.npz --quiet"
ORIENT = "orient {star} --reference {{blob}} --out {{w}}/orient --quiet"
REFINE = "refine {star} --reference {{blob}} --out {{w}}/refine --quiet"

CASES = [
    # ------------------------------------------------------------------ the command line itself
    cli_case("cli-no-command", "", 2, r"the following arguments are required: command"),
    cli_case("cli-unknown-command", "simulat", 2, r"invalid choice: 'simulat'"),
    cli_case("cli-unknown-option", "fsc {zero_a} {zero_b} --colour red", 2, r"unrecognized arguments: --colour red"),
    cli_case("cli-missing-out", "simulate --set n_projections=3", 2, r"the following arguments are required: --out"),
    cli_case("cli-train-missing-dataset", "train --out {w}/run", 2, r"required: --dataset"),
    cli_case(
        "cli-recover-restarts-0",
        RECOVER + " --embeddings {emb} --restarts 0",
        2,
        r"--restarts: expected an integer >= 1, got 0",
    ),
    cli_case(
        "cli-recover-restarts-word",
        RECOVER + " --embeddings {emb} --restarts many",
        2,
        r"expected an integer >= 1, got 'many'",
    ),
    cli_case(
        "cli-recover-max-steps-negative",
        RECOVER + " --embeddings {emb} --max-steps -5",
        2,
        r"--max-steps: expected an integer >= 1",
    ),
    cli_case(
        "cli-recover-seed-negative", RECOVER + " --embeddings {emb} --seed -1", 2, r"--seed: expected an integer >= 0"
    ),
    cli_case(
        "cli-recover-seed-float",
        RECOVER + " --embeddings {emb} --seed 1.5",
        2,
        r"--seed: expected an integer >= 0, got '1.5'",
    ),
    cli_case(
        "cli-gauge-candidates-0",
        GAUGE + " --orientations {rec} --candidates 0",
        2,
        r"--candidates: expected an integer >= 1",
    ),
    cli_case(
        "cli-reconstruct-iterations-0",
        RECON + " --orientations truth --iterations 0",
        2,
        r"--iterations: expected an integer >= 1, got 0",
    ),
    cli_case(
        "cli-reconstruct-iterations-negative",
        RECON + " --orientations truth --iterations -3",
        2,
        r"--iterations: expected an integer >= 1",
    ),
    cli_case(
        "cli-reconstruct-split",
        RECON + " --orientations truth --split everything",
        2,
        r"--split: invalid choice: 'everything'",
    ),
    cli_case(
        "cli-reconstruct-images", RECON + " --orientations truth --images denoised", 2, r"--images: invalid choice"
    ),
    cli_case(
        "cli-reconstruct-backend",
        RECON + " --orientations truth --backend cuda",
        2,
        r"--backend: invalid choice: 'cuda'",
    ),
    cli_case("cli-reconstruct-box", RECON + " --orientations truth --box huge", 2, r"--box: invalid choice: 'huge'"),
    cli_case("cli-embed-split", EMBED + " --model {fake_run} --split tests", 2, r"--split: invalid choice: 'tests'"),
    cli_case("cli-simulate-chunk-0", SIM + " --chunk-size 0", 2, r"--chunk-size: expected an integer >= 1, got 0"),
    cli_case(
        "cli-fsc-voxel-0", "fsc {blob} {blob} --voxel-size 0", 2, r"--voxel-size: expected a finite number > 0, got '0'"
    ),
    cli_case(
        "cli-fsc-voxel-negative", "fsc {blob} {blob} --voxel-size -1", 2, r"expected a finite number > 0, got '-1'"
    ),
    cli_case("cli-fsc-voxel-nan", "fsc {blob} {blob} --voxel-size nan", 2, r"expected a finite number > 0, got 'nan'"),
    cli_case("cli-fsc-voxel-inf", "fsc {blob} {blob} --voxel-size inf", 2, r"expected a finite number > 0, got 'inf'"),
    cli_case("cli-fsc-voxel-word", "fsc {blob} {blob} --voxel-size small", 2, r"expected a number > 0, got 'small'"),
    cli_case("cli-fsc-one-map", "fsc {blob}", 2, r"required: volume_b"),
    # ------------------------------------------------------------------ --set and --config
    cli_case("set-no-equals", SIM + " --set noise_variance", 2, r"--set expects KEY=VALUE, got 'noise_variance'"),
    cli_case("set-empty-key", SIM + " --set =5", 2, r"--set '=5' names no setting"),
    cli_case("config-missing", SIM + " --config {w}/none.toml", 2, r"config file <tmp>/none.toml does not exist"),
    cli_case("config-folder", SIM + " --config {w}", 2, r"config file <tmp> is a folder"),
    cli_case("config-bad-toml", SIM + " --config {bad_toml}", 2, r"config file <tmp>/bad.toml is not valid TOML"),
    cli_case("config-bad-json", SIM + " --config {bad_json}", 2, r"config file <tmp>/bad.json is not valid JSON"),
    cli_case("config-json-list", SIM + " --config {list_json}", 2, r"holds a JSON list, not a table of settings"),
    cli_case("config-json-string", SIM + " --config {string_json}", 2, r"holds a JSON str, not a table of settings"),
    cli_case(
        "config-json-as-toml",
        SIM + " --config {json_as_toml}",
        2,
        r"is not valid TOML .*read as JSON only when it ends in .json",
    ),
    cli_case("config-binary", SIM + " --config {binary}", 2, r"config file <tmp>/binary.toml is not text"),
    cli_case("train-config-json-list", TRAIN + " --config {list_json}", 2, r"holds a JSON list"),
    cli_case("run-config-json-list", RUN + " --config {list_json}", 2, r"holds a JSON list"),
    # ------------------------------------------------------------------ simulate: settings
    cli_case("sim-nothing", "simulate --out {w}/out.h5", 2, r"nothing to simulate"),
    cli_case(
        "sim-no-volume", "simulate --out {w}/out.h5 --set n_projections=4", 2, r"needs the setting\(s\) \['volume'\]"
    ),
    cli_case(
        "sim-no-count",
        "simulate --out {w}/out.h5 --set volume={blob}",
        2,
        r"needs the setting\(s\) \['n_projections'\]",
    ),
    cli_case(
        "sim-profile-without-dataset",
        "simulate --out {w}/out.h5 --profile tiny",
        2,
        r"--profile and --dataset go together",
    ),
    cli_case(
        "sim-profile-unknown-dataset",
        "simulate --out {w}/out.h5 --profile tiny --dataset nosuch",
        2,
        r"profile 'tiny' has no dataset 'nosuch'",
    ),
    cli_case("sim-profile-unknown", "simulate --out {w}/out.h5 --profile laptop --dataset x", 2, r"laptop"),
    cli_case("sim-unknown-key", SIM + " --set noise=3", 2, r"unknown simulation config key\(s\) \['noise'\]"),
    cli_case(
        "sim-misspelt-key", SIM + " --set n_projection=5", 2, r"unknown simulation config key\(s\) \['n_projection'\]"
    ),
    cli_case("sim-n-0", SIM + " --set n_projections=0", 2, r"n_projections must be a positive integer, got 0"),
    cli_case("sim-n-negative", SIM + " --set n_projections=-1", 2, r"n_projections must be a positive integer, got -1"),
    cli_case("sim-n-float", SIM + " --set n_projections=1.5", 2, r"n_projections must be a positive integer, got 1.5"),
    cli_case(
        "sim-n-1e9-float",
        SIM + " --set n_projections=1e9",
        2,
        r"n_projections must be a positive integer, got 1000000000.0",
    ),
    cli_case("sim-n-1e9", SIM + " --set n_projections=1000000000", 2, r"n_projections must be at most 100,000,000"),
    cli_case("sim-n-true", SIM + " --set n_projections=true", 2, r"n_projections must be a positive integer, got True"),
    cli_case(
        "sim-n-word", SIM + " --set n_projections=many", 2, r"n_projections must be a positive integer, got 'many'"
    ),
    cli_case("sim-n-null", SIM + " --set n_projections=null", 2, r"n_projections must be a positive integer, got None"),
    cli_case(
        "sim-n-memory",
        SIM + " --set n_projections=90000000",
        1,
        r"simulating 90,000,000 projections of 24×24 px needs about 16.\d GiB of memory but 8.0 GiB is available",
    ),
    cli_case(
        "sim-size-2", SIM + " --set size=2", 2, r"size must be an integer >= 8 \(pixels per side\) or None, got 2"
    ),
    cli_case("sim-size-0", SIM + " --set size=0", 2, r"size must be an integer >= 8"),
    cli_case("sim-size-negative", SIM + " --set size=-8", 2, r"size must be an integer >= 8"),
    cli_case("sim-size-7", SIM + " --set size=7", 2, r"got 7"),
    cli_case("sim-size-float", SIM + " --set size=24.5", 2, r"got 24.5"),
    cli_case("sim-size-true", SIM + " --set size=true", 2, r"got True"),
    cli_case("sim-size-word", SIM + " --set size=big", 2, r"got 'big'"),
    cli_case(
        "sim-size-100000",
        SIM + " --set size=100000",
        1,
        r"projections of 100000×100000 px needs about .* of memory but 8.0 GiB is available",
    ),
    cli_case(
        "sim-noise-negative", SIM + " --set noise_variance=-1", 2, r"noise_variance must be a number >= 0, got -1"
    ),
    cli_case(
        "sim-noise-1e300",
        SIM + " --set noise_variance=1e300",
        2,
        r"noise_variance 1e\+300 is beyond 1e\+30, where float32 images overflow",
    ),
    cli_case("sim-noise-nan", SIM + " --set noise_variance=NaN", 2, r"noise_variance must be a number >= 0, got nan"),
    cli_case(
        "sim-noise-inf", SIM + " --set noise_variance=Infinity", 2, r"noise_variance must be a number >= 0, got inf"
    ),
    cli_case("sim-noise-word", SIM + " --set noise_variance=loud", 2, r"got 'loud'"),
    cli_case(
        "sim-noise-true", SIM + " --set noise_variance=true", 2, r"noise_variance must be a number >= 0, got True"
    ),
    cli_case(
        "sim-noise-and-snr",
        SIM + " --set noise_variance=1 --set snr_db=0",
        2,
        r"give noise_variance or snr_db, not both",
    ),
    cli_case("sim-snr-huge", SIM + " --set snr_db=1000", 2, r"snr_db must be within \[-100, 100\] dB, got 1000"),
    cli_case("sim-snr-inf", SIM + " --set snr_db=-Infinity", 2, r"snr_db must be a finite number, got -inf"),
    cli_case("sim-snr-word", SIM + " --set snr_db=low", 2, r"snr_db must be a finite number, got 'low'"),
    cli_case("sim-shift-mode", SIM + " --set shift_mode=diagonal", 2, r"shift_mode must be one of"),
    cli_case("sim-shift-negative", SIM + " --set shift_limit=-1", 2, r"shift_limit must be >= 0 pixels, got -1"),
    cli_case(
        "sim-shift-1000",
        SIM + " --set shift_limit=1000",
        2,
        r"shift_limit 1000 px moves the particle out of the 24 px detector; use less than 12",
    ),
    cli_case("sim-shift-half", SIM + " --set shift_limit=12", 2, r"shift_limit 12 px moves the particle out"),
    cli_case(
        "sim-shift-default-size",
        "simulate --out {w}/out.h5 --quiet --set volume={blob} --set n_projections=5 --set shift_limit=1000",
        2,
        r"moves the particle out of the 41 px detector",
    ),
    cli_case("sim-shift-word", SIM + " --set shift_limit=far", 2, r"shift_limit must be >= 0 pixels, got 'far'"),
    cli_case(
        "sim-sampling", SIM + " --set sampling=random", 2, r"sampling must be one of \('uniform_so3', 'uniform_euler'\)"
    ),
    cli_case("sim-coverage-two", SIM + " --set coverage=[1,1]", 2, r"coverage and offset need 3 values each"),
    cli_case("sim-coverage-word", SIM + " --set coverage=abc", 2, r"coverage must be 3 numbers"),
    cli_case("sim-coverage-zero", SIM + " --set coverage=[0,1,2]", 2, r"coverage must be 3 finite values > 0"),
    cli_case("sim-coverage-bool", SIM + " --set coverage=[true,1,1]", 2, r"coverage must be 3 numbers"),
    cli_case("sim-offset-one", SIM + " --set offset=[1]", 2, r"coverage and offset need 3 values each"),
    cli_case("sim-offset-nan", SIM + " --set offset=[NaN,0,0]", 2, r"offset 3 finite values"),
    cli_case(
        "sim-standardize-word", SIM + " --set standardize=yes", 2, r"standardize must be true or false, got 'yes'"
    ),
    cli_case("sim-standardize-1", SIM + " --set standardize=1", 2, r"standardize must be true or false, got 1"),
    cli_case("sim-store-clean-word", SIM + " --set store_clean=no", 2, r"store_clean must be true or false, got 'no'"),
    cli_case("sim-backend", SIM + " --set backend=cuda", 2, r"backend must be one of"),
    cli_case("sim-seed-negative", SIM + " --set seed=-1", 2, r"seed must be a non-negative integer, got -1"),
    cli_case("sim-seed-true", SIM + " --set seed=true", 2, r"seed must be a non-negative integer, got True"),
    cli_case("sim-seed-float", SIM + " --set seed=1.5", 2, r"seed must be a non-negative integer, got 1.5"),
    cli_case("sim-seed-word", SIM + " --set seed=x", 2, r"got 'x'"),
    cli_case("sim-two-problems", SIM + " --set seed=-1 --set size=2", 2, r"size must be .*; seed must be"),
    # ------------------------------------------------------------------ simulate: the map
    cli_case("sim-volume-unknown", SIM + " --set volume=6xyz", 2, r"volume '6xyz' is neither a registered name"),
    cli_case(
        "sim-volume-missing-file",
        SIM + " --set volume={w}/none.mrc",
        2,
        r"is neither a registered name .* nor an existing MRC file",
    ),
    cli_case("sim-volume-text", SIM + " --set volume={text}", 2, r"notes.txt"),
    cli_case("sim-volume-folder", SIM + " --set volume={w}", 2, r"is not a file; give the path of an MRC map"),
    cli_case(
        "sim-volume-2x2x2",
        SIM + " --set volume={tiny_map}",
        2,
        r"is 2×2×2 voxels; simulating needs at least 8 per side",
    ),
    cli_case(
        "sim-volume-zeros", SIM + " --set volume={zero_a}", 2, r"is all zeros, so every projection would be blank"
    ),
    cli_case("sim-volume-empty-file", SIM + " --set volume={empty}", 2, r"empty.mrc"),
    cli_case(
        "sim-volume-number",
        SIM + " --set volume=5",
        2,
        r"volume must be a registered name or the path of an MRC file, got 5",
    ),
    # ------------------------------------------------------------------ simulate: the output
    cli_case(
        "sim-out-suffix",
        "simulate --out {w}/out.txt --quiet --set volume={blob} --set n_projections=5",
        2,
        r"dataset path must end in .h5 or .hdf5",
    ),
    cli_case(
        "sim-out-is-folder",
        "simulate --out {folder_h5} --quiet --set volume={blob} --set n_projections=5",
        2,
        r"<tmp>/folder.h5: is a folder, not a file; give a file name",
    ),
    cli_case(
        "sim-out-parent-file",
        "simulate --out {text}/out.h5 --quiet --set volume={blob} --set n_projections=5",
        2,
        r"<tmp>/notes.txt: is a file, not a folder",
    ),
    cli_case(
        "sim-out-read-only",
        "simulate --out {ro}/out.h5 --quiet --set volume={blob} --set n_projections=5",
        2,
        r"<ro>: read-only file system; choose a writable folder",
        needs="ro",
    ),
    cli_case(
        "sim-out-proc",
        "simulate --out /proc/self/out.h5 --quiet --set volume={blob} --set n_projections=5",
        1,
        r"/proc/self: the dataset needs .* but only 0 B are free there",
    ),
    # ------------------------------------------------------------------ train
    cli_case("train-epochs-0", TRAIN + " --set epochs=0", 2, r"epochs must be a positive integer; got 0"),
    cli_case("train-epochs-true", TRAIN + " --set epochs=true", 2, r"epochs must be a positive integer; got True"),
    cli_case("train-epochs-float", TRAIN + " --set epochs=1.5", 2, r"epochs must be a positive integer; got 1.5"),
    cli_case("train-epochs-word", TRAIN + " --set epochs=ten", 2, r"got 'ten'"),
    cli_case("train-batch-1", TRAIN + " --set batch_size=1", 2, r"batch_size must be an integer >= 2; got 1"),
    cli_case(
        "train-lr-1e6",
        TRAIN + " --set learning_rate=1e6",
        2,
        r"learning_rate 1e\+06 is beyond 1, where RMSprop diverges",
    ),
    cli_case(
        "train-lr-0", TRAIN + " --set learning_rate=0", 2, r"learning_rate must be a positive finite number; got 0"
    ),
    cli_case(
        "train-lr-negative", TRAIN + " --set learning_rate=-0.1", 2, r"learning_rate must be a positive finite number"
    ),
    cli_case(
        "train-lr-nan",
        TRAIN + " --set learning_rate=NaN",
        2,
        r"learning_rate must be a positive finite number; got nan",
    ),
    cli_case("train-lr-word", TRAIN + " --set learning_rate=fast", 2, r"learning_rate must be a real number"),
    cli_case(
        "train-input-size-4",
        TRAIN + " --set input_size=4",
        2,
        r"input_size \(pixels per side\) must be an integer >= 8; got 4",
    ),
    cli_case("train-input-size-true", TRAIN + " --set input_size=true", 2, r"input_size .* got True"),
    cli_case("train-features-0", TRAIN + " --set n_features=0", 2, r"n_features must be a positive integer; got 0"),
    cli_case(
        "train-regime", TRAIN + " --set regime=all", 2, r"regime must be one of \('faithful', 'uniform', 'batch'\)"
    ),
    cli_case("train-loss", TRAIN + " --set loss=hinge", 2, r"loss must be one of \('mae', 'mse'\)"),
    cli_case("train-distance", TRAIN + " --set feature_distance=manhattan", 2, r"feature_distance must be one of"),
    cli_case(
        "train-pair-fraction-0", TRAIN + " --set pair_fraction=0", 2, r"pair_fraction must be a positive finite number"
    ),
    cli_case("train-pair-fraction-2", TRAIN + " --set pair_fraction=2", 2, r"pair_fraction must be in \(0, 1\], got 2"),
    cli_case(
        "train-target-negative",
        TRAIN + " --set target_val_mae=-1",
        2,
        r"target_val_mae must be a positive finite number",
    ),
    cli_case(
        "train-mixed-word", TRAIN + " --set mixed_precision=yes", 2, r"mixed_precision must be true or false, got 'yes'"
    ),
    cli_case("train-seed-true", TRAIN + " --set seed=true", 2, r"seed must be an integer >= 0; got True"),
    cli_case("train-seed-negative", TRAIN + " --set seed=-2", 2, r"seed must be an integer >= 0; got -2"),
    cli_case("train-unknown-key", TRAIN + " --set epoch=3", 2, r"unknown training setting\(s\) \['epoch'\]"),
    cli_case("train-dataset-missing", "train --dataset {w}/none.h5 --out {w}/run", 2, r"no dataset at <tmp>/none.h5"),
    cli_case("train-dataset-text", "train --dataset {text} --out {w}/run", 2, r"no reader for '.txt' files"),
    cli_case(
        "train-dataset-not-hdf5",
        "train --dataset {not_h5} --out {w}/run",
        2,
        r"<tmp>/garbage.h5 is not a readable HDF5 file",
    ),
    cli_case(
        "train-dataset-foreign-h5", "train --dataset {foreign_h5} --out {w}/run", 2, r"is not a cryo_orient dataset"
    ),
    cli_case(
        "train-dataset-bad-config",
        "train --dataset {bad_config_h5} --out {w}/run",
        2,
        r"its 'config' attribute is not valid JSON",
    ),
    cli_case(
        "train-fresh-without-clean",
        "train --dataset {dn} --out {w}/run --fresh-perturbation",
        2,
        r"has no clean projections, which fresh noise and shifts need",
    ),
    cli_case(
        "train-other-run",
        TRAIN.replace("{w}/run", "{other_run}") + " --set input_size=8 --set epochs=1",
        2,
        r"holds a different training run",
    ),
    cli_case(
        "train-corrupt-run-json",
        TRAIN.replace("{w}/run", "{corrupt_run}") + " --set input_size=8 --set epochs=1",
        2,
        r"run.json is not valid JSON",
    ),
    cli_case(
        "train-out-is-file",
        TRAIN.replace("{w}/run", "{text}") + " --set input_size=8 --set epochs=1",
        2,
        r"<tmp>/notes.txt: is a file, not a folder",
    ),
    # ------------------------------------------------------------------ train-general
    cli_case(
        "train-general-no-maps",
        GENERAL,
        2,
        r"nothing to train on; give --maps NAME_OR_MRC ... and/or --pseudo-molecules",
    ),
    cli_case(
        "train-general-missing-map",
        GENERAL + " --maps {w}/nope.mrc",
        2,
        r"volume '.*nope.mrc' is neither a registered name",
    ),
    cli_case("train-general-batch-regime", GENERAL + " --maps {blob} --set regime=batch", 2, r"not \"batch\""),
    cli_case(
        "train-general-fill", GENERAL + " --maps {blob} --simulation fill_min=2", 2, r"need 0 < fill_min <= fill_max"
    ),
    cli_case(
        "train-general-unknown-simulation",
        GENERAL + " --maps {blob} --simulation colour=red",
        2,
        r"unknown on-the-fly simulation setting\(s\) \['colour'\]",
    ),
    cli_case("train-general-steps-0", GENERAL + " --maps {blob} --steps-per-epoch 0", 2, r"expected an integer >= 1"),
    # ------------------------------------------------------------------ embed
    cli_case("embed-model-missing", EMBED + " --model {w}/norun", 2, r"<tmp>/norun is not a training run"),
    cli_case("embed-model-file", EMBED + " --model {text}", 2, r"<tmp>/notes.txt is not a folder"),
    cli_case(
        "embed-model-truncated",
        EMBED + " --model {fake_run}",
        2,
        r"model.keras is not a Keras model file \(truncated or corrupt",
    ),
    cli_case("embed-model-text", EMBED + " --model {text_run}", 2, r"model.keras is not a Keras model file"),
    cli_case("embed-model-corrupt-json", EMBED + " --model {corrupt_run}", 2, r"run.json is not valid JSON"),
    cli_case(
        "embed-model-json-without-identity", EMBED + " --model {keyless_run}", 2, r"run.json lacks the key 'identity'"
    ),
    cli_case("embed-model-no-keras", EMBED + " --model {empty_run}", 2, r"model.keras is missing"),
    cli_case("embed-model-bad-config", EMBED + " --model {bad_config_run}", 2, r"holds an invalid training config"),
    cli_case(
        "embed-model-checked-first",
        "embed --model {fake_run} --dataset {w}/none.h5 --out {w}/e.npz",
        2,
        r"not a Keras model",
    ),
    # ------------------------------------------------------------------ recover
    cli_case(
        "recover-missing",
        RECOVER + " --embeddings {w}/none.npz",
        2,
        r"<tmp>/none.npz does not exist; give an .npz of `cryo-orient embed`",
    ),
    cli_case("recover-folder", RECOVER + " --embeddings {w}", 2, r"is a folder; give an .npz"),
    cli_case("recover-text", RECOVER + " --embeddings {text}", 2, r"notes.txt is not an .npz file \(no zip header\)"),
    cli_case(
        "recover-text-named-npz",
        RECOVER + " --embeddings {text_npz}",
        2,
        r"text.npz is not an .npz file \(no zip header\)",
    ),
    cli_case(
        "recover-truncated",
        RECOVER + " --embeddings {truncated_npz}",
        2,
        r"truncated.npz is (not a readable .npz file|truncated or corrupt)",
    ),
    cli_case("recover-npy", RECOVER + " --embeddings {npy}", 2, r"array.npy is not an .npz file"),
    cli_case(
        "recover-pickled", RECOVER + " --embeddings {pickled_npz}", 2, r"pickled.npz (is truncated or corrupt|lacks)"
    ),
    cli_case(
        "recover-missing-keys",
        RECOVER + " --embeddings {rec}",
        2,
        r"lacks \['features', 'feature_distance'\]: it is not an output of `cryo-orient embed`",
    ),
    cli_case(
        "recover-nan-features",
        RECOVER + " --embeddings {nan_emb}",
        2,
        r"features hold NaN or infinite values in 1 of 20 rows \(first: row 3\)",
    ),
    cli_case(
        "recover-zero-features",
        RECOVER + " --embeddings {zero_emb}",
        2,
        r"2 of 20 feature vectors are all zero \(first: row 0\)",
    ),
    cli_case(
        "recover-1d-features",
        RECOVER + " --embeddings {flat_emb}",
        2,
        r"features must be an \(n, n_f\) array of feature vectors, got shape \(20,\)",
    ),
    cli_case(
        "recover-unknown-distance", RECOVER + " --embeddings {odd_emb}", 2, r"names the feature distance 'manhattan'"
    ),
    cli_case(
        "recover-out-folder",
        "recover --embeddings {emb} --out {w} --quiet --max-steps 2 --restarts 1",
        2,
        r"<tmp>: is a folder, not a file",
    ),
    cli_case(
        "recover-out-parent-file",
        "recover --embeddings {emb} --out {text}/r.npz --quiet --max-steps 2 --restarts 1",
        2,
        r"notes.txt: is a file, not a folder",
    ),
    # ------------------------------------------------------------------ gauge and reconstruct
    cli_case(
        "gauge-orientations-missing",
        GAUGE + " --orientations {w}/none.npz",
        2,
        r"no orientation file at <tmp>/none.npz",
    ),
    cli_case("gauge-orientations-text", GAUGE + " --orientations {text_npz}", 2, r"text.npz is not an .npz file"),
    cli_case(
        "gauge-orientations-embed", GAUGE + " --orientations {emb}", 2, r"is not an output of `cryo-orient recover`"
    ),
    cli_case(
        "gauge-orientations-short",
        GAUGE + " --orientations {short_rec}",
        2,
        r"holds \d+ orientations but the chosen split has \d+ images",
    ),
    cli_case(
        "gauge-orientations-3-columns",
        GAUGE + " --orientations {rec3}",
        2,
        r"holds quaternions of shape \(\d+, 3\), not \(N, 4\)",
    ),
    cli_case("gauge-orientations-nan", GAUGE + " --orientations {nan_rec}", 2, r"holds NaN or infinite quaternions"),
    cli_case(
        "gauge-orientations-other-images",
        GAUGE + " --orientations {other_rec}",
        2,
        r"was recovered for other images than the chosen split's",
    ),
    cli_case(
        "gauge-orientations-other-split",
        GAUGE + " --orientations {rec} --split train",
        2,
        r"was recovered for other images",
    ),
    cli_case("gauge-orientations-bad-star", GAUGE + " --orientations {bad_star}", 2, r"bad.star"),
    cli_case(
        "gauge-dataset-missing",
        "gauge --dataset {w}/none.h5 --orientations {rec} --out {w}/g.star",
        2,
        r"no dataset at",
    ),
    cli_case(
        "gauge-out-folder",
        "gauge --dataset {d} --orientations {rec} --out {folder_star} --candidates 5 --quiet",
        2,
        r"<tmp>/folder.star: is a folder, not a file",
    ),
    cli_case(
        "reconstruct-orientations-missing",
        RECON + " --orientations {w}/none.star",
        2,
        r"no orientation file at <tmp>/none.star",
    ),
    cli_case(
        "reconstruct-orientations-embed",
        RECON + " --orientations {emb}",
        2,
        r"is not an output of `cryo-orient recover`",
    ),
    cli_case(
        "reconstruct-orientations-short",
        RECON + " --orientations {short_rec}",
        2,
        r"holds \d+ orientations but the chosen split has",
    ),
    cli_case(
        "reconstruct-dataset-missing",
        "reconstruct --dataset {w}/none.h5 --orientations truth --out {w}/v.mrc",
        2,
        r"no dataset at",
    ),
    cli_case(
        "reconstruct-dataset-corrupt",
        "reconstruct --dataset {not_h5} --orientations truth --out {w}/v.mrc",
        2,
        r"is not a readable HDF5 file",
    ),
    cli_case(
        "reconstruct-out-folder",
        "reconstruct --dataset {d} --orientations truth --out {w} --iterations 1 --quiet",
        2,
        r"<tmp>: is a folder, not a file",
    ),
    cli_case(
        "reconstruct-out-parent-file",
        "reconstruct --dataset {d} --orientations truth --out {text}/v.mrc --iterations 1 --quiet",
        2,
        r"notes.txt: is a file, not a folder",
    ),
    cli_case(
        "reconstruct-out-read-only",
        "reconstruct --dataset {d} --orientations truth --out {ro}/v.mrc --iterations 1 --quiet",
        2,
        r"read-only file system",
        needs="ro",
    ),
    # ------------------------------------------------------------------ fsc
    cli_case("fsc-zero-maps", "fsc {zero_a} {zero_b}", 2, r"volume_a is all zeros, so its FSC is undefined"),
    cli_case("fsc-zero-second", "fsc {blob} {zero_b24}", 2, r"volume_b is all zeros"),
    cli_case("fsc-missing-a", "fsc {w}/none.mrc {blob}", 2, r"no such map file: <tmp>/none.mrc"),
    cli_case("fsc-missing-b", "fsc {blob} {w}/none.mrc", 2, r"no such map file: <tmp>/none.mrc"),
    cli_case("fsc-text", "fsc {text} {blob}", 2, r"notes.txt"),
    cli_case("fsc-empty", "fsc {empty} {blob}", 2, r"empty.mrc"),
    cli_case("fsc-folder", "fsc {w} {blob}", 2, r"is not a file; give the path of an MRC map"),
    cli_case("fsc-shapes", "fsc {blob} {zero_a}", 2, r"need two 3-D volumes of the same shape"),
    cli_case("fsc-tiny", "fsc {tiny_map} {tiny_map}", 2, r"is 2×2×2 voxels; an FSC needs at least 4 per side"),
    cli_case("fsc-out-folder", "fsc {blob} {blob} --out {w}", 2, r"<tmp>: is a folder, not a file"),
    cli_case("fsc-out-parent-file", "fsc {blob} {blob} --out {text}/c.csv", 2, r"notes.txt: is a file, not a folder"),
    cli_case("fsc-out-read-only", "fsc {blob} {blob} --out {ro}/c.csv", 2, r"read-only file system", needs="ro"),
    # ------------------------------------------------------------------ run, fetch, report
    cli_case(
        "run-unknown-key",
        RUN + " --set recovery_restart=2",
        2,
        r"unknown pipeline config key\(s\) \['recovery_restart'\]",
    ),
    cli_case("run-estimator", RUN + " --set estimator=magic", 2, r"unknown distance estimator 'magic'"),
    cli_case(
        "run-recovery-mode",
        RUN + " --set recovery_mode=fast",
        2,
        r"recovery_mode must be one of \('faithful', 'improved'\)",
    ),
    cli_case(
        "run-recovery-init",
        RUN + " --set recovery_init=random",
        2,
        r"recovery_init must be one of \('uniform_so3', 'uniform_euler'\)",
    ),
    cli_case(
        "run-recovery-init-coverage",
        RUN + " --set recovery_init_coverage=[2,3,2]",
        2,
        r"init_coverage must be 3 widths \(theta3, theta2, theta1\) in units of pi",
    ),
    cli_case("run-seed-true", RUN + " --set seed=true", 2, r"seed must be an integer >= 0; got True"),
    cli_case("run-training-number", RUN + " --set training=5", 2, r"training must be a table of settings, got 5"),
    cli_case(
        "run-options-list", RUN + " --set estimator_options=[1]", 2, r"estimator_options must be a table of settings"
    ),
    cli_case("run-gauge-images-0", RUN + " --set gauge_images=0", 2, r"gauge_images must be a positive integer; got 0"),
    cli_case(
        "run-restarts-true",
        RUN + " --set recovery_restarts=true",
        2,
        r"recovery_restarts must be a positive integer; got True",
    ),
    cli_case(
        "run-iterations-0",
        RUN + " --set reconstruction_iterations=0",
        2,
        r"reconstruction_iterations must be a positive integer; got 0",
    ),
    cli_case("run-backend", RUN + " --set reconstruction_backend=gpu", 2, r"reconstruction_backend must be one of"),
    cli_case("run-fresh-noise-1", RUN + " --set fresh_noise=1", 2, r"fresh_noise must be true or false, got 1"),
    cli_case("run-profile-unknown", RUN + " --profile laptop", 2, r"laptop"),
    cli_case("run-dataset-missing", "run --dataset {w}/none.h5 --out {w}/runout", 2, r"no dataset at <tmp>/none.h5"),
    cli_case("fetch-unknown", "fetch 6xyz", 2, r"6xyz"),
    cli_case("report-unknown-profile", "report --profile laptop", 2, r"laptop"),
    cli_case("check-outputs-unknown-profile", "check-outputs --profile laptop", 2, r"laptop"),
    # ------------------------------------------------------------------ the API: checks
    api_case(
        "api-integer-bool",
        "validation.integer(True, 'epochs')",
        lambda c: validation.integer(True, "epochs"),
        r"epochs must be an integer; got True",
    ),
    api_case(
        "api-integer-str",
        "validation.integer('3', 'n')",
        lambda c: validation.integer("3", "n"),
        r"n must be an integer; got '3'",
    ),
    api_case(
        "api-integer-minimum",
        "validation.integer(-1, 'n', 0)",
        lambda c: validation.integer(-1, "n", 0),
        r"n must be an integer >= 0; got -1",
    ),
    api_case(
        "api-real-str",
        "validation.real('x', 'sigma')",
        lambda c: validation.real("x", "sigma"),
        r"sigma must be a real number",
    ),
    api_case(
        "api-real-nan",
        "validation.real(nan, 'sigma')",
        lambda c: validation.real(float("nan"), "sigma"),
        r"sigma must be a finite number; got nan",
    ),
    api_case("api-real-bool", "validation.real(True, 'sigma')", lambda c: validation.real(True, "sigma"), r"got True"),
    api_case(
        "api-positive-0",
        "validation.positive(0, 'voxel_size')",
        lambda c: validation.positive(0, "voxel_size"),
        r"voxel_size must be a positive finite number; got 0",
    ),
    api_case(
        "api-choice",
        "validation.choice('x', 'mode', ('a', 'b'))",
        lambda c: validation.choice("x", "mode", ("a", "b")),
        r"mode must be one of \('a', 'b'\), got 'x'",
    ),
    api_case(
        "api-rng-str",
        "validation.as_rng('seed')",
        lambda c: validation.as_rng("seed"),
        r"rng must be a numpy.random.Generator, an integer seed, or None",
    ),
    api_case(
        "api-stack-2d",
        "validation.image_stack(np.zeros((4, 4)))",
        lambda c: validation.image_stack(np.zeros((4, 4))),
        r"use images\[None\] for a single image",
    ),
    api_case(
        "api-stack-empty",
        "validation.image_stack(np.zeros((0, 4, 4)))",
        lambda c: validation.image_stack(np.zeros((0, 4, 4))),
        r"images is empty",
    ),
    api_case(
        "api-stack-nan",
        "validation.image_stack(stack with a NaN)",
        lambda c: validation.image_stack(np.full((2, 4, 4), np.nan)),
        r"images hold 32 NaN or infinite values",
    ),
    api_case(
        "api-stack-square",
        "validation.image_stack(np.zeros((2, 4, 5)), square=True)",
        lambda c: validation.image_stack(np.zeros((2, 4, 5)), square=True),
        r"must be square images, got 4 x 5",
    ),
    api_case(
        "api-stack-complex",
        "validation.image_stack(complex zeros)",
        lambda c: validation.image_stack(np.zeros((2, 4, 4), complex)),
        r"must hold real numbers, got dtype complex128",
    ),
    api_case(
        "api-pairs-shape",
        "validation.index_pairs([0, 1], [0], 5)",
        lambda c: validation.index_pairs([0, 1], [0], 5),
        r"must have the same shape",
    ),
    api_case(
        "api-pairs-range",
        "validation.index_pairs([0, 7], [1, 2], 5)",
        lambda c: validation.index_pairs([0, 7], [1, 2], 5),
        r"i has indices outside \[0, 5\)",
    ),
    api_case(
        "api-pairs-float",
        "validation.index_pairs([0.5], [1], 5)",
        lambda c: validation.index_pairs([0.5], [1], 5),
        r"i must be an array of integer indices",
    ),
    api_case(
        "api-memory-limit-env",
        "CRYO_ORIENT_MEMORY_LIMIT=lots; validation.memory_limit()",
        lambda c: _with_env(validation.MEMORY_LIMIT_ENV, "lots", validation.memory_limit),
        r"must be a number of bytes, optionally with a unit",
    ),
    # ------------------------------------------------------------------ the API: simulation
    api_case(
        "api-sim-dict-unknown",
        "SimulationConfig.from_dict({'volume': 'x', 'n_projections': 2, 'nois': 1})",
        lambda c: simulate.SimulationConfig.from_dict({"volume": "x", "n_projections": 2, "nois": 1}),
        r"unknown simulation config key\(s\) \['nois'\]",
    ),
    api_case(
        "api-sim-from-list",
        "SimulationConfig.from_dict([1, 2])",
        lambda c: simulate.SimulationConfig.from_dict([1, 2]),
        r"SimulationConfig needs a table of settings, got list",
    ),
    api_case(
        "api-sim-missing-volume",
        "SimulationConfig.from_dict({'n_projections': 2})",
        lambda c: simulate.SimulationConfig.from_dict({"n_projections": 2}),
        r"SimulationConfig needs the setting\(s\) \['volume'\]",
    ),
    api_case(
        "api-sim-seed-bool",
        "SimulationConfig(volume='5j0n', n_projections=3, seed=True)",
        lambda c: simulate.SimulationConfig(volume="5j0n", n_projections=3, seed=True),
        r"seed must be a non-negative integer, got True",
    ),
    api_case(
        "api-sim-n-numpy-float",
        "SimulationConfig(volume='5j0n', n_projections=np.float64(3))",
        lambda c: simulate.SimulationConfig(volume="5j0n", n_projections=np.float64(3)),
        r"n_projections must be a positive integer",
    ),
    api_case(
        "api-sim-chunk-0",
        "simulate_dataset(config, 'out.h5', chunk_size=0)",
        lambda c: simulate.simulate_dataset(c.config, c.w / "out.h5", chunk_size=0),
        r"chunk_size must be an integer >= 1, got 0",
    ),
    api_case(
        "api-sim-chunk-bool",
        "simulate_dataset(config, 'out.h5', chunk_size=True)",
        lambda c: simulate.simulate_dataset(c.config, c.w / "out.h5", chunk_size=True),
        r"chunk_size must be an integer >= 1, got True",
    ),
    api_case(
        "api-sim-suffix",
        "simulate_dataset(config, 'out.hdf')",
        lambda c: simulate.simulate_dataset(c.config, c.w / "out.hdf"),
        r"dataset path must end in .h5 or .hdf5",
    ),
    api_case(
        "api-sim-memory",
        "simulate_dataset(config with n_projections=90_000_000)",
        lambda c: simulate.simulate_dataset(
            simulate.SimulationConfig(volume=str(c.blob), n_projections=90_000_000, size=24), c.w / "out.h5"
        ),
        r"needs about 16.\d GiB of memory but 8.0 GiB is available",
        code=1,
    ),
    api_case(
        "api-sim-shift",
        "simulate_dataset(config with shift_limit=30, size=None)",
        lambda c: simulate.simulate_dataset(
            simulate.SimulationConfig(volume=str(c.blob), n_projections=3, shift_limit=30.0), c.w / "out.h5"
        ),
        r"shift_limit 30 px moves the particle out of the 41 px detector",
    ),
    api_case(
        "api-noise-variance-snr", "noise_variance_for_snr(1.0)", lambda c: simulate.noise_variance_for_snr(1.0), r"snr"
    ),
    # ------------------------------------------------------------------ the API: datasets
    api_case(
        "api-read-missing",
        "read_dataset('none.h5')",
        lambda c: read_dataset(c.w / "none.h5"),
        r"no dataset at <tmp>/none.h5",
        code=2,
    ),
    api_case(
        "api-read-text", "read_dataset('notes.txt')", lambda c: read_dataset(c.text), r"no reader for '.txt' files"
    ),
    api_case(
        "api-read-garbage",
        "read_dataset('garbage.h5')",
        lambda c: read_dataset(c.not_h5),
        r"is not a readable HDF5 file",
    ),
    api_case(
        "api-read-foreign",
        "read_dataset('foreign.h5')",
        lambda c: read_dataset(c.foreign_h5),
        r"is not a cryo_orient dataset",
    ),
    api_case(
        "api-read-bad-config",
        "read_dataset(a dataset whose config attribute is '{oops')",
        lambda c: read_dataset(c.bad_config_h5),
        r"its 'config' attribute is not valid JSON",
    ),
    api_case(
        "api-split-unknown",
        "read_dataset(d).split('everything')",
        lambda c: read_dataset(c.d).split("everything"),
        r"everything",
    ),
    # ------------------------------------------------------------------ the API: Siamese estimator
    api_case(
        "api-train-epochs-bool",
        "TrainingConfig(epochs=True)",
        lambda c: siamese.TrainingConfig(epochs=True),
        r"epochs must be a positive integer; got True",
    ),
    api_case(
        "api-train-seed-bool",
        "TrainingConfig(seed=True)",
        lambda c: siamese.TrainingConfig(seed=True),
        r"seed must be an integer >= 0; got True",
    ),
    api_case(
        "api-train-lr-1e6",
        "TrainingConfig(learning_rate=1e6)",
        lambda c: siamese.TrainingConfig(learning_rate=1e6),
        r"learning_rate 1e\+06 is beyond 1",
    ),
    api_case(
        "api-train-lr-str",
        "TrainingConfig(learning_rate='1e-3')",
        lambda c: siamese.TrainingConfig(learning_rate="1e-3"),
        r"learning_rate must be a real number",
    ),
    api_case(
        "api-train-batch-float",
        "TrainingConfig(batch_size=32.0)",
        lambda c: siamese.TrainingConfig(batch_size=32.0),
        r"batch_size must be an integer >= 2; got 32.0",
    ),
    api_case(
        "api-train-from-list",
        "TrainingConfig.from_dict(['epochs', 3])",
        lambda c: siamese.TrainingConfig.from_dict(["epochs", 3]),
        r"TrainingConfig needs a table of settings, got list",
    ),
    api_case(
        "api-train-target-0",
        "TrainingConfig(target_val_mae=0)",
        lambda c: siamese.TrainingConfig(target_val_mae=0),
        r"target_val_mae must be a positive finite number; got 0",
    ),
    api_case(
        "api-encoder-size",
        "build_encoder(input_size=4)",
        lambda c: siamese.build_encoder(4),
        r"input_size \(pixels per side\) must be an integer >= 8; got 4",
    ),
    api_case(
        "api-encoder-features",
        "build_encoder(n_features=0)",
        lambda c: siamese.build_encoder(16, 0),
        r"n_features must be a positive integer; got 0",
    ),
    api_case(
        "api-model-distance",
        "build_model(feature_distance='l1')",
        lambda c: siamese.build_model(16, 4, "l1"),
        r"feature_distance must be one of",
    ),
    api_case(
        "api-feature-distances-shapes",
        "feature_distances(np.ones((3, 4)), np.ones((2, 4)))",
        lambda c: siamese.feature_distances(np.ones((3, 4)), np.ones((2, 4))),
        r"two \(m, n_f\) arrays of the same shape",
    ),
    api_case(
        "api-feature-distances-kind",
        "feature_distances(a, b, kind='l2')",
        lambda c: siamese.feature_distances(np.ones((3, 4)), np.ones((3, 4)), "l2"),
        r"kind must be one of",
    ),
    api_case(
        "api-topology-shape",
        "topology.check_topology(np.ones((10, 3)))",
        lambda c: topology.check_topology(np.ones((10, 3))),
        r"quaternions",
    ),
    api_case(
        "api-recover-init-coverage",
        "recovery.recover(d, 4, init='uniform_euler', init_coverage=(2, 1))",
        lambda c: recovery.recover(np.zeros((4, 4)), 4, init="uniform_euler", init_coverage=(2, 1)),
        r"init_coverage must be 3 widths",
    ),
    api_case(
        "api-distance-function-nan",
        "distance_function(features with a NaN)",
        lambda c: siamese.distance_function(_nan_features()),
        r"features hold NaN or infinite values in 1 of 10 rows \(first: row 4\)",
    ),
    api_case(
        "api-distance-function-zero",
        "distance_function(features with a zero row)",
        lambda c: siamese.distance_function(_zero_features()),
        r"1 of 10 feature vectors are all zero \(first: row 7\)",
    ),
    api_case(
        "api-distance-function-1d",
        "distance_function(np.ones(5))",
        lambda c: siamese.distance_function(np.ones(5)),
        r"got shape \(5,\)",
    ),
    api_case(
        "api-distance-function-str",
        "distance_function('features.npz')",
        lambda c: siamese.distance_function("features.npz"),
        r"features must be an \(n, n_f\) array of feature vectors",
    ),
    api_case(
        "api-distance-function-index",
        "distance_function(f)([0], [12])",
        lambda c: siamese.distance_function(np.ones((10, 3)))([0], [12]),
        r"j has indices outside \[0, 10\)",
    ),
    api_case(
        "api-distance-matrix-zero",
        "distance_matrix(features with a zero row)",
        lambda c: siamese.distance_matrix(_zero_features()),
        r"feature vectors are all zero",
    ),
    api_case(
        "api-distance-matrix-block",
        "distance_matrix(f, block=0)",
        lambda c: siamese.distance_matrix(np.ones((10, 3)), block=0),
        r"block must be a positive integer; got 0",
    ),
    api_case(
        "api-distance-matrix-memory",
        "distance_matrix(np.ones((60000, 1)))",
        lambda c: siamese.distance_matrix(np.ones((60000, 1))),
        r"the 60,000 × 60,000 distance matrix needs about 13.\d GiB of memory but 8.0 GiB",
        code=1,
    ),
    api_case(
        "api-resize-shape",
        "resize_images(np.zeros((2, 4, 5)), 2)",
        lambda c: siamese.resize_images(np.zeros((2, 4, 5)), 2),
        r"images must be an \(n, s, s\) stack of square images",
    ),
    api_case(
        "api-resize-size",
        "resize_images(np.zeros((2, 4, 4)), 0)",
        lambda c: siamese.resize_images(np.zeros((2, 4, 4)), 0),
        r"size must be a positive integer, got 0",
    ),
    api_case("api-sample-pairs", "sample_pairs(1, 10)", lambda c: siamese.sample_pairs(1, 10), r"need n ≥ 2 images"),
    api_case(
        "api-load-run-missing",
        "load_run('norun')",
        lambda c: siamese.load_run(c.w / "norun"),
        r"<tmp>/norun is not a training run",
    ),
    api_case(
        "api-load-run-truncated",
        "load_run(a run whose model.keras is cut in half)",
        lambda c: siamese.load_run(c.fake_run),
        r"model.keras is not a Keras model file \(truncated or corrupt",
    ),
    api_case(
        "api-load-run-corrupt-json",
        "load_run(a run whose run.json is cut)",
        lambda c: siamese.load_run(c.corrupt_run),
        r"run.json is not valid JSON",
    ),
    api_case(
        "api-load-run-no-identity",
        "load_run(a run.json without 'identity')",
        lambda c: siamese.load_run(c.keyless_run),
        r"lacks the key 'identity'",
    ),
    api_case(
        "api-estimator-unfitted",
        "SiameseEstimator().embed(dataset)",
        lambda c: siamese.SiameseEstimator().embed(None),
        r"not fitted yet",
    ),
    api_case(
        "api-estimator-both-dirs",
        "SiameseEstimator().fit(d, cache_dir=a, out_dir=b)",
        lambda c: siamese.SiameseEstimator().fit(None, cache_dir="a", out_dir="b"),
        r"give exactly one of cache_dir",
    ),
    api_case(
        "api-train-quaternions-43",
        "train(48 images, 43 quaternions, ...)",
        lambda c: siamese.train(
            np.zeros((48, 8, 8)), np.ones((43, 4)), np.zeros((4, 8, 8)), np.ones((4, 4)), {"input_size": 8}
        ),
        r"training quaternions must have shape \(48, 4\), got \(43, 4\)",
    ),
    api_case(
        "api-train-one-image",
        "train(1 image, ...)",
        lambda c: siamese.train(
            np.zeros((1, 8, 8)), np.ones((1, 4)), np.zeros((4, 8, 8)), np.ones((4, 4)), {"input_size": 8}
        ),
        r"training split needs at least 2 projections",
    ),
    api_case(
        "api-train-nan-images",
        "train(images with a NaN, ...)",
        lambda c: siamese.train(
            np.full((4, 8, 8), np.nan), np.ones((4, 4)), np.zeros((4, 8, 8)), np.ones((4, 4)), {"input_size": 8}
        ),
        r"training images contain NaN or infinite values",
    ),
    api_case(
        "api-train-perturbation-type",
        "train(..., perturbation='noise')",
        lambda c: siamese.train(
            np.zeros((4, 8, 8)),
            np.ones((4, 4)),
            np.zeros((4, 8, 8)),
            np.ones((4, 4)),
            {"input_size": 8},
            perturbation="noise",
        ),
        r"perturbation must be a Perturbation or None",
    ),
    # ------------------------------------------------------------------ the API: tomography
    api_case(
        "api-fsc-zeros",
        "fsc(np.zeros((8,)*3), np.zeros((8,)*3), 1.0)",
        lambda c: fsc.fsc(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)), 1.0),
        r"volume_a is all zeros, so its FSC is undefined",
    ),
    api_case(
        "api-fsc-voxel-0",
        "fsc(a, b, 0)",
        lambda c: fsc.fsc(np.ones((8, 8, 8)), np.ones((8, 8, 8)), 0),
        r"voxel_size \(Å per voxel\) must be a positive finite number; got 0",
    ),
    api_case(
        "api-fsc-voxel-bool",
        "fsc(a, b, True)",
        lambda c: fsc.fsc(np.ones((8, 8, 8)), np.ones((8, 8, 8)), True),
        r"got True",
    ),
    api_case(
        "api-fsc-shapes",
        "fsc(8³ map, 9³ map, 1)",
        lambda c: fsc.fsc(np.ones((8, 8, 8)), np.ones((9, 9, 9)), 1.0),
        r"need two 3-D volumes of the same shape",
    ),
    api_case(
        "api-fsc-nan",
        "fsc(map with a NaN, b, 1)",
        lambda c: fsc.fsc(np.full((8, 8, 8), np.nan), np.ones((8, 8, 8)), 1.0),
        r"volume_a contains NaN or infinite values",
    ),
    api_case(
        "api-fsc-2d",
        "fsc(image, image, 1)",
        lambda c: fsc.fsc(np.ones((8, 8)), np.ones((8, 8)), 1.0),
        r"need two 3-D volumes",
    ),
    api_case(
        "api-fsc-mask-shape",
        "fsc(a, b, 1, mask=np.ones((4,)*3))",
        lambda c: fsc.fsc(np.ones((8, 8, 8)), np.ones((8, 8, 8)), 1.0, mask=np.ones((4, 4, 4))),
        r"mask must have the volumes' shape",
    ),
    api_case(
        "api-mask-radius",
        "soft_sphere_mask((8,)*3, radius=0)",
        lambda c: fsc.soft_sphere_mask((8, 8, 8), radius=0),
        r"radius must be > 0",
    ),
    api_case(
        "api-reconstruct-iterations-0",
        "reconstruct(p, q, shape, iterations=0)",
        lambda c: reconstruct.reconstruct(np.ones((3, 8, 8)), _q(3), (8, 8, 8), iterations=0),
        r"iterations=0 without x0 would return the all-zero start",
    ),
    api_case(
        "api-reconstruct-iterations-bool",
        "reconstruct(p, q, shape, iterations=True)",
        lambda c: reconstruct.reconstruct(np.ones((3, 8, 8)), _q(3), (8, 8, 8), iterations=True),
        r"iterations must be an integer >= 0; got True",
    ),
    api_case(
        "api-reconstruct-nan",
        "reconstruct(images with NaN, q, shape)",
        lambda c: reconstruct.reconstruct(np.full((3, 8, 8), np.nan), _q(3), (8, 8, 8)),
        r"projections contain NaN or infinite values",
    ),
    api_case(
        "api-reconstruct-zero-q",
        "reconstruct(p, zero quaternions, shape)",
        lambda c: reconstruct.reconstruct(np.ones((3, 8, 8)), np.zeros((3, 4)), (8, 8, 8)),
        r"quaternions must be finite and non-zero",
    ),
    api_case(
        "api-reconstruct-43-of-48",
        "reconstruct(48 images, 43 quaternions, shape)",
        lambda c: reconstruct.reconstruct(np.ones((48, 8, 8)), _q(43), (8, 8, 8)),
        r"got 48 projections but 43 quaternions",
    ),
    api_case(
        "api-reconstruct-shape-2d",
        "reconstruct(p, q, (8, 8))",
        lambda c: reconstruct.reconstruct(np.ones((3, 8, 8)), _q(3), (8, 8)),
        r"shape must be 3 positive integers",
    ),
    api_case(
        "api-reconstruct-memory",
        "reconstruct(p, q, (3000, 3000, 3000))",
        lambda c: reconstruct.reconstruct(np.ones((3, 8, 8)), _q(3), (3000, 3000, 3000)),
        r"reconstructing a 3000×3000×3000 map from 3 images needs about .* of memory but 8.0 GiB",
        code=1,
    ),
    api_case(
        "api-write-volume-2d",
        "data.write_volume('v.mrc', np.zeros((4, 4)), 1.0)",
        lambda c: data.write_volume(c.w / "v.mrc", np.zeros((4, 4)), 1.0),
        r"3-D",
    ),
    api_case(
        "api-write-volume-voxel-0",
        "data.write_volume('v.mrc', map, 0.0)",
        lambda c: data.write_volume(c.w / "v.mrc", np.zeros((2, 2, 2)), 0.0),
        r"voxel",
    ),
    api_case(
        "api-load-volume-missing",
        "data.load_volume('none.mrc')",
        lambda c: data.load_volume(c.w / "none.mrc"),
        r"no such map file: <tmp>/none.mrc",
    ),
    api_case("api-load-volume-text", "data.load_volume('notes.txt')", lambda c: data.load_volume(c.text), r"notes.txt"),
    # ------------------------------------------------------------------ the API: geometry, pipeline, registry
    api_case(
        "api-rotations-shape",
        "rotations.distance(np.ones((3, 3)), np.ones((3, 3)))",
        lambda c: rotations.distance(np.ones((3, 3)), np.ones((3, 3))),
        r"4",
    ),
    api_case("api-uniform-so3-n", "rotations.uniform_so3(-1)", lambda c: rotations.uniform_so3(-1), r"-1"),
    api_case(
        "api-pipeline-unknown",
        "PipelineConfig.from_dict({'estimatr': 'exact'})",
        lambda c: pipeline.PipelineConfig.from_dict({"estimatr": "exact"}),
        r"unknown pipeline config key\(s\) \['estimatr'\]",
    ),
    api_case(
        "api-pipeline-seed-bool",
        "PipelineConfig(seed=True)",
        lambda c: pipeline.PipelineConfig(seed=True),
        r"seed must be an integer >= 0; got True",
    ),
    api_case(
        "api-pipeline-training-list",
        "PipelineConfig(training=[])",
        lambda c: pipeline.PipelineConfig(training=[]),
        r"training must be a table of settings",
    ),
    api_case(
        "api-pipeline-estimator",
        "PipelineConfig.from_dict({'estimator': 'magic'})",
        lambda c: pipeline.PipelineConfig.from_dict({"estimator": "magic"}),
        r"unknown distance estimator 'magic'",
    ),
    api_case(
        "api-registry-file-url",
        "DataFile('x', 'x.mrc', None, ('file:///etc/passwd',), 'x')",
        lambda c: DataFile("x", "x.mrc", None, ("file:///etc/passwd",), "x"),
        r"URL 'file:///etc/passwd' has the scheme 'file'; only https/http downloads are allowed",
    ),
    api_case(
        "api-registry-ftp-url",
        "DataFile('x', 'x.mrc', None, ('ftp://host/x.mrc',), 'x')",
        lambda c: DataFile("x", "x.mrc", None, ("ftp://host/x.mrc",), "x"),
        r"has the scheme 'ftp'",
    ),
    api_case(
        "api-registry-data-url",
        "DataFile('x', 'x.mrc', None, ('data:,hello',), 'x')",
        lambda c: DataFile("x", "x.mrc", None, ("data:,hello",), "x"),
        r"has the scheme 'data'",
    ),
    api_case(
        "api-registry-relative-url",
        "DataFile('x', 'x.mrc', None, ('x.mrc',), 'x')",
        lambda c: DataFile("x", "x.mrc", None, ("x.mrc",), "x"),
        r"has the scheme '\(none\)'",
    ),
    api_case(
        "api-registry-single-url",
        "DataFile('x', 'x.mrc', None, 'https://e.org/x.mrc', 'x')",
        lambda c: DataFile("x", "x.mrc", None, "https://e.org/x.mrc", "x"),
        r"urls must be a sequence of URLs",
    ),
    api_case(
        "api-registry-sha",
        "DataFile('x', 'x.mrc', 'abc', (), 'x')",
        lambda c: DataFile("x", "x.mrc", "abc", (), "x"),
        r"sha256 must be 64 hexadecimal digits",
    ),
    api_case(
        "api-registry-filename",
        "DataFile('x', '../x.mrc', None, (), 'x')",
        lambda c: DataFile("x", "../x.mrc", None, (), "x"),
        r"filename must be a bare file name",
    ),
    api_case("api-fetch-unknown", "data.fetch('6xyz')", lambda c: data.fetch("6xyz"), r"6xyz"),
    # ------------------------------------------------------------------ particle stacks (cryo-orient orient)
    cli_case("orient-no-image-name", ORIENT.format(star="{star_no_names}"), 2, r"no rlnImageName column"),
    cli_case(
        "orient-missing-stack",
        ORIENT.format(star="{star_missing_stack}"),
        2,
        r"row 1 names the stack .*none\.mrcs, which does not exist",
    ),
    cli_case(
        "orient-index-beyond-stack",
        ORIENT.format(star="{star_beyond}"),
        2,
        r"row 20 asks for image 21 of stack\.mrcs, which holds 20",
    ),
    cli_case("orient-truncated-stack", ORIENT.format(star="{star_truncated}"), 2, r"shorter than its header says"),
    cli_case("orient-mixed-boxes", ORIENT.format(star="{star_mixed}"), 2, r"images of different sizes"),
    cli_case("orient-no-pixel-size", ORIENT.format(star="{star_no_pixel}"), 2, r"gives no pixel size .*--angpix"),
    cli_case("orient-angpix-0", ORIENT.format(star="{star_no_pixel}") + " --angpix 0", 2, r"angpix"),
    cli_case(
        "orient-defocus-not-a-number", ORIENT.format(star="{star_bad_defocus}"), 2, r"rlnDefocusU.* row 3 \('abc'\)"
    ),
    cli_case("orient-defocus-missing", ORIENT.format(star="{star_blank_defocus}"), 2, r"rlnDefocusU"),
    cli_case(
        "orient-no-voltage", ORIENT.format(star="{star_no_voltage}"), 2, r"defocus values but no \['rlnVoltage'\]"
    ),
    cli_case(
        "orient-bad-image-name", ORIENT.format(star="{star_bad_name}"), 2, r"row 2 has rlnImageName 'stack\.mrcs'"
    ),
    cli_case(
        "orient-not-star", ORIENT.format(star="{bad_star}"), 2, r"no data_particles table|not a readable STAR file"
    ),
    cli_case(
        "orient-reference-not-cubic",
        ORIENT.format(star="{star_good}").replace("{blob}", "{flat_map}"),
        2,
        r"give a cubic map",
    ),
    cli_case(
        "orient-reference-no-voxel",
        ORIENT.format(star="{star_good}").replace("{blob}", "{bare_map}"),
        2,
        r"no voxel size .*--reference-angpix",
    ),
    cli_case(
        "orient-reference-missing", ORIENT.format(star="{star_good}").replace("{blob}", "{w}/none.mrc"), 2, r"none\.mrc"
    ),
    cli_case(
        "orient-unknown-setting", ORIENT.format(star="{star_good}") + " --set epoch=3", 2, r"unknown orient setting"
    ),
    cli_case(
        "orient-bad-correction",
        ORIENT.format(star="{star_good}") + " --ctf-correction flip",
        2,
        r"invalid choice: 'flip'",
    ),
    cli_case(
        "orient-n-train-0", ORIENT.format(star="{star_good}") + " --n-train 0", 2, r"n_train must be a positive integer"
    ),
    cli_case(
        "orient-refine-set-alone",
        ORIENT.format(star="{star_good}") + " --refine-set max_iterations=2",
        2,
        r"--refine-set needs --refine",
    ),
    cli_case(
        "orient-refine-more-folds-than-images",
        ORIENT.format(star="{star_good}") + " --refine --refine-set search_folds=1000",
        2,
        r"search_folds 1000 needs at least 2000 images in each half set .*; use fewer folds",
    ),
    cli_case(
        "orient-refine-unknown-setting",
        ORIENT.format(star="{star_good}") + " --refine --refine-set iterations=2",
        2,
        r"unknown refine setting",
    ),
    # ------------------------------------------------------------------ map-free (orient --estimator)
    cli_case(
        "orient-neither-reference-nor-estimator",
        "orient {star_good} --out {w}/orient --quiet",
        2,
        r"give either --reference MAP\.mrc .* or --estimator DIR",
    ),
    cli_case(
        "orient-reference-and-estimator",
        ORIENT.format(star="{star_good}") + " --estimator {w}/run",
        2,
        r"give either --reference",
    ),
    cli_case(
        "orient-estimator-missing",
        "orient {star_good} --estimator {w}/none --out {w}/orient --quiet",
        2,
        r"none is not a training run .*train-general|none is not a training run",
    ),
    cli_case(
        "orient-estimator-with-training-options",
        "orient {star_good} --estimator {w}/none --epochs 5 --out {w}/orient --quiet",
        2,
        r"--epochs: no use with --estimator",
    ),
    # ------------------------------------------------------------------ refinement (cryo-orient refine)
    cli_case("refine-no-angles", REFINE.format(star="{star_good}"), 2, r"no rlnAngleRot, .*cryo-orient orient"),
    cli_case(
        "refine-reference-not-cubic",
        REFINE.format(star="{star_angles}").replace("{blob}", "{flat_map}"),
        2,
        r"give a cubic map",
    ),
    cli_case(
        "refine-unknown-setting",
        REFINE.format(star="{star_angles}") + " --set iterations=3",
        2,
        r"unknown refine setting",
    ),
    cli_case(
        "refine-bad-lowpass", REFINE.format(star="{star_angles}") + " --set lowpass=gauss", 2, r"lowpass must be one of"
    ),
    cli_case(
        "refine-lowpass-above-nyquist",
        REFINE.format(star="{star_angles}") + " --set lowpass_max=2",
        2,
        r"lowpass_max must be a fraction of Nyquist",
    ),
    cli_case(
        "refine-more-folds-than-images",
        REFINE.format(star="{star_angles}") + " --set search_folds=1000",
        2,
        r"search_folds 1000 needs at least 2000 images in each half set .*; use fewer folds",
    ),
    cli_case("refine-angpix-0", REFINE.format(star="{star_angles}") + " --angpix 0", 2, r"--angpix: expected a"),
    cli_case("refine-no-reference", "refine {star_angles} --out {w}/refine", 2, r"required: --reference"),
    # ------------------------------------------------------------------ the API: atomic writes
    api_case(
        "api-save-text-folder",
        "artifacts.save_text('x', <a folder>)",
        lambda c: artifacts.save_text("x", c.w),
        r"is a folder, not a file",
        code=2,
    ),
    api_case(
        "api-save-text-parent-file",
        "artifacts.save_text('x', 'notes.txt/x')",
        lambda c: artifacts.save_text("x", c.text / "x"),
        r"is a file, not a folder",
        code=2,
    ),
]


# --------------------------------------------------------------------------- helpers of the cases


def _particle_stacks(c, w, blob):
    """A RELION 3.1 STAR file of 20 particles (24 px, with CTF) and broken copies of it."""
    folder = w / "stars"
    folder.mkdir()
    q = rotations.uniform_so3(20, rng=np.random.default_rng(3))
    relion.write_particle_stack(folder / "stack.mrcs", projection.project(blob, q, 24), 2.0)
    relion.write_particle_stack(folder / "small.mrcs", np.zeros((20, 16, 16)), 2.0)
    truncated = folder / "truncated.mrcs"
    truncated.write_bytes((folder / "stack.mrcs").read_bytes()[:-500])
    good = (
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnVoltage\n_rlnSphericalAberration\n_rlnAmplitudeContrast\n"
        "_rlnImagePixelSize\n_rlnImageSize\n1 300 2.7 0.1 2.0 24\n\ndata_particles\nloop_\n_rlnImageName\n"
        "_rlnDefocusU\n_rlnOpticsGroup\n" + "".join(f"{i + 1:06d}@stack.mrcs {10000 + 500 * i} 1\n" for i in range(20))
    )

    def star(name, text):
        path = folder / f"{name}.star"
        path.write_text(text)
        return path

    c.star_good = star("good", good)
    c.star_no_names = star("no_names", good.replace("_rlnImageName", "_rlnMicrographName"))
    c.star_missing_stack = star("missing_stack", good.replace("@stack.mrcs", "@none.mrcs"))
    c.star_beyond = star("beyond", good.replace("000020@stack.mrcs", "000021@stack.mrcs"))
    c.star_truncated = star("truncated", good.replace("@stack.mrcs", "@truncated.mrcs"))
    c.star_mixed = star("mixed", good.replace("000020@stack.mrcs", "000020@small.mrcs"))
    c.star_no_pixel = star("no_pixel", good.replace("_rlnImagePixelSize", "_rlnSomething"))
    c.star_bad_defocus = star("bad_defocus", good.replace("@stack.mrcs 11000 ", "@stack.mrcs abc "))
    c.star_blank_defocus = star("blank_defocus", good.replace("@stack.mrcs 11000 ", "@stack.mrcs nan "))
    c.star_no_voltage = star("no_voltage", good.replace("_rlnVoltage", "_rlnVoltageX"))
    c.star_bad_name = star("bad_name", good.replace("000002@stack.mrcs", "stack.mrcs"))
    with_angles = good.replace(
        "_rlnDefocusU\n_rlnOpticsGroup\n", "_rlnDefocusU\n_rlnOpticsGroup\n_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n"
    )
    with_angles = re.sub(r"(@stack\.mrcs \d+ 1)\n", r"\1 10 20 30\n", with_angles)
    c.star_angles = star("angles", with_angles)
    c.flat_map = data.write_volume(w / "flat.mrc", np.ones((24, 24, 20), np.float32), 2.0)
    c.bare_map = w / "bare.mrc"
    with mrcfile.new(c.bare_map) as m:
        m.set_data(np.ones((24, 24, 24), np.float32))


def _with_env(name, value, call):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        return call()
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def _q(n):
    return rotations.uniform_so3(n, rng=np.random.default_rng(0))


def _nan_features():
    f = np.ones((10, 3))
    f[4, 1] = np.nan
    return f


def _zero_features():
    f = np.ones((10, 3))
    f[7] = 0
    return f


# --------------------------------------------------------------------------- fixtures


def _npz(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """The files the cases use, in one folder: good ones (a map, two datasets, embeddings,
    recovered orientations) and bad ones (truncated, foreign, corrupt)."""
    w = tmp_path_factory.mktemp("bad")
    c = SimpleNamespace(w=w)
    rng = np.random.default_rng(0)
    g = np.mgrid[:24, :24, :24].astype(float) - 12
    blob = sum(np.exp(-((g - x[:, None, None, None]) ** 2).sum(0) / 8) for x in rng.uniform(-5, 5, (4, 3)))
    c.blob = data.write_volume(w / "blob.mrc", blob.astype(np.float32), 2.0)
    c.zero_a = data.write_volume(w / "zero_a.mrc", np.zeros((12, 12, 12), np.float32), 1.0)
    c.zero_b = data.write_volume(w / "zero_b.mrc", np.zeros((12, 12, 12), np.float32), 1.0)
    c.zero_b24 = data.write_volume(w / "zero_b24.mrc", np.zeros((24, 24, 24), np.float32), 2.0)
    c.tiny_map = data.write_volume(w / "tiny.mrc", np.ones((2, 2, 2), np.float32), 1.0)
    c.empty = w / "empty.mrc"
    c.empty.write_bytes(b"")
    c.text = w / "notes.txt"
    c.text.write_text("these are notes, not data\n")
    c.text_npz = w / "text.npz"
    c.text_npz.write_text("features: 1 2 3\n")
    c.binary = w / "binary.toml"
    c.binary.write_bytes(bytes(range(256)))
    c.bad_toml = w / "bad.toml"
    c.bad_toml.write_text("n_projections = = 3\n")
    c.bad_json = w / "bad.json"
    c.bad_json.write_text('{"n_projections": 3,}\n')
    c.list_json = w / "list.json"
    c.list_json.write_text("[1, 2, 3]\n")
    c.string_json = w / "string.json"
    c.string_json.write_text('"n_projections=3"\n')
    c.json_as_toml = w / "config.toml"
    c.json_as_toml.write_text('{"n_projections": 3}\n')
    c.folder_h5 = w / "folder.h5"
    c.folder_h5.mkdir()
    (c.folder_h5 / "keep").write_text("")
    c.folder_star = w / "folder.star"
    c.folder_star.mkdir()
    (c.folder_star / "keep").write_text("")
    c.bad_star = w / "bad.star"
    c.bad_star.write_text("this is not a STAR file\n")

    _particle_stacks(c, w, blob)

    config = simulate.SimulationConfig(volume=str(c.blob), n_projections=60, size=24, noise_variance=0.5, seed=1)
    c.config = config
    c.d = simulate.simulate_dataset(
        simulate.SimulationConfig(**(config.to_dict() | {"store_clean": True})), w / "d.h5", progress=False
    )
    c.dn = simulate.simulate_dataset(config, w / "dn.h5", progress=False)
    c.not_h5 = w / "garbage.h5"
    c.not_h5.write_text("not HDF5\n")
    c.foreign_h5 = w / "foreign.h5"
    with h5py.File(c.foreign_h5, "w") as f:
        f["x"] = np.zeros(3)
    c.bad_config_h5 = w / "bad_config.h5"
    c.bad_config_h5.write_bytes(c.dn.read_bytes())
    with h5py.File(c.bad_config_h5, "r+") as f:
        f.attrs["config"] = "{oops"

    test = read_dataset(c.d).split("test")
    n_f = 6
    features = np.abs(rng.normal(size=(20, n_f))) + 0.1
    common = dict(index=np.arange(20), quaternions=_q(20), feature_distance="cosine")
    c.emb = _npz(w / "emb.npz", features=features, **common)
    nan = features.copy()
    nan[3, 2] = np.nan
    c.nan_emb = _npz(w / "nan_emb.npz", features=nan, **common)
    zero = features.copy()
    zero[[0, 5]] = 0
    c.zero_emb = _npz(w / "zero_emb.npz", features=zero, **common)
    c.flat_emb = _npz(w / "flat_emb.npz", features=features[:, 0], **common)
    c.odd_emb = _npz(w / "odd_emb.npz", features=features, **(common | {"feature_distance": "manhattan"}))
    c.rec = _npz(w / "rec.npz", index=test.index, quaternions=test.quaternions, losses=np.ones(3))
    c.short_rec = _npz(w / "short_rec.npz", quaternions=test.quaternions[:-1], losses=np.ones(3))
    c.rec3 = _npz(w / "rec3.npz", quaternions=test.quaternions[:, :3], losses=np.ones(3))
    nan_q = test.quaternions.copy()
    nan_q[0, 0] = np.nan
    c.nan_rec = _npz(w / "nan_rec.npz", quaternions=nan_q, losses=np.ones(3))
    c.other_rec = _npz(w / "other_rec.npz", index=test.index + 1000, quaternions=test.quaternions, losses=np.ones(3))
    c.truncated_npz = w / "truncated.npz"
    c.truncated_npz.write_bytes(c.emb.read_bytes()[:300])
    c.npy = w / "array.npy"
    np.save(c.npy, features)
    c.pickled_npz = _npz(w / "pickled.npz", features=np.array([{"a": 1}], dtype=object))

    identity = {"config": siamese.TrainingConfig(input_size=16, n_features=4).to_dict()}

    def run_folder(name, run_json, model: bytes | None = None):
        folder = w / name
        folder.mkdir()
        if run_json is not None:
            (folder / "run.json").write_text(run_json)
        if model is not None:
            (folder / "model.keras").write_bytes(model)
        (folder / "history.csv").write_text("epoch,loss\n")
        return folder

    good = json.dumps({"identity": identity, "stop_reason": "epochs"})
    c.fake_run = run_folder("fake_run", good, b"PK\x03\x04" + b"\0" * 100)
    c.text_run = run_folder("text_run", good, b"weights: 1 2 3\n")
    c.corrupt_run = run_folder("corrupt_run", good[:40], b"")
    c.keyless_run = run_folder("keyless_run", json.dumps({"stop_reason": "epochs"}))
    c.empty_run = run_folder("empty_run", good)
    c.bad_config_run = run_folder(
        "bad_config_run", json.dumps({"identity": {"config": {"epochs": 0}}, "stop_reason": None})
    )
    c.other_run = run_folder("other_run", json.dumps({"identity": {"config": {}}, "stop_reason": None}))
    c.ro = None
    return c


@pytest.fixture(scope="module")
def read_only(ctx):
    """A read-only folder: a tmpfs mounted ro (root ignores file permissions, so chmod would not do)."""
    folder = ctx.w.parent / f"{ctx.w.name}-ro"
    folder.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def _normalise(text: str, c) -> str:
    text = " ".join(text.split())
    if c.ro is not None:
        text = text.replace(str(c.ro), "<ro>")
    return text.replace(str(c.w), "<tmp>")


def _listing(c) -> list[str]:
    return sorted(str(p.relative_to(c.w)) for p in c.w.rglob("*"))


def _doc_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    if DOC.is_file():
        for line in DOC.read_text().splitlines():
            match = re.match(r"^\| (\d+) \| `([^`]+)` \| (cli|api) \| .* \| (\d+) \| (.*) \|$", line)
            if match:
                rows[match[2]] = (match[4], match[5].replace("\\|", "|"))
    return rows


_RESULTS: dict[str, tuple[int, str]] = {}


@pytest.fixture(scope="module")
def doc(ctx):
    rows = _doc_rows()
    yield rows
    if UPDATE and _RESULTS:
        _write_doc(rows)


def _shown(case: Case) -> str:
    text = case.input if case.kind == "api" else "cryo-orient " + case.input.replace("{w}", "<tmp>")
    text = text.replace("{", "<").replace("}", ">")
    return text.replace("|", "\\|").replace("`", "'")


def _write_doc(previous) -> None:
    lines = [
        "# Bad inputs and what they give",
        "",
        "Every case that `tests/test_bad_inputs.py` runs, from its one list of cases (regenerate with",
        "`UPDATE_BAD_INPUTS=1 python -m pytest tests/test_bad_inputs.py`; each case checks its row). Each gave",
        "one line `error: <what went wrong>; <how to fix it>` on stderr (the command line) or an exception",
        "of the package's error types (the API; the exit status is what `cryo-orient` gives that error),",
        "no traceback, and left no file behind. Exit status 2 is a bad input, 1 a failure at run time",
        "(not enough memory or disk). `<tmp>` is the folder holding the test's files, `<d>` a simulated",
        "dataset (`<dn>` one without clean projections), `<blob>` a 24³ map, `<ro>` a read-only tmpfs; the",
        "other `<name>`s are the good and bad files of the fixture `ctx` (e.g. `<fake_run>`: a run folder whose",
        "model.keras is truncated). Memory figures are with `CRYO_ORIENT_MEMORY_LIMIT=8GiB`.",
        "",
        f"{sum(c.kind == 'cli' for c in CASES)} command-line cases and {sum(c.kind == 'api' for c in CASES)} API "
        f"cases, {len(CASES)} in all.",
        "",
        "| # | case | via | input | exit | message |",
        "|---|---|---|---|---|---|",
    ]
    for k, case in enumerate(CASES, 1):
        code, message = _RESULTS.get(case.id) or (previous.get(case.id, ("?", "(not run)")))
        message = message.replace("|", "\\|")
        lines.append(f"| {k} | `{case.id}` | {case.kind} | `{_shown(case)}` | {code} | {message} |")
    artifacts.save_text("\n".join(lines) + "\n", DOC)


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, ctx, read_only, doc, monkeypatch, capsys):
    if case.needs == "ro":
        if read_only is None:
            pytest.skip("cannot mount a read-only tmpfs here (needs root); root ignores chmod")
        ctx.ro = read_only
    monkeypatch.setenv(validation.MEMORY_LIMIT_ENV, MEMORY_LIMIT)
    monkeypatch.setenv("DATA_MIRROR", str(ctx.w / "no-mirror"))
    monkeypatch.chdir(REPO)  # profiles and figures/ are found from the repository's root
    before = _listing(ctx)
    if case.kind == "cli":
        names = {k: str(v) for k, v in vars(ctx).items() if isinstance(v, Path)}
        names["ro"] = str(read_only)
        argv = shlex.split(case.input.format(**names))
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        code = exit_info.value.code
        out = capsys.readouterr()
        assert "Traceback" not in out.err and out.out == ""
        lines = out.err.strip().splitlines()
        assert len(lines) == 1, out.err
        message = lines[0]
        assert message.startswith("error: ") and "; " in message, message
    else:
        with pytest.raises((validation.CryoOrientError, ValueError, TypeError, OSError)) as err_info:
            case.call(ctx)
        err = err_info.value
        # the package's own error types (OS errors of paths keep theirs: the CLI names them as such)
        assert isinstance(err, (validation.CryoOrientError, OSError)), type(err)
        text = str(err)
        assert "\n" not in text.strip(), text
        code, line = cli._error_line(err, None)
        message = f"{type(err).__name__}: {text}" if not isinstance(err, OSError) else f"{type(err).__name__}: {line}"
    message = _normalise(message, ctx)
    assert re.search(case.expect, message), message
    assert code == case.code, message
    assert _listing(ctx) == before, "the case left files behind"
    if UPDATE:
        _RESULTS[case.id] = (code, message)
    else:
        assert case.id in doc, f"{case.id} is not in {DOC.name}; regenerate it (see this module's docstring)"
        assert doc[case.id] == (str(code), message), (
            f"{DOC.name} shows another result for {case.id}; regenerate it (see this module's docstring)"
        )


def test_the_table_lists_every_case_and_at_least_200():
    assert len(CASES) >= 200
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    if not UPDATE:
        assert list(_doc_rows()) == [c.id for c in CASES], f"{DOC} is out of date; regenerate it"


def test_debug_shows_the_traceback_and_a_failure_at_run_time_exits_1(ctx, monkeypatch, capsys):
    argv = ["fsc", str(ctx.zero_a), str(ctx.zero_b)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--debug", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback (most recent call last)" in err and "InputError" in err
    assert err.strip().splitlines()[-1].startswith("error: volume_a is all zeros")

    def boom(args):
        raise RuntimeError("the projector crashed")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["fsc"].set_defaults(func=boom)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        "error: internal error (RuntimeError: the projector crashed); rerun with --debug for the traceback and "
        "report it\n"
    )
