"""Pixel units: reading ``BUNIT`` and converting between electrons and ADU (and per second).

Units are normalised to a base, ``electron``, ``adu`` or ``""`` (a ratio such as a flat), with
or without ``/s``. ``electrons = ADU * GAIN`` (GAIN in e-/ADU); a rate times its exposure
(dark) time is a total.
"""

from __future__ import annotations

from collections.abc import Callable

from .keywords import MissingKeyword, Profile, lookup

_BASES = {
    "electron": ("electron", "electrons", "e-", "e"),
    "adu": ("adu", "adus", "count", "counts", "dn"),
    "": ("", "1", "dimensionless", "ratio"),
}
_PER_SECOND = ("/s", "/sec", "/second", "s-1", "s^-1", "s**-1")


def parse_unit(bunit: str) -> tuple[str, bool]:
    """``BUNIT`` text -> (base, per_second), e.g. ``"e-/s"`` -> ``("electron", True)``."""
    text = str(bunit).strip().lower().replace(" ", "")
    suffix = next((end for end in _PER_SECOND if text.endswith(end)), "")
    text = text[: len(text) - len(suffix)]
    for base, names in _BASES.items():
        if text in names:
            return base, bool(suffix)
    raise ValueError(f"unknown pixel unit {bunit!r} (known: electron, adu, with optional /s, or empty)")


def conversion_factor(from_unit: str, to_unit: str, gain_e_per_adu: float,
                      exposure_s: Callable[[], float] | None = None) -> float:  # fmt: skip
    """Factor ``f`` with ``values[to_unit] = values[from_unit] * f``.

    ``gain_e_per_adu`` converts ADU <-> electrons; ``exposure_s()`` (called only when needed)
    gives the seconds that turn a total into a rate or back.
    """
    (base_from, rate_from), (base_to, rate_to) = parse_unit(from_unit), parse_unit(to_unit)
    factor = 1.0
    if base_from != base_to:
        if "" in (base_from, base_to):
            raise ValueError(f"cannot convert {from_unit!r} to {to_unit!r}")
        factor = gain_e_per_adu if base_from == "adu" else 1.0 / gain_e_per_adu
    if rate_from != rate_to:
        if exposure_s is None:
            raise ValueError(f"converting {from_unit!r} to {to_unit!r} needs an exposure time")
        seconds = float(exposure_s())
        if not seconds > 0:
            raise ValueError(f"converting {from_unit!r} to {to_unit!r} needs a positive exposure time, got {seconds}")
        factor = factor / seconds if rate_to else factor * seconds
    return factor


def header_unit(header, assumed: str, profile: Profile, source: str) -> str:
    """The pixel unit of an image: its ``BUNIT`` (through the dictionary), else ``assumed``."""
    try:
        return lookup(header, "Data.bunit", profile, source)
    except MissingKeyword:
        return assumed


def header_factor(header, to_unit: str, assumed: str, gain_e_per_adu: float, profile: Profile, source: str) -> float:
    """Factor taking an image with ``header`` to ``to_unit``.

    Its unit is ``BUNIT`` (``assumed`` when absent); its own ``GAIN`` wins over
    ``gain_e_per_adu``; its dark time (``DARKTIME``, else ``EXPTIME``) converts totals and
    rates. Errors name ``source``.
    """
    unit = header_unit(header, assumed, profile, source)
    try:
        gain = lookup(header, "Detector.gain", profile, source)
    except MissingKeyword:
        gain = gain_e_per_adu
    try:
        return conversion_factor(unit, to_unit, gain, lambda: lookup(header, "Exposure.darktime", profile, source))
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
