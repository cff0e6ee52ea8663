"""A session's attributes: what the keyword dictionary finds in the raw frame's headers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import __version__
from ..steps.amplifiers import Amplifier
from .discover import Session
from .fits_headers import primary_header
from .keywords import MissingKeyword, Profile, amp_elements, lookup, records, resolve, session_elements


@dataclass(frozen=True)
class SessionAttrs:
    """The session attributes written with its arrays (the README's list), in their stored order.

    ``metadata``: every logical element of the keyword dictionary found, ``{value, units,
    keyword}`` (``Detector.Amp[n].*`` per amplifier); ``header_*``: the raw headers (primary,
    and each amplifier's effective header) as text; ``session_dir``: the session folder read."""

    metadata: dict[str, dict[str, Any]]
    header_primary: str
    header_amps: list[str]
    instrument: str
    band: str
    obs_id: str
    profile: str
    filter: str
    object: str
    date_obs: str
    exptime: float  # s
    darktime: float  # s
    gain: float  # nominal, e-/ADU
    amp_gain: list[float]  # e-/ADU
    amp_rdnoise: list[float]  # e-
    rdnoise: float  # e-, RMS over amplifiers
    n_amps: int
    software: str
    session_dir: str

    def to_dict(self) -> dict[str, Any]:
        """The attributes as a dict, in field order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def session_attrs(session: Session, amps: list[Amplifier], profile: Profile) -> SessionAttrs:
    """The attributes of ``session`` from its raw frame's headers, through the keyword dictionary."""
    header, source = amps[0].ref.header, amps[0].ref.label

    primary = primary_header(session.raw)

    def get(element: str, default: Any = None) -> Any:
        try:
            return lookup(header, element, profile, source, primary)
        except KeyError:
            if default is None:
                raise
            return default

    try:
        nominal = resolve(primary, "Detector.gain", profile, f"{session.raw}[0]")
    except MissingKeyword:  # one-amplifier files: the nominal gain sits in the image's header
        nominal = resolve(header, "Detector.gain", profile, source)
    logical = {
        **records(header, session_elements(), profile, source, primary=primary),
        "Detector.gain": nominal.record(),
    }
    for n, amp in enumerate(amps, start=1):
        logical.update(records(amp.ref.header, amp_elements(), profile, amp.ref.label, amp=n, primary=primary))
    return SessionAttrs(
        metadata=logical,
        header_primary=primary.tostring(sep="\n", endcard=False, padding=False),
        header_amps=[amp.ref.header.tostring(sep="\n", endcard=False, padding=False) for amp in amps],
        instrument=session.instrument,
        band=session.band,
        obs_id=session.obs_id,
        profile=profile.name,
        filter=get("Instrument.filter", ""),
        object=get("Observation.object", ""),
        date_obs=get("Exposure.date_obs", ""),
        exptime=get("Exposure.exptime"),
        darktime=get("Exposure.darktime"),
        gain=nominal.value,
        amp_gain=[a.gain_e_per_adu for a in amps],
        amp_rdnoise=[a.rdnoise_e for a in amps],
        rdnoise=float(np.sqrt(np.mean(np.square([a.rdnoise_e for a in amps])))),
        n_amps=len(amps),
        software=f"skyprep {__version__}",
        session_dir=str(session.directory),
    )
