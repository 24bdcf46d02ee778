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
    script = REPO / "lib" / "cryo_orient" / "workflow" / "profiles.py"
    out = subprocess.run(
        [sys.executable, "-S", "-I", str(script), "sync", "tiny"],
        cwd=project,
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
    )
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
    notebook.write_text(notebook.read_text().replace('"5j0n-half-noise25",', '"5j0n-half-noise30",', 1))
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
    assert not {"compare", "foreign", "refinement", "generalization"} & set(reproduced) and optional == [
        "compare",
        "foreign",
        "refinement",
        "generalization",
    ]
    assert {"figure-10", "figure-11"} <= set(reproduced)
    assert any(
        line.startswith("build/tiny/notebooks/compare.ipynb: ") and "5j0n-full-so3-noise4.h5" in line for line in mk
    )


PIPELINE_TARGETS = ("figure-10", "figure-11", "figure-13", "compare")


def test_merge_settings_is_deep_for_tables_and_copies():
    base = {"training": {"input_size": 16, "epochs": 2}, "fresh_noise": True, "estimator_options": {}, "seed": 0}
    merged = profiles.merge_settings(
        base, {"training": {"epochs": 80}, "seed": 1}, {"training": {"n_features": 512}, "fresh_noise": False}
    )
    assert merged == {
        "training": {"input_size": 16, "epochs": 80, "n_features": 512},
        "fresh_noise": False,
        "estimator_options": {},
        "seed": 1,
    }
    assert base == {
        "training": {"input_size": 16, "epochs": 2},
        "fresh_noise": True,
        "estimator_options": {},
        "seed": 0,
    }  # the inputs are left as they were
    # A table replaces a non-table and the other way round (no merge across kinds).
    assert profiles.merge_settings({"a": 1}, {"a": {"b": 2}}) == {"a": {"b": 2}}
    assert profiles.merge_settings({"a": {"b": 2}}, {"a": 3}) == {"a": 3}


def test_pipeline_section_is_shared_not_a_target(project):
    profile = profiles.load_profile("tiny", root=project)
    assert "pipeline" not in profile and "pipeline" in profile.shared  # iterating a profile gives its targets
    targets = profiles.sync("tiny", root=project)
    assert "pipeline" not in targets
    params = project / "build" / "tiny" / "params"
    assert not (params / "pipeline.json").exists()
    mk = (project / "build" / "tiny" / "profile.mk").read_text()
    assert "pipeline" not in next(line for line in mk.splitlines() if line.startswith("PROFILE_TARGETS := "))
    for target in PIPELINE_TARGETS:
        values = json.loads((params / f"{target}.json").read_text())
        assert values["pipeline"] == profile.shared["pipeline"]


def test_target_pipeline_table_is_merged_over_the_shared_one(project):
    path = project / "experiments" / "profiles" / "tiny.toml"
    text = path.read_text()
    assert "[figure-13]\n" in text
    path.write_text(
        text.replace(
            "[figure-13]\n",
            "[figure-13]\n\n[figure-13.pipeline]\nfresh_noise = false\n"
            "gauge_pairs = 7\n\n[figure-13.pipeline.training]\nepochs = 5\n",
        )
    )
    profiles.sync("tiny", root=project)
    params = project / "build" / "tiny" / "params"
    shared = profiles.load_profile("tiny", root=project).shared["pipeline"]
    p13 = json.loads((params / "figure-13.json").read_text())["pipeline"]
    assert p13["fresh_noise"] is False and p13["gauge_pairs"] == 7
    # Deep for the training table: the override's key replaced, every other training key kept.
    assert p13["training"] == shared["training"] | {"epochs": 5}
    assert p13["reconstruction_iterations"] == shared["reconstruction_iterations"]
    for target in ("figure-10", "figure-11", "compare"):  # the others are untouched
        other = json.loads((params / f"{target}.json").read_text())["pipeline"]
        assert other["fresh_noise"] is True and other["training"] == shared["training"]


def test_unknown_pipeline_key_is_an_error(project):
    path = project / "experiments" / "profiles" / "tiny.toml"
    path.write_text(path.read_text().replace("[pipeline]\n", "[pipeline]\ngauge_pair = 3\n"))
    message = r"\[pipeline\]: unknown pipeline key\(s\) \['gauge_pair'\].*gauge_pairs"
    with pytest.raises(profiles.ProfileError, match=message):
        profiles.sync("tiny", root=project)


@pytest.mark.parametrize("name", ["tiny", "cpu", "paper"])
def test_shipped_profiles_give_one_pipeline(name):
    """Figures 10, 11, 13 and compare run the profile's one [pipeline], a valid PipelineConfig."""
    from cryo_orient.workflow.pipeline import PipelineConfig

    params = profiles.target_params(name, profiles.load_profile(name, root=REPO), root=REPO)
    configs = {target: PipelineConfig.from_dict(params[target]["pipeline"]).to_dict() for target in PIPELINE_TARGETS}
    assert all(config == configs["figure-10"] for config in configs.values())
    training = configs["figure-10"]["training"]
    expected = {"tiny": (16, 32, True, 5), "cpu": (29, 512, True, 100), "paper": (116, 512, False, 100)}[name]
    assert (
        training["input_size"],
        training["n_features"],
        configs["figure-10"]["fresh_noise"],
        configs["figure-10"]["reconstruction_iterations"],
    ) == expected
    for values in params.values():
        assert values["cache_dir"] == f"build/{name}/cache"


def test_run_parameters_are_the_cell_names_with_the_values_as_run(project):
    declared = profiles.notebook_parameters(project / "experiments" / "figure-12.py")
    namespace = {**declared, "n_pairs": 7, "unrelated": object()}
    values = profiles.run_parameters("figure-12", namespace, root=project)
    assert list(values) == list(declared) and values["n_pairs"] == 7 and "unrelated" not in values
    del namespace["seed"]
    with pytest.raises(KeyError, match="seed"):
        profiles.run_parameters("figure-12", namespace, root=project)
