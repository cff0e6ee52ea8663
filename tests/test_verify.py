"""``skyprep verify``: completeness and recorded checksums, against deliberate damage."""

import shutil
import subprocess
import sys

import pytest
import zarr
from distributed import Client

from pipeline.config import Config
from pipeline.io.index import index
from pipeline.runner import run
from pipeline.synth import SynthSpec, write_archive
from pipeline.tools.verify import array_sha256, verify

KEY = "muscat3_g/20240315_000_000"


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    write_archive(root / "archive", SynthSpec(sessions=2, size=128, frames=2, amps=1, seed=0))
    out = root / "out.zarr"
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        assert run(root / "archive", out, Config(), client, echo=lambda line: None).exit_code == 0
    return out


@pytest.fixture
def store(clean_store, tmp_path):
    copy = tmp_path / "out.zarr"
    shutil.copytree(clean_store, copy)
    return copy


def _verify_cli(store):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "verify", str(store)], capture_output=True, text=True, timeout=60
    )


def test_clean_store_verifies(store):
    assert set(verify(store)) == set(index(store))
    assert all(not problems for problems in verify(store).values())
    done = _verify_cli(store)
    assert done.returncode == 0, done.stdout
    assert "2 session(s) complete and intact, 0 with problems" in done.stdout


def test_recorded_checksums_match_an_independent_hash_of_the_written_files(store):
    recorded = zarr.open_group(str(store), path=KEY, mode="r").attrs["array_sha256"]
    assert set(recorded) >= {"os", "calib", "mask", "e91", "mean", "count"}
    assert recorded == array_sha256(store, KEY)


def test_corrupted_chunk_is_reported(store):
    chunk = next(p for p in sorted((store / KEY / "calib" / "c").rglob("*")) if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    assert verify(store)[KEY] == ["calib: checksum mismatch (files changed since written)"]
    done = _verify_cli(store)
    assert done.returncode == 1
    assert f"{KEY}: calib: checksum mismatch" in done.stdout


def test_missing_variable_and_incomplete_session_are_reported(store):
    shutil.rmtree(store / KEY / "mean")
    other = "muscat4_r/20240315_000_001"
    root = zarr.open_group(str(store), mode="a")
    meta = dict(root.attrs["skyprep"])
    meta["sessions"] = {k: v for k, v in meta["sessions"].items() if k != other}
    root.attrs["skyprep"] = meta
    problems = verify(store)
    assert "mean: missing" in problems[KEY]
    assert problems[other] == ["incomplete (not marked complete in the index; the next run rewrites it)"]
    assert _verify_cli(store).returncode == 1
