"""Synthetic MuSCAT-RawImage archives with ground truth.

``write_archive(root, SynthSpec(...))`` writes ``spec.sessions`` sessions, every byte determined
by the spec (``numpy.random.default_rng`` streams keyed by seed, session, ingredient and frame).
Session ``i`` goes to ``root/<instrument>_<band>/<obs_id>/`` with ``obs_id =
20240315_<seed:03d>_<i:03d>``, band ``g, r, i`` cycling with ``i``; instrument ``muscat3`` (even
``i``) / ``muscat4`` (odd ``i``, its fixed-pattern bias rotated 180 deg) for one amplifier,
``mosaic`` for 2, 4 or 8::

    calib/BIAS_<obs_id>.fits.fz      SCI + ERR, electron       master bias (= truth ``bias_e``)
    calib/DARK_<obs_id>.fits.fz      SCI + ERR, electron/s     master dark (= ``dark_e_per_s``)
    calib/SKYFLAT_<obs_id>.fits.fz   SCI + ERR, unitless       flat (= ``flat``), mean 1 on the central half
    calib/BPM_<obs_id>.fits.fz       BPM, uint8                1 on the two bad columns
    data/<obs_id>_raw.fits.fz        uint16 ADU, per amplifier with overscan (see ``layout``)
    data/<obs_id>_os.fits.fz         raw - overscan level, trimmed, assembled (ADU, amp gains)
    data/<obs_id>_calib.fits.fz      ((raw - overscan) * gain - bias - dark * EXPTIME) / flat / GAIN
    data/<obs_id>_mean.fits.fz       plain mean of the e91 SCI frames, not registered (ADU)
    data/<obs_id>_mask.fits.fz       uint8, 0 = source, 1 = background (true star light)
    e91/<site>-ep04-20240315-<k:04d>-e91.fits.fz   SCI (ADU), BPM (1 bad, 2 saturated, 4 low
                                     flat; cosmic rays not flagged), ERR (ADU, BANZAI model)
    info.json, calib.json            session and calibration summaries
    truth/truth.npz, truth/truth.json

Units and conventions. Electrons ``= ADU * GAIN``. Every map is size x size in detector
orientation; positions are numpy ``(y, x)`` of pixel centres, 0-based. The raw exposure is

    raw = clip(rint(overscan + (Poisson(scene_e * flat + dark_e_per_s * EXPTIME) + cosmic rays
                                + bias_e + row offset + N(0, rdnoise)) / gain), 0, SATURATE)

per amplifier (the row offset, ``SynthSpec.row_noise_e`` RMS, AR(1) along the readout rows with
coefficient ``row_noise_rho``, is shared by a raw row's data and overscan pixels; none by default) (bad columns replace the charge: dead = 0 e-, hot = 40 ke-), so
``((raw - overscan) * gain - bias_e - dark_e_per_s * EXPTIME) / flat / gain_nominal`` recovers
``scene_e / gain_nominal`` within noise. e91 frame ``k`` is another exposure of the scene moved
by ``drift[k]``: content at ``(y, x)`` in the raw appears at ``(y + dy_k, x + dx_k)``, rendered
analytically, calibrated with the true masters. Every image header carries a TAN WCS
(0.27"/px, north up); an e91 frame's ``CRPIX`` is the raw's plus its drift, so projecting a raw
pixel through the two WCSs gives the drift exactly. Masters are noise-free (they equal the truth up
to fpack quantisation); their ERR describes notional stacks (``ccd.BIAS_FRAMES`` ...).

``truth/truth.npz``:

    scene_e          float32   expected photo-electrons at flat = 1 of the raw exposure (sky + stars)
    drift            float64   (frames, 2) (dy, dx) pixels of each e91 frame
    saturated        bool      raw pixel reads SATURATE
    cosmic_rays      bool      raw pixel hit by a cosmic ray
    bad_pixels       bool      the BPM's bad columns
    hot_pixels       bool      pixels given hot dark current (0.3-30 e-/s)
    low_flat         bool      flat < 0.2 (the dust spot)
    flat             float32   true flat
    dark_e_per_s     float32   true dark current
    bias_e           float32   true bias structure after overscan
    star_yx          float64   (n, 2) star centres in the raw exposure
    star_flux_e      float64   (n,) total star fluxes (Moffat profile, untruncated)
    e91_cosmic_rays  int32     (m, 3) rows (frame, y, x) of cosmic-ray pixels in the e91 frames

``truth/truth.json``: seed, session, obs_id, instrument, band, size, overscan, exptime,
gain_nominal, rdnoise_nominal, saturate, maxlin, amp_layout {rows, cols}, amps [{name, gain,
rdnoise, overscan_level, datasec, biassec, detsec}], star_count, psf {profile, fwhm_px, beta},
sky {level_e, slope_e_per_px}, bad_columns {dead, hot} (0-based x), n_saturated,
n_cosmic_ray_pixels, row_noise_e, row_noise_rho, cosmic_rays_per_px_s (hits per pixel per
second of exposure; tracks of ``ccd.cosmic_rays_e``). The truth is written last: its presence marks a complete session.

Modules: ``spec`` (what to make, random streams), ``scene`` (sky and stars), ``ccd`` (the
detector), ``layout`` (amplifier geometry and raw HDUs), ``session`` (one session's truth),
``exposure`` (raw and e91 frames), ``files`` (atomic compressed writes), ``archive`` (the tree).
"""

from .archive import write_archive, write_session
from .spec import SynthSpec

__all__ = ["SynthSpec", "write_archive", "write_session"]
