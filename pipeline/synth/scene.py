"""The sky: a linear background gradient plus Moffat stars, in expected photo-electrons.

Positions are numpy pixel coordinates ``(y, x)`` of pixel centres, 0-based. A ``shift`` of
``(dy, dx)`` moves the scene content: what sits at ``(y, x)`` unshifted appears at
``(y + dy, x + dx)``. Stars are rendered as stamps sampled at pixel centres; light fainter
than ``STAMP_FLOOR_E`` per pixel is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STARS_PER_PIXEL = 200 / 512**2
STAR_FLUX_MIN_E = 800.0
STAR_FLUX_SLOPE = 0.5  # N(> F) ~ F**-slope
SATURATING_STARS = 3
STAMP_FLOOR_E = 0.1
STAMP_RADII_PX = (4, 8, 16, 32, 64, 128)
STAMP_BATCH_PX = 2_000_000  # stamp pixels rendered per vectorised batch (bounds memory)
SOURCE_THRESHOLD_SIGMA = 0.5  # star light above this many sky-noise sigmas is "source"


@dataclass(frozen=True)
class Sky:
    """Background ``level_e`` at the detector centre plus a linear gradient (e-/pixel)."""

    level_e: float
    slope_e_per_px: tuple[float, float]  # (d/dy, d/dx)


@dataclass(frozen=True)
class Moffat:
    """Moffat PSF ``I(r) ~ (1 + (r/alpha)^2)^-beta`` with full width at half maximum ``fwhm_px``."""

    fwhm_px: float
    beta: float

    @property
    def alpha_px(self) -> float:
        return self.fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / self.beta) - 1.0))

    @property
    def peak_per_e(self) -> float:
        """Central pixel value per electron of total flux (1/pixel)."""
        return (self.beta - 1.0) / (math.pi * self.alpha_px**2)


@dataclass(frozen=True, eq=False)
class Stars:
    """Star centres ``yx`` (n, 2) in pixels, unshifted, and total fluxes ``flux_e`` (n,)."""

    yx: np.ndarray
    flux_e: np.ndarray

    def __len__(self) -> int:
        return len(self.flux_e)


def draw_sky(rng: np.random.Generator, size: int) -> Sky:
    """A 500-1400 e- background whose gradient changes it by at most 25% across the frame."""
    level_e = rng.uniform(500.0, 1400.0)
    amplitude = rng.uniform(0.05, 0.25) * level_e / size
    angle = rng.uniform(0.0, 2.0 * math.pi)
    return Sky(level_e, (amplitude * math.sin(angle), amplitude * math.cos(angle)))


def draw_psf(rng: np.random.Generator) -> Moffat:
    """Seeing of 3-5 pixels FWHM, beta 3."""
    return Moffat(fwhm_px=rng.uniform(3.0, 5.0), beta=3.0)


def draw_stars(rng: np.random.Generator, size: int, psf: Moffat, saturation_e: float) -> Stars:
    """A power-law field below ``saturation_e`` at the peak, plus a few stars far above it.

    Field stars scatter over the frame and a margin around it (they drift in and out);
    the ``SATURATING_STARS`` bright ones sit well inside, peaking at 1.5-5 x ``saturation_e``.
    """
    n_field = round(STARS_PER_PIXEL * size**2)
    flux_max_e = 0.8 * saturation_e / psf.peak_per_e
    tail = 1.0 - (STAR_FLUX_MIN_E / flux_max_e) ** STAR_FLUX_SLOPE
    field_e = STAR_FLUX_MIN_E * (1.0 - rng.random(n_field) * tail) ** (-1.0 / STAR_FLUX_SLOPE)
    field_yx = rng.uniform(-8.0, size + 8.0, (n_field, 2))
    bright_e = rng.uniform(1.5, 5.0, SATURATING_STARS) * saturation_e / psf.peak_per_e
    bright_yx = rng.uniform(size / 8, 7 * size / 8, (SATURATING_STARS, 2))
    return Stars(np.concatenate([field_yx, bright_yx]), np.concatenate([field_e, bright_e]))


def sky_e(size: int, sky: Sky, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Background (e-, float32, size x size) with the gradient evaluated at shifted coordinates."""
    centre = (size - 1) / 2.0
    y = np.arange(size) - shift[0] - centre
    x = np.arange(size) - shift[1] - centre
    slope_y, slope_x = sky.slope_e_per_px
    return (sky.level_e + slope_y * y[:, None] + slope_x * x[None, :]).astype(np.float32)


def stamp_radius_px(peak_e: np.ndarray, psf: Moffat) -> np.ndarray:
    """Radius (pixels) where the profile of a star peaking at ``peak_e`` falls to ``STAMP_FLOOR_E``."""
    ratio = np.maximum(peak_e / STAMP_FLOOR_E, 1.0)
    return psf.alpha_px * np.sqrt(ratio ** (1.0 / psf.beta) - 1.0)


def stars_e(size: int, stars: Stars, psf: Moffat, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Star light (e-, float32, size x size); stars grouped by stamp size and rendered in batches.

    Stamps are drawn on a canvas padded by the largest stamp plus the farthest off-frame centre,
    so no stamp needs clipping; the canvas is cropped to the detector at the end.
    """
    centres = stars.yx + np.asarray(shift, dtype=float)
    peak_e = stars.flux_e * psf.peak_per_e
    classes = np.minimum(np.searchsorted(STAMP_RADII_PX, stamp_radius_px(peak_e, psf)), len(STAMP_RADII_PX) - 1)
    overhang = max(0.0, -centres.min(initial=0.0), centres.max(initial=0.0) - (size - 1))
    pad = STAMP_RADII_PX[classes.max(initial=0)] + math.ceil(overhang) + 1
    side = size + 2 * pad
    canvas = np.zeros(side * side)
    for cls in np.unique(classes):
        chosen = np.flatnonzero(classes == cls)
        radius = STAMP_RADII_PX[cls]
        batch = max(1, STAMP_BATCH_PX // (2 * radius + 1) ** 2)
        for start in range(0, len(chosen), batch):
            part = chosen[start : start + batch]
            index, values = _stamps(centres[part] + pad, peak_e[part], radius, psf, side)
            canvas += np.bincount(index.ravel(), values.ravel(), minlength=side * side)
    return canvas.reshape(side, side)[pad : pad + size, pad : pad + size].astype(np.float32)


def _stamps(
    centres: np.ndarray, peak_e: np.ndarray, radius: int, psf: Moffat, side: int
) -> tuple[np.ndarray, np.ndarray]:
    """(flat canvas index, e-) of square Moffat stamps of half-width ``radius`` around ``centres``."""
    offsets = np.arange(-radius, radius + 1)
    rows = np.rint(centres[:, :1]).astype(np.int64) + offsets  # (n, w)
    cols = np.rint(centres[:, 1:]).astype(np.int64) + offsets
    inv_alpha2 = 1.0 / psf.alpha_px**2
    v2 = ((rows - centres[:, :1]) ** 2 * inv_alpha2).astype(np.float32)
    u2 = ((cols - centres[:, 1:]) ** 2 * inv_alpha2).astype(np.float32)
    profile = (1.0 + v2[:, :, None] + u2[:, None, :]) ** np.float32(-psf.beta)
    values = peak_e.astype(np.float32)[:, None, None] * profile
    return rows[:, :, None] * side + cols[:, None, :], values


def source_mask(star_light_e: np.ndarray, background_e: np.ndarray) -> np.ndarray:
    """True where star light exceeds ``SOURCE_THRESHOLD_SIGMA`` times the sky's Poisson noise."""
    return star_light_e > SOURCE_THRESHOLD_SIGMA * np.sqrt(background_e)
