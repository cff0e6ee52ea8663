"""The keyword dictionary: logical observation elements read from FITS headers.

Every header value the pipeline needs is read through :func:`lookup`, with the element's
keyword, its substitutes and the instrument profile's overrides and defaults, all of them data
(``profiles/keywords.yaml``, ``profiles/instruments.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from .sections import Section


class MissingKeyword(KeyError):
    """A logical element that no keyword, substitute or default provides."""

    def __init__(self, element: str, tried: tuple[str, ...], source: str):
        self.element, self.tried, self.source = element, tried, source
        super().__init__(f"{source}: no value for {element} (tried keywords {', '.join(tried)}; no profile default)")

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


@cache
def profiles() -> dict[str, Profile]:
    """The packaged instrument profiles, by name."""
    raw = _load("instruments.yaml")["profiles"]
    return {
        name: Profile(name=name, description=spec.get("description", ""),
                      match_instrument=tuple(s.lower() for s in spec.get("match", {}).get("instrument", ())),
                      match_folder=tuple(s.lower() for s in spec.get("match", {}).get("folder", ())),
                      keywords=dict(spec.get("keywords", {})), defaults=dict(spec.get("defaults", {})))
        for name, spec in raw.items()
    }  # fmt: skip


def select_profile(header, folder_instrument: str = "", override: str | None = None) -> Profile:
    """The profile named ``override``, else the one matching ``INSTRUME`` or the folder, else generic."""
    known = profiles()
    if override:
        if override not in known:
            raise ValueError(f"unknown instrument profile {override!r} (known: {', '.join(known)})")
        return known[override]
    instrument = str(header.get("INSTRUME", "")).strip().lower()
    for profile in known.values():
        if instrument and any(instrument.startswith(m) for m in profile.match_instrument):
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


def lookup(header, element: str, profile: Profile, source: str) -> Any:
    """The value of logical ``element`` in ``header`` (``source`` names the file in errors)."""
    spec = dictionary()[element]
    keyword = profile.keywords.get(element, spec.keyword)
    tried = (keyword, *spec.substitutes)
    for key in tried:
        if key in header and header[key] is not None and str(header[key]).strip() != "":
            try:
                return _convert(header[key], spec.type)
            except ValueError as err:
                raise ValueError(f"{source}: {element} from {key}={header[key]!r} is not a valid {spec.type} ({err})") from None
    default = profile.defaults.get(element, spec.default)
    if default is None:
        raise MissingKeyword(element, tried, source)
    return _convert(default, spec.type)
