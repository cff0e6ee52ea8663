"""A synthetic session observed in memory (no files), with its truth, for the noise-model tests.

Frames come from the generator's own exposure code (``pipeline.synth``): the raw exposure with
its overscan columns, e91 frames without drift (so the plain stack is registered), the truth
masters, the true source mask. The noise model is fitted from these by the pure functions the
pipeline calls (``pipeline.steps.noise_fit``); cosmic rays are found by the pipeline's
L.A.Cosmic on the calibrated frame.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from pipeline.steps import noise_fit
from pipeline.steps.cosmics import CosmicParams, cosmic_rays
from pipeline.steps.masks import Flag
from pipeline.steps.noise_model import AmpModel, NoiseModel
from pipeline.steps.noise_realism import expected_os_adu
from pipeline.steps.synthesize import Patch
from pipeline.synth import SynthSpec
from pipeline.synth import exposure as synth_exposure
from pipeline.synth.scene import source_mask
from pipeline.synth.session import Session, draw_session
from pipeline.synth.spec import Stream, rng


@dataclass(frozen=True, eq=False)
class Observed:
    """What the pipeline would hold for one session, plus the truth."""

    session: Session
    os_adu: np.ndarray  # raw - true overscan level (float32); row offsets and bias still in
    overscans_adu: list[np.ndarray]  # per amplifier, raw BIASSEC pixels (uint16)
    e91_adu: np.ndarray  # (n, y, x) calibrated frames, no drift
    e91_ok: np.ndarray  # (n, y, x) no cosmic ray (truth) and not a bad pixel
    mean_adu: np.ndarray
    std_adu: np.ndarray
    count: np.ndarray
    background: np.ndarray  # no source, not bad, not hot, not a cosmic ray of the raw frame
    source_free: np.ndarray  # no star light (truth)
    cosmic_flags: np.ndarray  # L.A.Cosmic on the calibrated raw frame
    expected_os_adu: np.ndarray  # truth: E[os]
    truth_variance_adu2: np.ndarray  # truth: Var[os] (shot, dark shot, read, row, rounding)

    @property
    def gain(self) -> float:
        return self.session.gain_e_per_adu

    def patch(self) -> Patch:
        s = self.session
        return Patch(0, 0, self.mean_adu, s.flat, s.dark_e_per_s, s.bias_e, self.count)


def observe(spec: SynthSpec, index: int = 0) -> Observed:
    session = draw_session(spec, index)
    sky, stars = synth_exposure.scene_e(session)
    scene = sky + stars
    raw_rng = rng(spec.seed, Stream.RAW, index)
    raw = synth_exposure.expose(session, scene, raw_rng)
    arrays = synth_exposure.raw_amplifiers(session, raw, raw_rng)
    overscans = [array[amp.biassec.slices] for amp, array in zip(session.amps, arrays, strict=True)]
    frames = [synth_exposure.e91_frame(session, k, rng(spec.seed, Stream.E91, index, k)) for k in range(session.frames)]
    e91 = np.stack([f.sci_adu for f in frames])
    ok = np.stack([~f.cosmic_rays for f in frames]) & ~session.bad_pixels
    data = np.where(ok, e91, np.nan)
    count = ok.sum(axis=0).astype(np.uint16)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bad columns: no frame value
        mean = np.nanmean(data, axis=0).astype(np.float32)
        std = np.nanstd(data, axis=0).astype(np.float32)

    os_adu = synth_exposure.overscan_corrected_adu(session, raw.adu)
    exposed = synth_exposure.after_bias_e(session, raw.adu)
    calibrated = synth_exposure.calibrated_e(session, exposed)
    variance = (synth_exposure.uncertainty_e(session, exposed, calibrated) / session.gain_e_per_adu) ** 2
    mask = np.where(session.bad_pixels, Flag.BAD_PIXEL.value, 0).astype(np.uint16)
    mask |= np.where(raw.saturated, Flag.SATURATED.value, 0).astype(np.uint16)
    flags = cosmic_rays(calibrated / session.gain_e_per_adu, variance, mask, session.gain_e_per_adu, CosmicParams())

    gain = session.gain_map
    dark_e = session.dark_e_per_s * session.exptime_s
    expected = (scene * session.flat + dark_e + session.bias_e) / gain
    read_e2 = session.rdnoise_map**2 + session.row_noise_e**2
    truth_var = (scene * session.flat + dark_e + read_e2) / gain**2 + noise_fit.QUANTISATION_VAR_ADU2
    source_free = ~source_mask(stars, sky)
    background = (
        source_free
        & ~session.bad_pixels
        & ~session.hot_pixels
        & ~session.low_flat
        & ~raw.cosmic_rays
        & ~flags
        & ~raw.saturated
    )
    return Observed(
        session,
        os_adu,
        overscans,
        e91,
        ok,
        mean,
        std,
        count,
        background,
        source_free,
        flags,
        expected,
        truth_var.astype(np.float64),
    )


def amp_regions(session: Session) -> list[tuple[int, int, int, int]]:
    regions = []
    for amp in session.amps:
        ys, xs = amp.detsec.slices
        regions.append((ys.start, ys.stop, xs.start, xs.stop))
    return regions


def fit_model(obs: Observed) -> NoiseModel:
    """The noise model of ``obs``, fitted by the pipeline's pure functions (header gains as the truth has them)."""
    s = obs.session
    amps = []
    for amp, readout, overscan, region in zip(s.amps, s.readouts, obs.overscans_adu, amp_regions(s), strict=True):
        read = noise_fit.fit_read_noise(overscan)
        y0, y1, x0, x1 = region
        window = (slice(None), slice(y0, y1), slice(x0, x1))
        pairs = noise_fit.ptc_samples(
            obs.e91_adu[window],
            obs.e91_ok[window],
            obs.mean_adu[y0:y1, x0:x1],
            s.flat[y0:y1, x0:x1],
            obs.background[y0:y1, x0:x1],
            s.gain_e_per_adu / readout.gain_e_per_adu,
        )
        read_var = read.white_adu**2 + read.row_adu**2 + noise_fit.QUANTISATION_VAR_ADU2
        ptc = noise_fit.fit_gain_ptc([[p] for p in pairs], [1.0] * s.frames, read_var)
        amps.append(AmpModel(amp.name, region, readout.gain_e_per_adu, ptc, readout.overscan_adu, 62000.0, read))
    expected = expected_os_adu(obs.mean_adu, s.flat, s.dark_e_per_s, s.bias_e, s.gain_map, s.exptime_s, obs.gain)
    mask = np.where(s.bad_pixels, Flag.BAD_PIXEL.value, 0) | np.where(obs.cosmic_flags, Flag.COSMIC_RAY.value, 0)
    pieces = [
        noise_fit.cosmic_pixels(
            mask.astype(np.uint16), obs.os_adu, expected, s.gain_map, s.rdnoise_map, obs.source_free
        )
    ]
    cosmic = noise_fit.fit_cosmic_rays(pieces, obs.os_adu.shape, s.exptime_s)
    return NoiseModel(obs.os_adu.shape, s.exptime_s, s.exptime_s, obs.gain, tuple(amps), cosmic)
