"""The keyword dictionary: logical observation elements read from FITS headers.

Every header value the pipeline needs is read through :func:`lookup`, with the element's
keyword, its substitutes and the instrument profile's overrides and defaults, all of them data
(``profiles/keywords.yaml``, ``profiles/instruments.yaml``). Further profiles may come from YAML
files of the same form named in the environment variable ``SKYPREP_PROFILES`` (paths separated
by ``os.pathsep``); a profile there replaces a packaged one of the same name.

Inheritance: an extension inherits the primary header only with ``INHERIT = T`` (the FITS
convention, applied when the headers are read). An extension with no ``INHERIT`` keyword at all
was written by a camera that forgot it: an element its header lacks is then taken from the
``primary`` header when one is given (as the observatory pipeline does for ``RDNOISE``), and its
record says so (``"source": "primary"``). ``INHERIT = F`` is respected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from .sections import Section


class MissingKeyword(InputError, KeyError):
    """A logical element that no keyword, substitute or default provides in ``source`` (the file)."""

    def __init__(self, element: str, tried: tuple[str, ...], source: str):
        self.element, self.tried, self.source = element, tried, source
        super().__init__(source, f"no value for {element} (tried keywords {', '.join(tried)}; no profile default)")

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class Element:
    """One logical element of the observation model."""

    name: str
    keyword: str
    type: str
    substitutes: tuple[str, ...] = ()
    units: str = ""
    default: Any = None
    definition: str = ""


@dataclass(frozen=True)
class Profile:
    """What distinguishes an instrument: keyword overrides and defaults."""

    name: str
    description: str = ""
    match_instrument: tuple[str, ...] = ()
    match_telescope: tuple[str, ...] = ()
    match_folder: tuple[str, ...] = ()
    keywords: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)


def _load(name: str) -> dict:
    return yaml.safe_load(resources.files("pipeline.profiles").joinpath(name).read_text())


@cache
def dictionary() -> dict[str, Element]:
    """The packaged keyword dictionary, by element name."""
    raw = _load("keywords.yaml")["elements"]
    return {
        name: Element(name=name, keyword=spec["keyword"], type=spec["type"],
                      substitutes=tuple(spec.get("substitutes", ())), units=spec.get("units", ""),
                      default=spec.get("default"), definition=spec.get("definition", ""))
        for name, spec in raw.items()
    }  # fmt: skip


PROFILES_ENV = "SKYPREP_PROFILES"


def profiles() -> dict[str, Profile]:
    """The instrument profiles by name: the packaged ones, then those of ``$SKYPREP_PROFILES``."""
    return _profiles(os.environ.get(PROFILES_ENV, ""))


@cache
def _profiles(extra_files: str) -> dict[str, Profile]:
    raw = dict(_load("instruments.yaml")["profiles"])
    for path in filter(None, extra_files.split(os.pathsep)):
        try:
            raw.update(yaml.safe_load(Path(path).read_text())["profiles"])
        except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a profile file with a 'profiles' mapping ({err})") from None
    return {name: _profile(name, spec) for name, spec in raw.items()}


def _profile(name: str, spec: dict) -> Profile:
    match = spec.get("match", {})
    return Profile(name=name, description=spec.get("description", ""),
                   match_instrument=tuple(s.lower() for s in match.get("instrument", ())),
                   match_telescope=tuple(s.lower() for s in match.get("telescope", ())),
                   match_folder=tuple(s.lower() for s in match.get("folder", ())),
                   keywords=dict(spec.get("keywords", {})), defaults=dict(spec.get("defaults", {})))  # fmt: skip


def select_profile(header, folder_instrument: str = "", override: str | None = None) -> Profile:
    """The profile named ``override``, else the one matching ``INSTRUME``, ``TELESCOP`` or the folder,
    else generic."""
    known = profiles()
    if override:
        if override not in known:
            raise ValueError(f"unknown instrument profile {override!r} (known: {', '.join(known)})")
        return known[override]
    instrument = str(header.get("INSTRUME", "")).strip().lower()
    for profile in known.values():
        if instrument and any(instrument.startswith(m) for m in profile.match_instrument):
            return profile
    telescope = str(header.get("TELESCOP", "")).strip().lower()
    for profile in known.values():
        if telescope and any(telescope.startswith(m) for m in profile.match_telescope):
            return profile
    for profile in known.values():
        if folder_instrument.lower() in profile.match_folder:
            return profile
    return known["generic"]


def _convert(value: Any, kind: str) -> Any:
    if kind == "float":
        return float(value)
    if kind == "section":
        return Section.parse(value)
    return str(value).strip()


@dataclass(frozen=True)
class Resolved:
    """A logical element's value, its units and where it came from (keyword, or ``default``)."""

    value: Any
    units: str
    keyword: str
    from_primary: bool = False  # substituted from the primary header (extension without INHERIT)

    def record(self) -> dict:
        """``{value, units, keyword}`` (and ``source: primary`` when substituted) for the store's attributes."""
        value = str(self.value) if isinstance(self.value, Section) else self.value
        found = {"value": value, "units": self.units, "keyword": self.keyword}
        return {**found, "source": "primary"} if self.from_primary else found


def _present(header, key: str) -> bool:
    return key in header and header[key] is not None and str(header[key]).strip() != ""


def resolve(header, element: str, profile: Profile, source: str, primary=None) -> Resolved:
    """Logical ``element`` of ``header`` with its units and the keyword that gave it; ``primary``
    stands in when ``header`` lacks it and has no ``INHERIT`` keyword (module docstring)."""
    spec = dictionary()[element]
    keyword = profile.keywords.get(element, spec.keyword)
    tried = (keyword, *spec.substitutes)
    places = [(header, False)]
    if primary is not None and "INHERIT" not in header:
        places.append((primary, True))
    for place, from_primary in places:
        for key in tried:
            if _present(place, key):
                try:
                    return Resolved(_convert(place[key], spec.type), spec.units, key, from_primary)
                except ValueError as err:
                    where = " (primary header)" if from_primary else ""
                    raise ValueError(
                        f"{source}: {element} from {key}={place[key]!r}{where} is not a valid {spec.type} ({err})"
                    ) from None
    default = profile.defaults.get(element, spec.default)
    if default is None:
        raise MissingKeyword(element, tried, source)
    return Resolved(_convert(default, spec.type), spec.units, "default")


def lookup(header, element: str, profile: Profile, source: str, primary=None) -> Any:
    """The value of logical ``element`` in ``header`` (``source`` names the file in errors)."""
    return resolve(header, element, profile, source, primary).value


def records(header, elements, profile: Profile, source: str, amp: int | None = None, primary=None) -> dict[str, dict]:
    """``{element: {value, units, keyword}}`` of the ``elements`` that ``header`` provides;
    with ``amp`` = n, ``Detector.Amp.x`` is named ``Detector.Amp[n].x``."""
    found = {}
    for element in elements:
        name = element if amp is None else element.replace(".Amp.", f".Amp[{amp}].", 1)
        try:
            found[name] = resolve(header, element, profile, source, primary).record()
        except MissingKeyword:
            continue
    return found


def session_elements() -> tuple[str, ...]:
    """Elements that describe the whole exposure (every one not under ``.Amp.``)."""
    return tuple(name for name in dictionary() if ".Amp." not in name)


def amp_elements() -> tuple[str, ...]:
    """Elements that describe one amplifier (``Detector.Amp.*``)."""
    return tuple(name for name in dictionary() if ".Amp." in name)
