"""One observing session's truth: its parameters, calibration maps, star field and drifts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

import numpy as np

from . import ccd, scene
from .layout import AmpSections, Card, amp_map, amp_sections
from .spec import NIGHT, SessionId, Stream, SynthSpec, rng, session_id

NIGHT_START = datetime(2024, 3, 15, 6, 0, 0)
SESSION_STAGGER = timedelta(minutes=5)
READOUT_S = 28.0  # dead time between exposures
EXPTIMES_S = (30.0, 60.0, 90.0, 120.0)
PIXEL_SCALE_DEG = 0.27 / 3600  # MuSCAT, 0.27"/px


@dataclass(frozen=True, eq=False)
class Session:
    """Everything true about one session; maps are float32 / bool, size x size, detector frame."""

    ident: SessionId
    size: int
    exptime_s: float
    gain_e_per_adu: float  # nominal
    rdnoise_e: float  # nominal
    amps: tuple[AmpSections, ...]
    readouts: tuple[ccd.Readout, ...]
    sky: scene.Sky
    psf: scene.Moffat
    stars: scene.Stars
    drift_px: np.ndarray  # (frames, 2): (dy, dx) of each e91 frame
    bias_e: np.ndarray
    bias_err_e: np.ndarray
    dark_e_per_s: np.ndarray
    hot_pixels: np.ndarray
    flat: np.ndarray
    dead_column: int  # 0-based x
    hot_column: int
    row_noise_e: float = 0.0  # RMS per-row readout offset, e-
    row_noise_rho: float = 0.0  # correlation of consecutive rows' offsets

    @property
    def object_name(self) -> str:
        return f"SYN-{self.ident.obs_id}"

    @property
    def frames(self) -> int:
        return len(self.drift_px)

    @cached_property
    def bad_pixels(self) -> np.ndarray:
        bad = np.zeros((self.size, self.size), dtype=bool)
        bad[:, [self.dead_column, self.hot_column]] = True
        return bad

    @cached_property
    def low_flat(self) -> np.ndarray:
        return self.flat < ccd.LOW_FLAT

    @cached_property
    def dark_err_e_per_s(self) -> np.ndarray:
        """1-sigma error of the master dark (e-/s)."""
        return ccd.dark_error_e_per_s(self.dark_e_per_s, self.rdnoise_e)

    @cached_property
    def flat_err(self) -> np.ndarray:
        """1-sigma error of the master flat (unitless)."""
        return ccd.flat_error(self.flat)

    @cached_property
    def gain_map(self) -> np.ndarray:
        """e-/ADU of the amplifier reading each pixel."""
        return amp_map(self.amps, [r.gain_e_per_adu for r in self.readouts], self.size)

    @cached_property
    def rdnoise_map(self) -> np.ndarray:
        """e- read noise of the amplifier reading each pixel."""
        return amp_map(self.amps, [r.rdnoise_e for r in self.readouts], self.size)

    @cached_property
    def overscan_map(self) -> np.ndarray:
        """ADU overscan level of the amplifier reading each pixel."""
        return amp_map(self.amps, [r.overscan_adu for r in self.readouts], self.size)

    def date_obs(self, frame: int | None = None) -> str:
        """Exposure start (ISO UTC): the raw exposure for ``None``, else e91 ``frame``."""
        start = NIGHT_START + self.ident.index * SESSION_STAGGER
        if frame is not None:
            start += (frame + 1) * timedelta(seconds=self.exptime_s + READOUT_S)
        return start.isoformat(timespec="milliseconds")

    @property
    def pointing_deg(self) -> tuple[float, float]:
        """(RA, Dec) in degrees of the detector centre of the raw exposure (one field per session)."""
        return 150.0 + 7.0 * self.ident.index, -30.0 + 3.0 * self.ident.index

    def wcs_cards(self, shift: tuple[float, float] = (0.0, 0.0)) -> list[Card]:
        """A TAN WCS (north up, east left, 0.27"/px) of an exposure whose content is moved by
        ``shift`` = (dy, dx) pixels from the raw exposure's: the reference pixel moves with it."""
        centre = self.size / 2 + 0.5  # FITS pixels are 1-based
        ra, dec = self.pointing_deg
        return [
            ("CTYPE1", "RA---TAN", "gnomonic projection"),
            ("CTYPE2", "DEC--TAN", "gnomonic projection"),
            ("CRPIX1", centre + float(shift[1]), "[px] reference pixel, x"),
            ("CRPIX2", centre + float(shift[0]), "[px] reference pixel, y"),
            ("CRVAL1", ra, "[deg] RA at the reference pixel"),
            ("CRVAL2", dec, "[deg] Dec at the reference pixel"),
            ("CD1_1", -PIXEL_SCALE_DEG, "[deg/px]"),
            ("CD1_2", 0.0, "[deg/px]"),
            ("CD2_1", 0.0, "[deg/px]"),
            ("CD2_2", PIXEL_SCALE_DEG, "[deg/px]"),
            ("RADESYS", "ICRS", "celestial frame"),
        ]

    def cards(self, date_obs: str, rlevel: int = 0, shift: tuple[float, float] = (0.0, 0.0)) -> list[Card]:
        """Keywords shared by every amplifier of an exposure (LCO names and units), with the WCS
        of content moved by ``shift`` (dy, dx) pixels."""
        return [
            ("INSTRUME", self.ident.instrument, "instrument"),
            ("TELESCOP", self.ident.telescope, "telescope"),
            ("OBJECT", self.object_name, "target"),
            ("FILTER", self.ident.band, "filter"),
            ("OBSTYPE", "EXPOSE", "observation type"),
            ("DATE-OBS", date_obs, "[UTC] exposure start"),
            ("DAY-OBS", NIGHT, "observing night"),
            ("EXPTIME", self.exptime_s, "[s] exposure time"),
            ("GAIN", self.gain_e_per_adu, "[e-/ADU] nominal gain"),
            ("RDNOISE", self.rdnoise_e, "[e-] nominal read noise"),
            ("SATURATE", ccd.SATURATE_ADU, "[ADU] raw saturation level"),
            ("MAXLIN", ccd.MAXLIN_ADU, "[ADU] raw non-linearity level"),
            ("CCDSUM", "1 1", "on-chip binning"),
            ("CONFMODE", "full_frame", "camera mode"),
            ("RLEVEL", rlevel, "reduction level"),
            ("BUNIT", "adu", "pixel unit"),
            *self.wcs_cards(shift),
        ]


def saturation_e(gain_e_per_adu: float) -> float:
    """Charge (e-) that drives a raw pixel of a nominal amplifier to ``SATURATE``."""
    return (ccd.SATURATE_ADU - ccd.OVERSCAN_ADU) * gain_e_per_adu


def draw_session(spec: SynthSpec, index: int) -> Session:
    """Session ``index`` of the archive ``spec``, each ingredient from its own random stream."""
    params = rng(spec.seed, Stream.PARAMS, index)
    exptime_s = float(params.choice(EXPTIMES_S))
    gain = ccd.GAIN_E_PER_ADU * params.uniform(0.97, 1.03)
    rdnoise = ccd.RDNOISE_E * params.uniform(0.95, 1.05)
    readouts = ccd.draw_readouts(params, spec.amps, gain, rdnoise)
    sky = scene.draw_sky(params, spec.size)
    psf = scene.draw_psf(params)
    drift_px = params.uniform(-spec.max_drift, spec.max_drift, (spec.frames, 2))

    ident = session_id(spec, index)
    bias_e = ccd.bias_pattern_e(spec.size, rng(Stream.CAMERA))
    if ident.instrument == "muscat4":
        bias_e = np.ascontiguousarray(np.rot90(bias_e, 2))
    dark_e_per_s, hot_pixels = ccd.dark_current(spec.size, rng(spec.seed, Stream.DARK, index))
    dead_column, hot_column = ccd.bad_columns(spec.size, rng(spec.seed, Stream.BAD_COLUMNS, index))
    return Session(
        ident=ident,
        size=spec.size,
        exptime_s=exptime_s,
        gain_e_per_adu=float(gain),
        rdnoise_e=float(rdnoise),
        amps=amp_sections(spec.size, spec.amps, spec.overscan),
        readouts=readouts,
        sky=sky,
        psf=psf,
        stars=scene.draw_stars(rng(spec.seed, Stream.STARS, index), spec.size, psf, saturation_e(gain)),
        drift_px=drift_px,
        bias_e=bias_e,
        bias_err_e=ccd.bias_error_e(spec.size, rdnoise, rng(spec.seed, Stream.BIAS_ERROR, index)),
        dark_e_per_s=dark_e_per_s,
        hot_pixels=hot_pixels,
        flat=ccd.sky_flat(spec.size, rng(spec.seed, Stream.FLAT, index)),
        dead_column=dead_column,
        hot_column=hot_column,
        row_noise_e=float(spec.row_noise_e),
        row_noise_rho=float(spec.row_noise_rho),
    )
