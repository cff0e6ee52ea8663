"""The whole job on a small synthetic archive, checked against the generator's ground truth."""

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from pipeline.config import Config
from pipeline.io.contract import VARIABLES
from pipeline.io.index import complete_sessions, index
from pipeline.runner import run
from pipeline.steps.masks import Flag

from .conftest import FRAMES, SESSION_KEYS


@pytest.fixture(scope="module")
def store(archive, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "out.zarr"
    report = run(archive, out, Config(), client, echo=lambda line: None)
    assert report.exit_code == 0, report.table()
    return out


def _truth(archive, key):
    directory = archive / key / "truth"
    return dict(np.load(directory / "truth.npz")), json.loads((directory / "truth.json").read_text())


def _sessions(store):
    """Every session group of ``store``; fails unless they are exactly the archive's sessions, all complete."""
    tree = xr.open_datatree(store, engine="zarr")
    sessions = {f"{inst}/{obs}": tree[inst][obs].to_dataset() for inst in tree.children for obs in tree[inst].children}
    assert set(sessions) == complete_sessions(store) == set(SESSION_KEYS), f"{store}: {sorted(sessions)}"
    return sessions


def test_store_follows_the_contract(store):
    sessions = _sessions(store)
    assert set(sessions) == set(index(store))
    for key, ds in sessions.items():
        for variable in VARIABLES:  # the test archive has every optional product
            assert ds[variable.name].dims == variable.dims, (key, variable.name)
            assert ds[variable.name].dtype == variable.dtype, (key, variable.name)
            assert ds[variable.name].attrs["long_name"] == variable.long_name, (key, variable.name)
        assert set(ds.data_vars) == {v.name for v in VARIABLES}, key
        assert ds.sizes["frame"] == FRAMES
        assert ds["mask"].attrs["flag_meanings"].split()[:4] == ["bad_pixel", "saturated", "low_flat", "cosmic_ray"]
        assert ds.attrs["complete"] and len(ds.attrs["inputs"]) == 1 + 4 + FRAMES + 4 + 2
        assert all(len(f["sha256"]) == 64 for f in ds.attrs["inputs"])
        assert ds.attrs["exptime"] > 0 and ds.attrs["gain"] > 0
        chunks = ds["e91"].encoding["chunks"]
        assert chunks == (1, 256, 256)


def _pulls(ds, truth, meta):
    expected_adu = truth["scene_e"] / meta["gain_nominal"]
    good = ds["mask"].values == 0
    return ((ds["calib"].values - expected_adu) / np.sqrt(ds["variance"].values))[good]


@pytest.mark.parametrize("key", ["muscat3_g/20240315_000_000", "mosaic_g/20240315_001_000"])
def test_calibrated_frame_agrees_with_truth_within_its_variance(store, archive, key):
    ds = _sessions(store)[key]
    truth, meta = _truth(archive, key)
    pulls = _pulls(ds, truth, meta)
    assert abs(pulls.mean()) < 0.05
    assert abs(pulls.std() - 1) < 0.05


def test_agreement_with_the_archives_products_is_recorded(store):
    for key, ds in _sessions(store).items():
        noise_adu = np.sqrt(np.median(ds["variance"].values))
        check = index(store)[key]["reference_check"]
        assert ds.attrs["reference_check"] == check, key
        for product in ("os", "calib"):
            diff = (ds[product] - ds[f"ref_{product}"]).values
            if product == "calib":
                diff = diff[ds["mask"].values == 0]
            assert check[product]["median"] == pytest.approx(np.nanmedian(diff), abs=1e-4), key
            assert abs(check[product]["median"]) < 0.05 * noise_adu, key
            assert check[product]["robust_std"] < 0.05 * noise_adu, key


def test_recovered_drift_matches_truth(store, archive):
    for key, ds in _sessions(store).items():
        truth, _ = _truth(archive, key)
        applied = ds["shift"].values
        assert np.all(np.abs(-applied - truth["drift"]) <= 0.5 + 0.1), key
        measured = np.array([[r["dy"], r["dx"]] for r in ds.attrs["registration"]])
        assert np.all(np.abs(measured - truth["drift"]) < 0.2), key


def test_stack_noise_falls_as_one_over_sqrt_n(store, archive):
    ds = _sessions(store)["muscat3_g/20240315_000_000"]
    truth, meta = _truth(archive, "muscat3_g/20240315_000_000")
    expected = truth["scene_e"] / meta["gain_nominal"]
    background = (ds["source_mask"].values == 1) & (ds["count"].values == FRAMES)
    background[:8], background[-8:], background[:, :8], background[:, -8:] = False, False, False, False
    single = (ds["e91"].values[0] - expected)[background & (ds["e91_mask"].values[0] == 0)]
    stacked = (ds["mean"].values - expected)[background]
    ratio = np.std(stacked) / np.std(single)
    assert 0.85 / np.sqrt(FRAMES) < ratio < 1.2 / np.sqrt(FRAMES)


def test_mask_bits_sit_where_the_generator_put_defects(store, archive):
    for key, ds in _sessions(store).items():
        truth, _ = _truth(archive, key)
        mask = ds["mask"].values
        assert np.all(mask[truth["bad_pixels"]] & Flag.BAD_PIXEL), key
        assert np.all(mask[truth["saturated"]] & Flag.SATURATED), key
        assert np.all(mask[truth["low_flat"]] & Flag.LOW_FLAT), key
        clean = ~(truth["bad_pixels"] | truth["saturated"] | truth["low_flat"] | truth["hot_pixels"])
        assert np.mean(mask[clean] != 0) < 0.01, key


def test_rerun_skips_complete_sessions(store, archive, client):
    report = run(archive, store, Config(), client, echo=lambda line: None)
    assert {r.status for r in report.results} == {"skipped"}
    assert report.exit_code == 0


def test_bad_session_fails_alone_and_a_rerun_completes_it(archive_copy, client, tmp_path):
    e91 = sorted((archive_copy / "muscat4_r" / "20240315_000_001" / "e91").iterdir())[2]
    good = e91.read_bytes()
    e91.write_bytes(good[: len(good) // 3])
    out = tmp_path / "out.zarr"
    report = run(archive_copy, out, Config(), client, echo=lambda line: None)
    assert report.exit_code == 1
    failed = {r.key: r.reason for r in report.results if r.status == "failed"}
    assert list(failed) == ["muscat4_r/20240315_000_001"]
    assert e91.name in failed["muscat4_r/20240315_000_001"]
    assert complete_sessions(out) == {"muscat3_g/20240315_000_000", "mosaic_g/20240315_001_000"}
    e91.write_bytes(good)
    again = run(archive_copy, out, Config(), client, echo=lambda line: None)
    assert again.exit_code == 0
    assert [r.status for r in again.results].count("ok") == 1
    assert len(complete_sessions(out)) == 3


def test_command_line_runs_the_job_and_reports(archive, tmp_path):
    out = tmp_path / "cli.zarr"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        str(archive),
        "--out",
        str(out),
        "--workers",
        "1",
        "--sessions",
        "muscat3_*/*",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 ok, 0 skipped, 0 failed" in done.stdout
    report = json.loads((tmp_path / "cli.zarr.report.json").read_text())
    assert [s["status"] for s in report["sessions"]] == ["ok"]
    usage = subprocess.run([sys.executable, "-m", "pipeline", "run", str(archive)], capture_output=True, text=True)
    assert usage.returncode == 2 and "--out" in usage.stderr
