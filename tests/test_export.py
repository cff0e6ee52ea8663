"""``skyprep export``: a stored session as one multi-extension FITS file, read back with astropy."""

import io

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from distributed import Client

from pipeline.cli import main
from pipeline.config import Config
from pipeline.io.fits_headers import image, list_images
from pipeline.runner import run
from pipeline.synth import SynthSpec, write_archive
from pipeline.tools.export import global_header

KEYS = {1: "muscat3_g/20240315_009_000", 4: "mosaic_g/20240315_010_000"}
PAIRS = {"SCI": "calib", "VAR": "variance", "MASK": "mask", "COUNT": "count", "MEAN": "mean"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-archive")
    write_archive(root, SynthSpec(sessions=1, size=128, frames=3, amps=1, seed=9))
    write_archive(root, SynthSpec(sessions=1, size=128, frames=3, amps=4, seed=10))
    out = tmp_path_factory.mktemp("export-store") / "out.zarr"
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        assert run(root, out, Config(), client, echo=lambda line: None).exit_code == 0
    return out


@pytest.mark.parametrize("amps", sorted(KEYS))
def test_export_reads_back_equal_to_the_store(store, tmp_path, amps):
    key, out = KEYS[amps], tmp_path / "session.fits.fz"
    assert main(["export", str(store), key, str(out)]) == 0
    ds = xr.open_zarr(store, group=key, consolidated=False)
    with fits.open(out) as hdul:
        primary = hdul[0].header
        assert primary["INHERIT"] is True and primary["SESSION"] == key
        assert primary["EXPTIME"] == ds.attrs["exptime"] and primary["GAIN"] == ds.attrs["gain"]
        assert primary["OBJECT"] == ds.attrs["object"] and primary["FILTER"] == ds.attrs["filter"]
        assert "DATASEC" not in primary and "BIASSEC" not in primary
        assert [h.name for h in hdul[1:]] == list(PAIRS)
        assert hdul["MASK"]._bintable.header["ZCMPTYPE"] == "PLIO_1"
        for name, variable in PAIRS.items():
            np.testing.assert_array_equal(hdul[name].data, ds[variable].values, err_msg=name)
        assert hdul["MASK"].header["MASKB1"] == "saturated"
    sci = image(f"{out}[SCI]")  # inheritance through our own reader: the primary's keywords apply
    assert sci.header["EXPTIME"] == ds.attrs["exptime"] and sci.header["BUNIT"] == "adu"
    assert [r.name for r in list_images(out)] == list(PAIRS)


def test_export_of_an_unknown_session_is_a_usage_error(store, tmp_path, capsys):
    assert main(["export", str(store), "nope/1", str(tmp_path / "x.fits")]) == 2
    assert "no complete session 'nope/1'" in capsys.readouterr().err


def test_a_session_key_outside_ascii_is_escaped_in_the_header():
    attrs = {"header_primary": "", "header_amps": ["OBJECT  = 'M 31'"], "n_amps": 1, "gain": 2.0,
             "instrument": "muscat3", "band": "g", "obs_id": "nuit_étoilée"}  # fmt: skip
    header = global_header(attrs)
    assert header["SESSION"] == "muscat3_g/nuit_\\xe9toil\\xe9e"
    assert header["OBJECT"] == "M 31"
    fits.PrimaryHDU(header=header).writeto(io.BytesIO())  # a valid FITS header


def test_an_export_that_cannot_be_written_is_an_error_naming_the_file_not_a_usage_error(store, tmp_path, capsys):
    out = tmp_path / "missing-dir" / "x.fits"
    assert main(["export", str(store), KEYS[1], str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{out}: cannot write the export (No such file or directory)" in err
