"""The store contract: every variable a session group may hold, defined once.

One row per variable. The graph's variable attributes, ``skyprep verify``, the loader, ``skyprep
export``, the end-to-end test and the README's table all derive from :data:`VARIABLES`
(``tests/test_contract.py`` parses the README table and fails when it disagrees). Adding a
variable is adding a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from ..steps.masks import cf_attrs

STORE_VERSION = 2  # 2: uncompressed image variables (docs/store-layout.md); 1: blosc-lz4 floats, zstd ints


class Presence(Enum):
    """Which sessions hold a variable."""

    ALWAYS = "always"
    VARIANCE = "when write_variance"
    E91 = "with e91 frames"
    REFERENCE = "when the archive has it"
    SYN = "with e91 frames and synthesis.realizations > 0"


@dataclass(frozen=True)
class FitsExtension:
    """How ``skyprep export`` writes a variable: EXTNAME, dtype written, compression, BUNIT."""

    extname: str
    dtype: type[np.generic]
    compression: str
    bunit: str


@dataclass(frozen=True)
class Variable:
    """One store variable. ``units`` and ``long_name`` are its stored attributes (no ``units``
    attribute when empty); ``flags``: a bit mask carrying the CF ``flag_masks``/``flag_meanings``
    attributes; ``attrs``: further attributes; ``note``: what the README adds to the long name."""

    name: str
    dims: tuple[str, ...]
    dtype: type[np.generic]
    units: str
    long_name: str
    presence: Presence
    fits: FitsExtension | None = None
    flags: bool = False
    attrs: tuple[tuple[str, str], ...] = ()
    note: str = ""

    def attributes(self) -> dict[str, object]:
        """The variable's stored attributes: ``long_name``, ``units`` (when any), CF flag attributes
        of bit masks, then the row's ``attrs``."""
        found: dict[str, object] = {"long_name": self.long_name}
        if self.units:
            found["units"] = self.units
        if self.flags:
            found.update(cf_attrs())
        return {**found, **dict(self.attrs)}

    def meaning(self) -> str:
        """The README's description: the long name, then the note."""
        return f"{self.long_name}; {self.note}" if self.note else self.long_name


_IMAGE, _CUBE = ("y", "x"), ("frame", "y", "x")
_F32, _U16, _U8 = np.float32, np.uint16, np.uint8
_always, _e91, _ref = Presence.ALWAYS, Presence.E91, Presence.REFERENCE

VARIABLES: tuple[Variable, ...] = (
    Variable("os", _IMAGE, _F32, "adu", "overscan-corrected, trimmed, assembled raw frame", _always),
    Variable("calib", _IMAGE, _F32, "adu", "calibrated frame", _always,
             FitsExtension("SCI", np.float32, "GZIP_2", "adu")),
    Variable("variance", _IMAGE, _F32, "adu2", "variance of calib", Presence.VARIANCE,
             FitsExtension("VAR", np.float32, "GZIP_2", "adu2")),
    Variable("mask", _IMAGE, _U16, "", "bit mask of calib", _always,
             FitsExtension("MASK", np.int32, "PLIO_1", ""), flags=True, note="bits in the table below"),
    Variable("e91", _CUBE, _F32, "adu", "e91 frames registered onto the session grid", _e91,
             note="NaN where no data"),
    Variable("e91_mask", _CUBE, _U16, "", "bit mask of each registered e91 frame", _e91, flags=True,
             note="input BPM, no data after the shift, clipped, not registered"),
    Variable("shift", ("frame", "axis"), _F32, "pixel", "(dy, dx) translation applied to each e91 frame", _e91,
             attrs=(("axis_order", "dy dx"),),
             note="`e91[k, y, x] = frame_k[y - dy, x - dx]`; NaN when not registered"),
    Variable("count", _IMAGE, _U16, "1", "number of e91 frames contributing to mean", _e91,
             FitsExtension("COUNT", np.int16, "RICE_1", "")),
    Variable("mean", _IMAGE, _F32, "adu", "sigma-clipped mean of e91", _e91,
             FitsExtension("MEAN", np.float32, "GZIP_2", "adu"), note="NaN where `count == 0`"),
    Variable("std", _IMAGE, _F32, "adu", "standard deviation of the kept e91 values", _e91, note="ddof 0"),
    Variable("source_mask", _IMAGE, _U8, "", "source mask of the stack: 0 source, 1 background", _e91),
    Variable("bias", _IMAGE, _F32, "electron", "master bias the session was calibrated with", _always,
             note="after overscan; the session's pixel grid"),
    Variable("dark", _IMAGE, _F32, "electron/s", "master dark current the session was calibrated with", _always),
    Variable("flat", _IMAGE, _F32, "", "sky flat the session was calibrated with", _always, note="divide by it"),
    Variable("syn", ("realization", "y", "x"), _F32, "adu", "frames synthesized from mean with the noise model",
             Presence.SYN, note="imitate `os` (docs/synthesis.md); NaN where `count == 0`"),
    Variable("ref_os", _IMAGE, _F32, "adu", "archive's overscan-corrected raw frame", _ref),
    Variable("ref_calib", _IMAGE, _F32, "adu", "archive's calibrated frame", _ref),
    Variable("ref_mean", _IMAGE, _F32, "adu", "archive's stack of the e91 frames", _ref),
    Variable("ref_mask", _IMAGE, _U8, "", "archive's source mask: 0 source, 1 background", _ref),
)  # fmt: skip

CONTRACT: dict[str, Variable] = {v.name: v for v in VARIABLES}


def named(presence: Presence) -> tuple[str, ...]:
    """Names of the variables held by the sessions ``presence`` describes."""
    return tuple(v.name for v in VARIABLES if v.presence is presence)


def markdown_table() -> str:
    """The README's contract table (``tests/test_contract.py`` checks the README holds it)."""
    lines = [
        "| variable | dims | dtype | units | sessions | FITS export | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in VARIABLES:
        fits = f"`{v.fits.extname}` ({v.fits.compression})" if v.fits else ""
        lines.append(
            f"| `{v.name}` | {', '.join(v.dims)} | {np.dtype(v.dtype).name} | {v.units} | {v.presence.value} "
            f"| {fits} | {v.meaning()} |"
        )
    return "\n".join(lines)
