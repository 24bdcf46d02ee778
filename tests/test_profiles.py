"""Profiles: every key is checked against the notebook it configures, and parameter files are
rewritten only when their content changes (so Make rebuilds only what a profile edit touches)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cryo_orient.cli import main as cli_main
from cryo_orient.simulation.simulate import SimulationConfig
from cryo_orient.workflow import profiles

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path):
    """A copy of the experiments/ folder to edit freely."""
    shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    return tmp_path


@pytest.mark.parametrize("name", ["tiny", "cpu", "paper"])
def test_shipped_profiles_are_valid(name):
    profile = profiles.load_profile(name, root=REPO)
    params = profiles.target_params(name, profile, root=REPO)
    assert {"figure-5", "figure-6", "figure-7", "figure-12", "figure-14", "figure-15", "table-1"} <= set(params)
    for section in profile["datasets"].values():
        SimulationConfig.from_dict(section)  # raises on an unknown or bad key


def test_notebook_parameters_are_plain_values():
    values = profiles.notebook_parameters(REPO / "experiments" / "figure-12.py")
    assert values["n_pairs"] == 10000 and values["profile"] == "tiny"


def test_unknown_key_names_the_target_and_the_known_keys(project):
    path = project / "experiments" / "profiles" / "tiny.toml"
    path.write_text(path.read_text().replace("[figure-12]\n", "[figure-12]\nn_pair = 3\n"))
    with pytest.raises(profiles.ProfileError, match=r"\[figure-12\]: unknown key\(s\) \['n_pair'\].*n_pairs"):
        profiles.sync("tiny", root=project)


def test_missing_dataset_is_an_error(project):
    path = project / "experiments" / "profiles" / "tiny.toml"
    path.write_text(path.read_text().replace('"5j0n-half-shift", ', '"5j0n-half-shifted", '))
    with pytest.raises(profiles.ProfileError, match="5j0n-half-shifted"):
        profiles.sync("tiny", root=project)


def test_unknown_profile_lists_the_known_ones(project):
    with pytest.raises(profiles.ProfileError, match=r"known profiles: \['cpu', 'paper', 'tiny'\]"):
        profiles.sync("laptop", root=project)


def test_sync_rewrites_only_what_changed(project):
    profiles.sync("tiny", root=project)
    params = project / "build" / "tiny" / "params"
    stamps = {p.name: p.stat().st_mtime_ns for p in params.iterdir()}
    path = project / "experiments" / "profiles" / "tiny.toml"
    path.write_text(path.read_text().replace("n_pairs = 1000", "n_pairs = 2000"))
    profiles.sync("tiny", root=project)
    changed = {p.name for p in params.iterdir() if p.stat().st_mtime_ns != stamps[p.name]}
    assert changed == {"figure-12.json"}
    assert json.loads((params / "figure-12.json").read_text())["n_pairs"] == 2000
    mk = (project / "build" / "tiny" / "profile.mk").read_text()
    targets = next(line for line in mk.splitlines() if line.startswith("PROFILE_TARGETS := ")).split()[2:]
    assert {"figure-5", "figure-6", "figure-12", "table-1"} <= set(targets)
    assert "build/tiny/notebooks/figure-6.ipynb: data/simulated/tiny/5j0n-half.h5" in mk


def test_sync_runs_with_the_standard_library_only(project):
    # make calls it with a bare python before the venv exists.
    out = subprocess.run([sys.executable, "-S", "-I", str(REPO / "lib" / "cryo_orient" / "workflow" / "profiles.py"), "sync", "tiny"],
                         cwd=project, capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert out.returncode == 0, out.stderr
    assert (project / "build" / "tiny" / "profile.mk").is_file()


def test_check_outputs(tmp_path, monkeypatch, capsys):
    shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["check-outputs", "--profile", "tiny"]) == 1
    assert "figures/tiny/figure-5.json is missing" in capsys.readouterr().err
    out = tmp_path / "figures" / "tiny"
    out.mkdir(parents=True)
    for target in profiles.target_params("tiny", profiles.load_profile("tiny")):
        (out / f"{target}.png").write_bytes(b"x")
        (out / f"{target}.json").write_text(json.dumps({"outputs": [f"{target}.png"], "results": {}}))
    # Every figure is there, but the report is not yet.
    assert cli_main(["check-outputs", "--profile", "tiny"]) == 1
    assert "REPORT.md is missing" in capsys.readouterr().err
    assert cli_main(["report", "--profile", "tiny"]) == 0
    assert cli_main(["check-outputs", "--profile", "tiny"]) == 0
    (out / "figure-6.png").write_bytes(b"")
    assert cli_main(["check-outputs", "--profile", "tiny"]) == 1


def test_datasets_a_notebook_reads_by_default_are_dependencies(project):
    profiles.sync("tiny", root=project)
    mk = (project / "build" / "tiny" / "profile.mk").read_text()
    rule = next(line for line in mk.splitlines() if line.startswith("build/tiny/notebooks/figure-9.ipynb:"))
    # figure-9's noise_datasets/shift_datasets are notebook defaults, not in the tiny profile.
    assert "5j0n-half-noise25.h5" in rule and "5j0n-half-shift15.h5" in rule
    params = json.loads((project / "build" / "tiny" / "params" / "figure-9.json").read_text())
    assert params["noise_variances"] == [0, 5, 10, 16, 20, 25]
    notebook = project / "experiments" / "figure-9.py"
    notebook.write_text(notebook.read_text().replace('"5j0n-half-noise25"]', '"5j0n-half-noise30"]'))
    with pytest.raises(profiles.ProfileError, match="5j0n-half-noise30"):
        profiles.sync("tiny", root=project)


def test_optional_targets_are_synced_but_not_reproduced(project):
    # `make compare` (ASPIRE, its own venv) must not be part of `make reproduce`: its parameters and
    # dataset dependencies are written, but it is listed apart from PROFILE_TARGETS.
    assert "compare" in profiles.OPTIONAL_TARGETS
    targets = profiles.sync("tiny", root=project)
    assert "compare" in targets
    assert (project / "build" / "tiny" / "params" / "compare.json").is_file()
    mk = (project / "build" / "tiny" / "profile.mk").read_text().splitlines()
    reproduced = next(line for line in mk if line.startswith("PROFILE_TARGETS := ")).split()[2:]
    optional = next(line for line in mk if line.startswith("OPTIONAL_TARGETS := ")).split()[2:]
    assert "compare" not in reproduced and optional == ["compare"]
    assert {"figure-10", "figure-11"} <= set(reproduced)
    assert any(line.startswith("build/tiny/notebooks/compare.ipynb: ") and "5j0n-full-so3-noise4.h5" in line
               for line in mk)
