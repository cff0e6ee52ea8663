"""Finding observation sessions in an archive laid out as ``<instrument>_<band>/<obs_id>/``."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

FITS_SUFFIXES = (".fits", ".fits.fz", ".fit", ".fts", ".fits.gz")
REFERENCE_PRODUCTS = ("os", "calib", "mean", "mask")
MASTERS = ("BIAS", "DARK", "SKYFLAT", "BPM")
REQUIRED_MASTERS = ("BIAS", "DARK", "SKYFLAT")


class SessionError(InputError):
    """A session that cannot be processed: the file or folder at fault, and the reason."""


@dataclass(frozen=True)
class Session:
    """The files of one observation session."""

    directory: Path
    instrument: str
    band: str
    obs_id: str
    raw: Path
    masters: dict[str, Path]  # BIAS, DARK, SKYFLAT and (optional) BPM
    e91: tuple[Path, ...]
    references: dict[str, Path] = field(default_factory=dict)  # os, calib, mean, mask
    metadata: dict[str, Path] = field(default_factory=dict)  # info, calib JSON

    @property
    def key(self) -> str:
        """The session's group path in the store: ``<instrument>_<band>/<obs_id>``."""
        return f"{self.instrument}_{self.band}/{self.obs_id}"

    @property
    def inputs(self) -> list[Path]:
        """Every input file, for provenance."""
        return [self.raw, *self.masters.values(), *self.e91, *self.references.values(), *self.metadata.values()]


def _is_fits(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(FITS_SUFFIXES)


def _one(paths: list[Path], what: str, directory: Path) -> Path | None:
    if len(paths) > 1:
        raise SessionError(directory, f"{len(paths)} candidates for {what}: {', '.join(p.name for p in paths)}")
    return paths[0] if paths else None


def load_session(directory: Path) -> Session:
    """Describe the session in ``directory``; raise :class:`SessionError` when it is unusable."""
    directory = Path(directory)
    group = directory.parent.name
    if "_" not in group:
        raise SessionError(directory, f"parent folder {group!r} is not '<instrument>_<band>'")
    instrument, band = group.rsplit("_", 1)
    obs_id = directory.name
    data = directory / "data"
    raw = _one(sorted(p for p in data.glob(f"{obs_id}_raw.*") if _is_fits(p)), "the raw frame", directory)
    if raw is None:
        raise SessionError(directory, f"no raw frame (expected data/{obs_id}_raw.fits.fz)")
    masters = {}
    for kind in MASTERS:
        found = _one(
            sorted(p for p in (directory / "calib").glob(f"{kind}_*") if _is_fits(p)), f"the {kind} master", directory
        )
        if found is not None:
            masters[kind] = found
        elif kind in REQUIRED_MASTERS:
            raise SessionError(directory, f"missing calibration: no calib/{kind}_*.fits.fz")
    references = {}
    for product in REFERENCE_PRODUCTS:
        found = _one(sorted(p for p in data.glob(f"{obs_id}_{product}.*") if _is_fits(p)), f"data/{product}", directory)
        if found is not None:
            references[product] = found
    metadata = {}
    for name in ("info", "calib"):
        path = directory / f"{name}.json"
        if path.is_file():
            try:
                json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise SessionError(path, f"invalid JSON ({err})") from None
            metadata[name] = path
    e91 = tuple(sorted(p for p in (directory / "e91").glob("*") if _is_fits(p)))
    return Session(directory, instrument, band, obs_id, raw, masters, e91, references, metadata)


def find_sessions(root: Path | str, pattern: str | None = None) -> tuple[list[Session], list[tuple[Path, str]]]:
    """All session directories under ``root`` matching ``pattern`` (a glob on the session key).

    Returns the usable sessions and, for the unusable ones, ``(directory, reason)``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"input archive {root} is not a directory")
    sessions, problems = [], []
    for directory in sorted(p for p in root.glob("*_*/*") if p.is_dir()):
        key = f"{directory.parent.name}/{directory.name}"
        if pattern and not fnmatch.fnmatch(key, pattern):
            continue
        if not (directory / "data").is_dir() and not (directory / "calib").is_dir():
            continue
        try:
            sessions.append(load_session(directory))
        except SessionError as err:
            problems.append((directory, str(err)))
    return sessions, problems
