"""Bad input, one damage per case: the damaged session fails (or degrades) alone, with a reason naming the file.

Each case damages the session ``VICTIM`` of a private copy of a tiny archive, runs the job and
checks the run report (the JSON next to the store), the other session and the exit status.
"""

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

from pipeline.config import Config
from pipeline.io.contract import Presence, named
from pipeline.io.index import complete_sessions
from pipeline.runner import report_path, run
from pipeline.steps.masks import Flag
from pipeline.steps.params import SanityParams
from pipeline.synth import SynthSpec, write_archive

VICTIM, HEALTHY = "muscat3_g/20240315_003_000", "muscat4_r/20240315_003_001"
STACK_VARIABLES = set(named(Presence.E91))


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_archive(root, SynthSpec(sessions=2, size=128, frames=3, amps=1, seed=3))
    return root


@pytest.fixture
def damaged(tiny_archive, tmp_path):
    root = tmp_path / "archive"
    shutil.copytree(tiny_archive, root)
    return root


def _one(root, pattern):
    return next((root / VICTIM).glob(pattern))


def _rewrite(path, change):
    """Rewrite the FITS file ``path`` after ``change(hdul)`` (recompressed by astropy)."""
    with fits.open(path) as hdul:
        hdul = fits.HDUList([hdu.copy() for hdu in hdul])
    change(hdul)
    hdul.writeto(path, overwrite=True)


def _truncate(root):
    path = _one(root, "data/*_raw.fits.fz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path.name


def _corrupt_tiles(root):
    path = _one(root, "calib/BIAS_*.fits.fz")
    data = bytearray(path.read_bytes())
    with fits.open(path, disable_image_compression=True) as hdul:
        start = hdul.fileinfo(1)["datLoc"] + hdul[1].header["NAXIS1"] * hdul[1].header["NAXIS2"]
        size = hdul[1].header["PCOUNT"]
    rng = np.random.default_rng(0)
    a, b = start + size // 4, start + size // 2
    data[a:b] = rng.integers(0, 256, b - a, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path.name


def _not_fits(root):
    path = _one(root, "calib/DARK_*.fits.fz")
    path.write_text("this is a text file, not a FITS file\n")
    return path.name


def _remove(kind):
    def damage(root):
        path = _one(root, f"calib/{kind}_*.fits.fz")
        path.unlink()
        return f"calib/{kind}_"

    damage.__name__ = f"missing_{kind.lower()}"
    return damage


def _wrong_shape(root):
    path = _one(root, "calib/SKYFLAT_*.fits.fz")

    def crop(hdul):
        for hdu in hdul[1:]:
            hdu.data = hdu.data[:-16, :-16].copy()

    _rewrite(path, crop)
    return path.name


def _drop_keyword(keyword):
    def damage(root):
        path = _one(root, "data/*_raw.fits.fz")

        def drop(hdul):
            for hdu in hdul:
                hdu.header.remove(keyword, ignore_missing=True, remove_all=True)
            if keyword == "EXPTIME":
                for hdu in hdul:
                    hdu.header.remove("EXPOSURE", ignore_missing=True, remove_all=True)

        _rewrite(path, drop)
        return keyword

    damage.__name__ = f"missing_{keyword.lower()}"
    return damage


def _set_keyword(keyword, value):
    def damage(root):
        def change(hdul):
            for hdu in hdul:
                if keyword in hdu.header:
                    hdu.header[keyword] = value

        _rewrite(_one(root, "data/*_raw.fits.fz"), change)
        return f"{keyword} = {value}"

    damage.__name__ = f"{keyword.lower()}_{value}"
    return damage


def _scale_master(kind, factor):
    def damage(root):
        path = _one(root, f"calib/{kind}_*")

        def change(hdul):
            for hdu in hdul:
                if hdu.data is not None and hdu.name in ("", "PRIMARY", "SCI", "COMPRESSED_IMAGE"):
                    hdu.data = (hdu.data * factor).astype(np.float32)

        _rewrite(path, change)
        return path.name

    damage.__name__ = f"{kind.lower()}_times_{factor}"
    return damage


def _invalid_info(root):
    path = root / VICTIM / "info.json"
    path.write_text('{"band": "g", ')
    return "info.json"


FAILURES = [
    _truncate,
    _corrupt_tiles,
    _not_fits,
    _remove("BIAS"),
    _remove("DARK"),
    _remove("SKYFLAT"),
    _wrong_shape,
    _drop_keyword("GAIN"),
    _drop_keyword("EXPTIME"),
    _set_keyword("GAIN", 0.0),
    _set_keyword("GAIN", -2.0),
    _set_keyword("EXPTIME", 0.0),
    _scale_master("SKYFLAT", 0.0),
    _scale_master("DARK", -1000.0),
    _invalid_info,
]


def _run(root, out, client):
    report = run(root, out, Config(), client, echo=lambda line: None)
    report.write_json(report_path(out))
    return report, json.loads(report_path(out).read_text())


@pytest.mark.parametrize("damage", FAILURES, ids=lambda f: f.__name__.strip("_"))
def test_damaged_session_fails_alone_naming_the_file(damage, damaged, client, tmp_path):
    named = damage(damaged)
    out = tmp_path / "out.zarr"
    report, saved = _run(damaged, out, client)
    assert report.exit_code == 1
    statuses = {s["key"]: s for s in saved["sessions"]}
    assert statuses[HEALTHY]["status"] == "ok"
    assert statuses[VICTIM]["status"] == "failed"
    assert named in statuses[VICTIM]["reason"], statuses[VICTIM]["reason"]
    assert "Error:" not in statuses[VICTIM]["reason"], "an input error should not surface as a bare exception"
    assert complete_sessions(out) == {HEALTHY}


def test_a_check_in_warn_only_is_recorded_instead(damaged, client, tmp_path):
    _scale_master("DARK", -1000.0)(damaged)
    config = dataclasses.replace(Config(), sanity=SanityParams(warn_only=("dark_negative",)))
    out = tmp_path / "out.zarr"
    assert run(damaged, out, config, client, echo=lambda line: None).exit_code == 0
    warnings = _session(out).attrs["sanity_warnings"]
    assert len(warnings) == 1 and "significantly negative" in warnings[0] and "DARK_" in warnings[0]
    assert _session(out, HEALTHY).attrs["sanity_warnings"] == []


def _session(out, key=VICTIM):
    return xr.open_zarr(out, group=key, consolidated=False)


def test_missing_bpm_gives_a_session_without_bad_pixel_bits(damaged, client, tmp_path):
    _remove("BPM")(damaged)
    out = tmp_path / "out.zarr"
    report, _ = _run(damaged, out, client)
    assert report.exit_code == 0, report.table()
    ds = _session(out)
    assert not np.any(ds["mask"].values & Flag.BAD_PIXEL)
    assert np.any(_session(out, HEALTHY)["mask"].values & Flag.BAD_PIXEL)


def test_session_without_e91_frames_has_no_stack_variables(damaged, client, tmp_path):
    shutil.rmtree(damaged / VICTIM / "e91")
    out = tmp_path / "out.zarr"
    report, _ = _run(damaged, out, client)
    assert report.exit_code == 0, report.table()
    ds = _session(out)
    assert not STACK_VARIABLES & set(ds.data_vars)
    assert {"os", "calib", "mask", "bias", "dark", "flat"} <= set(ds.data_vars)
    assert "syn" not in ds and "noise_model" not in ds.attrs  # no stack, so no noise model and no syn
    assert "syn" in _session(out, HEALTHY) and "noise_model" in _session(out, HEALTHY).attrs


def test_session_with_one_e91_frame_is_a_stack_of_one(damaged, client, tmp_path):
    for frame in sorted((damaged / HEALTHY / "e91").iterdir())[1:]:
        frame.unlink()
    out = tmp_path / "out.zarr"
    report, _ = _run(damaged, out, client)
    assert report.exit_code == 0, report.table()
    ds = _session(out, HEALTHY)
    assert ds.attrs["registration"][0]["ok"]
    assert ds.sizes["frame"] == 1
    count, mean, std = ds["count"].values, ds["mean"].values, ds["std"].values
    assert set(np.unique(count)) <= {0, 1} and count.sum() > 0.9 * count.size
    used = count == 1
    np.testing.assert_array_equal(mean[used], ds["e91"].values[0][used])
    assert np.all(std[used] == 0)
    assert np.all(np.isnan(mean[~used]))


def test_nan_and_inf_pixels_are_flagged_no_data(damaged, client, tmp_path):
    bias, frame = _one(damaged, "calib/BIAS_*.fits.fz"), sorted((damaged / VICTIM / "e91").iterdir())[0]
    bad_bias, bad_frame = (np.s_[40, 10:20], np.s_[60, 30:40])

    def poison_bias(hdul):
        hdul["SCI"].data[bad_bias] = [np.nan, np.inf, -np.inf] * 3 + [np.nan]

    def poison_frame(hdul):
        hdul["SCI"].data[bad_frame] = np.nan

    _rewrite(bias, poison_bias)
    _rewrite(frame, poison_frame)
    out = tmp_path / "out.zarr"
    report, _ = _run(damaged, out, client)
    assert report.exit_code == 0, report.table()
    ds = _session(out)
    assert np.all(ds["mask"].values[bad_bias] & Flag.NO_DATA)
    assert np.all(~np.isfinite(ds["calib"].values[bad_bias]))
    shifted = ds["e91_mask"].values[0]
    assert np.sum((shifted & Flag.NO_DATA) != 0) >= 10
    assert np.all(np.isfinite(ds["mean"].values[ds["count"].values > 0]))


def test_unwritable_output_is_a_clear_error(tiny_archive, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's parent folder should be\n")
    out = blocker / "out.zarr"
    cmd = [sys.executable, "-m", "pipeline", "run", str(tiny_archive), "--out", str(out), "--workers", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert str(out) in done.stderr and "cannot write" in done.stderr
    assert "Traceback" not in done.stderr


def test_raw_sections_smaller_than_the_masters_blame_the_raw_frame(damaged, client, tmp_path):
    """DETSEC, DATASEC and TRIMSEC agreeing on a narrower detector than every master: the raw frame
    is at fault (the error once named the bias master)."""
    raw = _one(damaged, "data/*_raw.fits.fz")

    def narrow(hdul):
        for hdu in hdul[1:]:
            for keyword in ("DETSEC", "DATASEC", "TRIMSEC"):
                hdu.header[keyword] = "[1:112,1:128]"

    _rewrite(raw, narrow)
    report, saved = _run(damaged, tmp_path / "out.zarr", client)
    reason = {s["key"]: s for s in saved["sessions"]}[VICTIM]["reason"]
    assert reason.startswith(str(raw)), reason
    assert "DETSEC [1:112,1:128]" in reason and "112 x 128" in reason and "128 x 128" in reason
    assert report.exit_code == 1 and complete_sessions(tmp_path / "out.zarr") == {HEALTHY}


def test_one_master_of_another_shape_is_blamed_itself(damaged, client, tmp_path):
    flat = _one(damaged, "calib/SKYFLAT_*.fits.fz")
    _wrong_shape(damaged)
    _, saved = _run(damaged, tmp_path / "out.zarr", client)
    reason = {s["key"]: s for s in saved["sessions"]}[VICTIM]["reason"]
    assert reason.startswith(str(flat)) and "does not match the raw frame's trimmed 128 x 128" in reason, reason
