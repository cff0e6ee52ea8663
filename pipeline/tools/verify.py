"""``skyprep verify``: is every indexed session complete, as the contract says, and unchanged since written?

Checksums: when an array of a session has been written, a task hashes its files (its
``zarr.json`` and every chunk file, in key order) with SHA-256; the digests are stored in the
session attribute ``array_sha256``. ``verify`` recomputes them from the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

from ..io.contract import CONTRACT, Presence, named
from ..io.index import index, is_complete
from ..io.lock import StoreError
from ..io.objects import ObjectPath, location, zarr_store
from ..io.store import array_files_sha256


def array_sha256(store: Path | ObjectPath | str, key: str) -> dict[str, str]:
    """SHA-256 of each contract array of session ``key`` (``store.array_files_sha256``), read
    through the store (files, or objects of an object store)."""
    group_dir = location(store) / key
    if isinstance(group_dir, ObjectPath):
        names = sorted(
            {
                name.split("/")[0]
                for name, _ in group_dir.files()
                if name.count("/") == 1 and name.endswith("/zarr.json")
            }
        )
    else:
        names = sorted(p.name for p in group_dir.iterdir() if (p / "zarr.json").is_file())
    return {name: array_files_sha256(group_dir / name) for name in names if name in CONTRACT}


def _shape_problems(name: str, array: zarr.Array, record: dict, realizations: int) -> list[str]:
    dims, dtype = CONTRACT[name].dims, CONTRACT[name].dtype
    problems = []
    found_dims = tuple(array.metadata.dimension_names or ())
    if found_dims != dims:
        problems.append(f"{name}: dimensions {found_dims}, expected {dims}")
    if array.dtype != np.dtype(dtype):
        problems.append(f"{name}: dtype {array.dtype}, expected {np.dtype(dtype)}")
    expected = {"y": record["shape"][0], "x": record["shape"][1], "frame": record.get("n_frames", 0), "axis": 2,
                "realization": realizations}  # fmt: skip
    want = tuple(expected[d] for d in dims)
    if tuple(array.shape) != want:
        problems.append(f"{name}: shape {tuple(array.shape)}, expected {want}")
    return problems


def check_session(store: Path | ObjectPath | str, key: str, record: dict) -> list[str]:
    """What is wrong with the complete session ``key`` (empty when nothing is)."""
    try:
        group = zarr.open_group(zarr_store(store), path=key, mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return ["indexed complete but its group is missing"]
    names = set(group.array_keys())
    required = named(Presence.ALWAYS) + (named(Presence.E91) if record.get("n_frames", 0) else ())
    problems = [f"{name}: missing" for name in required if name not in names]
    syn = group.attrs.get("syn")
    if syn is None and "syn" in names:
        problems.append("syn: written but not recorded (interrupted `skyprep synthesize`: run it again)")
    elif syn is not None and syn.get("realizations") and "syn" not in names:
        problems.append("syn: missing")
    realizations = int(syn["realizations"]) if syn else 0
    for name in sorted(names & set(CONTRACT)):
        problems += _shape_problems(name, group[name], record, realizations)
    recorded = group.attrs.get("array_sha256")
    if not recorded:
        return problems + ["no recorded checksums (array_sha256)"]
    actual = array_sha256(store, key)
    for name, digest in sorted(recorded.items()):
        if name not in actual:
            problems.append(f"{name}: recorded in array_sha256 but missing")
        elif actual[name] != digest:
            problems.append(f"{name}: checksum mismatch (files changed since written)")
    return problems


INCOMPLETE = "incomplete (not marked complete in the index; the next run rewrites it)"


def verify(store: Path | ObjectPath | str) -> dict[str, list[str]]:
    """Problems per session key: complete sessions checked, session groups in the store not indexed
    complete reported; problems of the store itself (its index, the consolidated metadata) under
    the store's own name."""
    store = location(store)
    try:
        records = index(store)
    except StoreError as err:
        return {str(store): [str(err)]}
    if not (store / "zarr.json").exists():
        return {str(store): ["not a Zarr v3 store"]}
    result = {key: check_session(store, key, record) for key, record in records.items() if is_complete(record)}
    for key, record in records.items():
        if not is_complete(record) and record.get("complete") not in (False, None):
            result[key] = [f"its index record says complete = {record['complete']!r} (not true): {INCOMPLETE}"]
    for key in _stored_groups(store):
        if key not in result:
            result[key] = [INCOMPLETE]
    listed = consolidated_sessions(store)
    complete = {key for key, record in records.items() if is_complete(record)}
    store_problems = [f"consolidated metadata lists {key}, which the index does not mark complete"
                      for key in sorted(listed - complete)]  # fmt: skip
    store_problems += [f"consolidated metadata hides {key}, which the index marks complete"
                       for key in sorted(complete - listed)]  # fmt: skip
    if store_problems:
        result[str(store)] = store_problems
    return dict(sorted(result.items()))


def _stored_groups(store: Path | ObjectPath) -> list[str]:
    """Session groups in the store, ``<instrument>_<band>/<obs_id>`` (listed from the folders or
    prefixes, not through the consolidated metadata, which may hide them)."""
    return sorted(f"{inst}/{obs}" for inst in _listing(store) for obs in _listing(store / inst)
                  if _node_type(store / inst / obs / "zarr.json") == "group")  # fmt: skip


def _listing(where: Path | ObjectPath) -> list[str]:
    if isinstance(where, ObjectPath):
        return where.names()
    return sorted(p.name for p in where.iterdir()) if where.is_dir() else []


def _node_type(path: Path | ObjectPath) -> str:
    try:
        return json.loads(path.read_text()).get("node_type", "")
    except (OSError, ValueError, AttributeError):
        return ""


def consolidated_sessions(store: Path | ObjectPath) -> set[str]:
    """The session groups the root's consolidated metadata lists (what ``xarray.open_datatree`` shows)."""
    try:
        root = json.loads((store / "zarr.json").read_text())
        entries = (root.get("consolidated_metadata") or {}).get("metadata", {})
    except (OSError, ValueError, AttributeError):
        return set()
    return {path for path, entry in entries.items() if path.count("/") == 1 and entry.get("node_type") == "group"}


def repair_commands(store: Path | ObjectPath | str, problems: dict[str, list[str]]) -> list[str]:
    """Commands that would fix what :func:`verify` found: rewrite damaged complete sessions
    (``--redo``), finish incomplete ones, rebuild the consolidated metadata from the index."""
    commands, store = [], location(store)
    for key, found in problems.items():
        if not found or key == str(store):
            continue
        archive = _archive_of(store, key)
        option = "--sessions" if all(INCOMPLETE in p for p in found) else "--redo"
        commands.append(f"skyprep run {archive} --out {store} {option} '{key}'")
    if any(p.startswith("consolidated metadata") for p in problems.get(str(store), [])):
        commands.append(f"python -c \"from pipeline.io.index import consolidate; consolidate('{store}')\"")
    elif problems.get(str(store)):
        commands.append(f"# {store}: the store itself cannot be used; restore its zarr.json or write a new store")
    return commands


def _archive_of(store: Path | ObjectPath, key: str) -> str:
    """The archive a session was read from (its recorded raw frame's folder, four levels up), or
    ``ARCHIVE`` when the session records none."""
    try:
        attrs = json.loads((store / key / "zarr.json").read_text()).get("attributes", {})
        raw = Path(attrs["inputs"][0]["path"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return "ARCHIVE"
    return str(raw.parents[3])
