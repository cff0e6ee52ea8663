"""The per-strip e91 algorithm (``pipeline.steps.e91``) on numpy frames, without Dask: frames
moved by the rounded offsets, flagged, and stacked, against a pixel-by-pixel numpy reference and
astropy's ``sigma_clip``."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clip
from astropy.wcs import WCS

from pipeline.steps.e91 import Frame, applied_shifts, central_window, measure, stack_strip, wcs_offsets
from pipeline.steps.masks import Flag
from pipeline.steps.register import Offset, RegisterParams
from pipeline.steps.stack import ClipParams

NY, NX = 40, 30
OFFSETS = [
    Offset(0.0, 0.0, 10.0, True, ""),
    Offset(2.3, -1.6, 10.0, True, ""),
    Offset(-3.6, 2.4, 10.0, True, ""),
    Offset(5.0, 1.0, 0.1, False, "low correlation"),
    Offset(-1.2, -4.7, 10.0, True, ""),
] + [Offset(float(dy), float(dx), 10.0, True, "") for dy, dx in [(1, 1), (0, -1), (-2, 0), (3, 2), (0, 0), (-1, 1)]]


def _frames(rng):
    frames, bpms = [], []
    for _ in OFFSETS:
        values = rng.normal(100.0, 5.0, (NY, NX)).astype(np.float32)
        values[rng.random((NY, NX)) < 0.02] += 500.0  # outliers for the clip
        bpm = np.where(rng.random((NY, NX)) < 0.05, 1, 0).astype(np.uint8)
        frames.append(values)
        bpms.append(bpm)
    return frames, bpms


def _reference(frames, bpms, factor, y0, y1):
    """Session rows [y0, y1) of each frame at ``frame[y + round(dy), x + round(dx)]``, by loops."""
    cube = np.full((len(frames), y1 - y0, NX), np.nan)
    flags = np.zeros(cube.shape, np.uint16)
    for k, (values, bpm, offset) in enumerate(zip(frames, bpms, OFFSETS)):
        dy, dx = (round(offset.dy), round(offset.dx)) if offset.ok else (0, 0)
        for y in range(y0, y1):
            for x in range(NX):
                sy, sx = y + dy, x + dx
                if 0 <= sy < NY and 0 <= sx < NX:
                    cube[k, y - y0, x] = values[sy, sx] * factor
                    flags[k, y - y0, x] = Flag.BAD_PIXEL if bpm[sy, sx] else 0
                else:
                    flags[k, y - y0, x] = Flag.NO_DATA
        if not offset.ok:
            flags[k] |= np.uint16(Flag.NOT_REGISTERED)
    return cube, flags


def test_stack_strip_moves_flags_and_stacks_like_numpy_and_astropy():
    rng = np.random.default_rng(12)
    frames, bpms = _frames(rng)
    factor, y0, y1 = 0.5, 12, 29
    reads = []

    def read_rows(image, a, b):
        reads.append((id(image), a, b))
        return image[a:b]

    strip = stack_strip(
        [Frame(v, m, None, factor, 1.0) for v, m in zip(frames, bpms)], OFFSETS, y0, y1, False, ClipParams(), read_rows
    )
    cube, flags = _reference(frames, bpms, factor, y0, y1)
    np.testing.assert_array_equal(strip.e91, cube.astype(np.float32))  # NaN where no data, equal elsewhere
    clipped = (strip.e91_mask & Flag.CLIPPED) != 0
    np.testing.assert_array_equal(strip.e91_mask & ~np.uint16(Flag.CLIPPED), flags)
    expected = sigma_clip(np.ma.masked_array(cube, (flags != 0) | np.isnan(cube)), sigma=3.0, maxiters=5,
                          cenfunc="median", stdfunc="std", axis=0)  # fmt: skip
    np.testing.assert_array_equal(clipped, expected.mask & (flags == 0))
    np.testing.assert_array_equal(strip.count, (~expected.mask).sum(axis=0))
    np.testing.assert_allclose(strip.mean, expected.mean(axis=0).filled(np.nan), rtol=1e-6)
    np.testing.assert_allclose(strip.std, expected.std(axis=0).filled(np.nan), rtol=1e-5)
    assert clipped.any() and (strip.count < len(OFFSETS) - 1).any()
    for k, offset in enumerate(OFFSETS):  # each frame read once per image, only the rows the shift brings in
        dy = round(offset.dy) if offset.ok else 0
        want = (max(0, y0 + dy), min(NY, y1 + dy))
        assert [(a, b) for i, a, b in reads if i == id(frames[k])] == [want]
        assert [(a, b) for i, a, b in reads if i == id(bpms[k])] == [want]


def test_applied_shifts_are_minus_the_rounded_offsets_and_nan_when_refused():
    shifts = applied_shifts(OFFSETS, subpixel=False)
    expected = [(0, 0), (-2, 2), (4, -2), (np.nan, np.nan), (1, 5)]
    np.testing.assert_array_equal(shifts[:5], np.array(expected, np.float32))
    np.testing.assert_array_equal(applied_shifts(OFFSETS[1:2], subpixel=True), np.float32([[-2.3, 1.6]]))


def test_measure_reads_each_cutout_and_recovers_the_shift():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:128, :128]
    stars = [(rng.uniform(10, 118), rng.uniform(10, 118), rng.uniform(500, 3000)) for _ in range(30)]

    def field(dy, dx):
        scene = sum(f * np.exp(-((yy - y - dy) ** 2 + (xx - x - dx) ** 2) / 4.0) for y, x, f in stars)
        return (scene + rng.normal(0, 2, scene.shape)).astype(np.float32)

    images = [field(1.4, -2.2), field(-0.7, 3.1)]
    cutouts = []

    def read_cutout(image, y0, y1, x0, x1):
        cutouts.append((y0, y1, x0, x1))
        return image[y0:y1, x0:x1]

    rows, cols = slice(16, 112), slice(20, 116)
    frames = [Frame(image, None, None, 2.0, 1.0) for image in images]
    reference = 2.0 * field(0, 0)[rows, cols]
    found = measure(
        reference, np.zeros(reference.shape, bool), frames, rows, cols, RegisterParams(), "why", read_cutout
    )
    assert cutouts == [(16, 112, 20, 116)] * 2
    for offset, (dy, dx) in zip(found, [(1.4, -2.2), (-0.7, 3.1)]):
        assert offset.ok and offset.note == "why"
        assert offset.dy == pytest.approx(dy, abs=0.15) and offset.dx == pytest.approx(dx, abs=0.15)


def _header(crpix1, crpix2):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [crpix1, crpix2]
    wcs.wcs.cdelt = [-0.35 / 3600, 0.35 / 3600]
    return wcs.to_header()


def test_wcs_or_phase_choice():
    reference = _header(100.0, 100.0)
    headers = [("a.fits", _header(103.0, 98.0)), ("b.fits", _header(99.0, 101.0))]
    assert wcs_offsets(reference, headers, (200, 200), "phase", RegisterParams()) == (None, "")
    offsets, note = wcs_offsets(reference, headers, (200, 200), "wcs", RegisterParams())
    assert note == "" and all(o.ok and o.method == "wcs" for o in offsets)
    np.testing.assert_allclose([[o.dy, o.dx] for o in offsets], [[-2, 3], [1, -1]], atol=1e-6)
    offsets, note = wcs_offsets(reference, [headers[0], ("c.fits", fits.Header())], (200, 200), "wcs", RegisterParams())
    assert offsets is None and note.startswith("WCS not used: c.fits: ")
    offsets, note = wcs_offsets(fits.Header(), headers, (200, 200), "wcs", RegisterParams())
    assert offsets is None and note.startswith("WCS not used: raw frame: ")


def test_central_window():
    assert central_window((100, 60), 40) == (slice(30, 70), slice(10, 50))
    assert central_window((100, 60), 512) == (slice(20, 80), slice(0, 60))
