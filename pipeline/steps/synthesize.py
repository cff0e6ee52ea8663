"""Drawing synthetic noisy frames (``syn``, ADU) from a clean stack with a session's noise model.

Per amplifier, in electrons, for a pixel of the stack ``mean`` (ADU of the nominal gain
``g_nom``) with the session's ``flat``, ``dark`` (e-/s) and ``bias`` (e-) masters, the
amplifier's header gain ``g_h`` (the masters' and the cosmic-ray shapes' electrons are the
header's, like the calibration's) and the model's gain ``g`` (e-/ADU; ``c = g / g_h``)::

    expected = c * (g_nom * mean * flat + dark * DARKTIME)
    syn_raw  = min(rint(L + (expected + s * (Poisson(expected) - expected) + c * (bias + cosmic rays)) / g
                         + s * (white + row offset)), SATURATE)
    syn      = syn_raw - L

so the expected ``syn`` in ADU is the data's whatever ``g`` is; ``g`` sets the shot noise.

``L`` is the overscan level the pipeline subtracted, so ``syn`` is quantised like ``os``. White
read noise (ADU) is Gaussian or, where the overscan showed otherwise, drawn from its measured
quantile function; row offsets (ADU, one per row and amplifier) are a Gaussian process with the
measured power spectrum; cosmic rays arrive at the measured rate per pixel and second, each a
measured hit shape. ``s = sqrt(1 - 1/count)`` removes the noise the stack of ``count`` frames
still carries (``subtract_base_noise``; 1 when off): the result then has one frame's variance
about the truth, not ``1 + 1/count`` of it. Pixels with no stack value are NaN.

Randomness: every draw comes from a generator keyed by ``SynthKey`` and by where it lands:
pixels by tiles of ``TILE_PX`` of the session grid (clipped to the patch), row offsets by
amplifier, cosmic rays by tile. A patch is therefore computed without the rest of the frame,
and whole-tile patches (strips whose rows are multiples of ``TILE_PX``) equal the crop of the
whole frame drawn at once.
"""

from __future__ import annotations

import enum
import math
import zlib
from dataclasses import dataclass

import numpy as np

from .noise_fit import MAX_HIT_EXTENT_PX, QUANTILE_LEVELS, ReadNoise
from .noise_model import AmpModel, NoiseModel

TILE_PX = 64


@dataclass(frozen=True)
class SynthesisParams:
    """Synthetic ``syn`` frames (docs/synthesis.md).

    ``realizations``: frames drawn per session with e91 frames (0: none, the noise model is
    still fitted). ``seed``: with the session's name and the realization, what determines each
    frame. ``subtract_base_noise``: scale the drawn noise by ``sqrt(1 - 1/count)`` so the
    stack's own noise is not counted twice. ``ptc_cutout_px``: side of the central window of
    each amplifier whose registered e91 frames give the photon transfer curve.
    """

    realizations: int = 1
    seed: int = 0
    subtract_base_noise: bool = True
    ptc_cutout_px: int = 512

    def __post_init__(self) -> None:
        if self.realizations < 0:
            raise ValueError(f"synthesis.realizations must be >= 0, got {self.realizations}")
        if self.seed < 0:
            raise ValueError(f"synthesis.seed must be >= 0, got {self.seed}")
        if self.ptc_cutout_px < 16:
            raise ValueError(f"synthesis.ptc_cutout_px must be >= 16, got {self.ptc_cutout_px}")


class Stream(enum.IntEnum):
    """Independent random streams of one draw."""

    PIXELS = 0
    ROWS = 1
    COSMICS = 2


@dataclass(frozen=True)
class SynthKey:
    """What determines a realization: the seed, the session's name and the draw's own keys
    (``(realization,)`` for stored ones; the loader uses ``(epoch, index)``)."""

    seed: int
    session: str
    draw: tuple[int, ...]

    def rng(self, *keys: int) -> np.random.Generator:
        entropy = [int(self.seed), zlib.crc32(self.session.encode()), len(self.draw), *self.draw, *keys]
        return np.random.default_rng([int(k) for k in entropy])


@dataclass(frozen=True, eq=False)
class Patch:
    """Clean inputs of the rows ``[y0, y0 + ny)`` and columns ``[x0, x0 + nx)`` of a session:
    ``mean_adu``, ``flat`` (unitless), ``dark_e_per_s``, ``bias_e`` and the stack's ``count``."""

    y0: int
    x0: int
    mean_adu: np.ndarray
    flat: np.ndarray
    dark_e_per_s: np.ndarray
    bias_e: np.ndarray
    count: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.mean_adu.shape


def row_offsets_adu(read: ReadNoise, rows: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` stationary Gaussian row offsets (ADU) with the measured spectrum ``read.row_psd_adu2``.

    Drawn on twice the length (and the first half kept) so the first and last rows are not
    tied together by the periodic transform.
    """
    if read.row_adu == 0 or rows == 0:
        return np.zeros(rows)
    n = 2 * rows
    freq = np.fft.rfftfreq(n)
    power = np.interp(freq, read.row_psd_freq, read.row_psd_adu2)
    amplitude = np.sqrt(n * power / 2.0)
    spectrum = amplitude * (rng.standard_normal(freq.size) + 1j * rng.standard_normal(freq.size))
    spectrum[0] = math.sqrt(n * power[0]) * spectrum[0].real / amplitude[0] if amplitude[0] > 0 else 0.0
    if n % 2 == 0:
        spectrum[-1] = math.sqrt(n * power[-1]) * rng.standard_normal()
    return np.fft.irfft(spectrum, n)[:rows]


def white_noise_adu(read: ReadNoise, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """White read noise (ADU, float32): Gaussian, or from the measured quantile function."""
    if read.gaussian:
        return read.white_adu * rng.standard_normal(shape, dtype=np.float32)
    standard = np.interp(rng.random(shape), QUANTILE_LEVELS, read.quantiles)
    return (read.white_adu * standard).astype(np.float32)


def cosmic_rays_e(model: NoiseModel, key: SynthKey, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Cosmic-ray charge (e-, float32) on rows ``[y0, y1)`` and columns ``[x0, x1)``.

    Hits arrive per tile of the session grid (Poisson, the fitted rate times the tile's area and
    the exposure time), at a uniform position, each a uniformly chosen measured shape; every
    tile whose hits can reach the region is drawn.
    """
    out = np.zeros((y1 - y0, x1 - x0), np.float32)
    cosmic = model.cosmic
    shapes = len(cosmic.start) - 1
    if cosmic.rate_per_px_s <= 0 or shapes == 0:
        return out
    ny, nx = model.shape
    start, dy, dx = np.asarray(cosmic.start), np.asarray(cosmic.dy), np.asarray(cosmic.dx)
    charge = np.asarray(cosmic.charge_e)
    reach = MAX_HIT_EXTENT_PX
    for ty in range(max(0, (y0 - reach) // TILE_PX), min(ny - 1, y1 - 1) // TILE_PX + 1):
        for tx in range(max(0, (x0 - reach) // TILE_PX), min(nx - 1, x1 - 1) // TILE_PX + 1):
            ty0, tx0 = ty * TILE_PX, tx * TILE_PX
            th, tw = min(TILE_PX, ny - ty0), min(TILE_PX, nx - tx0)
            rng = key.rng(Stream.COSMICS, ty, tx)
            hits = rng.poisson(cosmic.rate_per_px_s * th * tw * model.exptime_s)
            if hits == 0:
                continue
            ay = ty0 + rng.integers(0, th, hits)
            ax = tx0 + rng.integers(0, tw, hits)
            for hy, hx, k in zip(ay, ax, rng.integers(0, shapes, hits)):
                pixels = slice(start[k], start[k + 1])
                py, px = hy + dy[pixels] - y0, hx + dx[pixels] - x0
                inside = (py >= 0) & (py < y1 - y0) & (px >= 0) & (px < x1 - x0) & (py + y0 < ny) & (px + x0 < nx)
                np.add.at(out, (py[inside], px[inside]), charge[pixels][inside])
    return out


def synthesize_patch(patch: Patch, model: NoiseModel, key: SynthKey, subtract_base_noise: bool = True) -> np.ndarray:
    """A synthetic overscan-corrected frame (float32 ADU) over ``patch`` (see the module doc)."""
    ny, nx = patch.shape
    y0, x0 = patch.y0, patch.x0
    out = np.full((ny, nx), np.nan, np.float32)
    cosmic_e = cosmic_rays_e(model, key, y0, y0 + ny, x0, x0 + nx)
    for index, amp in enumerate(model.amps):
        ay0, ay1, ax0, ax1 = amp.region
        iy0, iy1, ix0, ix1 = max(ay0, y0), min(ay1, y0 + ny), max(ax0, x0), min(ax1, x0 + nx)
        if iy0 >= iy1 or ix0 >= ix1:
            continue
        rows_adu = row_offsets_adu(amp.read, ay1 - ay0, key.rng(Stream.ROWS, index))
        for ty0 in range((iy0 // TILE_PX) * TILE_PX, iy1, TILE_PX):
            for tx0 in range((ix0 // TILE_PX) * TILE_PX, ix1, TILE_PX):
                a, b = max(ty0, iy0), min(ty0 + TILE_PX, iy1)
                c, d = max(tx0, ix0), min(tx0 + TILE_PX, ix1)
                window = (slice(a - y0, b - y0), slice(c - x0, d - x0))
                rng = key.rng(Stream.PIXELS, a, b, c, d)
                out[window] = _draw(patch, window, amp, model, rng, rows_adu[a - ay0 : b - ay0], cosmic_e[window],
                                    subtract_base_noise)  # fmt: skip
    return out


def _draw(patch: Patch, window, amp: AmpModel, model: NoiseModel, rng: np.random.Generator,
          rows_adu: np.ndarray, cosmic_e: np.ndarray, subtract_base_noise: bool) -> np.ndarray:  # fmt: skip
    """One tile of ``synthesize_patch`` for one amplifier."""
    gain = amp.synthesis_gain_e_per_adu
    true_e = gain / amp.gain_e_per_adu  # the masters' and hits' electrons are the header gain's
    mean = patch.mean_adu[window].astype(np.float64)
    count = patch.count[window]
    valid = np.isfinite(mean) & (count > 0)
    signal_e = model.gain_nominal_e_per_adu * np.where(valid, mean, 0.0) * patch.flat[window]
    expected = true_e * (signal_e + patch.dark_e_per_s[window] * model.darktime_s)
    expected = np.clip(np.nan_to_num(expected), 0.0, None)
    shot = rng.poisson(expected) - expected
    white = white_noise_adu(amp.read, expected.shape, rng)
    scale = np.sqrt(np.clip(1.0 - 1.0 / np.maximum(count, 1), 0.0, 1.0)) if subtract_base_noise else 1.0
    electrons = expected + scale * shot + true_e * (patch.bias_e[window] + cosmic_e)
    raw = np.rint(amp.overscan_adu + electrons / gain + scale * (white + rows_adu[:, None]))
    raw = np.clip(raw, 0.0, amp.saturate_adu)
    return np.where(valid, raw - amp.overscan_adu, np.nan).astype(np.float32)
