"""What a user would write instead of skyprep: astropy + ccdproc, one session at a time.

    python benchmarks/naive_ccdproc.py ARCHIVE OUT_DIR

For every ``<instrument>_<band>/<obs_id>`` session under ``ARCHIVE`` (single-amplifier MuSCAT
frames): the raw frame's overscan subtracted (``subtract_overscan``, per-row median of
``BIASSEC``) and trimmed (``TRIMSEC``), converted to electrons, the master bias and the
exposure-scaled master dark subtracted, divided by the sky flat and converted back to ADU; the
e91 frames' SCI extensions sigma-clipped (``Combiner.sigma_clipping``, 3 sigma about the
median, one pass) and averaged. ``os``, ``calib`` and ``mean`` are written as float32 FITS files
``OUT_DIR/<instrument>_<band>/<obs_id>/{os,calib,mean}.fits``. No registration, no bad-pixel or
cosmic-ray masks, no variance, no checksums: the benchmarks' baseline (benchmarks/README.md),
deliberately independent of the ``pipeline`` package.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import astropy.units as u
import ccdproc
import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData


def master(path: Path, unit: str) -> CCDData:
    return CCDData(fits.getdata(path, "SCI").astype(np.float32), unit=unit)


def process_session(session: Path, out: Path) -> None:
    raw_path = next((session / "data").glob("*_raw.fits*"))
    header = fits.getheader(raw_path, "SCI")
    gain = header["GAIN"] * u.electron / u.adu
    raw = CCDData(fits.getdata(raw_path, "SCI").astype(np.float32), unit="adu")
    os_frame = ccdproc.subtract_overscan(raw, fits_section=header["BIASSEC"], overscan_axis=1, median=True)
    os_frame = ccdproc.trim_image(os_frame, fits_section=header["TRIMSEC"])

    calib_dir = session / "calib"
    ccd = ccdproc.gain_correct(os_frame, gain)
    ccd = ccdproc.subtract_bias(ccd, master(next(calib_dir.glob("BIAS_*")), "electron"))
    ccd = ccdproc.subtract_dark(ccd, master(next(calib_dir.glob("DARK_*")), "electron"),
                                dark_exposure=1.0 * u.s, data_exposure=header["EXPTIME"] * u.s, scale=True)  # fmt: skip
    ccd = ccdproc.flat_correct(ccd, master(next(calib_dir.glob("SKYFLAT_*")), ""), norm_value=1.0)
    calib = ccd.divide(gain)

    frames = [CCDData(fits.getdata(p, "SCI"), unit="adu") for p in sorted((session / "e91").glob("*.fits*"))]
    combiner = ccdproc.Combiner(frames)
    combiner.sigma_clipping(low_thresh=3, high_thresh=3, func=np.ma.median)
    mean = combiner.average_combine()

    out.mkdir(parents=True, exist_ok=True)
    for name, image in (("os", os_frame), ("calib", calib), ("mean", mean)):
        fits.writeto(out / f"{name}.fits", np.asarray(image.data, dtype=np.float32), overwrite=True)


def main(argv: list[str]) -> int:
    archive, out_dir = Path(argv[0]), Path(argv[1])
    sessions = sorted(p.parent.parent for p in archive.glob("*/*/data/*_raw.fits*"))
    for session in sessions:
        t0 = time.perf_counter()
        process_session(session, out_dir / session.parent.name / session.name)
        print(f"{session.parent.name}/{session.name}: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
