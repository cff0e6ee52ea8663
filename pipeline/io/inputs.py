"""A session's inputs as the graph uses them: the raw frame's layout, the masters as lazy strips
in the calibration's units, the e91 frames with their factors to ADU, and the reference products.

Every image must have the detector's trimmed shape; a file that does not, or an e91 frame
without the ERR extension a weighted stack needs, is refused (``SessionError`` with its path).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np

from ..steps.amplifiers import Amplifier, detector_shape
from ..steps.calibrate import Masters
from ..steps.e91 import Frame
from .discover import Session, SessionError
from .fits_headers import ImageRef, list_images, primary_header
from .fits_reader import lazy_image
from .keywords import Profile, select_profile
from .metadata import SessionAttrs, session_attrs
from .units import header_factor, header_unit

# The unit each master's SCI (and ERR) is converted to; the flat is dimensionless and not converted.
_UNITS = {"BIAS": "electron", "DARK": "electron/s"}


@dataclass(frozen=True)
class Layout:
    """What the raw frame says about a session: its image extensions, profile, amplifiers,
    attributes and the trimmed detector shape (ny, nx) pixels."""

    raw: list[ImageRef]
    profile: Profile
    amps: list[Amplifier]
    attrs: SessionAttrs
    shape: tuple[int, int]


def layout(session: Session, instrument: str | None) -> Layout:
    """The raw frame's layout; ``instrument`` forces a profile (else it is detected)."""
    raw = list_images(session.raw)
    profile = select_profile(raw[0].header, session.instrument, instrument)
    primary = primary_header(session.raw)
    amps = [Amplifier.from_header(ref, profile, primary) for ref in raw]
    box_y, box_x = detector_shape(amps)
    shape = (box_y.stop - box_y.start, box_x.stop - box_x.start)
    return Layout(raw, profile, amps, session_attrs(session, amps, profile), shape)


@dataclass(frozen=True)
class MasterArrays:
    """The masters as lazy strips, the fields of :class:`~pipeline.steps.calibrate.Masters`:
    bias (e-), dark (e-/s), flat, BPM (non-zero bad) and their errors (0 when a file has none)."""

    bias_e: da.Array
    dark_e_per_s: da.Array
    flat: da.Array
    bpm: da.Array
    bias_err_e: da.Array
    dark_err_e_per_s: da.Array
    flat_err: da.Array

    def arrays(self) -> list[da.Array]:
        """The arrays in the field order of ``Masters`` (``Masters(*blocks)`` rebuilds a block's)."""
        return [getattr(self, f.name) for f in dataclasses.fields(Masters)]


def extensions(path: Path, shape: tuple[int, int]) -> dict[str, ImageRef]:
    """Image extensions of ``path`` by upper-case EXTNAME; the first image is also ``SCI``
    when none is named so. Each must have the detector's ``shape``."""
    found = _images(path)
    for ref in found.values():
        check_shape(ref, shape)
    return found


def _images(path: Path) -> dict[str, ImageRef]:
    refs = list_images(path)
    found = {ref.name.upper(): ref for ref in refs if ref.name}
    found.setdefault("SCI", refs[0])
    return found


def check_masters(exts: dict[str, dict[str, ImageRef]], shape: tuple[int, int], raw: str, raw_geometry: str) -> None:
    """Refuse masters without the raw frame's trimmed ``shape`` (ny, nx): the raw frame is named
    when all masters share one other shape (its sections are what is wrong), else the first
    master that differs."""
    refs = [ref for found in exts.values() for ref in found.values()]
    shapes = {ref.shape for ref in refs}
    if len(shapes) == 1 and shape not in shapes and len(exts) > 1:
        (ny, nx), (my, mx) = shape, refs[0].shape
        files = ", ".join(sorted({str(ref.path).rsplit("/", 1)[-1] for ref in refs}))
        raise SessionError(
            raw,
            f"trimmed {nx} x {ny} by its sections ({raw_geometry or 'DETSEC, DATASEC, TRIMSEC'}), but every "
            f"master ({files}) is {mx} x {my}",
        )
    for ref in refs:
        check_shape(ref, shape)


def check_shape(ref: ImageRef, shape: tuple[int, int]) -> None:
    """Refuse ``ref`` unless it has the detector's trimmed ``shape`` (ny, nx)."""
    if ref.shape != shape:
        raise SessionError(
            ref.label,
            f"shape {ref.shape[1]} x {ref.shape[0]} does not match the raw frame's trimmed {shape[1]} x {shape[0]}",
        )


def in_unit(
    ref: ImageRef, strip: int, name: str, unit: str, assumed: str, profile: Profile, gain_e_per_adu: float
) -> da.Array:
    """The image as strips, converted from its ``BUNIT`` (``assumed`` when absent) to ``unit``."""
    factor = header_factor(ref.header, unit, assumed, gain_e_per_adu, profile, ref.label)
    values = lazy_image(ref, strip, name)
    return values if factor == 1.0 else values * np.float32(factor)


def masters(
    session: Session,
    shape: tuple[int, int],
    strip: int,
    base: str,
    profile: Profile,
    gain_e_per_adu: float,
    raw_geometry: str = "",
) -> MasterArrays:
    """Bias (e-), dark (e-/s), flat, BPM and their errors as strips of ``strip`` rows, named
    ``<kind>-<base>`` (``<kind>-err-<base>``).

    Bias and dark (and their ERR) are converted from their ``BUNIT`` (ADU with the master's own
    ``GAIN``, else the nominal one; totals divided by the master's dark time). A shape mismatch
    blames the raw frame (``raw_geometry``: its amplifiers' sections) when every master agrees."""
    exts = {kind: _images(path) for kind, path in session.masters.items()}
    check_masters(exts, shape, str(session.raw), raw_geometry)

    def load(kind: str, ext: str, name: str) -> da.Array:
        if kind == "SKYFLAT":
            return lazy_image(exts[kind][ext], strip, name)
        sci = exts[kind]["SCI"]
        assumed = header_unit(sci.header, _UNITS[kind], profile, sci.label) if ext == "ERR" else _UNITS[kind]
        return in_unit(exts[kind][ext], strip, name, _UNITS[kind], assumed, profile, gain_e_per_adu)

    def error(kind: str) -> da.Array:
        if "ERR" in exts[kind]:
            return load(kind, "ERR", f"{kind.lower()}-err-{base}")
        return da.zeros(shape, dtype=np.float32, chunks=(strip, shape[1]))

    bias, dark, flat = (load(kind, "SCI", f"{kind.lower()}-{base}") for kind in ("BIAS", "DARK", "SKYFLAT"))
    if "BPM" in exts:
        bpm = lazy_image(exts["BPM"]["SCI"], strip, f"bpm-{base}")
    else:
        bpm = da.zeros(shape, dtype=np.uint8, chunks=(strip, shape[1]))
    return MasterArrays(bias, dark, flat, bpm, error("BIAS"), error("DARK"), error("SKYFLAT"))


def e91_frame(path: Path, shape: tuple[int, int], weighted: bool, profile: Profile, gain_e_per_adu: float) -> Frame:
    """The e91 file's SCI (BPM, and ERR when ``weighted``) with their factors to ADU (from
    ``BUNIT``; the frame's ``GAIN``, else ``gain_e_per_adu``)."""
    ext = extensions(path, shape)
    if weighted and "ERR" not in ext:
        raise SessionError(path, "no ERR extension, needed by stack.weighted (inverse-variance weights)")
    sci = ext["SCI"]
    factor = header_factor(sci.header, "adu", "adu", gain_e_per_adu, profile, sci.label)
    if not weighted:
        return Frame(sci, ext.get("BPM"), None, factor, 1.0)
    err = ext["ERR"]
    assumed = header_unit(sci.header, "adu", profile, sci.label)
    return Frame(
        sci, ext.get("BPM"), err, factor, header_factor(err.header, "adu", assumed, gain_e_per_adu, profile, err.label)
    )


def reference_image(path: Path, shape: tuple[int, int]) -> ImageRef:
    """The SCI image of an archive product (``data/<obs_id>_<product>``)."""
    return extensions(path, shape)["SCI"]
