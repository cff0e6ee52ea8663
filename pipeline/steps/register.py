"""Offset of an exposure relative to a reference frame of the same field.

FFT phase correlation (normalised cross-power spectrum with a Gaussian low-pass weighting) and a
sub-pixel Gaussian fit to the correlation peak. Both frames are first made comparable: a smooth
background (block medians) is subtracted and the frame scaled to units of sky rms; masked and
non-finite pixels are filled inwards from their good neighbours; features narrower than 2 px
(cosmic rays, hot pixels, unmasked bad columns) are replaced by a grey opening; the result is
asinh-compressed so that faint and saturated stars both contribute, and a Tukey window removes
edge effects.

Decision, in this order: the frame is refused when either frame has fewer than ``min_sources``
significant sources (connected regions above 5 sigma after a 1 px Gaussian smoothing), when the
correlation peak is less than ``min_peak_ratio`` times the highest value of the correlation
surface away from it, when the shift exceeds ``max_shift_px``, or when fewer than
``min_matched_fraction`` of the reference's sources fall on a source of the image at the offset.

Alternatively (``wcs_offset``) the offset comes from the frames' celestial WCSs: a grid of the
reference's pixel centres is projected to the sky through the reference WCS and back to pixels
through the image's, and the mean displacement is the offset (a translation; frames of one
pointing differ by nothing else to within a small fraction of a pixel).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy import fft, ndimage

from .params import RegisterParams

_BACKGROUND_BOX_PX = 32  # block size of the smooth background
_OUTLIER_SIGMA = 5.0  # a pixel this far above its 2 x 2 opening (in sky rms) ...
_OUTLIER_SHARPNESS = 2.0  # ... and more than this many times the opening's value is replaced
_FILL_RADIUS_PX = 2  # bad pixels take the Gaussian-weighted mean of known pixels this close ...
_FILL_PASSES = 8  # ... in rings from the outside in, up to 16 px deep; deeper ones become 0
_ASINH_SOFTENING_SIGMA = 20.0  # compression is linear below this many sky rms, logarithmic above
_TUKEY_ALPHA = 0.25  # fraction of each axis tapered by the window
_LOWPASS_CYCLES_PER_PX = 0.08  # Gaussian sigma of the cross-power weighting
_PEAK_EXCLUSION_PX = 5 / (2 * np.pi * _LOWPASS_CYCLES_PER_PX)  # 5 sigma of the peak (~10 px)
_SOURCE_SMOOTH_PX = 1.0  # Gaussian sigma of the smoothing before source counting
_SOURCE_SIGMA = 5.0  # source detection threshold, in rms of the smoothed frame's good pixels
_SOURCE_MIN_AREA_PX = 3


@dataclass(frozen=True)
class Offset:
    """Content at reference ``(y, x)`` is found in the image at ``(y + dy, x + dx)`` (pixels)."""

    dy: float
    dx: float
    quality: float  # correlation peak ratio used for the decision
    ok: bool
    reason: str  # "" when ok, else why the frame is refused
    method: str = "phase"  # "phase" (correlation) or "wcs" (quality is then 0)
    note: str = ""  # e.g. why the WCS was not used although asked for


def measure_offset(
    reference: np.ndarray,
    image: np.ndarray,
    reference_mask: np.ndarray | None = None,
    image_mask: np.ndarray | None = None,
    params: RegisterParams = RegisterParams(),
) -> Offset:
    """Offset (pixels) of ``image`` relative to ``reference``; masks are True where bad."""
    return measure_offsets(reference, [(image, image_mask)], reference_mask, params)[0]


def measure_offsets(
    reference: np.ndarray,
    images: Iterable[tuple[np.ndarray, np.ndarray | None]],
    reference_mask: np.ndarray | None = None,
    params: RegisterParams = RegisterParams(),
) -> list[Offset]:
    """``measure_offset`` of each ``(image, mask)`` of ``images`` (consumed one at a time, so it
    may read them lazily) against one ``reference``, which is prepared once."""
    reference = np.asarray(reference, dtype=np.float64)
    if reference.ndim != 2:
        raise ValueError(f"need a 2-D reference frame, got shape {reference.shape}")
    ref_clean, ref_bad = prepare(reference, reference_mask)
    _, ref_centres = find_sources(ref_clean, ref_bad)
    ref_spectrum = fft.rfft2(window(ref_clean))
    return [_offset(ref_spectrum, reference.shape, ref_centres, image, mask, params) for image, mask in images]


def _offset(
    ref_spectrum: np.ndarray, shape: tuple[int, int], ref_centres: np.ndarray, image, image_mask, params: RegisterParams
) -> Offset:
    image = np.asarray(image, dtype=np.float64)
    if image.shape != shape:
        raise ValueError(f"need two 2-D frames of one shape, got {shape}, {image.shape}")
    img_clean, img_bad = prepare(image, image_mask)
    img_footprint, img_centres = find_sources(img_clean, img_bad)
    n_sources = min(len(ref_centres), len(img_centres))
    spectrum = cross_power(ref_spectrum, window(img_clean))
    (dy, dx), ratio = peak(spectrum, image.shape)
    shift = float(np.hypot(dy, dx))
    matched = matched_fraction(ref_centres, img_footprint, dy, dx)
    if n_sources < params.min_sources:
        reason = f"too few sources ({n_sources} < {params.min_sources})"
    elif ratio < params.min_peak_ratio:
        reason = f"correlation peak too weak ({ratio:.1f} < {params.min_peak_ratio})"
    elif shift > params.max_shift_px:
        reason = f"shift {shift:.1f} px exceeds max_shift_px {params.max_shift_px:g}"
    elif matched < params.min_matched_fraction:
        limit = params.min_matched_fraction
        reason = f"sources do not match at the offset ({matched:.0%} < {limit:.0%})"
    else:
        reason = ""
    return Offset(dy=dy, dx=dx, quality=ratio, ok=not reason, reason=reason)


_WCS_GRID = 9  # the reference pixels projected by wcs_offset: a 9 x 9 grid over the frame


def celestial_wcs(header: fits.Header) -> tuple[WCS | None, str]:
    """The header's 2-D celestial WCS, or ``None`` and why it cannot be used."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header)
    except Exception as err:  # astropy raises several types for malformed WCS keywords
        return None, f"invalid WCS ({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})"
    if not wcs.has_celestial or wcs.celestial.naxis != 2:
        return None, "no celestial WCS"
    return wcs.celestial, ""


def wcs_offset(reference: WCS, image: WCS, shape: tuple[int, int], params: RegisterParams = RegisterParams()) -> Offset:
    """Offset (pixels, ``Offset`` convention) of ``image`` relative to ``reference`` (frames of
    ``shape``) from their celestial WCSs: the mean over a grid of reference pixel centres of
    (image pixel - reference pixel) of the same sky position. Refused when a projection fails or
    the shift exceeds ``params.max_shift_px``."""
    ys, xs = np.meshgrid(
        np.linspace(0, shape[0] - 1, _WCS_GRID), np.linspace(0, shape[1] - 1, _WCS_GRID), indexing="ij"
    )
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore")
        try:
            sky = reference.pixel_to_world_values(xs, ys)
            px, py = image.world_to_pixel_values(*sky)
        except Exception as err:  # e.g. non-convergence of a distortion model
            return Offset(np.nan, np.nan, 0.0, False, f"WCS projection failed ({err})", "wcs")
    if not (np.all(np.isfinite(px)) and np.all(np.isfinite(py))):
        return Offset(np.nan, np.nan, 0.0, False, "WCS projection failed (non-finite pixels)", "wcs")
    dy, dx = float(np.mean(py - ys)), float(np.mean(px - xs))
    shift = float(np.hypot(dy, dx))
    reason = f"shift {shift:.1f} px exceeds max_shift_px {params.max_shift_px:g}" if shift > params.max_shift_px else ""
    return Offset(dy=dy, dx=dx, quality=0.0, ok=not reason, reason=reason, method="wcs")


def prepare(image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Background-subtracted frame in units of sky rms with bad pixels (``mask`` True or
    non-finite) filled and sharp outliers replaced (all zero when nothing usable is left), and
    the bad pixels."""
    bad = ~np.isfinite(image)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    good = image[~bad]
    if good.size == 0:
        return np.zeros(image.shape), bad
    filled = np.where(bad, np.median(_subsample(good)), image)
    residual = filled - smooth_background(filled, _BACKGROUND_BOX_PX)
    rms = robust_rms(residual[~bad])
    if rms == 0:
        return np.zeros(image.shape), bad
    scaled = residual / rms
    if bad.any():
        scaled = fill_from_neighbours(scaled, bad)
    return remove_sharp_outliers(scaled), bad


def robust_rms(values: np.ndarray) -> float:
    """1.4826 x median absolute deviation from the median (of a subsample of >= 16k values); 0
    for no values."""
    if values.size == 0:
        return 0.0
    sample = _subsample(values)
    return float(1.4826 * np.median(np.abs(sample - np.median(sample))))


def _subsample(values: np.ndarray) -> np.ndarray:
    """Every k-th value, k chosen to keep 16k to 32k of them (all of fewer); enough for a median."""
    return values.ravel()[:: max(1, values.size // 16384)]


def fill_from_neighbours(scaled: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Fill bad pixels from the outside in, in rings 2 px deep: each pixel gets the Gaussian-
    weighted (sigma 1 px) mean of the known pixels within 2 px; beyond ``_FILL_PASSES`` rings
    (16 px) it is 0 (the background). A hole in a star (a masked saturated core, a bad pixel) or a
    dip where a bad column crosses it would bias the correlation peak."""
    r = _FILL_RADIUS_PX
    depth = ndimage.distance_transform_cdt(bad, metric="chessboard")  # px to a good one, 0 if good
    depth = np.pad(depth, r, constant_values=np.iinfo(depth.dtype).max)  # the pad is never known
    values = np.pad(np.where(bad, 0.0, scaled), r)
    holes_y, holes_x = np.nonzero(bad)
    holes_y, holes_x = holes_y + r, holes_x + r
    holes_depth = depth[holes_y, holes_x]
    for ring in range(_FILL_PASSES):
        this_ring = (holes_depth > ring * r) & (holes_depth <= (ring + 1) * r)
        ys, xs = holes_y[this_ring], holes_x[this_ring]
        total = np.zeros(ys.size)
        weight = np.zeros(ys.size)
        for oy in range(-r, r + 1):
            for ox in range(-r, r + 1):
                w = np.exp(-0.5 * (oy**2 + ox**2)) * (depth[ys + oy, xs + ox] <= ring * r)  # known
                total += w * values[ys + oy, xs + ox]
                weight += w
        values[ys, xs] = total / weight
    return values[r:-r, r:-r]


def smooth_background(image: np.ndarray, box_px: int) -> np.ndarray:
    """Medians of blocks of about ``box_px`` x ``box_px`` pixels tiling the frame, linearly
    interpolated between block centres."""
    (oy, sy, by), (ox, sx, bx) = _tiling(image.shape[0], box_px), _tiling(image.shape[1], box_px)
    core = image[oy : oy + by * sy, ox : ox + bx * sx]
    blocks = core.reshape(by, sy, bx, sx).transpose(0, 2, 1, 3).reshape(by, bx, -1)
    coarse = np.median(blocks, axis=2)
    along_y = _upsample_linear(coarse, image.shape[0], oy, sy)
    return _upsample_linear(along_y.T, image.shape[1], ox, sx).T


def _tiling(n: int, box_px: int) -> tuple[int, int, int]:
    """(offset, size, count) of the blocks tiling ``n`` pixels, centred; the < count pixels
    left over at the ends are not used."""
    count = max(1, round(n / box_px))
    size = n // count
    return (n - count * size) // 2, size, count


def _upsample_linear(coarse: np.ndarray, n: int, offset: int, size: int) -> np.ndarray:
    """Linear interpolation along axis 0 from values at block centres to ``n`` pixels, clamped
    beyond the first and last centres."""
    count = coarse.shape[0]
    position = np.clip((np.arange(n) - offset + 0.5) / size - 0.5, 0, count - 1)
    k = np.minimum(position.astype(int), max(count - 2, 0))
    t = (position - k)[:, None]
    return coarse[k] * (1 - t) + coarse[np.minimum(k + 1, count - 1)] * t


def remove_sharp_outliers(scaled: np.ndarray) -> np.ndarray:
    """Replace features narrower than 2 px (cosmic rays, hot pixels, bad columns) by the grey
    opening with a 2 x 2 box; ``scaled`` is background-subtracted, in units of sky rms."""
    opened = opening_2x2(scaled)
    excess = scaled - opened
    sharp = (excess > _OUTLIER_SIGMA) & (excess > _OUTLIER_SHARPNESS * np.maximum(opened, 0.0))
    return np.where(sharp, opened, scaled)


def opening_2x2(image: np.ndarray) -> np.ndarray:
    """Grey opening with a flat 2 x 2 box (edge-extended): the highest of the minima of the four
    2 x 2 boxes holding each pixel."""
    p = np.pad(image, 1, mode="edge")
    m = np.minimum(np.minimum(p[:-1, :-1], p[1:, :-1]), np.minimum(p[:-1, 1:], p[1:, 1:]))
    return np.maximum(np.maximum(m[:-1, :-1], m[1:, :-1]), np.maximum(m[:-1, 1:], m[1:, 1:]))


def find_sources(prepared: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Significant sources: connected regions of at least 3 px above 5 rms (over the good pixels)
    of the 1 px-smoothed frame. Returns their footprint (bool image) and centres ((n, 2) int
    pixels, y x, centres of their bounding boxes)."""
    smoothed = ndimage.gaussian_filter(prepared, _SOURCE_SMOOTH_PX)
    rms = robust_rms(smoothed[~bad])
    if rms == 0:
        return np.zeros(prepared.shape, dtype=bool), np.empty((0, 2), dtype=int)
    labels, n = ndimage.label(smoothed > _SOURCE_SIGMA * rms)
    keep = np.bincount(labels.ravel(), minlength=n + 1) >= _SOURCE_MIN_AREA_PX
    keep[0] = False
    boxes = ndimage.find_objects(labels)
    centres = [((y.start + y.stop - 1) // 2, (x.start + x.stop - 1) // 2) for y, x in boxes]
    return keep[labels], np.array(centres, dtype=int).reshape(-1, 2)[keep[1:]]


def matched_fraction(reference_centres: np.ndarray, image_footprint: np.ndarray, dy: float, dx: float) -> float:
    """Fraction of reference source centres that, moved by ``(dy, dx)`` pixels, land on a source
    in the image (among those landing inside it); 0 when none does."""
    moved = reference_centres + np.round([dy, dx]).astype(int)
    inside = np.all((moved >= 0) & (moved < image_footprint.shape), axis=1)
    if not inside.any():
        return 0.0
    return float(image_footprint[moved[inside, 0], moved[inside, 1]].mean())


def window(prepared: np.ndarray) -> np.ndarray:
    """asinh-compressed, mean-subtracted frame times a 2-D Tukey window."""
    compressed = np.arcsinh(prepared / _ASINH_SOFTENING_SIGMA)
    ny, nx = prepared.shape
    taper = np.outer(tukey_window(ny, _TUKEY_ALPHA), tukey_window(nx, _TUKEY_ALPHA))
    return (compressed - compressed.mean()) * taper


def tukey_window(n: int, alpha: float) -> np.ndarray:
    """The symmetric Tukey (tapered cosine) window of ``n`` points: a cosine taper over a
    fraction ``alpha`` (0 < alpha <= 1) of them, half at each end, flat (1) between."""
    if n == 1:
        return np.ones(1)
    edge = np.minimum(np.arange(n), np.arange(n)[::-1]) / (n - 1)  # to the nearer end, of n - 1
    taper = 0.5 * (1.0 + np.cos(np.pi * (2.0 * edge / alpha - 1.0)))
    return np.where(edge < alpha / 2.0, taper, 1.0)


def cross_power(reference_spectrum: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Low-pass weighted, normalised cross-power spectrum ``F(image) F*(reference) / |...|``
    (half spectrum of ``rfft2``); its inverse peaks at the shift of the image.
    ``reference_spectrum`` is ``rfft2`` of the (windowed) reference, computed once per reference."""
    cross = fft.rfft2(image) * np.conj(reference_spectrum)
    cross /= np.maximum(np.abs(cross), np.finfo(float).tiny)
    return cross * _lowpass(image.shape)


@lru_cache(maxsize=8)
def _lowpass(shape: tuple[int, int]) -> np.ndarray:
    """The Gaussian low-pass weights of the half spectrum of frames of ``shape`` (read-only)."""
    fy = fft.fftfreq(shape[0])[:, None]
    fx = fft.rfftfreq(shape[1])[None, :]
    weights = np.exp(-0.5 * (fy**2 + fx**2) / _LOWPASS_CYCLES_PER_PX**2)
    weights.setflags(write=False)
    return weights


def peak(spectrum: np.ndarray, shape: tuple[int, int]) -> tuple[tuple[float, float], float]:
    """Sub-pixel position ``(dy, dx)`` (pixels, signed) of the correlation peak of the half
    cross-power ``spectrum`` of frames of ``shape``, and the peak's ratio to the highest
    correlation value more than ``_PEAK_EXCLUSION_PX`` away.

    The low-pass weighting makes the peak a Gaussian (sigma ~2 px), so a Gaussian through the
    integer maximum and its two neighbours on each axis locates it (exactly for a pure shift).
    """
    corr = fft.irfft2(spectrum, s=shape)
    ny, nx = shape
    iy, ix = np.unravel_index(np.argmax(corr), shape)
    fy = _gaussian_vertex(corr[iy - 1, ix], corr[iy, ix], corr[(iy + 1) % ny, ix])
    fx = _gaussian_vertex(corr[iy, ix - 1], corr[iy, ix], corr[iy, (ix + 1) % nx])
    dist_y = (np.arange(ny) - iy + ny // 2) % ny - ny // 2
    dist_x = (np.arange(nx) - ix + nx // 2) % nx - nx // 2
    far = dist_y[:, None] ** 2 + dist_x[None, :] ** 2 > _PEAK_EXCLUSION_PX**2
    second = corr[far].max(initial=0.0)
    ratio = float(corr[iy, ix] / second) if second > 0 else 0.0
    iy = iy - ny if iy > ny // 2 else iy
    ix = ix - nx if ix > nx // 2 else ix
    return (float(iy + fy), float(ix + fx)), ratio


def _gaussian_vertex(left: float, centre: float, right: float) -> float:
    """Offset (pixels, within +-0.5) of the centre of the Gaussian through three samples spaced
    1 px apart, the middle one highest; 0 when they do not describe a peak."""
    if min(left, centre, right) <= 0:
        return 0.0
    a, b, c = np.log([left, centre, right])
    curvature = a - 2 * b + c
    return float(np.clip(0.5 * (a - c) / curvature, -0.5, 0.5)) if curvature < 0 else 0.0
