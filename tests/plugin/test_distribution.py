"""The plugin as its own distribution, `axolotl-dpop`: a wheel without `smaug`, that installs into an axolotl
environment without touching anything else (the run without `smaug` importable: tests/plugin/test_axolotl_e2e.py)."""

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "axolotl_dpop"
PIP = [sys.executable, "-m", "pip"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"  # setuptools writes build/ and *.egg-info beside the sources: not in the checkout
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, source], check=True)
    (built,) = out.glob("axolotl_dpop-*.whl")
    return built


def test_the_wheel_holds_the_plugin_its_readme_and_bounded_requirements_without_smaug(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (meta_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(meta_name).decode())
    modules = {p.name for p in PLUGIN.glob("*.py")}
    assert {n.split("/", 1)[1] for n in names if n.startswith("axolotl_dpop/")} == modules
    assert not [n for n in names if n.split("/")[0] not in {"axolotl_dpop", meta_name.split("/")[0]}]
    assert meta["Name"] == "axolotl-dpop"
    assert sorted(meta.get_all("Requires-Dist")) == ["axolotl<0.20,>=0.19", "trl<1.10,>=1.9"]
    assert meta.get_payload().strip() == (PLUGIN / "README.md").read_text().strip()
    project = tomllib.loads((PLUGIN.parents[1] / "pyproject.toml").read_text())["project"]
    assert f"axolotl-dpop=={meta['Version']}" in project["dependencies"]


def test_installing_it_into_an_axolotl_environment_changes_nothing_else(wheel, tmp_path):
    """pip's dry-run report in this (axolotl 0.19) environment, offline: the plugin and nothing else."""
    report = tmp_path / "report.json"
    subprocess.run([*PIP, "install", "-q", "--dry-run", "--no-index", "--report", report, wheel], check=True)
    installs = [
        (item["metadata"]["name"], item["metadata"]["version"]) for item in json.loads(report.read_text())["install"]
    ]
    assert installs == [("axolotl-dpop", "0.1.0")]
