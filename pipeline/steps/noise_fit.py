"""Fitting a session's CCD noise model from its own data (docs/synthesis.md).

Small pure functions on arrays; units in the names (``_adu``, ``_e``, ``_px``, ``_s``):

- ``fit_read_noise(overscan_adu)``: one amplifier's raw overscan (``BIASSEC``, raw rows along y)
  gives the white read noise (pixel scatter about the row means, quantisation removed), the
  row-correlated part (variance, correlation length and power spectrum of the row means, the
  white floor removed) and the shape of the white part (skewness, excess kurtosis, tail
  fraction; its quantile function is kept for synthesis when it is not Gaussian).
- ``fit_gain_ptc(...)``: a photon transfer curve from disjoint pairs of registered e91 frames:
  the variance of their difference in flux bins against the signal, read variance removed,
  fitted through the origin; the slope is ``1 / gain``.
- ``fit_cosmic_rays(...)``: the rate (hits per pixel per second of exposure) and the shapes
  (pixel offsets and charges, e-) of the hits L.A.Cosmic flagged in the session's frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .amplifiers import Amplifier
from .masks import Flag
from .overscan import OverscanParams, overscan_level_adu

QUANTISATION_VAR_ADU2 = 1.0 / 12.0  # variance of rounding to integer ADU
QUANTILE_LEVELS = tuple(
    float(p) for p in np.concatenate([[1e-5, 1e-4, 1e-3], np.linspace(0.005, 0.995, 199), [0.999, 0.9999, 0.99999]])
)
GAUSSIAN_SIGMAS = 5.0  # shape differences below this many standard errors count as Gaussian
CLIP_SIGMAS = 5.0  # robust variance: values beyond this many robust sigma are outliers
PTC_BINS = 12
MIN_PTC_PIXELS = 2000
MAX_HIT_EXTENT_PX = 32  # cosmic-ray shapes larger than this (a star's residue, a satellite) are not kept
MAX_HIT_SHAPES = 400
MIN_HIT_SIGMA = 10.0
MIN_PSD_BINS = 8
GAIN_DISAGREEMENT = 0.10  # |PTC / header - 1| above this is warned about


@dataclass(frozen=True)
class ReadNoise:
    """One amplifier's read-out noise, in its raw ADU.

    ``row_psd_adu2``: one-sided power spectrum of the row offsets at ``row_psd_freq`` (cycles
    per row, 0..0.5), normalised so that its mean over the ``n`` periodogram bins of ``n`` rows
    is their variance (``ADU^2``). ``quantiles``: the standardised white residual at
    ``QUANTILE_LEVELS``, used to draw the white part when ``gaussian`` is false.
    """

    white_adu: float
    row_adu: float
    row_corr_rows: float  # lag at which the row offsets' autocorrelation falls to 1/e
    row_psd_freq: tuple[float, ...]
    row_psd_adu2: tuple[float, ...]
    skewness: float
    excess_kurtosis: float
    tail_fraction_5sigma: float  # fraction of white residuals beyond 5 sigma
    gaussian: bool
    quantiles: tuple[float, ...]
    rows: int
    columns: int


@dataclass(frozen=True)
class GainFit:
    """Gain from a photon transfer curve (e-/ADU) with its 1-sigma error; the binned curve."""

    gain_e_per_adu: float
    error_e_per_adu: float
    signal_adu: tuple[float, ...]  # per bin: mean signal x (raw-equivalent ADU)
    variance_adu2: tuple[float, ...]  # per bin: single-frame variance minus read variance
    variance_err_adu2: tuple[float, ...]
    pixels: int


@dataclass(frozen=True)
class CosmicFit:
    """Cosmic-ray rate (hits per pixel per second) and hit shapes (offsets in px, charge in e-).

    Hit ``k`` is the pixels ``start[k]:start[k+1]`` of ``dy``, ``dx``, ``charge_e``.
    """

    rate_per_px_s: float
    rate_err_per_px_s: float
    hits: int
    area_px: int
    exptime_s: float
    start: tuple[int, ...]
    dy: tuple[int, ...]
    dx: tuple[int, ...]
    charge_e: tuple[float, ...]


def robust_variance(values: np.ndarray) -> float:
    """Variance of ``values`` after dropping those beyond ``CLIP_SIGMAS`` robust sigma (1.4826 MAD)
    of the median, then beyond ``CLIP_SIGMAS`` sigma of the kept mean; NaN when fewer than 3."""
    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size < 3:
        return math.nan
    centre = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - centre))
    kept = values[np.abs(values - centre) <= CLIP_SIGMAS * spread] if spread > 0 else values
    kept = values[np.abs(values - kept.mean()) <= CLIP_SIGMAS * kept.std()] if kept.std() > 0 else kept
    return float(kept.var(ddof=1))


def smoothed_periodogram(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frequency in cycles per sample, power) of ``series``: the periodogram ``|rfft|^2 / n``
    averaged over bins of ``MIN_PSD_BINS`` periodogram bins, widening to 15% of the frequency
    (a single periodogram bin scatters by 100%: drawn from, it would make a few modes carry
    the row variance)."""
    n = series.size
    power = np.abs(np.fft.rfft(series)) ** 2 / n
    freq = np.fft.rfftfreq(n)
    edges = [0]
    while edges[-1] < power.size:
        edges.append(edges[-1] + max(MIN_PSD_BINS, int(edges[-1] * 0.15)))
    edges[-1] = power.size
    centres = np.array([freq[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    means = np.array([power[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    return centres, means


def fit_read_noise(overscan_adu: np.ndarray) -> ReadNoise:
    """Read noise of one amplifier from its raw overscan (ADU, raw rows x overscan columns).

    The row means carry the row offsets plus ``white / columns`` of white variance, which is
    removed from their variance and spectrum; a linear trend along the rows (bias drift, the
    same in every frame and so in the master bias) is removed first.
    """
    data = np.asarray(overscan_adu, np.float64)
    rows, columns = data.shape
    if rows < 16 or columns < 4:
        raise ValueError(f"overscan of {columns} x {rows} pixels is too small to measure read noise")
    row_means = data.mean(axis=1)
    residual = data - row_means[:, None]
    white_var = float((residual**2).sum() / (rows * (columns - 1)))
    if white_var <= QUANTISATION_VAR_ADU2:
        raise ValueError(f"overscan variance {white_var:.3g} ADU^2 is below quantisation: no read noise to measure")
    z = residual.ravel() / math.sqrt(white_var)
    trend = np.polynomial.Polynomial.fit(np.arange(rows), row_means, 1)(np.arange(rows))
    offsets = row_means - trend
    floor = white_var / columns
    row_var = max(0.0, float(offsets.var(ddof=2)) - floor)
    lag1 = float(np.mean((offsets[1:] - offsets[1:].mean()) * (offsets[:-1] - offsets[:-1].mean())))
    rho = lag1 / row_var if row_var > 0 else 0.0
    corr = -1.0 / math.log(rho) if 0.0 < rho < 1.0 else 0.0
    freq, power = smoothed_periodogram(offsets)
    power = np.clip(power - floor, 0.0, None)
    if power.mean() > 0:
        power *= row_var / _psd_variance(freq, power, rows)
    n = z.size
    skew, kurt = _skew_kurtosis(z)
    sigma_q = QUANTISATION_VAR_ADU2 / white_var
    expected_kurt = -1.2 * sigma_q**2  # a Gaussian plus uniform rounding
    tail = float(np.mean(np.abs(z) > 5.0))
    expected_tail = math.erfc(5.0 / math.sqrt(2.0))  # P(|z| > 5) of a unit normal
    gaussian = (
        abs(skew) < GAUSSIAN_SIGMAS * math.sqrt(6.0 / n)
        and abs(kurt - expected_kurt) < GAUSSIAN_SIGMAS * math.sqrt(24.0 / n)
        and tail <= expected_tail + GAUSSIAN_SIGMAS * math.sqrt(max(expected_tail, 1.0 / n) / n)
    )
    return ReadNoise(
        white_adu=math.sqrt(white_var - QUANTISATION_VAR_ADU2),
        row_adu=math.sqrt(row_var),
        row_corr_rows=corr,
        row_psd_freq=tuple(float(f) for f in freq),
        row_psd_adu2=tuple(float(p) for p in power),
        skewness=skew,
        excess_kurtosis=kurt,
        tail_fraction_5sigma=tail,
        gaussian=bool(gaussian),
        quantiles=tuple(float(q) for q in np.quantile(z, QUANTILE_LEVELS)),
        rows=rows,
        columns=columns,
    )


@dataclass(frozen=True)
class AmpReadout:
    """An amplifier's read noise and the overscan level (ADU) the pipeline subtracts from it."""

    read: ReadNoise
    overscan_adu: float


def amp_read_noise(raw_adu: np.ndarray, amp: Amplifier, params: OverscanParams) -> AmpReadout:
    """``fit_read_noise`` of the amplifier's ``BIASSEC`` and the mean level ``params`` subtracts."""
    overscan = np.asarray(raw_adu)[amp.biassec.slices]
    try:
        read = fit_read_noise(overscan)
    except ValueError as err:
        raise ValueError(f"{amp.ref.label}: BIASSEC {amp.biassec}: {err}") from None
    return AmpReadout(read, float(overscan_level_adu(overscan, params).mean()))


def _skew_kurtosis(values: np.ndarray) -> tuple[float, float]:
    """Sample skewness and excess kurtosis (the biased moment ratios ``m3 / m2**1.5`` and
    ``m4 / m2**2 - 3``)."""
    d = values.astype(np.float64) - values.mean(dtype=np.float64)
    m2 = float(np.mean(d * d))
    return float(np.mean(d**3)) / m2**1.5, float(np.mean(d**4)) / m2**2 - 3.0


def _psd_variance(freq: np.ndarray, power: np.ndarray, n: int) -> float:
    """Variance of ``n`` samples whose one-sided spectrum is ``power`` at ``freq``."""
    grid = np.fft.rfftfreq(n)
    values = np.interp(grid, freq, power)
    weights = np.full(grid.size, 2.0)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[-1] = 1.0
    return float((weights * values).sum() / n)


def bilinear_variance_factor(shift_px: Sequence[float]) -> float:
    """Factor by which bilinear resampling by ``(dy, dx)`` scales white noise variance (1 for whole pixels)."""
    factor = 1.0
    for s in shift_px:
        f = float(s) - math.floor(float(s))
        factor *= (1.0 - f) ** 2 + f**2
    return factor


@dataclass(frozen=True, eq=False)
class PairSamples:
    """One pair of registered frames on source-free pixels: the signal ``x = mean * flat``
    and the difference ``d = (frame_a - frame_b) * flat``, both in the amplifier's raw ADU."""

    x_adu: np.ndarray
    d_adu: np.ndarray


def ptc_samples(
    frames_adu: np.ndarray,
    frame_ok: np.ndarray,
    mean_adu: np.ndarray,
    flat: np.ndarray,
    background: np.ndarray,
    to_raw_adu: float = 1.0,
) -> list[PairSamples]:
    """The photon-transfer samples of frames paired (0, 1), (2, 3), ...

    ``frames_adu`` (n, y, x): calibrated, registered frames (flat-fielded, ADU of the session's
    nominal gain); ``frame_ok`` the same shape, true where a value is usable; ``mean_adu`` their
    stack; ``flat`` the sky flat; ``background`` true on source-free pixels; ``to_raw_adu`` the
    nominal gain over the amplifier's header gain (frame ADU to the amplifier's raw ADU). A
    pair's difference cancels the sky and every fixed pattern (bias, dark, flat structure).
    """
    pairs = []
    for a in range(0, frames_adu.shape[0] - 1, 2):
        use = frame_ok[a] & frame_ok[a + 1] & background & np.isfinite(mean_adu) & (flat > 0.2)
        scale = flat[use] * np.float32(to_raw_adu)
        pairs.append(PairSamples(mean_adu[use] * scale, (frames_adu[a][use] - frames_adu[a + 1][use]) * scale))
    return pairs


def fit_gain_ptc(
    pairs: Sequence[Sequence[PairSamples]], variance_factors: Sequence[float], read_var_adu2: float
) -> GainFit | None:
    """Gain (e-/ADU) from a photon transfer curve; ``None`` without enough pixels.

    ``pairs``: per pair (0, 1), (2, 3), ... the samples of ``ptc_samples`` (one list per piece
    of the frame, e.g. strips); ``variance_factors`` per frame, how its registration scaled
    white noise variance (``bilinear_variance_factor``); ``read_var_adu2`` the read variance of
    a raw pixel (ADU^2, quantisation included). In flux bins of ``x``, ``var(d) / (c_a + c_b) -
    read_var = x / gain``: fitted through the origin, weighted by the bins' errors.
    """
    xs, ds = [], []
    for k, pieces in enumerate(pairs):
        factor = math.sqrt(variance_factors[2 * k] + variance_factors[2 * k + 1])
        for piece in pieces:
            xs.append(piece.x_adu)
            ds.append(piece.d_adu / factor)
    x = np.concatenate(xs).astype(np.float64) if xs else np.zeros(0)
    diff = np.concatenate(ds).astype(np.float64) if ds else np.zeros(0)
    if x.size < MIN_PTC_PIXELS:
        return None
    edges = np.quantile(x, np.linspace(0.0, 1.0, PTC_BINS + 1))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, PTC_BINS - 1)
    signal, variance, error = [], [], []
    for k in range(PTC_BINS):
        chosen = which == k
        if chosen.sum() < 50:
            continue
        var = robust_variance(diff[chosen])
        signal.append(float(x[chosen].mean()))
        variance.append(var - read_var_adu2)
        error.append(var * math.sqrt(2.0 / (chosen.sum() - 1)))
    sx, sy, se = (np.array(v) for v in (signal, variance, error))
    weights = 1.0 / se**2
    slope = float((weights * sx * sy).sum() / (weights * sx**2).sum())
    slope_err = float(1.0 / math.sqrt((weights * sx**2).sum()))
    if slope <= 0:
        return None
    return GainFit(
        gain_e_per_adu=1.0 / slope,
        error_e_per_adu=slope_err / slope**2,
        signal_adu=tuple(signal),
        variance_adu2=tuple(variance),
        variance_err_adu2=tuple(error),
        pixels=int(x.size),
    )


def gain_disagreement(header_e_per_adu: float, ptc_e_per_adu: float | None) -> str | None:
    """A warning when the measured gain differs from the header's by more than ``GAIN_DISAGREEMENT``."""
    if ptc_e_per_adu is None:
        return None
    ratio = ptc_e_per_adu / header_e_per_adu
    if abs(ratio - 1.0) <= GAIN_DISAGREEMENT:
        return None
    return (
        f"gain from the photon transfer curve ({ptc_e_per_adu:.3f} e-/ADU) differs from the header GAIN "
        f"({header_e_per_adu:.3f} e-/ADU) by {100 * (ratio - 1):+.1f}%"
    )


@dataclass(frozen=True, eq=False)
class CosmicPixels:
    """The cosmic-ray pixels of a piece of a frame: session rows and columns, their charge (e-),
    and how many pixels of the piece could hold a detection."""

    ys: np.ndarray
    xs: np.ndarray
    excess_e: np.ndarray
    significance: np.ndarray  # excess over the pixel's expected noise (sigma)
    searched_px: int


_UNSEARCHED = Flag.BAD_PIXEL | Flag.LOW_FLAT | Flag.NO_DATA | Flag.SATURATED


def cosmic_pixels(
    mask: np.ndarray,
    os_adu: np.ndarray,
    expected_adu: np.ndarray,
    gain_e_per_adu: np.ndarray,
    rdnoise_e: np.ndarray,
    background: np.ndarray,
    y0: int = 0,
) -> CosmicPixels:
    """The pixels ``mask`` flags ``COSMIC_RAY`` in rows starting at session row ``y0``, with the
    charge ``(os - expected) * gain`` (e-; 0 where the expectation is unknown) and its
    significance against the pixel's shot and read noise (``rdnoise_e``).

    Only source-free pixels (``background``) count, for the hits and for the searched area: on
    stars L.A.Cosmic's false detections (cores, residuals) would pass for hits and shapes."""
    ys, xs = np.nonzero(((mask & Flag.COSMIC_RAY.value) != 0) & background)
    gain = gain_e_per_adu[ys, xs]
    excess = np.nan_to_num((os_adu[ys, xs] - expected_adu[ys, xs]) * gain)
    sigma = np.sqrt(np.abs(np.nan_to_num(expected_adu[ys, xs] * gain)) + rdnoise_e[ys, xs] ** 2)
    searched = int(np.count_nonzero(searchable(mask) & background))
    return CosmicPixels(ys + y0, xs, excess.astype(np.float32), (excess / sigma).astype(np.float32), searched)


def searchable(mask: np.ndarray) -> np.ndarray:
    """Pixels where L.A.Cosmic could find a hit (not bad, low flat, saturated or without data)."""
    return (mask & _UNSEARCHED.value) == 0


def on_background(pixels: CosmicPixels, searched: np.ndarray, background: np.ndarray, y0: int = 0) -> CosmicPixels:
    """``pixels`` (found with every pixel as background) restricted to ``background``; ``searched``
    the rows' ``searchable`` map, rows starting at session row ``y0``."""
    keep = background[pixels.ys - y0, pixels.xs]
    return CosmicPixels(pixels.ys[keep], pixels.xs[keep], pixels.excess_e[keep], pixels.significance[keep],
                        int(np.count_nonzero(searched & background)))  # fmt: skip


def fit_cosmic_rays(pieces: Sequence[CosmicPixels], shape: tuple[int, int], exptime_s: float) -> CosmicFit:
    """Rate and shapes of the cosmic-ray hits L.A.Cosmic flagged in one frame of ``shape``,
    from its ``pieces`` (``cosmic_pixels``). A hit is an 8-connected group of flagged pixels
    whose brightest pixel stands ``MIN_HIT_SIGMA`` above the noise (fainter groups are mostly
    L.A.Cosmic's noise detections; real hits are hundreds of sigma); its charge is clipped at 0."""
    if exptime_s <= 0:
        raise ValueError(f"exposure time {exptime_s} s: a cosmic-ray rate needs a positive one")
    flagged = np.zeros(shape, bool)
    excess = np.zeros(shape, np.float32)
    significance = np.zeros(shape, np.float32)
    for piece in pieces:
        flagged[piece.ys, piece.xs] = True
        excess[piece.ys, piece.xs] = piece.excess_e
        significance[piece.ys, piece.xs] = piece.significance
    area = sum(piece.searched_px for piece in pieces)
    labels, groups = ndimage.label(flagged, structure=np.ones((3, 3), bool))
    peaks = ndimage.maximum(significance, labels, np.arange(1, groups + 1)) if groups else np.zeros(0)
    real = np.flatnonzero(np.asarray(peaks) >= MIN_HIT_SIGMA) + 1
    count = int(real.size)
    boxes = ndimage.find_objects(labels)
    start, dys, dxs, charges = [0], [], [], []
    for label in real[:MAX_HIT_SHAPES]:
        box = boxes[label - 1]
        if any(axis.stop - axis.start > MAX_HIT_EXTENT_PX for axis in box):
            continue
        mine = labels[box] == label
        py, px = np.nonzero(mine)
        dys += (py - py.min()).tolist()
        dxs += (px - px.min()).tolist()
        charges += np.clip(excess[box][mine], 0.0, None).astype(float).tolist()
        start.append(len(dys))
    rate = count / (area * exptime_s) if area else 0.0
    return CosmicFit(
        rate_per_px_s=float(rate),
        rate_err_per_px_s=float(math.sqrt(max(count, 1)) / (area * exptime_s)) if area else 0.0,
        hits=int(count),
        area_px=area,
        exptime_s=float(exptime_s),
        start=tuple(start),
        dy=tuple(int(v) for v in dys),
        dx=tuple(int(v) for v in dxs),
        charge_e=tuple(charges),
    )
