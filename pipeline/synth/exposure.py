"""Exposures of a session: the raw frame (uint16 ADU per amplifier) and calibrated e91 frames.

Both are made the same way: expected photo-electrons times the flat plus dark charge, Poisson,
plus cosmic rays, bad columns spoiled, then bias, read noise, gain and overscan
(``ccd.digitise_adu``). An e91 frame is that exposure calibrated with the true masters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ccd, scene
from .layout import read_out
from .session import Session

BPM_BAD = np.uint8(1)
BPM_SATURATED = np.uint8(2)
BPM_LOW_FLAT = np.uint8(4)


@dataclass(frozen=True, eq=False)
class Exposure:
    """One digitised exposure in the detector frame."""

    adu: np.ndarray  # uint16 raw values, trimmed and assembled
    saturated: np.ndarray  # bool, raw reached SATURATE
    cosmic_rays: np.ndarray  # bool, hit by a cosmic ray
    row_offsets_e: tuple[np.ndarray, ...] | None = None  # per amplifier, per raw row (readout order)


@dataclass(frozen=True, eq=False)
class E91:
    """A calibrated frame as the observatory writes it (ADU) plus its cosmic-ray truth."""

    sci_adu: np.ndarray  # float32
    err_adu: np.ndarray  # float32
    bpm: np.ndarray  # uint8: 1 bad pixel, 2 saturated, 4 low flat; cosmic rays are not flagged
    cosmic_rays: np.ndarray  # bool


def scene_e(session: Session, shift: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """(sky, star light) in expected photo-electrons at flat = 1, scene content moved by ``shift``."""
    return (
        scene.sky_e(session.size, session.sky, shift),
        scene.stars_e(session.size, session.stars, session.psf, shift),
    )


def expose(session: Session, expected_scene_e: np.ndarray, rng: np.random.Generator) -> Exposure:
    """Observe ``expected_scene_e`` for the session's exposure time and digitise it."""
    cosmic_e = ccd.cosmic_rays_e(session.size, rng, session.exptime_s)
    expected_e = expected_scene_e * session.flat + session.dark_e_per_s * np.float32(session.exptime_s)
    charge_e = ccd.spoil_bad_columns(ccd.collect_e(expected_e, rng) + cosmic_e, session.dead_column, session.hot_column)
    offsets = None
    bias_e = session.bias_e
    if session.row_noise_e > 0:
        offsets = tuple(
            ccd.row_offsets_e(amp.datasec.shape[0], session.row_noise_e, session.row_noise_rho, rng)
            for amp in session.amps
        )
        bias_e = bias_e + row_offset_map_e(session, offsets)
    adu, saturated = ccd.digitise_adu(
        charge_e, bias_e, session.gain_map, session.rdnoise_map, session.overscan_map, rng
    )
    return Exposure(adu, saturated, cosmic_e > 0, offsets)


def row_offset_map_e(session: Session, offsets: tuple[np.ndarray, ...]) -> np.ndarray:
    """Detector-frame map (e-, float32) of each amplifier's per-row readout offsets."""
    image = np.empty((session.size, session.size), dtype=np.float32)
    for amp, rows in zip(session.amps, offsets, strict=True):
        image[amp.detsec.slices] = amp.detsec.orient(np.broadcast_to(rows[:, None], amp.datasec.shape))
    return image


def raw_amplifiers(session: Session, exposure: Exposure, rng: np.random.Generator) -> list[np.ndarray]:
    """Per-amplifier raw arrays (uint16): data in readout order, then fresh overscan columns
    carrying the exposure's row offsets."""
    arrays = []
    offsets = exposure.row_offsets_e or (None,) * len(session.amps)
    for amp, readout, rows in zip(session.amps, session.readouts, offsets, strict=True):
        raw = np.empty(amp.raw_shape, dtype=np.uint16)
        raw[amp.datasec.slices] = read_out(exposure.adu, amp)
        raw[amp.biassec.slices] = ccd.overscan_adu(readout, amp.biassec.shape, rng, rows)
        arrays.append(raw)
    return arrays


def overscan_corrected_adu(session: Session, adu: np.ndarray) -> np.ndarray:
    """Raw minus each amplifier's overscan level (ADU, float32), still per-amplifier gain."""
    return adu - session.overscan_map


def after_bias_e(session: Session, adu: np.ndarray) -> np.ndarray:
    """``(raw - overscan) * gain - bias`` in e- (float32)."""
    return overscan_corrected_adu(session, adu) * session.gain_map - session.bias_e


def calibrated_e(session: Session, exposed_e: np.ndarray) -> np.ndarray:
    """``(exposed_e - dark * EXPTIME) / flat`` (e-, float32), ``exposed_e`` from ``after_bias_e``."""
    return (exposed_e - session.dark_e_per_s * np.float32(session.exptime_s)) / session.flat


def uncertainty_e(session: Session, exposed_e: np.ndarray, calibrated: np.ndarray) -> np.ndarray:
    """BANZAI's 1-sigma error (e-, float32) of ``calibrated = calibrated_e(session, exposed_e)``.

    Read noise, plus the master bias error, plus Poisson ``|exposed_e|`` (after bias), plus the
    master dark error scaled by EXPTIME; flat division propagates ``sigma_F`` in quadrature.
    """
    dark_err_e = session.dark_err_e_per_s * np.float32(session.exptime_s)
    variance_e2 = session.rdnoise_map**2 + session.bias_err_e**2 + np.abs(exposed_e) + dark_err_e**2
    flat_rel = session.flat_err / session.flat
    return np.sqrt(variance_e2 / session.flat**2 + (calibrated * flat_rel) ** 2)


def bpm(session: Session, saturated: np.ndarray) -> np.ndarray:
    """BANZAI mask bits (uint8): 1 bad pixel, 2 saturated, 4 low flat."""
    mask = np.where(session.bad_pixels, BPM_BAD, np.uint8(0))
    mask |= np.where(saturated, BPM_SATURATED, np.uint8(0))
    mask |= np.where(session.low_flat, BPM_LOW_FLAT, np.uint8(0))
    return mask


def e91_frame(session: Session, frame: int, rng: np.random.Generator) -> E91:
    """Calibrated exposure ``frame``: the scene moved by its drift, observed, calibrated, in ADU."""
    sky, stars = scene_e(session, tuple(session.drift_px[frame]))
    exposure = expose(session, sky + stars, rng)
    exposed_e = after_bias_e(session, exposure.adu)
    calibrated = calibrated_e(session, exposed_e)
    gain = np.float32(session.gain_e_per_adu)
    return E91(
        sci_adu=calibrated / gain,
        err_adu=uncertainty_e(session, exposed_e, calibrated) / gain,
        bpm=bpm(session, exposure.saturated),
        cosmic_rays=exposure.cosmic_rays,
    )
