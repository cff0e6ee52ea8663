"""deploy/: the compose file, the SLURM (dask-jobqueue) setup and the Kubernetes DaskJob, checked without a cluster."""

import copy
import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from pipeline.cli import parser
from pipeline.runner import DASK_YAML

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _skyprep_args(args):
    """``args`` as the skyprep command line parses them (fails the test on a usage error)."""
    return parser().parse_args(args)


# ---- compose -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())


def test_compose_wires_job_workers_and_scheduler_together(compose):
    services = compose["services"]
    assert set(services) == {"scheduler", "worker", "job"}
    assert {s["image"] for s in services.values()} == {"skyprep:latest"}
    assert all("./data:/data" in s["volumes"] for s in services.values())
    scheduler = services["scheduler"]["command"]
    port = scheduler[scheduler.index("--port") + 1]
    address = f"tcp://scheduler:{port}"
    assert services["worker"]["entrypoint"] == ["dask", "worker"] and services["worker"]["command"][0] == address
    assert services["job"]["environment"]["DASK_SCHEDULER_ADDRESS"] == address
    job = _skyprep_args(services["job"]["command"])
    assert job.command == "run" and str(job.out).startswith("/data/") and str(job.input_root).startswith("/data/")
    assert services["worker"]["deploy"]["replicas"] >= 2


# ---- SLURM ---------------------------------------------------------------------------------


def _slurm_module():
    spec = importlib.util.spec_from_file_location("skyprep_slurm", DEPLOY / "slurm" / "skyprep_slurm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slurm_job_script_starts_a_worker_of_this_environment(tmp_path):
    settings = yaml.safe_load((DEPLOY / "slurm" / "jobqueue.yaml").read_text())["jobqueue"]["slurm"]
    with _slurm_module().make_cluster(numba_cache=tmp_path / "numba cache") as cluster:
        script = cluster.job_script()
        address = cluster.scheduler_address
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert f"#SBATCH -J {settings['job-name']}" in lines
    assert f"#SBATCH --cpus-per-task={settings['cores']}" in lines
    assert f"#SBATCH -t {settings['walltime']}" in lines
    assert "#SBATCH --mem=8G" in lines
    assert all(line in lines for line in settings["job-script-prologue"])
    assert f"export DASK_CONFIG={DASK_YAML}" in lines  # skyprep's worker settings, this environment's copy
    assert f"export NUMBA_CACHE_DIR='{tmp_path / 'numba cache'}'" in lines  # the kernels compiled once
    worker = shlex.split(next(line for line in lines if "dask_worker" in line))
    assert worker[:4] == [sys.executable, "-m", "distributed.cli.dask_worker", address]
    assert worker[worker.index("--nthreads") + 1] == str(settings["cores"] // settings["processes"])
    assert worker[worker.index("--local-directory") + 1] == settings["local-directory"]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_slurm_driver_hands_the_cluster_to_skyprep_run(monkeypatch, tmp_path):
    module = _slurm_module()
    seen = {}
    monkeypatch.setattr(module, "skyprep", lambda argv: seen.setdefault("argv", argv) and 0)
    monkeypatch.setattr(module.SLURMCluster, "scale", lambda self, jobs: seen.setdefault("jobs", jobs))
    monkeypatch.setattr(module, "compile_kernels", lambda cache: seen.setdefault("cache", cache) and "")
    argv = [str(tmp_path), "--out", str(tmp_path / "s.zarr"), "--jobs", "3", "--numba-cache", str(tmp_path / "nc")]
    assert module.main([*argv, "--", "--sessions", "x/*"]) == 0
    args = _skyprep_args(seen["argv"])
    assert seen["jobs"] == 3 and args.scheduler.startswith("tcp://") and args.sessions == "x/*"
    assert seen["cache"] == tmp_path / "nc"  # compiled before any job is submitted


# ---- Kubernetes DaskJob --------------------------------------------------------------------


def validate(value, schema, path="$"):
    """Errors of ``value`` against a Kubernetes structural (OpenAPI v3) schema; unknown fields are errors."""
    if schema.get("x-kubernetes-int-or-string"):
        return [] if isinstance(value, (int, str)) else [f"{path}: expected int or string"]
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return []
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    if kind and not isinstance(value, types[kind]) or (kind in ("integer", "number") and isinstance(value, bool)):
        return [f"{path}: expected {kind}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} not one of {schema['enum']}"]
    errors = []
    if kind == "array":
        for i, item in enumerate(value):
            errors += validate(item, schema.get("items", {}), f"{path}[{i}]")
    if kind == "object":
        errors += [f"{path}: missing required {name!r}" for name in schema.get("required", []) if name not in value]
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for name, item in value.items():
            if name in properties:
                errors += validate(item, properties[name], f"{path}.{name}")
            elif isinstance(extra, dict):
                errors += validate(item, extra, f"{path}.{name}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields") and properties:
                errors.append(f"{path}: unknown field {name!r}")
    return errors


@pytest.fixture(scope="module")
def daskjob_schema():
    crd = yaml.safe_load((DEPLOY / "kubernetes" / "daskjob-crd.yaml").read_text())
    assert crd["spec"]["names"]["kind"] == "DaskJob"
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return crd["spec"]["group"], version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def daskjob():
    return yaml.safe_load((DEPLOY / "kubernetes" / "daskjob.yaml").read_text())


def test_daskjob_manifest_follows_the_operator_crd(daskjob, daskjob_schema):
    group, schema = daskjob_schema
    assert daskjob["apiVersion"] == f"{group}/v1" and daskjob["kind"] == "DaskJob"
    assert validate({"spec": daskjob["spec"]}, schema) == []
    job = daskjob["spec"]["job"]["spec"]["containers"][0]
    assert job["command"] == ["skyprep"] and _skyprep_args(job["args"]).command == "run"
    cluster = daskjob["spec"]["cluster"]["spec"]
    assert cluster["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == daskjob["metadata"]["name"]
    images = {
        c["image"]
        for part in (daskjob["spec"]["job"], cluster["worker"], cluster["scheduler"])
        for c in part["spec"]["containers"]
    }
    assert images == {job["image"]}


@pytest.mark.parametrize("breakage", ["unknown field", "wrong type", "missing required"])
def test_crd_validation_catches_broken_manifests(daskjob, daskjob_schema, breakage):
    broken = copy.deepcopy(daskjob["spec"])
    worker = broken["cluster"]["spec"]["worker"]
    if breakage == "unknown field":
        worker["replica"] = 3
    elif breakage == "wrong type":
        worker["replicas"] = "four"
    else:
        del worker["spec"]["containers"][0]["name"]
    assert validate({"spec": broken}, daskjob_schema[1])


# ---- image ---------------------------------------------------------------------------------


def test_image_compiles_the_kernels_at_build_time_for_its_runtime_user():
    """The Dockerfile (not built here: no Docker engine) sets NUMBA_CACHE_DIR for every container,
    gives that directory to the runtime user (numba only uses a cache it can write) and runs
    ``skyprep compile`` as that user, after the install, so workers start warm."""
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines()]
    steps = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    env = next(rest for op, rest in steps if op == "ENV" and rest.startswith("NUMBA_CACHE_DIR="))
    cache = env.split("=", 1)[1]
    order = [f"{op} {rest}" for op, rest in steps]
    install = next(i for i, s in enumerate(order) if s.startswith("RUN pip install"))
    user = order.index("USER skyprep")
    assert 'chown skyprep "$NUMBA_CACHE_DIR"' in order[install] and cache.startswith("/")
    assert order.index("RUN skyprep compile") > user > install
    assert order.index(f"ENV {env}") < install
    assert _skyprep_args(["compile"]).command == "compile"
    extra = re.search(r'pip install --no-cache-dir "\.\[(\w+)\]"', order[install]).group(1)
    assert extra in tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
