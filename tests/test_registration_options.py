"""Registration and stacking options of the session graph, against the generator's truth and
direct numpy computations: WCS offsets (and their fallback), sub-pixel resampling, weighted
and median stacks."""

from __future__ import annotations

import dataclasses

import dask
import numpy as np
import pytest
from astropy.io import fits

from pipeline.config import Config, RegisterConfig
from pipeline.graph import build_session
from pipeline.io.discover import load_session
from pipeline.steps.masks import Flag
from pipeline.steps.stack import ClipParams
from pipeline.synth.files import write_images

KEY = "muscat3_g/20240315_000_000"


def _truth_drift(root):
    return np.load(root / KEY / "truth" / "truth.npz")["drift"]


def _offsets(root, config):
    graph = build_session(load_session(root / KEY), config)
    (summary,) = dask.compute(graph.summary, scheduler="synchronous")
    return summary.offsets


def _dataset(root, config):
    graph = build_session(load_session(root / KEY), config)
    return graph.dataset.compute(scheduler="synchronous")


def test_wcs_offsets_equal_the_true_drift(archive):
    offsets = _offsets(archive, Config(register=RegisterConfig(method="wcs")))
    measured = np.array([[o.dy, o.dx] for o in offsets])
    assert all(o.ok and o.method == "wcs" and o.note == "" for o in offsets)
    np.testing.assert_allclose(measured, _truth_drift(archive), atol=1e-6)


def test_phase_is_the_default_method(archive):
    offsets = _offsets(archive, Config())
    assert all(o.method == "phase" for o in offsets)


def test_a_frame_without_wcs_falls_back_to_phase_correlation_and_says_so(archive_copy):
    path = sorted((archive_copy / KEY / "e91").iterdir())[2]
    with fits.open(path) as hdul:
        images = [(hdu.name, hdu.data, hdu.header) for hdu in hdul[1:]]
    header = images[0][2].copy()
    for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2"):
        del header[key]
    write_images(path, [(images[0][0], images[0][1], header), *images[1:]])
    offsets = _offsets(archive_copy, Config(register=RegisterConfig(method="wcs")))
    assert all(o.method == "phase" for o in offsets)
    assert all(path.name in o.note and "no celestial WCS" in o.note for o in offsets)
    measured = np.array([[o.dy, o.dx] for o in offsets])
    assert np.all(np.abs(measured - _truth_drift(archive_copy)) < 0.2)


def test_subpixel_resampling_brings_frames_closer_to_the_truth(archive):
    truth = np.load(archive / KEY / "truth" / "truth.npz")
    gain = float(fits.getheader(next((archive / KEY / "e91").iterdir()), 1)["GAIN"])
    expected_adu = truth["scene_e"] / gain
    wcs = RegisterConfig(method="wcs")
    integer = _dataset(archive, Config(register=wcs))
    resampled = _dataset(archive, Config(register=dataclasses.replace(wcs, subpixel=True)))
    np.testing.assert_allclose(-resampled["shift"].values, truth["drift"], atol=1e-5)
    stars = expected_adu > np.percentile(expected_adu, 99)  # misregistration shows on stars
    for k in range(len(truth["drift"])):
        good = stars & (integer["e91_mask"].values[k] == 0) & (resampled["e91_mask"].values[k] == 0)
        err_int = np.abs(integer["e91"].values[k] - expected_adu)[good].mean()
        err_sub = np.abs(resampled["e91"].values[k] - expected_adu)[good].mean()
        assert err_sub < err_int, k
    no_data = (resampled["e91_mask"].values & Flag.NO_DATA) != 0
    assert np.all(np.isnan(resampled["e91"].values[no_data]))


def _registered_variance(root, shifts):
    """ERR**2 of each e91 file moved by the store's integer ``shift`` (NaN outside)."""
    out = []
    for path, (sy, sx) in zip(sorted((root / KEY / "e91").iterdir()), shifts):
        err = fits.getdata(path, "ERR").astype(np.float64)
        moved = np.full(err.shape, np.nan)
        sy, sx = int(sy), int(sx)  # e91[y, x] = frame[y - sy, x - sx]
        ny, nx = err.shape
        moved[max(sy, 0) : ny + min(sy, 0), max(sx, 0) : nx + min(sx, 0)] = (
            err[max(-sy, 0) : ny + min(-sy, 0), max(-sx, 0) : nx + min(-sx, 0)] ** 2
        )
        out.append(moved)
    return np.stack(out)


def test_weighted_stack_is_the_inverse_variance_mean_of_the_kept_values(archive_copy):
    """Two frames with three times the noise (their ERR says so): the stored mean is the numpy
    inverse-variance weighted mean of the values the store says were kept."""
    rng = np.random.default_rng(7)
    for path in sorted((archive_copy / KEY / "e91").iterdir())[:2]:
        with fits.open(path) as hdul:
            sci, bpm, err = (hdul[name].data.astype(np.float32) for name in ("SCI", "BPM", "ERR"))
            headers = [hdul[name].header for name in ("SCI", "BPM", "ERR")]
        extra = np.sqrt(8.0) * err * rng.standard_normal(err.shape).astype(np.float32)
        write_images(
            path,
            [
                ("SCI", (sci + extra).astype(np.float32), headers[0]),
                ("BPM", bpm.astype(np.uint8), headers[1]),
                ("ERR", (3 * err).astype(np.float32), headers[2]),
            ],
        )
    ds = _dataset(archive_copy, Config(register=RegisterConfig(method="wcs"), stack=ClipParams(weighted=True)))
    values = ds["e91"].values.astype(np.float64)
    kept = ds["e91_mask"].values == 0
    weights = np.where(kept, 1.0 / _registered_variance(archive_copy, ds["shift"].values), 0.0)
    with np.errstate(invalid="ignore"):
        expected = (weights * np.where(kept, values, 0.0)).sum(0) / weights.sum(0)
    np.testing.assert_array_equal(np.isnan(ds["mean"].values), ds["count"].values == 0)
    np.testing.assert_allclose(ds["mean"].values, expected, rtol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(ds["count"].values, kept.sum(0))
    with np.errstate(invalid="ignore"):
        unweighted = np.where(kept, values, 0.0).sum(0) / kept.sum(0)
    assert np.nanmax(np.abs(unweighted - expected)) > 1.0  # the weights matter here


def test_median_combine_reaches_the_stack(archive):
    ds = _dataset(archive, Config(stack=ClipParams(combine="median")))
    values = np.where(ds["e91_mask"].values == 0, ds["e91"].values, np.nan)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanmedian(values, axis=0)
    np.testing.assert_allclose(ds["mean"].values, expected, rtol=1e-6, equal_nan=True)


def test_weighted_stack_needs_err_extensions(archive_copy):
    path = sorted((archive_copy / KEY / "e91").iterdir())[0]
    with fits.open(path) as hdul:
        images = [(hdu.name, hdu.data, hdu.header) for hdu in hdul[1:] if hdu.name != "ERR"]
    write_images(path, images)
    with pytest.raises(Exception, match=f"{path.name}.*no ERR extension"):
        build_session(load_session(archive_copy / KEY), Config(stack=ClipParams(weighted=True)))
