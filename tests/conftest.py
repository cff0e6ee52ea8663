"""Shared fixtures: small synthetic archives (1-amplifier MuSCAT and 4-amplifier Mosaic-style)."""

import shutil

import pytest
from distributed import Client

from pipeline.synth import SynthSpec, write_archive

SIZE, FRAMES = 256, 6
SESSION_KEYS = ("mosaic_g/20240315_001_000", "muscat3_g/20240315_000_000", "muscat4_r/20240315_000_001")


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    """Two MuSCAT sessions and one 4-amplifier session, written once per test run (read-only)."""
    root = tmp_path_factory.mktemp("archive")
    write_archive(root, SynthSpec(sessions=2, size=SIZE, frames=FRAMES, amps=1, seed=0))
    write_archive(root, SynthSpec(sessions=1, size=SIZE, frames=FRAMES, amps=4, seed=1))
    assert sorted(p.relative_to(root).as_posix() for p in root.glob("*/*") if p.is_dir()) == list(SESSION_KEYS)
    return root


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
