"""Overscan estimators against astropy and ccdproc on the same pixels."""

import numpy as np
import pytest
from astropy.modeling import models
from astropy.nddata import CCDData
from astropy.stats import sigma_clip

from pipeline.steps.overscan import OverscanParams, overscan_level_adu

ccdproc = pytest.importorskip("ccdproc")


@pytest.fixture
def raw():
    rng = np.random.default_rng(3)
    ny, nx, nover = 200, 120, 20
    rows = 1000 + 5 * np.sin(np.arange(ny) / 30.0)  # slowly varying bias level, ADU
    data = rng.normal(rows[:, None], 4.0, (ny, nx + nover))
    data[:, :nx] += 500.0
    data[17, nx + 3] = 4000.0  # hot overscan pixel: the clipped mean must ignore it
    return data, nx


def test_clipped_mean_matches_astropy_one_pass_mad_clip(raw):
    data, nx = raw
    level = overscan_level_adu(data[:, nx:], OverscanParams(method="clipped_mean", sigma=3.0))
    expected = sigma_clip(data[:, nx:], sigma=3, maxiters=1, cenfunc="median", stdfunc="mad_std").mean()
    assert level.shape == (data.shape[0], 1)
    np.testing.assert_allclose(level, expected, rtol=1e-12)


@pytest.mark.parametrize("method,model", [("row_median", None), ("polynomial", models.Polynomial1D(3))])
def test_row_methods_match_ccdproc_subtract_overscan(raw, method, model):
    data, nx = raw
    ccd = CCDData(data, unit="adu")
    ref = ccdproc.subtract_overscan(
        ccd, fits_section=f"[{nx + 1}:{data.shape[1]},:]", overscan_axis=1, median=True, model=model
    )
    level = overscan_level_adu(data[:, nx:], OverscanParams(method=method, order=3))
    np.testing.assert_allclose(data - level, ref.data, rtol=0, atol=1e-9)
