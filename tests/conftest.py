"""Shared fixtures: small synthetic archives (1-amplifier MuSCAT and 4-amplifier Mosaic-style)."""

import os
import shutil
import subprocess
import sys

import pytest
from distributed import Client

from pipeline.config import Config
from pipeline.io.index import complete_sessions
from pipeline.runner import run
from pipeline.synth import SynthSpec, write_archive
from tests.s3_server import S3Server

SIZE, FRAMES = 256, 6
TINY = SynthSpec(sessions=3, size=128, frames=3, amps=1, seed=5)  # the cluster, SLURM and object-storage runs
SESSION_KEYS = ("mosaic_g/20240315_001_000", "muscat3_g/20240315_000_000", "muscat4_r/20240315_000_001")


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    """Two MuSCAT sessions and one 4-amplifier session, written once per test run (read-only)."""
    root = tmp_path_factory.mktemp("archive")
    write_archive(root, SynthSpec(sessions=2, size=SIZE, frames=FRAMES, amps=1, seed=0))
    write_archive(root, SynthSpec(sessions=1, size=SIZE, frames=FRAMES, amps=4, seed=1))
    assert sorted(p.relative_to(root).as_posix() for p in root.glob("*/*") if p.is_dir()) == list(SESSION_KEYS)
    return root


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory):
    """Three small sessions (``TINY``), written once per test run (read-only)."""
    root = tmp_path_factory.mktemp("tiny-archive")
    write_archive(root, TINY)
    return root


@pytest.fixture(scope="session")
def local_store(tiny_archive, tmp_path_factory):
    """``tiny_archive`` processed by an in-process client: the store other setups must equal."""
    out = tmp_path_factory.mktemp("tiny-local") / "local.zarr"
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        assert run(tiny_archive, out, Config(), client, echo=lambda line: None).exit_code == 0
    assert len(complete_sessions(out)) == TINY.sessions
    return out


@pytest.fixture
def archive_copy(archive, tmp_path):
    """A private copy of the archive that a test may damage."""
    root = tmp_path / "archive"
    shutil.copytree(archive, root)
    return root


@pytest.fixture(scope="module")
def client():
    """An in-process Dask client (one worker, two threads), shared by a test module."""
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as c:
        yield c


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 for the whole test run; the standard AWS variables point at it."""
    with S3Server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        saved = {key: os.environ.get(key) for key in server.environment}
        os.environ.update(server.environment)
        try:
            yield server
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server):
    """``s3://NAME``: a new empty bucket on the test run's S3 server."""
    return f"s3://{s3_server.bucket()}"


@pytest.fixture(scope="session")
def numba_cache(tmp_path_factory):
    """A numba cache directory with skyprep's kernels compiled into it by ``skyprep compile`` (as the
    image build does), once per test run."""
    directory = tmp_path_factory.mktemp("numba-cache")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(directory)}
    done = subprocess.run([sys.executable, "-m", "pipeline", "compile"], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"loaded from the cache in {directory}" in done.stdout, done.stdout
    return directory
