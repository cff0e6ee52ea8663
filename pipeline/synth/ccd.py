"""The CCD: bias structure, dark current, sky flat, bad columns, cosmic rays and readout.

Everything is in electrons (e-) until ``digitise_adu`` converts with each amplifier's gain
(e-/ADU) and adds its overscan level (ADU). Maps are float32, size x size, detector frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import signal

SATURATE_ADU = 62000
MAXLIN_ADU = 55000
GAIN_E_PER_ADU = 1.8  # nominal
RDNOISE_E = 12.0  # nominal, fast readout
OVERSCAN_ADU = 1000.0  # nominal level; each amplifier is within +-50 ADU
LOW_FLAT = 0.2  # flat values below this are "low flat" (BANZAI)

DARK_E_PER_S = 0.003  # typical dark current of a cooled CCD
HOT_PIXEL_FRACTION = 1e-4
HOT_COLUMN_E = 40_000.0  # charge a hot (stuck-high) column reads, whatever the light
COSMIC_RAYS_PER_PX_S = 6e-7  # about 10 hits on 512 x 512 pixels in a minute
PRNU = 0.01  # pixel-to-pixel flat variation, 1 sigma

# How the master calibrations were notionally made; sets their ERR extensions.
BIAS_FRAMES = 20
DARK_FRAMES = 10
DARK_EXPTIME_S = 300.0
FLAT_FRAMES = 15
FLAT_LEVEL_E = 30_000.0


@dataclass(frozen=True)
class Readout:
    """One amplifier's electronics: gain (e-/ADU), read noise (e-) and overscan level (ADU)."""

    gain_e_per_adu: float
    rdnoise_e: float
    overscan_adu: float


def draw_readouts(rng: np.random.Generator, n: int, gain_e_per_adu: float, rdnoise_e: float) -> tuple[Readout, ...]:
    """``n`` amplifiers around the nominal gain (+-5%) and read noise (+-10%); a lone one is nominal."""
    overscan_adu = OVERSCAN_ADU + rng.uniform(-50.0, 50.0, n)
    if n == 1:
        return (Readout(gain_e_per_adu, rdnoise_e, float(overscan_adu[0])),)
    gains = gain_e_per_adu * rng.uniform(0.95, 1.05, n)
    noises = rdnoise_e * rng.uniform(0.9, 1.1, n)
    return tuple(Readout(float(g), float(r), float(o)) for g, r, o in zip(gains, noises, overscan_adu))


def bias_pattern_e(size: int, rng: np.random.Generator) -> np.ndarray:
    """Fixed-pattern bias residual after overscan subtraction (e-), MuSCAT3 orientation.

    A 2 e- pedestal, a 12 e- glow decaying away from the readout side (x = 0), a sag growing
    to 3 e- towards the top, 1.5 e- column-to-column and 1 e- pixel-to-pixel structure.
    """
    x = np.arange(size)
    y = np.arange(size)
    glow = 12.0 * np.exp(-x / (size / 16))
    sag = 3.0 * (y / size) ** 2
    columns = 1.5 * rng.standard_normal(size)
    pixels = rng.standard_normal((size, size), dtype=np.float32)
    return (2.0 + sag[:, None] + (glow + columns)[None, :] + pixels).astype(np.float32)


def dark_current(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(``dark_e_per_s`` map, ``hot`` pixel map): lognormal dark plus hot pixels of 0.3-30 e-/s."""
    dark_e_per_s = (DARK_E_PER_S * rng.lognormal(0.0, 0.3, (size, size))).astype(np.float32)
    hot = rng.random((size, size)) < HOT_PIXEL_FRACTION
    dark_e_per_s[hot] = 10.0 ** rng.uniform(-0.5, 1.5, int(hot.sum()))
    return dark_e_per_s, hot


def sky_flat(size: int, rng: np.random.Generator) -> np.ndarray:
    """Unitless flat: vignetting x (1 + PRNU) with one opaque dust spot, mean 1 over the central half."""
    centre = (size - 1) / 2.0
    y, x = np.ogrid[:size, :size]
    r2 = ((y - centre) ** 2 + (x - centre) ** 2) / (2.0 * centre**2)  # 1 in the corners
    vignetting = 1.0 - rng.uniform(0.08, 0.15) * r2
    flat = vignetting * (1.0 + PRNU * rng.standard_normal((size, size), dtype=np.float32))
    dust_y, dust_x = rng.uniform(size / 8, 7 * size / 8, 2)
    dust = (y - dust_y) ** 2 + (x - dust_x) ** 2 <= max(2.0, size / 128) ** 2
    flat[dust] *= rng.uniform(0.05, 0.15)
    central = slice(size // 4, size - size // 4)
    return (flat / flat[central, central].mean()).astype(np.float32)


def bad_columns(size: int, rng: np.random.Generator) -> tuple[int, int]:
    """0-based x of a dead (stuck-low) and a hot (stuck-high) column, distinct, away from the edges."""
    dead, hot = rng.choice(np.arange(size // 8, size - size // 8), 2, replace=False)
    return int(dead), int(hot)


def cosmic_rays_e(size: int, rng: np.random.Generator, exptime_s: float) -> np.ndarray:
    """Charge (e-, float32 map) of cosmic-ray hits: 1-10 pixel straight tracks, 1.5-8 ke- per pixel."""
    n = rng.poisson(COSMIC_RAYS_PER_PX_S * size**2 * exptime_s)
    lengths = np.minimum(rng.geometric(0.4, n), 10)
    start = rng.uniform(0.0, size, (n, 2))
    angle = rng.uniform(0.0, 2.0 * math.pi, n)
    step = np.arange(lengths.max(initial=0))[None, :]
    along = step < lengths[:, None]  # (n, max length)
    y = np.floor(start[:, :1] + step * np.sin(angle)[:, None])[along].astype(np.int64)
    x = np.floor(start[:, 1:] + step * np.cos(angle)[:, None])[along].astype(np.int64)
    charge = rng.uniform(1500.0, 8000.0, y.size)
    inside = (y >= 0) & (y < size) & (x >= 0) & (x < size)
    image = np.bincount(y[inside] * size + x[inside], charge[inside], minlength=size * size)
    return image.reshape(size, size).astype(np.float32)


def collect_e(expected_e: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photon (and dark) shot noise: a Poisson draw of the expected electrons (float32)."""
    return rng.poisson(expected_e).astype(np.float32)


def spoil_bad_columns(charge_e: np.ndarray, dead_x: int, hot_x: int) -> np.ndarray:
    """Charge with the dead column emptied and the hot column stuck at ``HOT_COLUMN_E`` (copy)."""
    charge_e = charge_e.copy()
    charge_e[:, dead_x] = 0.0
    charge_e[:, hot_x] = HOT_COLUMN_E
    return charge_e


def digitise_adu(
    charge_e: np.ndarray,
    bias_e: np.ndarray,
    gain_e_per_adu: np.ndarray,
    rdnoise_e: np.ndarray,
    overscan_adu: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(raw uint16 ADU, saturated): add bias and read noise, convert, add overscan, round, clip.

    ``gain_e_per_adu``, ``rdnoise_e`` and ``overscan_adu`` are per-pixel maps (or scalars) of the
    reading amplifier. Saturated pixels are those that round to ``SATURATE_ADU`` or more; they read
    exactly ``SATURATE_ADU``.
    """
    noise_e = rdnoise_e * rng.standard_normal(charge_e.shape, dtype=np.float32)
    adu = np.rint(overscan_adu + (charge_e + bias_e + noise_e) / gain_e_per_adu)
    saturated = adu >= SATURATE_ADU
    return np.clip(adu, 0, SATURATE_ADU).astype(np.uint16), saturated


def overscan_adu(
    readout: Readout, shape: tuple[int, int], rng: np.random.Generator, row_offsets_e: np.ndarray | None = None
) -> np.ndarray:
    """Overscan columns (uint16 ADU): the amplifier's level plus its read noise in ADU, plus the
    rows' readout offsets ``row_offsets_e`` (e-, one per raw row) when given."""
    sigma_adu = readout.rdnoise_e / readout.gain_e_per_adu
    level = readout.overscan_adu
    if row_offsets_e is not None:
        level = level + (np.asarray(row_offsets_e, np.float64) / readout.gain_e_per_adu)[:, None]
    return np.rint(level + sigma_adu * rng.standard_normal(shape)).astype(np.uint16)


def row_offsets_e(rows: int, rms_e: float, rho: float, rng: np.random.Generator) -> np.ndarray:
    """Per-row readout offsets (e-, float64, readout order): a stationary AR(1) sequence of RMS
    ``rms_e`` whose consecutive rows correlate by ``rho`` (autocorrelation ``rho**lag``)."""
    innovations = rng.standard_normal(rows)
    innovations[1:] *= math.sqrt(1.0 - rho**2)
    return rms_e * signal.lfilter([1.0], [1.0, -rho], innovations)


def bias_error_e(size: int, rdnoise_e: float, rng: np.random.Generator) -> np.ndarray:
    """1-sigma error (e-) of a master bias of ``BIAS_FRAMES`` frames: the per-pixel standard error.

    Each pixel's error is estimated from its own scatter, so it scatters as a chi distribution
    around ``rdnoise_e / sqrt(BIAS_FRAMES)``.
    """
    dof = BIAS_FRAMES - 1
    scatter = np.sqrt(rng.chisquare(dof, (size, size)) / dof)
    return (rdnoise_e / math.sqrt(BIAS_FRAMES) * scatter).astype(np.float32)


def dark_error_e_per_s(dark_e_per_s: np.ndarray, rdnoise_e: float) -> np.ndarray:
    """1-sigma error (e-/s) of a master dark from ``DARK_FRAMES`` exposures of ``DARK_EXPTIME_S``."""
    per_frame_e = np.sqrt(dark_e_per_s * DARK_EXPTIME_S + rdnoise_e**2)
    return (per_frame_e / (DARK_EXPTIME_S * math.sqrt(DARK_FRAMES))).astype(np.float32)


def flat_error(flat: np.ndarray) -> np.ndarray:
    """1-sigma error (unitless) of a flat from ``FLAT_FRAMES`` exposures of ``FLAT_LEVEL_E``."""
    return np.sqrt(np.abs(flat) / (FLAT_LEVEL_E * FLAT_FRAMES)).astype(np.float32)
