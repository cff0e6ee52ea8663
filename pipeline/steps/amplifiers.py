"""Amplifiers: geometry from the headers, overscan and trim per amplifier, mosaic by DETSEC."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..io.fits_headers import ImageRef
from ..io.keywords import MissingKeyword, Profile, lookup
from ..io.sections import Section, detsec_from_datasec
from .masks import MASK_DTYPE, Flag
from .overscan import OverscanParams, overscan_level_adu


@dataclass(frozen=True)
class Amplifier:
    """One amplifier's readout: where its pixels are and how to turn them into electrons."""

    ref: ImageRef
    gain_e_per_adu: float
    rdnoise_e: float
    saturate_adu: float
    maxlin_adu: float
    biassec: Section
    datasec: Section
    trimsec: Section
    detsec: Section
    binning: tuple[int, int]  # (bx, by)
    detsec_rebuilt: bool = False  # DETSEC absent: rebuilt from DATASEC and CCDSUM

    @classmethod
    def from_header(cls, ref: ImageRef, profile: Profile, primary=None) -> Amplifier:
        """Read an amplifier through the keyword dictionary (``DETSEC`` rebuilt when absent;
        ``primary`` stands in for keywords of an extension without ``INHERIT``)."""
        header, source = ref.header, ref.label

        def get(element):
            return lookup(header, element, profile, source, primary)

        datasec = get("Detector.Amp.datasec")
        ccdsum = get("Detector.ccdsum")
        try:
            detsec, rebuilt = get("Detector.Amp.detsec"), False
        except MissingKeyword:
            detsec, rebuilt = detsec_from_datasec(datasec, ccdsum), True
        bx, by = (int(v) for v in ccdsum.split())
        amp = cls(
            ref=ref,
            gain_e_per_adu=get("Detector.Amp.gain"),
            rdnoise_e=get("Detector.Amp.rdnoise"),
            saturate_adu=get("Detector.Amp.saturate"),
            maxlin_adu=get("Detector.Amp.maxlin"),
            biassec=get("Detector.Amp.biassec"),
            datasec=datasec,
            trimsec=get("Detector.Amp.trimsec"),
            detsec=detsec,
            binning=(bx, by),
            detsec_rebuilt=rebuilt,
        )
        amp.validate()
        return amp

    def validate(self) -> None:
        """Raise ``ValueError`` naming the file when the sections do not fit the array."""
        ny, nx = self.ref.shape
        for key, sec in (("BIASSEC", self.biassec), ("DATASEC", self.datasec), ("TRIMSEC", self.trimsec)):
            if sec.flip_x or sec.flip_y:
                raise ValueError(f"{self.ref.label}: {key} {sec} must be ascending (only DETSEC may be reversed)")
            ys, xs = sec.slices
            if ys.stop > ny or xs.stop > nx:
                raise ValueError(f"{self.ref.label}: {key} {sec} exceeds the {nx} x {ny} array")
        d_ys, d_xs = self.datasec.slices
        t_ys, t_xs = self.trimsec.slices
        if t_ys.start < d_ys.start or t_ys.stop > d_ys.stop or t_xs.start < d_xs.start or t_xs.stop > d_xs.stop:
            raise ValueError(f"{self.ref.label}: TRIMSEC {self.trimsec} is not inside DATASEC {self.datasec}")
        det_ny, det_nx = self.detsec.shape
        bx, by = self.binning
        if (det_ny, det_nx) != (self.datasec.shape[0] * by, self.datasec.shape[1] * bx):
            raise ValueError(
                f"{self.ref.label}: DETSEC {self.detsec} does not match DATASEC {self.datasec} binned {bx}x{by}"
            )

    @property
    def described(self) -> str:
        """``file[EXTNAME] DETSEC [..]``, saying when DETSEC was rebuilt, for error messages."""
        return f"{self.ref.label} DETSEC {self.detsec}" + (" (rebuilt from DATASEC)" if self.detsec_rebuilt else "")

    @property
    def target(self) -> tuple[slice, slice]:
        """0-based (y, x) slices, in binned detector pixels, where the trimmed data lands."""
        bx, by = self.binning
        (d_y, d_x), (t_y, t_x) = self.datasec.slices, self.trimsec.slices
        return (
            _map_range(t_y.start - d_y.start, t_y.stop - d_y.start, self.detsec.y1, self.detsec.y2, by),
            _map_range(t_x.start - d_x.start, t_x.stop - d_x.start, self.detsec.x1, self.detsec.x2, bx),
        )


def _map_range(k0: int, k1: int, det1: int, det2: int, binning: int) -> slice:
    """Data offsets ``[k0, k1)`` along one axis to 0-based binned detector indices."""
    low = (min(det1, det2) - 1) // binning
    n = (abs(det2 - det1) + 1) // binning
    if det1 <= det2:
        return slice(low + k0, low + k1)
    return slice(low + n - k1, low + n - k0)


def reduce_amp(raw_adu: np.ndarray, amp: Amplifier, params: OverscanParams) -> tuple[np.ndarray, np.ndarray]:
    """Flag saturation, subtract overscan, trim and orient one amplifier.

    Returns the overscan-corrected trimmed data (float32, ADU) and its saturation flags (uint16),
    both already flipped into detector orientation.
    """
    raw = np.asarray(raw_adu)
    level = overscan_level_adu(raw[amp.biassec.slices], params)
    trimmed_raw = raw[amp.trimsec.slices]
    data = trimmed_raw - _rows(level, amp)
    flags = np.zeros(trimmed_raw.shape, MASK_DTYPE)
    flags[trimmed_raw >= amp.saturate_adu] |= Flag.SATURATED.value
    flags[trimmed_raw >= amp.maxlin_adu] |= Flag.NONLINEAR.value
    return amp.detsec.orient(data.astype(np.float32)), amp.detsec.orient(flags)


def _rows(level: np.ndarray, amp: Amplifier) -> np.ndarray:
    """The overscan level of the trimmed rows (the overscan spans the raw array's rows)."""
    b_y, _ = amp.biassec.slices
    t_y, _ = amp.trimsec.slices
    if t_y.start < b_y.start or t_y.stop > b_y.stop:
        raise ValueError(f"{amp.ref.label}: BIASSEC {amp.biassec} does not span the rows of TRIMSEC {amp.trimsec}")
    return level[t_y.start - b_y.start : t_y.stop - b_y.start]


def detector_shape(amps: list[Amplifier]) -> tuple[slice, slice]:
    """The bounding box (y, x slices) of all amplifiers' trimmed data on the detector; raise
    :class:`~pipeline.errors.InputError` naming the amplifiers unless they tile it exactly once."""
    targets = [a.target for a in amps]
    box = (
        slice(min(t[0].start for t in targets), max(t[0].stop for t in targets)),
        slice(min(t[1].start for t in targets), max(t[1].stop for t in targets)),
    )
    _check_tiling(amps, box)
    return box


def _area(ys: slice, xs: slice) -> int:
    return max(0, ys.stop - ys.start) * max(0, xs.stop - xs.start)


def _check_tiling(amps: list[Amplifier], box: tuple[slice, slice]) -> None:
    """Refuse amplifiers that overlap on the detector or leave part of their bounding box empty."""
    path = amps[0].ref.path
    for i, a in enumerate(amps):
        for b in amps[i + 1 :]:
            (ay, ax), (by, bx) = a.target, b.target
            shared = _area(slice(max(ay.start, by.start), min(ay.stop, by.stop)),
                           slice(max(ax.start, bx.start), min(ax.stop, bx.stop)))  # fmt: skip
            if shared:
                raise InputError(
                    path, f"amplifiers overlap on the detector ({shared} px): {a.described} and {b.described}"
                )
    covered = sum(_area(*a.target) for a in amps)
    if covered != _area(*box):
        hole = np.ones((box[0].stop - box[0].start, box[1].stop - box[1].start), bool)
        for a in amps:
            ty, tx = a.target
            hole[ty.start - box[0].start : ty.stop - box[0].start, tx.start - box[1].start : tx.stop - box[1].start] = (
                False
            )
        ys, xs = np.nonzero(hole)
        empty = f"[{xs.min() + box[1].start + 1}:{xs.max() + box[1].start + 1},{ys.min() + box[0].start + 1}:{ys.max() + box[0].start + 1}]"
        raise InputError(
            path,
            f"amplifiers leave {hole.sum()} detector px empty (within {empty}, binned pixels): "
            + "; ".join(a.described for a in amps),
        )


def mosaic(pieces: list[np.ndarray], amps: list[Amplifier], fill=0) -> np.ndarray:
    """Place each amplifier's oriented trimmed array at its DETSEC target; crop to the bounding box."""
    box_y, box_x = detector_shape(amps)
    out = np.full((box_y.stop - box_y.start, box_x.stop - box_x.start), fill, dtype=pieces[0].dtype)
    for piece, amp in zip(pieces, amps, strict=True):
        ty, tx = amp.target
        out[ty.start - box_y.start : ty.stop - box_y.start, tx.start - box_x.start : tx.stop - box_x.start] = piece
    return out


def amp_value_map(amps: list[Amplifier], values: list[float], y0: int, y1: int) -> np.ndarray:
    """Per-pixel map (float32) of one value per amplifier, for detector rows ``[y0, y1)``."""
    box_y, box_x = detector_shape(amps)
    out = np.full((y1 - y0, box_x.stop - box_x.start), np.nan, np.float32)
    for amp, value in zip(amps, values, strict=True):
        ty, tx = amp.target
        a, b = max(ty.start - box_y.start, y0), min(ty.stop - box_y.start, y1)
        if a < b:
            out[a - y0 : b - y0, tx.start - box_x.start : tx.stop - box_x.start] = value
    return out
