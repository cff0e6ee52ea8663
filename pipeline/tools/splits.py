"""Reproducible train/test splits of a store's sessions (pure functions; the store records them).

A split is ``{session key: 'train' | 'test'}``. ``assign`` draws one from a seed: the sessions are
grouped (``by``: each session alone, or all sessions of one instrument, or of one band, stay
together), the sorted groups are permuted by ``numpy.random.default_rng(seed)`` and the first
``round(test_fraction * n_groups)`` groups go to test (at least one group on each side when the
fraction is strictly between 0 and 1). ``from_json`` reads the researchers' ``train_test_split.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BY = ("session", "instrument", "band")


def group_of(key: str, record: dict, by: str) -> str:
    """The group a session belongs to: its key, its instrument or its band."""
    if by == "session":
        return key
    if by in ("instrument", "band"):
        return str(record.get(by))
    raise ValueError(f"split by {by!r}: expected one of {BY}")


def assign(records: dict[str, dict], test_fraction: float, seed: int, by: str = "session") -> dict[str, str]:
    """``{key: 'train' | 'test'}`` for every session in ``records`` (an index), reproducible from ``seed``."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test fraction {test_fraction} is not between 0 and 1")
    groups = sorted({group_of(key, record, by) for key, record in records.items()})
    if not groups:
        raise ValueError("no sessions to split")
    n_test = round(test_fraction * len(groups))
    if 0.0 < test_fraction < 1.0:
        if len(groups) < 2:
            raise ValueError(f"cannot split {len(groups)} group(s) by {by} into train and test")
        n_test = min(max(n_test, 1), len(groups) - 1)
    order = np.random.default_rng(seed).permutation(len(groups))
    test = {groups[i] for i in order[:n_test]}
    return {key: "test" if group_of(key, record, by) in test else "train" for key, record in sorted(records.items())}


def from_json(path: Path | str, records: dict[str, dict]) -> tuple[dict[str, str], list[str]]:
    """The split in a ``{"train": [...], "test": [...]}`` file, and the listed names not in ``records``.

    A name is a session key (``<instrument>_<band>/<obs_id>``) or an ``obs_id``. Every session of
    ``records`` must be listed exactly once.
    """
    try:
        lists = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read a split: {err}") from None
    if not isinstance(lists, dict) or set(lists) != {"train", "test"}:
        raise ValueError(f"{path}: expected an object with exactly the lists 'train' and 'test'")
    by_obs_id = {str(record.get("obs_id")): key for key, record in records.items()}
    assignment, unknown = {}, []
    for side in ("train", "test"):
        for name in lists[side]:
            key = name if name in records else by_obs_id.get(str(name))
            if key is None:
                unknown.append(str(name))
            elif assignment.setdefault(key, side) != side:
                raise ValueError(f"{path}: session {name!r} is listed in both train and test")
    missing = sorted(set(records) - set(assignment))
    if missing:
        raise ValueError(f"{path}: sessions of the store not listed: {', '.join(missing)}")
    return dict(sorted(assignment.items())), unknown


def to_json(assignment: dict[str, str]) -> dict[str, list[str]]:
    """The ``train_test_split.json`` form of a split (session keys)."""
    return {side: sorted(k for k, v in assignment.items() if v == side) for side in ("train", "test")}
