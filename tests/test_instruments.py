"""The keyword dictionary through the pipeline: an 8-amplifier Mosaic-style archive end to end,
the session's logical metadata and raw headers, clear errors, and instruments added as data."""

import json

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from distributed import Client

from pipeline.config import Config
from pipeline.graph import build_session
from pipeline.io.discover import load_session
from pipeline.io.index import complete_sessions
from pipeline.io.keywords import PROFILES_ENV, MissingKeyword, lookup, select_profile
from pipeline.runner import run
from pipeline.synth import SynthSpec, write_archive

KEY = "mosaic_g/20240315_007_000"


@pytest.fixture(scope="module")
def eight_amps(tmp_path_factory):
    root = tmp_path_factory.mktemp("eight")
    write_archive(root, SynthSpec(sessions=1, size=128, frames=3, amps=8, seed=7))
    return root


def test_eight_amplifier_archive_runs_end_to_end_with_logical_metadata(eight_amps, tmp_path):
    out = tmp_path / "out.zarr"
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        report = run(eight_amps, out, Config(), client, echo=lambda line: None)
    assert report.exit_code == 0, report.table()
    assert complete_sessions(out) == {KEY}
    ds = xr.open_zarr(out, group=KEY, consolidated=False)
    truth = json.loads((eight_amps / KEY / "truth" / "truth.json").read_text())
    scene = np.load(eight_amps / KEY / "truth" / "truth.npz")["scene_e"]
    assert ds.attrs["profile"] == "mosaic" and ds.attrs["n_amps"] == 8
    meta = ds.attrs["metadata"]
    for n, amp in enumerate(truth["amps"], start=1):
        assert meta[f"Detector.Amp[{n}].gain"] == {"value": amp["gain"], "units": "electron/adu", "keyword": "GAIN"}
        assert meta[f"Detector.Amp[{n}].detsec"]["value"] == amp["detsec"]
    assert meta["Detector.gain"] == {"value": truth["gain_nominal"], "units": "electron/adu", "keyword": "GAIN"}
    assert meta["Exposure.exptime"]["value"] == truth["exptime"] and meta["Exposure.exptime"]["units"] == "s"
    assert meta["Exposure.darktime"]["keyword"] == "EXPTIME"  # the substitute stood in
    primary = fits.Header.fromstring(ds.attrs["header_primary"], sep="\n")
    assert primary["NEXTEND"] == 8
    amp3 = fits.Header.fromstring(ds.attrs["header_amps"][2], sep="\n")
    assert amp3["EXTNAME"].lower() == "im3" and amp3["GAIN"] == truth["amps"][2]["gain"]
    good = ds["mask"].values == 0
    pulls = ((ds["calib"].values - scene / truth["gain_nominal"]) / np.sqrt(ds["variance"].values))[good]
    assert abs(pulls.mean()) < 0.1 and abs(pulls.std() - 1) < 0.1


def _drop_gain(path):
    with fits.open(path) as hdul:
        hdul = fits.HDUList([hdu.copy() for hdu in hdul])
    for hdu in hdul:
        hdu.header.remove("GAIN", ignore_missing=True, remove_all=True)
    hdul.writeto(path, overwrite=True)


def test_missing_gain_names_element_keywords_and_file(eight_amps, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(eight_amps, root)
    raw = next((root / KEY / "data").glob("*_raw.fits.fz"))
    _drop_gain(raw)
    with pytest.raises(MissingKeyword) as caught:
        build_session(load_session(root / KEY), Config())
    message = str(caught.value)
    assert str(raw) in message and "Detector" in message and "gain" in message and "GAIN" in message


def test_profile_selected_from_telescope_and_overridden_by_config():
    assert select_profile(fits.Header({"TELESCOP": "kp4m"})).name == "mosaic"
    assert select_profile(fits.Header({"INSTRUME": "muscat3"}), "mosaic", "generic").name == "generic"


def test_an_instrument_is_added_with_a_yaml_file_only(tmp_path, monkeypatch):
    profile_file = tmp_path / "mycam.yaml"
    profile_file.write_text(
        "profiles:\n"
        "  mycam:\n"
        "    description: A camera that calls its gain EGAIN and never writes RDNOISE.\n"
        "    match: {instrument: [mycam]}\n"
        "    keywords: {Detector.Amp.gain: EGAIN}\n"
        "    defaults: {Detector.Amp.rdnoise: 4.5}\n"
    )
    header = fits.Header({"INSTRUME": "MyCam-2", "EGAIN": 3.25, "GAIN": 99.0})
    assert select_profile(header).name == "generic"
    monkeypatch.setenv(PROFILES_ENV, str(profile_file))
    profile = select_profile(header)
    assert profile.name == "mycam"
    assert lookup(header, "Detector.Amp.gain", profile, "f.fits") == 3.25
    assert lookup(header, "Detector.Amp.rdnoise", profile, "f.fits") == 4.5
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="missing.yaml: not a profile file"):
        select_profile(header)
