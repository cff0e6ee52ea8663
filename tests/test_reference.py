"""Agreement with the archive's own products, recorded in the session attributes and shown by info."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import mad_std
from distributed import Client

from pipeline.config import Config
from pipeline.io.index import index
from pipeline.io.store import open_store
from pipeline.runner import run
from pipeline.steps.reference import robust_difference
from pipeline.tools.info import describe

KEY = "muscat3_g/20240315_000_000"
OFFSET_ADU = 5.0


def test_robust_difference_matches_astropy():
    rng = np.random.default_rng(11)
    ours = rng.normal(100.0, 3.0, (64, 64))
    ref = ours - rng.normal(0.4, 0.2, ours.shape)
    ref[3, :] = np.nan
    good = np.ones(ours.shape, bool)
    good[10:20] = False
    stats = robust_difference(ours, ref, good)
    use = good & np.isfinite(ref)
    assert stats["n"] == use.sum()
    assert stats["median"] == pytest.approx(np.median((ours - ref)[use]), rel=1e-12)
    assert stats["robust_std"] == pytest.approx(mad_std((ours - ref)[use]), rel=1e-4)
    assert robust_difference(ours, np.full(ours.shape, np.nan))["n"] == 0


def test_offset_reference_shows_in_attributes_and_info(archive_copy, tmp_path):
    path = archive_copy / KEY / "data" / f"{KEY.split('/')[1]}_calib.fits.fz"
    with fits.open(path) as hdul:
        hdu = hdul[1]
        shifted = fits.CompImageHDU(
            hdu.data + np.float32(OFFSET_ADU), hdu.header, compression_type="RICE_1", quantize_level=-0.01
        )  # lossless-enough: absolute step 0.01 ADU
    fits.HDUList([fits.PrimaryHDU(), shifted]).writeto(path, overwrite=True)
    out = tmp_path / "out.zarr"
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        report = run(archive_copy, out, Config(), client, pattern="muscat3_g/*", echo=lambda line: None)
    assert report.exit_code == 0, report.table()
    check = index(out)[KEY]["reference_check"]
    ds = open_store(out)[KEY].to_dataset()
    assert ds.attrs["reference_check"] == check
    assert check["calib"]["median"] == pytest.approx(-OFFSET_ADU, abs=0.1)
    assert abs(check["os"]["median"]) < 0.1
    assert check["calib"]["n"] == int((ds["mask"].values == 0).sum())
    assert f"{check['calib']['median']:+.3g}" in describe(out)
