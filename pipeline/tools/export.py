"""A stored session back to one multi-extension FITS file, in the NOAO Mosaic conventions.

The primary header carries the global keywords of the raw exposure (its primary header for a
multi-amplifier camera, else its one image header, less the per-amplifier sections) and
``INHERIT = T``; an image extension per store variable the contract gives a FITS extension
(:mod:`pipeline.io.contract`: ``SCI`` calib, ``VAR`` variance, ``MASK`` the bit mask in
``PLIO_1``, ``COUNT``, ``MEAN``), each with its ``BUNIT``. Floats are compressed losslessly (``GZIP_2`` without quantisation), so the file
holds exactly the store's values.

``export_syn`` writes one realization of ``syn`` as the archive writes its ``_os`` frame:
``<out>/<instrument>_<band>/<obs_id>/data/<obs_id>_syn.fits.fz``, an empty primary and one
fpack image (``RICE_1``, float quantisation level 64 with subtractive dithering, as the
observatory compresses its floats) whose header holds the raw exposure's global keywords.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from astropy.io import fits

from .. import __version__
from ..errors import InputError, SkyprepError
from ..io.contract import VARIABLES, FitsExtension
from ..io.fits_headers import STRUCTURAL_KEYWORDS
from ..io.index import complete_sessions
from ..io.objects import ObjectPath, location, writable_file, writable_tree, zarr_store
from ..steps.masks import Flag

# Keywords of the raw readout that do not describe the exported (trimmed, calibrated) images.
_RAW_ONLY = {"BIASSEC", "DATASEC", "TRIMSEC", "DETSEC", "DETSIZE", "NEXTEND", "BUNIT", "RLEVEL"}


def global_header(attrs: dict) -> fits.Header:
    """Primary header of the export: the raw exposure's global keywords, ``INHERIT = T``."""
    text = attrs["header_primary"] if attrs.get("n_amps", 1) > 1 else attrs["header_amps"][0]
    raw = fits.Header.fromstring(text, sep="\n")
    header = fits.Header()
    for card in raw.cards:
        keyword = card.keyword
        if keyword not in STRUCTURAL_KEYWORDS and keyword not in _RAW_ONLY and not keyword.startswith("Z"):
            header.append(card)
    header["GAIN"] = (attrs["gain"], "[e-/ADU] nominal gain (ADU of the products)")
    header["INHERIT"] = (True, "extensions inherit these keywords")
    header["ORIGIN"] = (f"skyprep {__version__}", "software that wrote the file")
    key = f"{attrs['instrument']}_{attrs['band']}/{attrs['obs_id']}"
    header["SESSION"] = (_ascii(key), "skyprep session" + ("" if key.isascii() else " (\\u escapes)"))
    return header


def _ascii(text: str) -> str:
    """``text`` with every non-ASCII character as a Python escape (FITS values are ASCII)."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _extension(values: np.ndarray, ext: FitsExtension, flags: bool) -> fits.CompImageHDU:
    header = fits.Header([("INHERIT", True, "primary keywords apply"), ("BUNIT", ext.bunit, "pixel unit")])
    if flags:
        for flag in Flag:
            header[f"MASKB{flag.bit_length() - 1}"] = (flag.name.lower(), f"bit value {int(flag)}")
    options = {"quantize_level": 0.0} if np.dtype(ext.dtype).kind == "f" else {}
    return fits.CompImageHDU(np.asarray(values, ext.dtype), header=header, name=ext.extname,
                             compression_type=ext.compression, **options)  # fmt: skip


SYN_QUANTIZE_LEVEL = 64


def export_syn(
    store: Path | ObjectPath | str, key: str, out_root: Path | ObjectPath | str, realization: int = 0
) -> Path | ObjectPath:
    """Write realization ``realization`` of session ``key``'s ``syn`` in the archive's layout below
    ``out_root``; return the file's path."""
    dataset = _complete(store, key)
    if "syn" not in dataset:
        raise ValueError(f"{store}: session {key!r} has no syn (no e91 frames, or synthesis.realizations 0)")
    if not 0 <= realization < dataset.sizes["realization"]:
        raise ValueError(f"realization {realization}: session {key!r} holds {dataset.sizes['realization']}")
    attrs = dataset.attrs
    header = global_header(attrs)
    del header["INHERIT"]
    header["BUNIT"] = ("adu", "pixel unit")
    header["SYNREAL"] = (realization, "skyprep syn realization")
    header["SYNSEED"] = (attrs.get("syn", {}).get("seed", -1), "skyprep synthesis seed")
    values = np.asarray(dataset["syn"][realization].values, np.float32)
    hdu = fits.CompImageHDU(values, header=header, compression_type="RICE_1", quantize_level=SYN_QUANTIZE_LEVEL,
                            quantize_method=1, dither_seed=1 + realization, tile_shape=(1, values.shape[1]))  # fmt: skip
    name = f"{key}/data/{attrs['obs_id']}_syn.fits.fz"
    with writable_tree(location(out_root)) as root:
        out = root / name
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)
        tmp.replace(out)
    return location(out_root) / name


class UnknownSession(SkyprepError, LookupError):
    """The store has no complete session of that name."""


def _complete(store: Path | ObjectPath | str, key: str) -> xr.Dataset:
    complete = complete_sessions(store)
    if key not in complete:
        known = ", ".join(sorted(complete)) or "none"
        raise UnknownSession(f"{store}: no complete session {key!r} (complete: {known})")
    return xr.open_zarr(zarr_store(store), group=key, consolidated=False)


def export_session(store: Path | ObjectPath | str, key: str, out: Path | ObjectPath | str) -> Path | ObjectPath:
    """Write session ``key`` of ``store`` to ``out`` (multi-extension FITS); return ``out``.

    Raise :class:`UnknownSession` when the store has no such complete session and
    :class:`~pipeline.errors.InputError` naming ``out`` when it cannot be written."""
    dataset = _complete(store, key)
    hdus = [fits.PrimaryHDU(header=global_header(dataset.attrs))]
    for variable in VARIABLES:
        if variable.fits and variable.name in dataset:
            hdus.append(_extension(dataset[variable.name].values, variable.fits, variable.flags))
    out = location(out)
    try:
        with writable_file(out) as local:
            fits.HDUList(hdus).writeto(local, overwrite=True)
    except OSError as err:
        raise InputError(out, f"cannot write the export ({err.strerror or err})") from None
    return out
