"""The job on object storage, against a real S3-protocol server (moto on 127.0.0.1).

The archive is synthesized into a bucket and ``skyprep run s3://... --out s3://...`` must write
the store a local run writes, array by array; a run SIGKILLed mid-run must resume to the same
store; ``verify`` must check the recorded checksums through the store (and catch a damaged
chunk object); the tools and the loader must read the store from the bucket; FITS strips must
be read by byte ranges, not whole-file downloads.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from astropy.io import fits
from distributed import Client

from pipeline.config import Config
from pipeline.io import fits_files
from pipeline.io.discover import find_sessions
from pipeline.io.fits_headers import list_images
from pipeline.io.fits_reader import read_rows
from pipeline.io.index import complete_sessions, index
from pipeline.io.objects import ObjectPath, location, zarr_store
from pipeline.runner import report_path, run
from pipeline.tools.loader import LoaderParams, PatchDataset
from pipeline.tools.verify import check_session, verify
from tests.conftest import TINY
from tests.test_cluster import assert_same_store

SPEC = TINY  # the archive synthesized into the bucket is tiny_archive
TIMEOUT_S = 300


def _skyprep(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


def _finish(process):
    out, err = process.communicate(timeout=TIMEOUT_S)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def bucket(s3_server):
    return f"s3://{s3_server.bucket()}"


@pytest.fixture(scope="module")
def s3_archive(bucket):
    """The same archive, written into the bucket by ``skyprep synth``."""
    url = f"{bucket}/archive"
    code, out, err = _finish(_skyprep("synth", url, "--sessions", SPEC.sessions, "--size", SPEC.size,
                                      "--frames", SPEC.frames, "--amps", SPEC.amps, "--seed", SPEC.seed))  # fmt: skip
    assert code == 0, err
    return location(url)


@pytest.fixture(scope="module")
def s3_store(bucket, s3_archive):
    """``skyprep run`` from the bucket's archive into a store in the bucket."""
    out = location(f"{bucket}/store.zarr")
    code, stdout, stderr = _finish(_skyprep("run", s3_archive, "--out", out, "--workers", 2))
    assert code == 0, stderr
    return out


def test_archive_in_the_bucket_equals_the_local_one(s3_archive, tiny_archive):
    remote = dict(s3_archive.files())
    local = {p.relative_to(tiny_archive).as_posix(): p.stat().st_size for p in tiny_archive.rglob("*") if p.is_file()}
    assert remote == local


def test_sessions_are_discovered_in_the_bucket_as_on_disk(s3_archive, tiny_archive, bucket):
    def names(sessions):
        return {s.key: sorted(str(p).rsplit("/", 3)[-3:] for p in s.inputs) for s in sessions}

    remote, remote_problems = find_sessions(s3_archive)
    local, local_problems = find_sessions(tiny_archive)
    assert names(remote) == names(local) and len(remote) == SPEC.sessions
    assert remote_problems == local_problems == []
    broken = location(f"{bucket}/broken")  # one session without its BIAS master
    for name, _ in s3_archive.files():
        if "calib/BIAS_" not in name or not name.startswith(remote[0].key):
            (broken / name).write_bytes((s3_archive / name).read_bytes())
    sessions, problems = find_sessions(broken)
    assert [s.key for s in sessions] == [s.key for s in remote[1:]]
    assert [(str(d), reason) for d, reason in problems] == [
        (str(broken / remote[0].key), f"{broken / remote[0].key}: missing calibration: no calib/BIAS_*.fits.fz")
    ]
    with pytest.raises(FileNotFoundError, match="no objects under this prefix"):
        find_sessions(location(f"{bucket}/nothing-here"))


def test_s3_run_writes_the_local_runs_store(s3_store, local_store):
    assert complete_sessions(s3_store) == complete_sessions(local_store) and len(complete_sessions(s3_store)) == 3
    assert_same_store(local_store, s3_store)
    report = json.loads(report_path(s3_store).read_text())  # next to the store, in the bucket
    assert {s["status"] for s in report["sessions"]} == {"ok"}
    assert not location(f"{s3_store}.lock").exists()  # released


def test_verify_checks_checksums_through_the_store(s3_store, bucket):
    assert verify(s3_store) and all(not problems for problems in verify(s3_store).values())
    code, out, _ = _finish(_skyprep("verify", s3_store))
    assert code == 0 and "3 session(s) complete and intact" in out
    damaged = location(f"{bucket}/damaged.zarr")  # a copy of the store, one chunk object flipped
    for name, _ in s3_store.files():
        (damaged / name).write_bytes((s3_store / name).read_bytes())
    key = sorted(complete_sessions(damaged))[0]
    chunk = next(damaged / key / "calib" / name for name, _ in (damaged / key / "calib").files() if name != "zarr.json")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    assert any("calib" in problem for problem in verify(damaged)[key]), verify(damaged)[key]
    code, out, _ = _finish(_skyprep("verify", damaged))
    assert code == 1 and key in out


def test_killed_run_resumes_to_the_same_store(s3_archive, bucket, local_store):
    out = location(f"{bucket}/resumed.zarr")
    job = _skyprep("run", s3_archive, "--out", out, "--workers", 1)
    seen = set()
    deadline = time.monotonic() + TIMEOUT_S
    while job.poll() is None and not seen and time.monotonic() < deadline:
        for key in complete_sessions(out):  # never indexed complete before its arrays are intact
            assert check_session(out, key, index(out)[key]) == [], key
            seen.add(key)
        time.sleep(0.1)
    assert job.poll() is None, "the run ended before it could be killed"
    os.kill(job.pid, signal.SIGKILL)
    job.communicate(timeout=30)
    before = complete_sessions(out)
    assert before and before < complete_sessions(local_store)
    assert location(f"{out}.lock").exists()  # the killed run's lock object: stale, replaced by the rerun
    code, _, stderr = _finish(_skyprep("run", s3_archive, "--out", out, "--workers", 1))
    assert code == 0, stderr
    report = {s["key"]: s["status"] for s in json.loads(report_path(out).read_text())["sessions"]}
    assert {k for k, s in report.items() if s == "skipped"} == before
    assert_same_store(local_store, out)


def test_tools_accept_urls(s3_store, bucket, tmp_path):
    key = sorted(complete_sessions(s3_store))[0]
    code, out, err = _finish(_skyprep("info", s3_store))
    assert code == 0 and key in out, err
    code, out, err = _finish(_skyprep("split", s3_store, "--test-fraction", "0.34", "--seed", "1"))
    assert code == 0 and "2 train, 1 test" in out, err
    png, exported = location(f"{bucket}/out/preview.png"), location(f"{bucket}/out/session.fits.fz")
    for command in (("preview", s3_store, key, "-o", png), ("export", s3_store, key, exported)):
        code, _, err = _finish(_skyprep(*command))
        assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "session.fits.fz").write_bytes(exported.read_bytes())
    with fits.open(tmp_path / "session.fits.fz") as hdul:
        calib = zarr.open_group(zarr_store(s3_store), path=key, mode="r")["calib"][...]
        np.testing.assert_array_equal(hdul["SCI"].data, calib)


def test_synthesize_noise_and_syn_export_accept_urls(s3_store, local_store, bucket, tmp_path):
    """``skyprep synthesize`` redraws syn in the bucket as it does on disk (same seed, same frames);
    ``noise`` and ``export --syn`` write their files into the bucket."""
    remote, local = location(f"{bucket}/resynth.zarr"), tmp_path / "resynth.zarr"
    for name, _ in s3_store.files():
        (remote / name).write_bytes((s3_store / name).read_bytes())
    shutil.copytree(local_store, local)
    for store in (remote, local):
        code, out, err = _finish(_skyprep("synthesize", store, "--realizations", 2, "--seed", 3))
        assert code == 0 and "3 drawn" in out, err
    key = sorted(complete_sessions(remote))[0]
    syn = zarr.open_group(zarr_store(remote), path=key, mode="r")["syn"][...]
    assert syn.shape[0] == 2 and np.isfinite(syn).mean() > 0.5  # NaN only where the stack has no frame
    np.testing.assert_array_equal(syn, zarr.open_group(str(local), path=key, mode="r")["syn"][...])
    assert verify(remote) and all(not problems for problems in verify(remote).values())
    png = location(f"{bucket}/out/noise.png")
    code, _, err = _finish(_skyprep("noise", remote, key, "-o", png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = _finish(_skyprep("export", remote, key, f"{bucket}/synarchive", "--syn", "--realization", 1))
    assert code == 0, err
    exported = location(out.split("wrote ", 1)[1].strip())
    assert str(exported).startswith(f"{bucket}/synarchive/{key}/data/") and exported.name.endswith("_syn.fits.fz")
    (tmp_path / "syn.fits.fz").write_bytes(exported.read_bytes())
    with fits.open(tmp_path / "syn.fits.fz") as hdul:
        np.testing.assert_allclose(hdul[1].data, syn[1], atol=float(np.nanstd(syn[1])) / 8)


def test_loader_reads_patches_from_the_bucket(s3_store, local_store):
    params = LoaderParams(input="os", target="calib", patch_px=32, patches_per_epoch=8, seed=2)
    remote, local = PatchDataset(s3_store, params), PatchDataset(local_store, params)
    assert remote.sessions == local.sessions
    for i in range(len(remote)):
        a, b = remote[i], local[i]
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_a_strip_of_a_remote_frame_is_read_by_byte_ranges(bucket, tmp_path, monkeypatch):
    """A raw-like 1024 x 1024 frame (RICE_1, one-row tiles): a 16-row strip fetches its header,
    tile table and those 16 tiles, a small part of the object, and decodes as the local copy."""
    pixels = np.random.default_rng(3).poisson(1000, (1024, 1024)).astype(np.uint16)
    local = tmp_path / "raw.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(pixels, compression_type="RICE_1")]).writeto(local)
    remote = location(f"{bucket}/frames/raw.fits.fz")
    remote.write_bytes(local.read_bytes())
    fetched = []
    for method in ("read_bytes", "read_range", "read_ranges"):
        original = getattr(ObjectPath, method)

        def counting(self, *args, _original=original):
            data = _original(self, *args)
            fetched.append(sum(map(len, data)) if isinstance(data, list) else len(data))
            return data

        monkeypatch.setattr(ObjectPath, method, counting)
    (ref,) = list_images(remote)
    assert ref.decoder == list_images(local)[0].decoder == "rice" and ref.path == remote
    fits_files.close_open_files()
    fetched.clear()
    np.testing.assert_array_equal(read_rows(ref, 500, 516), pixels[500:516])
    assert 0 < sum(fetched) < remote.size() / 4, fetched
    fetched.clear()
    np.testing.assert_array_equal(read_rows(ref, 516, 532), pixels[516:532])  # the file stays open: tiles only
    assert 0 < sum(fetched) < 32 * 1024 * 2, fetched


def test_storage_options_from_the_config_reach_the_workers(s3_archive, bucket, local_store, tmp_path, s3_server):
    """No endpoint in the environment: the configuration's ``storage.options`` name the server,
    and the workers (other processes) use them as the client does."""
    config = tmp_path / "storage.yaml"
    config.write_text(f"storage:\n  options:\n    endpoint: {s3_server.endpoint}\n    allow_http: true\n")
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP")}
    key = sorted(complete_sessions(local_store))[0]
    out = f"{bucket}/by-config.zarr"
    code, _, stderr = _finish(_skyprep("run", s3_archive, "--out", out, "--workers", 1, "--config", config,
                                       "--sessions", key, env=env))  # fmt: skip
    assert code == 0, stderr
    assert_same_store(local_store, location(out), {key})


def test_memory_archive_and_store_in_one_process(tiny_archive, local_store):
    """``memory://`` lives in one process: a threads-only client runs the job there."""
    archive, store = location("memory://scratch/archive"), location("memory://scratch/store.zarr")
    for path in (p for p in tiny_archive.rglob("*") if p.is_file()):
        (archive / path.relative_to(tiny_archive).as_posix()).write_bytes(path.read_bytes())
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        assert run(archive, store, Config(), client, echo=lambda line: None).exit_code == 0
    assert_same_store(local_store, store)
    assert all(not problems for problems in verify(store).values())
