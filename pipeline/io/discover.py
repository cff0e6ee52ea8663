"""Finding observation sessions in an archive laid out as ``<instrument>_<band>/<obs_id>/``.

The archive is a folder or an object-store prefix (``objects.location``). A session folder is
seen as the files under it by their relative names (``data/X_raw.fits.fz``): a directory walk
on a filesystem, one listing of the whole archive in an object store.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .objects import ObjectPath, location

FITS_SUFFIXES = (".fits", ".fits.fz", ".fit", ".fts", ".fits.gz")
REFERENCE_PRODUCTS = ("os", "calib", "mean", "mask")
MASTERS = ("BIAS", "DARK", "SKYFLAT", "BPM")
REQUIRED_MASTERS = ("BIAS", "DARK", "SKYFLAT")

Where = Path | ObjectPath


class SessionError(InputError):
    """A session that cannot be processed: the file or folder at fault, and the reason."""


@dataclass(frozen=True)
class Session:
    """The files of one observation session (local paths, or objects of an object store)."""

    directory: Where
    instrument: str
    band: str
    obs_id: str
    raw: Where
    masters: dict[str, Where]  # BIAS, DARK, SKYFLAT and (optional) BPM
    e91: tuple[Where, ...]
    references: dict[str, Where] = field(default_factory=dict)  # os, calib, mean, mask
    metadata: dict[str, Where] = field(default_factory=dict)  # info, calib JSON

    @property
    def key(self) -> str:
        """The session's group path in the store: ``<instrument>_<band>/<obs_id>``."""
        return f"{self.instrument}_{self.band}/{self.obs_id}"

    @property
    def inputs(self) -> list[Where]:
        """Every input file, for provenance."""
        return [self.raw, *self.masters.values(), *self.e91, *self.references.values(), *self.metadata.values()]


def _files(directory: Where) -> dict[str, Where]:
    """The files under a session folder by their names relative to it (``data/X_raw.fits.fz``);
    raise :class:`SessionError` when a folder in it cannot be listed (a silent empty listing would
    make a session without its frames look complete)."""
    if isinstance(directory, ObjectPath):
        return {name: directory / name for name, _ in directory.files()}

    def refuse(err: OSError) -> None:
        raise SessionError(Path(err.filename), f"cannot list the folder ({err.strerror or err})")

    found = {}
    for folder, _, names in os.walk(directory, onerror=refuse):
        for name in names:
            path = Path(folder) / name
            found[path.relative_to(directory).as_posix()] = path
    return found


def _matching(files: dict[str, Where], folder: str, pattern: str, fits: bool = True) -> list[Where]:
    """The files directly in ``folder`` (relative; "" for the session folder) whose name matches
    ``pattern``, FITS files only unless ``fits`` is false, in name order."""
    found = []
    for name, path in sorted(files.items()):
        parent, base = posixpath.split(name)
        if (
            parent == folder
            and fnmatch.fnmatchcase(base, pattern)
            and (not fits or base.lower().endswith(FITS_SUFFIXES))
        ):
            found.append(path)
    return found


def _one(paths: list[Where], what: str, directory: Where) -> Where | None:
    if len(paths) > 1:
        raise SessionError(directory, f"{len(paths)} candidates for {what}: {', '.join(p.name for p in paths)}")
    return paths[0] if paths else None


def load_session(directory: Where | str, files: dict[str, Where] | None = None) -> Session:
    """Describe the session in ``directory`` (``files``: its files by relative name, when already
    listed); raise :class:`SessionError` when it is unusable."""
    directory = location(directory)
    files = _files(directory) if files is None else files
    group = directory.parent.name
    if "_" not in group:
        raise SessionError(directory, f"parent folder {group!r} is not '<instrument>_<band>'")
    instrument, band = group.rsplit("_", 1)
    obs_id = directory.name
    raw = _one(_matching(files, "data", f"{obs_id}_raw.*"), "the raw frame", directory)
    if raw is None:
        raise SessionError(directory, f"no raw frame (expected data/{obs_id}_raw.fits.fz)")
    masters = {}
    for kind in MASTERS:
        found = _one(_matching(files, "calib", f"{kind}_*"), f"the {kind} master", directory)
        if found is not None:
            masters[kind] = found
        elif kind in REQUIRED_MASTERS:
            raise SessionError(directory, f"missing calibration: no calib/{kind}_*.fits.fz")
    references = {}
    for product in REFERENCE_PRODUCTS:
        found = _one(_matching(files, "data", f"{obs_id}_{product}.*"), f"data/{product}", directory)
        if found is not None:
            references[product] = found
    metadata = {}
    for name in ("info", "calib"):
        path = files.get(f"{name}.json")
        if path is not None:
            try:
                json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise SessionError(path, f"invalid JSON ({err})") from None
            except OSError as err:
                raise SessionError(path, f"cannot read ({err.strerror or err})") from None
            metadata[name] = path
    e91 = tuple(_matching(files, "e91", "*"))
    return Session(directory, instrument, band, obs_id, raw, masters, e91, references, metadata)


def _session_folders(root: Where) -> dict[str, tuple[Where, dict[str, Where] | None]]:
    """``{'<group>/<obs_id>': (folder, its files or None)}`` for the ``*_*/*`` folders under ``root``
    that hold a ``data`` or ``calib`` folder."""
    if isinstance(root, Path):
        return {f"{d.parent.name}/{d.name}": (d, None) for d in sorted(p for p in root.glob("*_*/*") if p.is_dir())
                if (d / "data").is_dir() or (d / "calib").is_dir()}  # fmt: skip
    folders: dict[str, dict[str, Where]] = {}
    for name, _ in root.files():
        parts = name.split("/")
        if len(parts) >= 3 and "_" in parts[0]:
            folders.setdefault(f"{parts[0]}/{parts[1]}", {})["/".join(parts[2:])] = root / name
    return {key: (root / key, files) for key, files in sorted(folders.items())
            if any(n.startswith(("data/", "calib/")) for n in files)}  # fmt: skip


def find_sessions(root: Where | str, pattern: str | None = None) -> tuple[list[Session], list[tuple[Where, str]]]:
    """All session folders under ``root`` matching ``pattern`` (a glob on the session key).

    Returns the usable sessions and, for the unusable ones, ``(folder, reason)``.
    """
    root = location(root)
    if isinstance(root, Path) and not root.is_dir():
        raise FileNotFoundError(f"input archive {root} is not a directory")
    folders = _session_folders(root)
    if isinstance(root, ObjectPath) and not folders and not root.exists():
        raise FileNotFoundError(f"input archive {root}: no objects under this prefix")
    sessions, problems = [], []
    for key, (directory, files) in folders.items():
        if pattern and not fnmatch.fnmatch(key, pattern):
            continue
        try:
            sessions.append(load_session(directory, files))
        except SessionError as err:
            problems.append((directory, str(err)))
    return sessions, problems
