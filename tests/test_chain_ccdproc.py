"""The whole calibration chain against ccdproc on the synthetic archive's raw frames, per amplifier:
``subtract_overscan`` (or astropy's clipped mean for the observatory's scalar), ``trim_image``,
``gain_correct``, ``subtract_bias``, ``create_deviation``, ``subtract_dark(scale=True)``,
``flat_correct``, then back to ADU."""

import dataclasses

import numpy as np
import pytest
from astropy import units as u
from astropy.modeling import models
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.stats import sigma_clip

from pipeline.config import Config
from pipeline.graph import build_session
from pipeline.io.discover import find_sessions
from pipeline.io.fits_headers import list_images
from pipeline.io.fits_reader import read_image
from pipeline.io.keywords import select_profile
from pipeline.steps.amplifiers import Amplifier
from pipeline.steps.cosmics import CosmicParams
from pipeline.steps.overscan import OverscanParams

ccdproc = pytest.importorskip("ccdproc")
EPS32 = np.finfo(np.float32).eps


def _master(path):
    refs = {ref.name.upper(): ref for ref in list_images(path)}
    return read_image(refs["SCI"]).astype(np.float64), read_image(refs["ERR"]).astype(np.float64)


def _ccdproc_amp(amp, masters, method, params, darktime_s, gain_nominal):
    """os (ADU), calib (ADU) and variance (ADU^2) of one amplifier, in detector orientation."""
    raw = CCDData(read_image(amp.ref).astype(np.float64), unit="adu")
    biassec, trimsec = amp.ref.header["BIASSEC"], amp.ref.header["TRIMSEC"]
    if method == "clipped_mean":
        ys, xs = amp.biassec.slices
        level = sigma_clip(raw.data[ys, xs], sigma=params.sigma, maxiters=1, cenfunc="median", stdfunc="mad_std").mean()
        os = raw.subtract(level * u.adu)
    else:
        model = models.Polynomial1D(params.order) if method == "polynomial" else None
        os = ccdproc.subtract_overscan(raw, fits_section=biassec, overscan_axis=1, median=True, model=model)
    os = ccdproc.trim_image(os, fits_section=trimsec)
    region = amp.target
    (bias, bias_err), (dark, dark_err), (flat, flat_err) = (
        (amp.detsec.orient(m[region]), amp.detsec.orient(e[region])) for m, e in masters
    )  # raw orientation
    ccd = ccdproc.gain_correct(os, amp.gain_e_per_adu * u.electron / u.adu)
    poisson = ccdproc.create_deviation(
        ccdproc.subtract_bias(ccd, CCDData(bias, unit="electron")), readnoise=amp.rdnoise_e * u.electron
    )  # Poisson of the signal after bias
    ccd.uncertainty = poisson.uncertainty
    ccd = ccdproc.subtract_bias(ccd, CCDData(bias, unit="electron", uncertainty=StdDevUncertainty(bias_err)))
    dark = CCDData(dark, unit="electron", uncertainty=StdDevUncertainty(dark_err))
    ccd = ccdproc.subtract_dark(ccd, dark, data_exposure=darktime_s * u.s, dark_exposure=1.0 * u.s, scale=True)
    ccd = ccdproc.flat_correct(ccd, CCDData(flat, unit="", uncertainty=StdDevUncertainty(flat_err)), norm_value=1.0)
    calib = ccd.divide(gain_nominal * u.electron / u.adu)
    variance = calib.uncertainty.array**2
    return amp.detsec.orient(os.data), amp.detsec.orient(calib.data), amp.detsec.orient(variance)


@pytest.mark.parametrize("key", ["muscat3_g/20240315_000_000", "mosaic_g/20240315_001_000"])
@pytest.mark.parametrize("method", ["clipped_mean", "row_median", "polynomial"])
def test_chain_matches_ccdproc_per_amplifier(archive, key, method):
    session = next(s for s in find_sessions(archive)[0] if s.key == key)
    params = OverscanParams(method=method)
    config = dataclasses.replace(Config(), overscan=params, cosmics=CosmicParams(enabled=False))
    ds = build_session(session, config).dataset[["os", "calib", "variance", "mask"]].compute(scheduler="sync")
    refs = list_images(session.raw)
    profile = select_profile(refs[0].header, session.instrument)
    amps = [Amplifier.from_header(ref, profile) for ref in refs]
    assert len(amps) == (1 if key.startswith("muscat") else 4)
    masters = [_master(session.masters[kind]) for kind in ("BIAS", "DARK", "SKYFLAT")]
    for amp in amps:
        os, calib, variance = _ccdproc_amp(amp, masters, method, params, ds.attrs["darktime"], ds.attrs["gain"])
        region = amp.target
        np.testing.assert_allclose(ds["os"].values[region], os, rtol=0, atol=4 * EPS32 * np.abs(os).max())
        scale = np.abs(os).max() * amp.gain_e_per_adu / ds.attrs["gain"] / np.abs(masters[2][0]).min()
        np.testing.assert_allclose(ds["calib"].values[region], calib, rtol=0, atol=8 * EPS32 * scale)
        # create_deviation takes the signal as is; the observatory its absolute value: compare where equal
        positive = os * amp.gain_e_per_adu - masters[0][0][region] > 0
        np.testing.assert_allclose(ds["variance"].values[region][positive], variance[positive], rtol=4e-6)
        assert positive.mean() > 0.99
