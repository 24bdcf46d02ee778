"""Experiment profiles: one TOML file per profile, one section per dataset and per figure.

A profile (``experiments/profiles/<name>.toml``) holds every setting of a run of the experiments:
``[datasets.<name>]`` sections are :class:`cryo_orient.simulation.simulate.SimulationConfig` values, and a
``[<target>]`` section (``[figure-6]``, ``[table-1]``, ...) holds the values of the ``parameters``
cell of ``experiments/<target>.py``. Keys that the notebook does not declare are an error, so a
typo cannot silently fall back to a default.

The ``[pipeline]`` section (a shared section, :data:`SHARED_SECTIONS`, not a target) holds the
settings of the whole pipeline, shaped like
:meth:`cryo_orient.workflow.pipeline.PipelineConfig.to_dict` (``[pipeline.training]`` for the
network): every notebook that declares a ``pipeline`` parameter (figures 10, 11, 13, compare)
receives the profile's ``[pipeline]``, with the target's own ``[<target>.pipeline]`` (if any)
merged over it; nested tables (``training``, ``estimator_options``) are merged key by key
(:func:`merge_settings`), and what neither sets keeps the pipeline's default. Its top-level keys
are checked here against the pipeline's settings (:func:`pipeline_settings`); the nested ones
by ``PipelineConfig.from_dict`` when the notebook runs.

Every notebook also receives :data:`PIPELINE_KEYS` (the profile's name and its folders), whatever
the profile says.

This module uses only the standard library: ``make`` runs it as a script with any Python >= 3.11
before the virtual environment exists, to write one parameter file per target that changes only
when that target's settings change (so Make rebuilds exactly what a profile edit touches)::

    python lib/cryo_orient/workflow/profiles.py sync PROFILE

It writes ``build/<profile>/params/<target>.json`` and ``build/<profile>/profile.mk`` (the
targets, the optional targets (:data:`OPTIONAL_TARGETS`, not part of ``make reproduce``), the
datasets and the dependencies of each target on the datasets it reads).
"""

from __future__ import annotations

import ast
import json
import os
import sys
import tempfile
import tomllib
from pathlib import Path

#: Keys every notebook receives from the pipeline rather than from the profile: the profile's name,
#: its output folder (``figures/<profile>``), its simulated datasets (``data/simulated/<profile>``)
#: and its cache of computed stages (``build/<profile>/cache``).
PIPELINE_KEYS = ("profile", "out_dir", "sim_dir", "cache_dir")

#: Profile sections that are neither datasets nor targets: settings shared by several targets.
#: ``[pipeline]`` is merged into the ``pipeline`` parameter of every notebook that declares one.
SHARED_SECTIONS = ("pipeline",)

#: Targets that ``make reproduce`` leaves out (they need more than the default install: ``make
#: compare`` has its own venv with ASPIRE; ``make foreign`` a particle stack from the mirror or
#: ``make foreign-stack``; ``make refinement`` RELION and that stack). Their parameter files and
#: dataset dependencies are written as for any target, but they are listed as ``OPTIONAL_TARGETS``
#: in ``profile.mk``, not in ``PROFILE_TARGETS``; each is built by its own ``make <target>``.
OPTIONAL_TARGETS = ("compare", "foreign", "refinement", "generalization")


class ProfileError(ValueError):
    """A profile file that cannot be used as it is."""


class Profile(dict):
    """A parsed profile: ``{"datasets": {...}, "<target>": {...}, ...}``, so that its keys other
    than ``datasets`` are exactly its targets; the shared sections (:data:`SHARED_SECTIONS`, e.g.
    ``[pipeline]``) are kept apart in :attr:`shared`."""

    def __init__(self, sections=(), shared=None):
        super().__init__(sections)
        self.shared = dict(shared or {})


def pipeline_keys(profile_name: str) -> dict:
    """The values of :data:`PIPELINE_KEYS` for a profile."""
    return {
        "profile": profile_name,
        "out_dir": f"figures/{profile_name}",
        "sim_dir": f"data/simulated/{profile_name}",
        "cache_dir": f"build/{profile_name}/cache",
    }


def merge_settings(base: dict, *overrides: dict) -> dict:
    """``base`` with each of ``overrides`` merged over it in turn, nested tables key by key.

    A value that is a table in both is merged recursively (``training``, ``estimator_options``);
    any other value replaces the one before. The inputs are not modified.
    """
    out = dict(base)
    for override in overrides:
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge_settings(out[key], value)
            else:
                out[key] = value
    return out


def profile_path(name_or_path, root=".") -> Path:
    """``experiments/profiles/<name>.toml`` for a name, or the path itself if it is a file."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        candidate = path
    else:
        candidate = Path(root) / "experiments" / "profiles" / f"{name_or_path}.toml"
    if not candidate.is_file():
        known = sorted(p.stem for p in (Path(root) / "experiments" / "profiles").glob("*.toml"))
        raise ProfileError(f"no profile {name_or_path!r} (looked for {candidate}); known profiles: {known}")
    return candidate


def load_profile(name_or_path, root=".") -> Profile:
    """Parse a profile; returns ``{"datasets": {...}, "<target>": {...}, ...}`` (a :class:`Profile`,
    whose :attr:`Profile.shared` holds the shared sections such as ``[pipeline]``)."""
    path = profile_path(name_or_path, root)
    try:
        with open(path, "rb") as f:
            sections = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"{path} is not valid TOML: {err}") from err
    sections.setdefault("datasets", {})
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise ProfileError(f"{path}: top-level key {name!r} must be a [section], got {section!r}")
    shared = {name: sections.pop(name) for name in SHARED_SECTIONS if name in sections}
    return Profile(sections, shared)


def notebook_parameters(notebook: Path) -> dict:
    """Names and default values assigned in the ``parameters`` cell of a jupytext percent file."""
    text = Path(notebook).read_text()
    cells = text.split("\n# %%")
    for cell in cells:
        header, _, body = cell.partition("\n")
        if "parameters" in header and "tags" in header:
            tree = ast.parse(body)
            values = {}
            for node in tree.body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    values[node.targets[0].id] = ast.literal_eval(node.value)
                elif not isinstance(node, ast.Expr):
                    raise ProfileError(f"{notebook}: the parameters cell may hold only plain assignments")
            return values
    raise ProfileError(f"{notebook} has no cell tagged 'parameters' (# %% tags=[\"parameters\"])")


def run_parameters(target: str, namespace, *, root=".") -> dict:
    """A notebook's parameters as it ran: the values in ``namespace`` of the names that the
    ``parameters`` cell of ``experiments/<target>.py`` assigns (:func:`notebook_parameters`), in
    the cell's order.

    A notebook passes its ``globals()`` and records the result (``artifacts.write_record(...,
    parameters=profiles.run_parameters("figure-6", globals()))``): the values are its defaults or
    what papermill injected from ``build/<profile>/params/<target>.json``, without a list of them
    to keep in step with the cell. ``root`` is the folder holding ``experiments/`` (the notebooks
    run from it).
    """
    names = notebook_parameters(Path(root) / "experiments" / f"{target}.py")
    missing = [name for name in names if name not in namespace]
    if missing:
        raise KeyError(f"{target}: its notebook's parameters {missing} are not defined in the namespace given")
    return {name: namespace[name] for name in names}


def _datasets_read(section: dict) -> list[str]:
    """Datasets a target reads: the values of its keys named ``dataset``/``datasets`` or ending
    in ``_dataset``/``_datasets`` (e.g. ``noise_datasets``), in order, without repeats."""
    names = []
    for key, value in section.items():
        if key in ("dataset", "datasets") or key.endswith(("_dataset", "_datasets")):
            names.extend([value] if isinstance(value, str) else value)
    return list(dict.fromkeys(names))


def pipeline_settings() -> list[str]:
    """The names of the pipeline's settings: the fields of ``PipelineConfig``, read from the
    source of :mod:`cryo_orient.workflow.pipeline` (this module runs before the venv exists, so
    it cannot import it)."""
    tree = ast.parse(Path(__file__).with_name("pipeline.py").read_text())
    config = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PipelineConfig")
    return [n.target.id for n in config.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]


def _pipeline_param(profile_name: str, target: str, default, shared: dict, own) -> dict:
    """The ``pipeline`` parameter of a target: its notebook's default (``{}``: the pipeline's own
    defaults), then the profile's ``[pipeline]``, then the target's ``[<target>.pipeline]``, merged
    (:func:`merge_settings`)."""
    where = f"profile {profile_name!r}, "
    if not isinstance(default, dict):
        raise ProfileError(f"experiments/{target}.py: its `pipeline` parameter must be a dict literal, got {default!r}")
    known = pipeline_settings()
    for name, table in (("[pipeline]", shared), (f"[{target}.pipeline]", own)):
        if not isinstance(table, dict):
            raise ProfileError(f"{where}{name} must be a table of pipeline settings, got {table!r}")
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ProfileError(f"{where}{name}: unknown pipeline key(s) {unknown}; the pipeline settings are {known}")
    return merge_settings(default, shared, own)


def target_params(profile_name: str, profile: dict, root=".") -> dict[str, dict]:
    """The validated parameters of every target in the profile."""
    out = {}
    datasets = profile["datasets"]
    shared = getattr(profile, "shared", {})
    for target, section in profile.items():
        if target == "datasets" or target in SHARED_SECTIONS:
            continue
        notebook = Path(root) / "experiments" / f"{target}.py"
        if not notebook.is_file():
            raise ProfileError(f"profile {profile_name!r} has a [{target}] section but there is no {notebook}")
        declared = notebook_parameters(notebook)
        unknown = sorted(set(section) - set(declared))
        if unknown:
            raise ProfileError(
                f"profile {profile_name!r}, [{target}]: unknown key(s) {unknown}; "
                f"{notebook} declares {sorted(k for k in declared if k not in PIPELINE_KEYS)}"
            )
        # A dataset the notebook reads by default is as much a dependency as one the profile names.
        missing = [d for d in _datasets_read({**declared, **section}) if d not in datasets]
        if missing:
            raise ProfileError(
                f"profile {profile_name!r}, [{target}] reads dataset(s) {missing} that have no "
                f"[datasets.<name>] section; defined: {sorted(datasets)}"
            )
        params = {**{k: v for k, v in declared.items() if k not in PIPELINE_KEYS}, **section}
        if "pipeline" in declared:
            params["pipeline"] = _pipeline_param(
                profile_name, target, declared["pipeline"], shared.get("pipeline", {}), section.get("pipeline", {})
            )
        out[target] = params | pipeline_keys(profile_name)
    return out


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name (this module is stdlib-only, so not artifacts.atomic_output, whose
    # naming it follows: .<name>.<pid>.<random>.tmp): concurrent syncs of one profile (two `make`
    # runs) each write their own and the last rename wins, with the same content.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def sync(profile_name: str, root=".") -> list[str]:
    """Write the per-target parameter files and the Make fragment; return the targets."""
    profile = load_profile(profile_name, root)
    params = target_params(profile_name, profile, root)
    build = Path(root) / "build" / profile_name
    for name, section in profile["datasets"].items():
        _write_if_changed(
            build / "params" / f"dataset-{name}.json", json.dumps(section, indent=2, sort_keys=True) + "\n"
        )
    for target, values in params.items():
        _write_if_changed(build / "params" / f"{target}.json", json.dumps(values, indent=2, sort_keys=True) + "\n")
    sim = f"data/simulated/{profile_name}"
    lines = [
        f"PROFILE_TARGETS := {' '.join(t for t in params if t not in OPTIONAL_TARGETS)}",
        f"OPTIONAL_TARGETS := {' '.join(t for t in params if t in OPTIONAL_TARGETS)}",
        f"PROFILE_DATASETS := {' '.join(f'{sim}/{d}.h5' for d in profile['datasets'])}",
    ]
    for target, values in params.items():
        reads = " ".join(f"{sim}/{d}.h5" for d in _datasets_read(values))
        if reads:
            lines.append(f"build/{profile_name}/notebooks/{target}.ipynb: {reads}")
    _write_if_changed(build / "profile.mk", "\n".join(lines) + "\n")
    return list(params)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "sync":
        print("usage: python lib/cryo_orient/workflow/profiles.py sync PROFILE", file=sys.stderr)
        return 2
    try:
        sync(argv[1])
    except ProfileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
