"""``skyprep verify``: is every indexed session complete, as the contract says, and unchanged since written?

Checksums: when an array of a session has been written, a task hashes its files (its
``zarr.json`` and every chunk file, in key order) with SHA-256; the digests are stored in the
session attribute ``array_sha256``. ``verify`` recomputes them from the files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from ..io.contract import CONTRACT, Presence, named
from ..io.index import index, is_complete, members, names, node_document
from ..io.lock import StoreError
from ..io.objects import ObjectPath, location, zarr_store
from ..io.store import array_files_sha256
from ..steps.synthesize import DRAW_VERSION


def array_sha256(store: Path | ObjectPath | str, key: str) -> dict[str, str]:
    """SHA-256 of each contract array of session ``key`` (``store.array_files_sha256``), read
    through the store (files, or objects of an object store)."""
    group_dir = location(store) / key
    return {name: array_files_sha256(group_dir / name) for name in members(group_dir) if name in CONTRACT}


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
    if realizations and syn.get("draw_version") != DRAW_VERSION:
        problems.append(stale_draw(store, key, syn))
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
STALE_DRAW = "syn: drawn by an older generator"


def stale_draw(store: Path | ObjectPath | str, key: str, syn: dict) -> str:
    """The problem of a session whose ``syn`` record names another draw version than this code's
    ``DRAW_VERSION`` (stored realizations that this code would not draw; on-the-fly draws differ
    from them), with the command that redraws it."""
    return (f"{STALE_DRAW} (draw version {syn.get('draw_version')}, this code draws version {DRAW_VERSION}): rerun "
            f"`{synthesize_command(store, key, syn)}`")  # fmt: skip


def synthesize_command(store: Path | ObjectPath | str, key: str, syn: dict) -> str:
    """``skyprep synthesize`` for session ``key`` with its recorded realizations and seed."""
    return (f"skyprep synthesize {location(store)} --sessions '{key}' --realizations {int(syn['realizations'])}"
            f" --seed {int(syn.get('seed', 0))}")  # fmt: skip


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
    complete = {key for key, record in records.items() if is_complete(record)}
    result = {key: check_session(store, key, records[key]) for key in sorted(complete)}
    for key, record in records.items():
        if key not in complete and record.get("complete") not in (False, None):
            result[key] = [f"its index record says complete = {record['complete']!r} (not true): {INCOMPLETE}"]
    for key in _stored_groups(store):
        if key not in result:
            result[key] = [INCOMPLETE]
    listed = consolidated_sessions(store)
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
    return sorted(f"{inst}/{obs}" for inst in names(store) for obs in names(store / inst)
                  if node_document(store / inst / obs / "zarr.json").get("node_type") == "group")  # fmt: skip


def consolidated_sessions(store: Path | ObjectPath) -> set[str]:
    """The session groups the root's consolidated metadata lists (what ``xarray.open_datatree`` shows)."""
    entries = (node_document(store / "zarr.json").get("consolidated_metadata") or {}).get("metadata", {})
    return {path for path, entry in entries.items() if path.count("/") == 1 and entry.get("node_type") == "group"}


def repair_commands(store: Path | ObjectPath | str, problems: dict[str, list[str]]) -> list[str]:
    """Commands that would fix what :func:`verify` found: rewrite damaged complete sessions
    (``--redo``), finish incomplete ones, rebuild the consolidated metadata from the index."""
    commands, store = [], location(store)
    for key, found in problems.items():
        if not found or key == str(store):
            continue
        if all(p.startswith(STALE_DRAW) for p in found):
            syn = node_document(store / key / "zarr.json")["attributes"]["syn"]
            commands.append(synthesize_command(store, key, syn))
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
        raw = Path(node_document(store / key / "zarr.json")["attributes"]["inputs"][0]["path"])
    except (KeyError, IndexError, TypeError):
        return "ARCHIVE"
    return str(raw.parents[3])
