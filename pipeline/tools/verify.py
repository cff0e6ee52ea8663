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
from ..io.index import index
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


def verify(store: Path | ObjectPath | str) -> dict[str, list[str]]:
    """Problems per session key: complete sessions checked, session groups not indexed complete reported."""
    store = location(store)
    if not (store / "zarr.json").exists():
        return {str(store): ["not a Zarr v3 store"]}
    records = index(store)
    result = {key: check_session(store, key, record) for key, record in records.items() if record.get("complete")}
    root = zarr.open_group(zarr_store(store), mode="r", zarr_format=3)
    for inst in root.group_keys():
        for obs in root[inst].group_keys():
            key = f"{inst}/{obs}"
            if not records.get(key, {}).get("complete"):
                result[key] = ["incomplete (not marked complete in the index; the next run rewrites it)"]
    return dict(sorted(result.items()))
