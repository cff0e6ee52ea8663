"""Writing a session's directory: masters, raw and derived frames, e91 frames, metadata, truth."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import ccd, exposure
from .files import write_fits, write_images, write_json, write_npz
from .layout import raw_hdus
from .scene import source_mask
from .session import Session, draw_session
from .spec import NIGHT, Stream, SynthSpec, rng


def write_archive(root: str | os.PathLike, spec: SynthSpec, workers: int = 1) -> list[Path]:
    """Write every session of ``spec`` below ``root``; return the session directories.

    ``workers > 1`` writes sessions in that many spawned processes; the bytes are the same.
    """
    root = Path(root)
    indices = range(spec.sessions)
    if workers <= 1 or spec.sessions == 1:
        return [write_session(root, spec, index) for index in indices]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, spec.sessions), mp_context=context) as pool:
        return list(pool.map(write_session, repeat(root), repeat(spec), indices))


def write_session(root: Path, spec: SynthSpec, index: int) -> Path:
    """Write session ``index`` to ``root/<instrument>_<band>/<obs_id>``; the truth comes last."""
    session = draw_session(spec, index)
    out = root / session.ident.relpath
    names = _master_names(session)
    _write_masters(out / "calib", session, names)

    raw_rng = rng(spec.seed, Stream.RAW, index)
    sky_e, stars_e = exposure.scene_e(session)
    scene_e = sky_e + stars_e
    raw = exposure.expose(session, scene_e, raw_rng)
    _write_raw_products(out / "data", session, raw, raw_rng, source_mask(stars_e, sky_e))

    e91_cosmic_rays = _write_e91(out, spec, session)

    obs_id = session.ident.obs_id
    write_json(
        out / "info.json",
        {
            "obs_id": obs_id,
            "instrument": session.ident.instrument,
            "band": session.ident.band,
            "object": session.object_name,
            "date_obs": session.date_obs(),
            "exptime": session.exptime_s,
            "n_e91": session.frames,
        },
    )
    write_json(out / "calib.json", _calib_summary(session, names))
    write_npz(
        out / "truth" / "truth.npz",
        {
            "scene_e": scene_e,
            "drift": session.drift_px,
            "saturated": raw.saturated,
            "cosmic_rays": raw.cosmic_rays,
            "bad_pixels": session.bad_pixels,
            "hot_pixels": session.hot_pixels,
            "low_flat": session.low_flat,
            "flat": session.flat,
            "dark_e_per_s": session.dark_e_per_s,
            "bias_e": session.bias_e,
            "star_yx": session.stars.yx,
            "star_flux_e": session.stars.flux_e,
            "e91_cosmic_rays": e91_cosmic_rays,
        },
    )
    write_json(out / "truth" / "truth.json", _truth_parameters(spec, session, raw))
    return out


def _master_names(session: Session) -> dict[str, str]:
    obs_id = session.ident.obs_id
    return {kind: f"{kind}_{obs_id}.fits.fz" for kind in ("BIAS", "DARK", "SKYFLAT", "BPM")}


def _master_header(session: Session, obstype: str, bunit: str) -> fits.Header:
    return fits.Header(
        [
            ("OBSTYPE", obstype, "master calibration type"),
            ("BUNIT", bunit, "pixel unit"),
            ("INSTRUME", session.ident.instrument, "instrument"),
            ("TELESCOP", session.ident.telescope, "telescope"),
            ("FILTER", session.ident.band, "filter"),
            ("DAY-OBS", NIGHT, "observing night"),
        ]
    )


def _write_masters(calib: Path, session: Session, names: dict[str, str]) -> None:
    """Master bias (e-), dark (e-/s), sky flat and BPM, each SCI (+ ERR) in detector orientation."""
    masters = {
        "BIAS": ("electron", session.bias_e, session.bias_err_e),
        "DARK": ("electron/s", session.dark_e_per_s, session.dark_err_e_per_s),
        "SKYFLAT": ("", session.flat, session.flat_err),
    }
    for kind, (bunit, sci, err) in masters.items():
        header = _master_header(session, kind, bunit)
        err_header = fits.Header([("BUNIT", bunit)])
        write_images(calib / names[kind], [("SCI", sci, header), ("ERR", err, err_header)])
    header = _master_header(session, "BPM", "")
    write_images(calib / names["BPM"], [("BPM", session.bad_pixels.astype(np.uint8), header)])


def _write_raw_products(
    data: Path, session: Session, raw: exposure.Exposure, raw_rng: np.random.Generator, source: np.ndarray
) -> None:
    """The raw frame and what the dataset derives from it: ``_os``, ``_calib`` and ``_mask``."""
    obs_id = session.ident.obs_id
    cards = session.cards(session.date_obs())
    arrays = exposure.raw_amplifiers(session, raw, raw_rng)
    primary, hdus = raw_hdus(cards, session.amps, session.readouts, arrays, session.size)
    write_fits(data / f"{obs_id}_raw.fits.fz", hdus, primary)

    calibrated = exposure.calibrated_e(session, exposure.after_bias_e(session, raw.adu))
    calib_adu = calibrated / np.float32(session.gain_e_per_adu)
    write_images(
        data / f"{obs_id}_os.fits.fz", [(None, exposure.overscan_corrected_adu(session, raw.adu), fits.Header(cards))]
    )
    calib_header = fits.Header(session.cards(session.date_obs(), rlevel=91))
    write_images(data / f"{obs_id}_calib.fits.fz", [(None, calib_adu, calib_header)])
    mask_header = fits.Header([("BUNIT", "", "0 = source, 1 = background")])
    write_images(data / f"{obs_id}_mask.fits.fz", [(None, (~source).astype(np.uint8), mask_header)])


def _write_e91(out: Path, spec: SynthSpec, session: Session) -> np.ndarray:
    """e91 frames and their unregistered mean; return cosmic-ray pixels as (frame, y, x) rows."""
    total_adu = np.zeros((session.size, session.size), dtype=np.float64)
    hits = []
    for k in range(session.frames):
        frame = exposure.e91_frame(session, k, rng(spec.seed, Stream.E91, session.ident.index, k))
        header = fits.Header(session.cards(session.date_obs(k), rlevel=91, shift=tuple(session.drift_px[k])))
        name = f"{session.ident.site}-ep04-{NIGHT}-{k:04d}-e91.fits.fz"
        write_images(
            out / "e91" / name,
            [
                ("SCI", frame.sci_adu, header),
                ("BPM", frame.bpm, fits.Header([("BUNIT", "")])),
                ("ERR", frame.err_adu, fits.Header([("BUNIT", "adu")])),
            ],
        )
        total_adu += frame.sci_adu
        y, x = np.nonzero(frame.cosmic_rays)
        hits.append(np.column_stack([np.full_like(y, k), y, x]))
    mean_adu = (total_adu / session.frames).astype(np.float32)
    header = fits.Header(session.cards(session.date_obs(0), rlevel=91))
    write_images(out / "data" / f"{session.ident.obs_id}_mean.fits.fz", [(None, mean_adu, header)])
    return np.concatenate(hits).astype(np.int32)


def _calib_summary(session: Session, names: dict[str, str]) -> dict:
    central = slice(session.size // 4, session.size - session.size // 4)
    return {
        "gain": session.gain_e_per_adu,
        "rdnoise": session.rdnoise_e,
        "bias": {"file": names["BIAS"], "level": float(np.median(session.bias_e)), "unit": "electron"},
        "dark": {"file": names["DARK"], "level": float(np.median(session.dark_e_per_s)), "unit": "electron/s"},
        "flat": {"file": names["SKYFLAT"], "level": float(session.flat[central, central].mean()), "unit": ""},
        "bpm": {"file": names["BPM"], "n_bad_pixels": int(session.bad_pixels.sum())},
    }


def _truth_parameters(spec: SynthSpec, session: Session, raw: exposure.Exposure) -> dict:
    rows, cols = spec.grid
    return {
        "seed": spec.seed,
        "session": session.ident.index,
        "obs_id": session.ident.obs_id,
        "instrument": session.ident.instrument,
        "band": session.ident.band,
        "size": session.size,
        "overscan": spec.overscan,
        "exptime": session.exptime_s,
        "gain_nominal": session.gain_e_per_adu,
        "rdnoise_nominal": session.rdnoise_e,
        "saturate": ccd.SATURATE_ADU,
        "maxlin": ccd.MAXLIN_ADU,
        "amp_layout": {"rows": rows, "cols": cols},
        "amps": [
            {
                "name": amp.name,
                "gain": readout.gain_e_per_adu,
                "rdnoise": readout.rdnoise_e,
                "overscan_level": readout.overscan_adu,
                "datasec": str(amp.datasec),
                "biassec": str(amp.biassec),
                "detsec": str(amp.detsec),
            }
            for amp, readout in zip(session.amps, session.readouts, strict=True)
        ],
        "star_count": len(session.stars),
        "psf": {"profile": "moffat", "fwhm_px": session.psf.fwhm_px, "beta": session.psf.beta},
        "sky": {"level_e": session.sky.level_e, "slope_e_per_px": list(session.sky.slope_e_per_px)},
        "bad_columns": {"dead": session.dead_column, "hot": session.hot_column},
        "n_saturated": int(raw.saturated.sum()),
        "n_cosmic_ray_pixels": int(raw.cosmic_rays.sum()),
        "row_noise_e": session.row_noise_e,
        "row_noise_rho": session.row_noise_rho,
        "cosmic_rays_per_px_s": ccd.COSMIC_RAYS_PER_PX_S,
    }
