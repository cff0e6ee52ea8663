"""The science steps' parameters: one frozen dataclass per step, each default defined here once.

Import-light on purpose (no numpy, scipy, numba or astropy), so that the configuration and the
command line load without the steps' dependencies; each step module uses its class from here.
Units are in the names or the docstrings.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Literal


@dataclass(frozen=True)
class OverscanParams:
    """How the overscan level is estimated.

    ``clipped_mean`` (default, the observatory's): one scalar per amplifier, the mean of the
    overscan pixels within ``sigma`` robust sigma (1.4826 MAD) of their median, one pass.
    ``row_median``: the median of each row's overscan pixels (``ccdproc.subtract_overscan``
    with ``median=True, overscan_axis=1``). ``polynomial``: a Legendre series of ``order`` fitted
    to the row medians along y, evaluated at every row.
    """

    method: Literal["clipped_mean", "row_median", "polynomial"] = "clipped_mean"
    sigma: float = 3.0
    order: int = 3


@dataclass(frozen=True)
class CalibParams:
    """Thresholds of the calibration masks.

    ``low_flat``: flat-field values below this are flagged LOW_FLAT (the observatory's 0.2).
    ``hot_pixel_rdnoise``: a pixel whose dark signal (dark rate x dark time, e-) exceeds this
    many read-noise sigmas is flagged HOT_PIXEL.
    """

    low_flat: float = 0.2
    hot_pixel_rdnoise: float = 5.0


@dataclass(frozen=True)
class CosmicParams:
    """L.A.Cosmic parameters (astroscrappy's names and meanings).

    ``sigclip``: Laplacian-to-noise detection limit (sigma). ``sigfrac``: fraction of
    ``sigclip`` for neighbours of a detection. ``objlim``: minimum contrast of the Laplacian to
    the fine-structure image (raise it if star cores are flagged). ``niter``: iterations.
    ``saturation_grow_px``: saturated pixels are excluded together with this many pixels around
    them. ``enabled``: false leaves the COSMIC_RAY bit unset.
    """

    sigclip: float = 4.5
    sigfrac: float = 0.3
    objlim: float = 5.0
    niter: int = 2
    saturation_grow_px: int = 2
    enabled: bool = True

    def margin_px(self) -> int:
        """Rows of context a block needs each side so that its result equals the whole frame's.

        Each iteration reaches about 8 px: Laplacian of the 2x subsampled frame (1 px), 5 x 5
        noise median (2 px), fine structure 3 x 3 then 7 x 7 medians (4 px), two 1-px growths,
        and the 5 x 5 cleaning read by the next iteration.
        """
        return self.niter * 8 + self.saturation_grow_px


@dataclass(frozen=True)
class RegisterParams:
    """Acceptance limits of a measured offset.

    max_shift_px: larger offsets (pixels, Euclidean) are refused.
    min_peak_ratio: correlation peak over the highest correlation value more than ~10 px
        away from it; unrelated frames and pure noise give 1.0-2.0, good pairs 10 and more.
    min_sources: fewer significant sources (5 sigma, >= 3 px) in either frame -> refused.
    min_matched_fraction: fewer of the reference's sources landing on an image source at the
        measured offset -> refused; ~1 for the same field, < 0.15 for another one. Catches
        unrelated fields whose correlation is dominated by one bright star in each (MuSCAT
        targets), for which the peak ratio alone can exceed 5.
    """

    max_shift_px: float = 16.0
    min_peak_ratio: float = 3.0
    min_sources: int = 5
    min_matched_fraction: float = 0.5


@dataclass(frozen=True)
class ClipParams:
    """Sigma-clipping and combine parameters (see the module docstring for the semantics)."""

    sigma_lower: float = 3.0
    sigma_upper: float = 3.0
    maxiters: int | None = 5  # None (or 0, as in astropy) = iterate to convergence
    cenfunc: Literal["median", "mean"] = "median"
    stdfunc: Literal["std", "mad_std"] = "std"
    combine: Literal["mean", "median"] = "mean"
    weighted: bool = False  # inverse-variance weighted mean (needs variance)
    # "final_bounds": astropy sigma_clip with string cenfunc/stdfunc and axis (C fast path);
    # "union": astropy's _sigmaclip_withaxis (callable functions), union of all rejections.
    rejection: Literal["final_bounds", "union"] = "final_bounds"

    def __post_init__(self) -> None:
        for name in ("sigma_lower", "sigma_upper"):
            value = getattr(self, name)
            if not (isinstance(value, Real) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.maxiters is not None and (
            not isinstance(self.maxiters, Integral) or isinstance(self.maxiters, bool) or self.maxiters < 0
        ):
            raise ValueError(f"maxiters must be None or an int >= 0, got {self.maxiters!r}")
        if self.cenfunc not in ("median", "mean"):
            raise ValueError(f"cenfunc must be 'median' or 'mean', got {self.cenfunc!r}")
        if self.stdfunc not in ("std", "mad_std"):
            raise ValueError(f"stdfunc must be 'std' or 'mad_std', got {self.stdfunc!r}")
        if self.combine not in ("mean", "median"):
            raise ValueError(f"combine must be 'mean' or 'median', got {self.combine!r}")
        if self.weighted and self.combine != "mean":
            raise ValueError("weighted=True needs combine='mean'")
        if self.rejection not in ("final_bounds", "union"):
            raise ValueError(f"rejection must be 'final_bounds' or 'union', got {self.rejection!r}")


@dataclass(frozen=True)
class SourceParams:
    """threshold_sigma: detection threshold in background rms (or sqrt(variance) when given).
    min_area_px: smallest footprint kept, in pixels above threshold.
    dilate_px: radius (pixels) of the disk that grows footprints over the PSF wings."""

    threshold_sigma: float = 3.0
    min_area_px: int = 5
    dilate_px: int = 2


Check = Literal["gain", "exptime", "flat_median", "flat_dead_fraction", "dark_negative"]
CHECKS: tuple[str, ...] = Check.__args__


@dataclass(frozen=True)
class SanityParams:
    """Bounds of the sanity checks.

    ``flat_median``: the range a normalised flat's median must lie in. ``flat_dead_fraction``:
    the largest fraction of flat pixels that may be dead (not finite or at most
    ``calibration.low_flat``). ``dark_negative_sigma``: a dark is significantly negative when
    its median lies more than this many standard errors of the median below zero.
    ``warn_only``: checks whose failure is recorded as a warning instead of failing the session.
    """

    flat_median: tuple[float, float] = (0.5, 2.0)
    flat_dead_fraction: float = 0.1
    dark_negative_sigma: float = 5.0
    warn_only: tuple[Check, ...] = ()


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
    ptc_cutout_px: int = 256

    def __post_init__(self) -> None:
        if self.realizations < 0:
            raise ValueError(f"synthesis.realizations must be >= 0, got {self.realizations}")
        if self.seed < 0:
            raise ValueError(f"synthesis.seed must be >= 0, got {self.seed}")
        if self.ptc_cutout_px < 16:
            raise ValueError(f"synthesis.ptc_cutout_px must be >= 16, got {self.ptc_cutout_px}")
