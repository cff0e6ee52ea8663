"""environment.yml and pyproject.toml declare the same dependencies."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"dask[array]": "dask", "torch": "pytorch", "moto[server]": "moto"}


def _name(requirement: str) -> str:
    name = re.split(r"[<>=!~ ;]", requirement, maxsplit=1)[0].strip().lower()
    return CONDA_NAMES.get(name, name)


def test_environment_and_pyproject_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r): r for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda = {_name(d): d for d in env if isinstance(d, str) and _name(d) not in {"python", "pip"}}
    assert set(conda) == set(declared)
    for name, requirement in declared.items():
        pin = re.sub(r"^[^<>=!~]+", "", requirement).strip()
        assert conda[name].endswith(pin), f"{name}: pyproject {requirement!r} vs environment.yml {conda[name]!r}"
