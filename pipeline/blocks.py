"""Dask block plumbing shared by the graph modules: dict-valued blocks split into arrays, and a
task's view of an array's row blocks that keeps the session graph's keys (nothing runs twice)."""

from __future__ import annotations

import dask.array as da
import numpy as np
from dask.delayed import Delayed

RowBlocks = tuple[list[Delayed], int, slice]  # a ``row_blocks`` triple


def split(packed: da.Array, dtypes: dict[str, type[np.generic]], base: str) -> dict[str, da.Array]:
    """Arrays of the named entries of a blockwise dict-valued array, named ``<name>-<base>``
    (each block of ``packed`` computed once)."""
    return {
        name: da.map_blocks(_getitem, packed, name, dtype=dtype, meta=np.empty((0,) * packed.ndim, dtype),
                            name=f"{name}-{base}")
        for name, dtype in dtypes.items()
    }  # fmt: skip


def _getitem(block: dict[str, np.ndarray], key: str) -> np.ndarray:
    return block[key]


def row_blocks(array: da.Array, rows: slice) -> RowBlocks:
    """The Delayed full-width row blocks of ``array`` holding ``rows``, their first row and ``rows``.

    The blocks keep the keys of the session graph: a task taking them shares the graph's
    computation (a Dask array passed to ``dask.delayed`` would be optimised into a renamed copy
    and everything upstream of it computed again)."""
    starts = np.concatenate([[0], np.cumsum(array.chunks[0])])
    first = int(np.searchsorted(starts, rows.start, side="right")) - 1
    last = int(np.searchsorted(starts, rows.stop, side="left"))
    return list(array.to_delayed(optimize_graph=False).ravel()[first:last]), int(starts[first]), rows


def rows_of(blocks_start_rows: RowBlocks) -> np.ndarray:
    """The rows of a ``row_blocks`` triple, computed."""
    blocks, start, rows = blocks_start_rows
    return np.concatenate(blocks)[rows.start - start : rows.stop - start]
