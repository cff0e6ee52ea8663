"""The noise model's part of a session graph: wiring only (the steps are
:mod:`pipeline.steps.noise_fit`, :mod:`~pipeline.steps.noise_model` and
:mod:`~pipeline.steps.synthesize`).

The fit: one task per amplifier reads the raw frame's overscan (read noise); one task per strip
takes the strip's registered e91 frames, stack and masks (photon-transfer samples in each
amplifier's central window) and its cosmic-ray flags (hit pixels and charges); one task per
session combines them into the model. ``syn``: one task per realization and strip. Every task
takes the graph's own blocks, so nothing upstream runs twice, and none holds more than a strip.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed

from .config import Config
from .io.contract import CONTRACT
from .io.fits_reader import read_image
from .io.inputs import Layout
from .steps.amplifiers import Amplifier, amp_value_map, detector_shape
from .steps.masks import Flag
from .steps.noise_fit import (
    QUANTISATION_VAR_ADU2,
    AmpReadout,
    CosmicPixels,
    PairSamples,
    amp_read_noise,
    bilinear_variance_factor,
    cosmic_pixels,
    fit_cosmic_rays,
    fit_gain_ptc,
    on_background,
    ptc_samples,
    searchable,
)
from .steps.noise_model import NoiseModel, assemble
from .steps.noise_realism import expected_os_adu
from .steps.overscan import OverscanParams
from .steps.params import SynthesisParams
from .steps.synthesize import Patch, SynthKey, synthesize_patch

Region = tuple[int, int, int, int]  # (y0, y1, x0, x1) on the session grid
_UNUSABLE_FRAME_PIXEL = ~np.uint16(0)  # any bit of an e91 mask
_UNUSABLE_CALIB = Flag.BAD_PIXEL | Flag.SATURATED | Flag.LOW_FLAT | Flag.COSMIC_RAY | Flag.NO_DATA | Flag.HOT_PIXEL


def amp_regions(amps: list[Amplifier]) -> list[Region]:
    """Each amplifier's pixels on the session grid."""
    box_y, box_x = detector_shape(amps)
    return [
        (ty.start - box_y.start, ty.stop - box_y.start, tx.start - box_x.start, tx.stop - box_x.start)
        for ty, tx in (a.target for a in amps)
    ]


def central_windows(regions: list[Region], side_px: int) -> list[Region]:
    """The central square (at most ``side_px``) of each region."""
    windows = []
    for y0, y1, x0, x1 in regions:
        h, w = min(side_px, y1 - y0), min(side_px, x1 - x0)
        top, left = y0 + (y1 - y0 - h) // 2, x0 + (x1 - x0 - w) // 2
        windows.append((top, top + h, left, left + w))
    return windows


def noise_products(
    raw: Layout, variables: dict[str, da.Array], config: Config, session_key: str, base: str
) -> tuple[Delayed, da.Array | None]:
    """The Delayed noise model of a session with e91 frames and its ``syn`` (``None`` when
    ``synthesis.realizations`` is 0); ``variables`` are the graph's."""
    attrs = raw.attrs
    model = noise_model(raw.amps, raw.shape, variables, attrs.exptime, attrs.darktime, attrs.gain, config.overscan,
                        config.synthesis, config.register.subpixel, base)  # fmt: skip
    if not config.synthesis.realizations:
        return model, None
    clean = {name: variables[name] for name in ("mean", "flat", "dark", "bias", "count")}
    return model, syn_array(model, clean, session_key, config.synthesis, base)


def noise_model(
    amps: list[Amplifier],
    shape: tuple[int, int],
    variables: dict[str, da.Array],
    exptime_s: float,
    darktime_s: float,
    gain_nominal: float,
    overscan: OverscanParams,
    params: SynthesisParams,
    subpixel: bool,
    base: str,
) -> Delayed:
    """The Delayed ``NoiseModel`` of a session with e91 frames (``variables``: the graph's ``os``,
    ``mask``, ``e91``, ``e91_mask``, ``shift``, ``mean``, ``source_mask``, ``bias``, ``dark``, ``flat``)."""
    regions = amp_regions(amps)
    windows = central_windows(regions, params.ptc_cutout_px)
    readouts = [
        dask.delayed(_amp_readout, pure=True)(amp, overscan, dask_key_name=f"read-noise-{i}-{base}")
        for i, amp in enumerate(amps)
    ]
    names = ("os", "mask", "e91", "e91_mask", "mean", "source_mask", "bias", "dark", "flat")
    aligned, bounds = _aligned({name: variables[name] for name in names})
    blocks = {name: _strip_blocks(array) for name, array in aligned.items()}
    to_raw = [gain_nominal / a.gain_e_per_adu for a in amps]
    samples, cosmics = [], []
    for k, (y0, _) in enumerate(bounds):
        strip = {name: found[k] for name, found in blocks.items()}
        # what is needed of the strip is taken as soon as it is stacked; the source mask (a
        # whole-frame task) is applied later, so the e91 strips need not wait for it
        cuts = dask.delayed(_strip_windows, pure=True)(
            y0, strip["e91"], strip["e91_mask"], strip["mean"], strip["flat"], strip["mask"], windows,
            dask_key_name=f"ptc-windows-{y0}-{base}")  # fmt: skip
        samples.append(dask.delayed(_strip_samples, pure=True)(
            y0, cuts, strip["source_mask"], windows, to_raw, dask_key_name=f"ptc-samples-{y0}-{base}"))  # fmt: skip
        found = dask.delayed(_strip_cosmics, pure=True, nout=2)(
            y0, strip["mask"], strip["os"], strip["mean"], strip["flat"], strip["dark"], strip["bias"], amps,
            darktime_s, gain_nominal, dask_key_name=f"cosmic-pixels-{y0}-{base}")  # fmt: skip
        cosmics.append(dask.delayed(_cosmics_on_background, pure=True)(
            found[0], found[1], strip["source_mask"], y0, dask_key_name=f"cosmic-background-{y0}-{base}"))  # fmt: skip
    shifts = variables["shift"].to_delayed(optimize_graph=False).ravel()[0]
    return dask.delayed(_model, pure=True)(
        amps, regions, readouts, samples, cosmics, shifts, subpixel, shape, exptime_s, darktime_s, gain_nominal,
        dask_key_name=f"noise-model-{base}",
    )  # fmt: skip


def syn_array(
    model: NoiseModel | Delayed,
    arrays: dict[str, da.Array],
    session_key: str,
    params: SynthesisParams,
    base: str,
) -> da.Array:
    """``syn`` (realization, y, x), float32 ADU: one task per realization and strip of ``arrays``
    (``mean``, ``flat``, ``dark``, ``bias``, ``count``, all chunked by the same strips)."""
    nx = arrays["mean"].shape[1]
    aligned, bounds = _aligned(arrays)
    blocks = {name: _strip_blocks(array) for name, array in aligned.items()}
    dtype = CONTRACT["syn"].dtype
    realizations = []
    for r in range(params.realizations):
        key = SynthKey(params.seed, session_key, (r,))
        strips = [
            da.from_delayed(
                dask.delayed(_syn_strip, pure=True)(
                    model, y0, *(blocks[name][k] for name in ("mean", "flat", "dark", "bias", "count")), key,
                    params.subtract_base_noise, dask_key_name=f"draw-syn-{r}-{y0}-{base}"),
                (1, y1 - y0, nx), dtype, name=f"syn-{r}-{y0}-{base}",
            )
            for k, (y0, y1) in enumerate(bounds)
        ]  # fmt: skip
        realizations.append(da.concatenate(strips, axis=1))
    return da.concatenate(realizations, axis=0)


def _aligned(arrays: dict[str, da.Array]) -> tuple[dict[str, da.Array], list[tuple[int, int]]]:
    """``arrays`` in the full-width row strips of the first one (rechunked where they differ, e.g.
    after an overlap wider than a strip) and those strips ``(y0, y1)``."""
    first = next(iter(arrays.values())).chunks[-2]
    aligned = {
        name: array if array.chunks[-2] == first and len(array.chunks[-1]) == 1
        else array.rechunk({array.ndim - 2: first, array.ndim - 1: -1})
        for name, array in arrays.items()
    }  # fmt: skip
    edges = np.cumsum((0, *first))
    return aligned, [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _strip_blocks(array: da.Array) -> list[Delayed]:
    """The Delayed row strips of ``array`` (rows on its second-to-last axis), keeping the graph's keys."""
    found = array.to_delayed(optimize_graph=False)
    return list(np.moveaxis(found, -2, 0).reshape(found.shape[-2], -1)[:, 0])


def _amp_readout(amp: Amplifier, params: OverscanParams) -> AmpReadout:
    return amp_read_noise(read_image(amp.ref), amp, params)


@dataclass(frozen=True, eq=False)
class _Cut:
    """A strip's rows of one amplifier's PTC window: frames (n, r, w) ADU and their usable
    values, the stack, the flat and the calibrated frame's usable pixels."""

    frames: np.ndarray
    ok: np.ndarray
    mean: np.ndarray
    flat: np.ndarray
    calib_ok: np.ndarray


def _strip_windows(y0: int, e91: np.ndarray, e91_mask: np.ndarray, mean: np.ndarray, flat: np.ndarray,
                   mask: np.ndarray, windows: list[Region]) -> list[_Cut | None]:  # fmt: skip
    y1 = y0 + mean.shape[0]
    cuts: list[_Cut | None] = []
    for wy0, wy1, wx0, wx1 in windows:
        a, b = max(wy0, y0), min(wy1, y1)
        if a >= b:
            cuts.append(None)
            continue
        rows, cols = slice(a - y0, b - y0), slice(wx0, wx1)
        ok = (e91_mask[:, rows, cols] & _UNUSABLE_FRAME_PIXEL) == 0
        calib_ok = (mask[rows, cols] & _UNUSABLE_CALIB.value) == 0
        cuts.append(_Cut(e91[:, rows, cols].copy(), ok, mean[rows, cols].copy(), flat[rows, cols].copy(), calib_ok))
    return cuts


def _strip_samples(y0: int, cuts: list[_Cut | None], source: np.ndarray, windows: list[Region],
                   to_raw: list[float]) -> list[list[PairSamples]]:  # fmt: skip
    """Per amplifier, the photon-transfer samples of the strip's rows inside its window."""
    found = []
    for cut, (wy0, _, wx0, wx1), factor in zip(cuts, windows, to_raw, strict=True):
        if cut is None:
            found.append([])
            continue
        a = max(wy0, y0)
        background = (source[a - y0 : a - y0 + cut.mean.shape[0], wx0:wx1] == 1) & cut.calib_ok
        found.append(ptc_samples(cut.frames, cut.ok, cut.mean, cut.flat, background, factor))
    return found


def _strip_cosmics(y0: int, mask: np.ndarray, os_adu: np.ndarray, mean: np.ndarray, flat: np.ndarray,
                   dark: np.ndarray, bias: np.ndarray, amps: list[Amplifier], darktime_s: float,
                   gain_nominal: float) -> tuple[CosmicPixels, np.ndarray]:  # fmt: skip
    """The strip's cosmic-ray pixels (every pixel counted as background) and its searchable map."""
    y1 = y0 + mask.shape[0]
    gain = amp_value_map(amps, [a.gain_e_per_adu for a in amps], y0, y1)
    rdnoise = amp_value_map(amps, [a.rdnoise_e for a in amps], y0, y1)
    expected = expected_os_adu(mean, flat, dark, bias, gain, darktime_s, gain_nominal)
    return cosmic_pixels(mask, os_adu, expected, gain, rdnoise, np.ones(mask.shape, bool), y0), searchable(mask)


def _cosmics_on_background(pixels: CosmicPixels, searched: np.ndarray, source: np.ndarray, y0: int) -> CosmicPixels:
    return on_background(pixels, searched, source == 1, y0)


def _model(amps: list[Amplifier], regions: list[Region], readouts: list[AmpReadout],
           samples: list[list[list[PairSamples]]], cosmics: list[CosmicPixels], shifts: np.ndarray, subpixel: bool,
           shape: tuple[int, int], exptime_s: float, darktime_s: float, gain_nominal: float) -> NoiseModel:  # fmt: skip
    factors = [bilinear_variance_factor(s) if subpixel and np.all(np.isfinite(s)) else 1.0 for s in shifts]
    pairs = len(factors) // 2
    ptcs = []
    for index, readout in enumerate(readouts):
        read_var = readout.read.white_adu**2 + readout.read.row_adu**2 + QUANTISATION_VAR_ADU2
        per_pair = [[strip[index][k] for strip in samples if strip[index]] for k in range(pairs)]
        ptcs.append(fit_gain_ptc(per_pair, factors, read_var))
    cosmic = fit_cosmic_rays(cosmics, shape, exptime_s)
    return assemble(amps, regions, readouts, ptcs, cosmic, shape, exptime_s, darktime_s, gain_nominal)


def _syn_strip(model: NoiseModel, y0: int, mean: np.ndarray, flat: np.ndarray, dark: np.ndarray, bias: np.ndarray,
               count: np.ndarray, key: SynthKey, subtract_base_noise: bool) -> np.ndarray:  # fmt: skip
    patch = Patch(y0, 0, mean, flat, dark, bias, count)
    return synthesize_patch(patch, model, key, subtract_base_noise)[np.newaxis]
