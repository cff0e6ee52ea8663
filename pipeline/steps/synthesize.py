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

Randomness: every draw is determined by ``SynthKey`` and by where it lands. A pixel's random
bits are a hash (splitmix64) of the key and the pixel's index on the session grid, turned into
a normal deviate through a quantile table of ``2**TABLE_BITS`` levels (tails beyond 4.3 sigma
are not drawn: one pixel in 60 000); row offsets come from a generator per amplifier (drawn
whole, sliced), cosmic-ray arrivals from one per ``COSMIC_TILE_PX`` tile. So any patch, or
strip, is drawn without the rest of the frame and equals the crop of the whole frame drawn at
once. Shot noise is exact Poisson (inversion) below ``POISSON_EXACT_BELOW_E`` expected
electrons, above it the Cornish-Fisher expansion ``sqrt(l) z + (z^2 - 1) / 6`` of a normal
``z`` (the Poisson's mean, variance to ``1/(18 l)``, and skewness). The per-pixel work is one
compiled loop (``_draw``): the loader draws patches on the fly.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy import special

from .noise_fit import MAX_HIT_EXTENT_PX, QUANTILE_LEVELS, ReadNoise
from .noise_model import NoiseModel

COSMIC_TILE_PX = 512  # cosmic-ray arrivals: one random stream per tile
POISSON_EXACT_BELOW_E = 30.0  # expected electrons below which shot noise is drawn exactly


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

    def entropy(self) -> list[int]:
        return [int(self.seed), zlib.crc32(self.session.encode()), len(self.draw), *(int(k) for k in self.draw)]

    def rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([*self.entropy(), *(int(k) for k in keys)])

    def pixel_key(self) -> np.uint64:
        """64 bits for the pixels' counter-based random numbers (``Stream.PIXELS``)."""
        words = struct.pack(f"<{len(self.entropy()) + 1}q", *self.entropy(), Stream.PIXELS)
        return np.uint64(int.from_bytes(hashlib.blake2b(words, digest_size=8).digest(), "little"))


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
    charge = np.asarray(cosmic.charge_e, np.float32)
    reach = MAX_HIT_EXTENT_PX
    rows, cols, values = [], [], []
    for ty in range(max(0, (y0 - reach) // COSMIC_TILE_PX), min(ny - 1, y1 - 1) // COSMIC_TILE_PX + 1):
        for tx in range(max(0, (x0 - reach) // COSMIC_TILE_PX), min(nx - 1, x1 - 1) // COSMIC_TILE_PX + 1):
            ty0, tx0 = ty * COSMIC_TILE_PX, tx * COSMIC_TILE_PX
            th, tw = min(COSMIC_TILE_PX, ny - ty0), min(COSMIC_TILE_PX, nx - tx0)
            rng = key.rng(Stream.COSMICS, ty, tx)
            hits = rng.poisson(cosmic.rate_per_px_s * th * tw * model.exptime_s)
            if hits == 0:
                continue
            ay = ty0 + rng.integers(0, th, hits)
            ax = tx0 + rng.integers(0, tw, hits)
            shape = rng.integers(0, shapes, hits)
            lengths = start[shape + 1] - start[shape]
            first = np.repeat(start[shape] - (np.cumsum(lengths) - lengths), lengths)
            pixel = first + np.arange(lengths.sum())  # index into dy, dx, charge of every hit pixel
            rows.append(np.repeat(ay, lengths) + dy[pixel])
            cols.append(np.repeat(ax, lengths) + dx[pixel])
            values.append(charge[pixel])
    if rows:
        py, px, v = np.concatenate(rows) - y0, np.concatenate(cols) - x0, np.concatenate(values)
        inside = (py >= 0) & (py < y1 - y0) & (px >= 0) & (px < x1 - x0) & (py + y0 < ny) & (px + x0 < nx)
        np.add.at(out, (py[inside], px[inside]), v[inside])
    return out


def synthesize_patch(patch: Patch, model: NoiseModel, key: SynthKey, subtract_base_noise: bool = True) -> np.ndarray:
    """A synthetic overscan-corrected frame (float32 ADU) over ``patch`` (see the module doc)."""
    ny, nx = patch.shape
    y0, x0 = patch.y0, patch.x0
    out = np.full((ny, nx), np.nan, np.float32)
    cosmic_e = cosmic_rays_e(model, key, y0, y0 + ny, x0, x0 + nx)
    arrays = [
        np.ascontiguousarray(a, np.float32) for a in (patch.mean_adu, patch.flat, patch.dark_e_per_s, patch.bias_e)
    ]
    count = np.ascontiguousarray(patch.count, np.float32)
    for index, amp in enumerate(model.amps):
        ay0, ay1, ax0, ax1 = amp.region
        iy0, iy1, ix0, ix1 = max(ay0, y0), min(ay1, y0 + ny), max(ax0, x0), min(ax1, x0 + nx)
        if iy0 >= iy1 or ix0 >= ix1:
            continue
        rows_adu = row_offsets_adu(amp.read, ay1 - ay0, key.rng(Stream.ROWS, index))[iy0 - ay0 : iy1 - ay0]
        window = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
        gain = amp.synthesis_gain_e_per_adu
        _draw(*(a[window] for a in arrays), count[window], cosmic_e[window], rows_adu.astype(np.float32),
              out[window], iy0, ix0, model.shape[1], key.pixel_key(), _NORMAL_TABLE, white_table(amp.read),
              gain, gain / amp.gain_e_per_adu, model.gain_nominal_e_per_adu, model.darktime_s, amp.overscan_adu,
              amp.saturate_adu, subtract_base_noise)  # fmt: skip
    return out


TABLE_BITS = 16
_TABLE_SIZE = 1 << TABLE_BITS
_TABLE_LEVELS = np.clip(np.arange(_TABLE_SIZE + 1) / _TABLE_SIZE, 0.5 / _TABLE_SIZE, 1 - 0.5 / _TABLE_SIZE)
_NORMAL_TABLE = special.ndtri(_TABLE_LEVELS).astype(np.float32)


@functools.lru_cache(maxsize=256)
def white_table(read: ReadNoise) -> np.ndarray:
    """Quantile function (ADU, float32, ``2**TABLE_BITS + 1`` levels) of the white read noise:
    Gaussian, or the overscan's measured one (``read.quantiles``) when it is not."""
    if read.gaussian:
        return (read.white_adu * _NORMAL_TABLE).astype(np.float32)
    return (read.white_adu * np.interp(_TABLE_LEVELS, QUANTILE_LEVELS, read.quantiles)).astype(np.float32)


_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_LOW = np.uint64(0xFFFFFFFF)


@njit(cache=True)
def _mix(z):
    """splitmix64's finaliser: a bijective hash of a 64-bit integer."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True)
def _quantile(table, bits32):
    """The table's quantile function at the uniform ``bits32 / 2**32`` (linear interpolation)."""
    i = bits32 >> np.uint64(32 - TABLE_BITS)
    frac = np.float32(bits32 & np.uint64((1 << (32 - TABLE_BITS)) - 1)) * np.float32(1.0 / (1 << (32 - TABLE_BITS)))
    lo = table[i]
    return lo + frac * (table[i + np.uint64(1)] - lo)


@njit(cache=True)
def _poisson(lam, bits):
    """Poisson(lam) by inversion of the uniform ``bits / 2**64`` (for small ``lam``)."""
    u = (bits >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    p = math.exp(-lam)
    cumulative = p
    k = 0
    while u > cumulative and k < 1000:
        k += 1
        p *= lam / k
        cumulative += p
    return k


@njit(cache=True)
def _draw(mean, flat, dark, bias, count, cosmic, rows, out, y0, x0, frame_nx, key, shot_table, white_table,
          gain, true_e, g_nom, darktime, level, saturate, subtract):  # fmt: skip
    """One amplifier's part of ``synthesize_patch``, pixel by pixel: the random bits of a pixel are a
    hash of ``key`` and its index on the session grid, so any patch draws the same values."""
    ny, nx = mean.shape
    for i in range(ny):
        for j in range(nx):
            m, c = mean[i, j], count[i, j]
            if not (m == m) or c <= 0:
                continue
            lam = true_e * (g_nom * m * flat[i, j] + dark[i, j] * darktime)
            if not lam > 0:
                lam = 0.0
            h = _mix(key + np.uint64((y0 + i) * frame_nx + (x0 + j)) * _GOLDEN)  # splitmix64's n-th output
            if lam < POISSON_EXACT_BELOW_E:
                shot = _poisson(lam, _mix(h)) - lam
            else:
                z = _quantile(shot_table, h >> _S32)
                shot = math.sqrt(lam) * z + (z * z - 1.0) / 6.0
            white = _quantile(white_table, h & _LOW)
            s = 1.0
            if subtract:
                s = math.sqrt(max(0.0, 1.0 - 1.0 / c)) if c >= 1 else 1.0
            electrons = lam + s * shot + true_e * (bias[i, j] + cosmic[i, j])
            raw = np.rint(level + electrons / gain + s * (white + rows[i]))
            raw = min(max(raw, 0.0), saturate)
            out[i, j] = raw - level
