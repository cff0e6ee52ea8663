"""Training patches from the store: a map-style dataset, NumPy first, PyTorch when installed.

``PatchDataset(store, LoaderParams(...))[i]`` is a dict of NumPy arrays for one patch:

- ``input``, ``target``: float32 ``(1, P, P)``, the chosen variables (``os``, ``calib``, ``mean``,
  ``e91[k]`` for frame k, ... any pair of image variables), optionally normalised;
- ``mask``: int32 ``(1, P, P)``, the session's ``mask`` OR-ed with ``e91_mask[k]`` of every
  ``e91[k]`` involved (bits of ``pipeline.steps.masks.Flag``);
- ``variance``: float32 ``(1, P, P)``, the variance of ``calib`` in ADU^2, never normalised
  (only when ``with_variance`` and the store holds it);
- ``index``: int64 ``(3,)``, the session's position in ``dataset.sessions`` and the patch
  origin ``(y, x)`` in pixels: ``input == store[session][var][y:y+P, x:x+P]``.

Patches are deterministic: patch ``i`` depends only on ``(seed, epoch, i)``, never on the worker
that draws it. The store is opened lazily in the process that reads (so each DataLoader worker
opens its own: BRIEF section 5 on forked workers), and only the root index is read up front.

Normalisation ``asinh``: ``v -> asinh(v / asinh_scale_adu)``, linear (``v / scale``) for
``|v|`` below the scale (about the sky noise, a few ADU to tens of ADU) and logarithmic above
it, so bright stars do not dominate the loss. NaN (no data) becomes 0 and is flagged in ``mask``.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ..io.contract import Presence, named
from ..io.index import index, splits
from ..io.objects import location, zarr_store
from ..steps.masks import Flag

_VARIABLE = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*)(\[(?P<frame>\d+)\])?$")
MODES = ("random", "tiled")
NORMALISATIONS = (None, "asinh")


@dataclass(frozen=True)
class LoaderParams:
    """What a patch is. ``input``/``target``: ``name`` or ``name[k]`` (frame k of a cube).

    ``split``: ``train``, ``test`` or None for every complete session. ``mode``: ``random``
    draws ``patches_per_epoch`` patches (session chosen with probability proportional to its
    area); ``tiled`` covers every frame with ``patch_px`` tiles (the last row/column of tiles is
    moved inside the frame). ``asinh_scale_adu``: the ``asinh`` normalisation's linear scale.
    ``cache_mb``: per-process budget for decoded whole frames (least recently used are dropped;
    0 reads every patch from the store). A frame is decoded once and then sliced, which is what
    makes random patches fast (see ``benchmarks/README.md``); set it below the worker's memory.
    """

    input: str = "os"
    target: str = "calib"
    patch_px: int = 256
    split: str | None = None
    mode: str = "random"
    patches_per_epoch: int = 1024
    seed: int = 0
    normalise: str | None = None
    asinh_scale_adu: float = 10.0
    with_variance: bool = True
    cache_mb: int = 2048

    def __post_init__(self):
        for spec in (self.input, self.target):
            if not _VARIABLE.match(spec):
                raise ValueError(f"variable {spec!r}: expected 'name' or 'name[frame]', e.g. 'e91[3]'")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {MODES}")
        if self.normalise not in NORMALISATIONS:
            raise ValueError(f"normalise {self.normalise!r}: expected one of {NORMALISATIONS}")
        if self.split not in (None, "train", "test"):
            raise ValueError(f"split {self.split!r}: expected 'train', 'test' or None")
        if self.patch_px <= 0 or self.patches_per_epoch <= 0 or self.asinh_scale_adu <= 0 or self.cache_mb < 0:
            raise ValueError("patch_px, patches_per_epoch, asinh_scale_adu must be positive, cache_mb >= 0")


def parse_variable(spec: str) -> tuple[str, int | None]:
    """``'e91[3]' -> ('e91', 3)``, ``'calib' -> ('calib', None)``."""
    match = _VARIABLE.match(spec)
    if match is None:
        raise ValueError(f"variable {spec!r}: expected 'name' or 'name[frame]'")
    frame = match["frame"]
    return match["name"], None if frame is None else int(frame)


# Variables that only sessions with e91 frames hold (the store contract).
STACK_VARIABLES = named(Presence.E91)


def _needs_frames(spec: str) -> int:
    """The e91 frames a session needs to hold ``spec`` (0 for ``os``, ``calib``, ...)."""
    name, frame = parse_variable(spec)
    if frame is not None:
        return frame + 1
    return 1 if name in STACK_VARIABLES else 0


def select_sessions(store: Path | str, params: LoaderParams) -> list[str]:
    """Complete sessions of the requested split that hold both variables, sorted (index only)."""
    records = index(store)
    assignment = splits(store)
    if params.split is not None and not assignment:
        raise ValueError(f"{store}: no split recorded (run `skyprep split {store} ...` first)")
    chosen = []
    for key, record in sorted(records.items()):
        if not record.get("complete"):
            continue
        if params.split is not None and assignment.get(key) != params.split:
            continue
        frames = max(_needs_frames(params.input), _needs_frames(params.target))
        if record.get("n_frames", 0) < frames:
            continue
        height, width = record["shape"]
        if min(height, width) < params.patch_px:
            raise ValueError(f"{store}/{key}: frame {height}x{width} is smaller than patch_px={params.patch_px}")
        chosen.append(key)
    return chosen


def tile_origins(height_px: int, width_px: int, patch_px: int) -> list[tuple[int, int]]:
    """Origins of ``patch_px`` tiles covering a frame; the last tile of a row/column ends at its edge."""

    def starts(n):
        return sorted({min(s, n - patch_px) for s in range(0, n, patch_px)})

    return [(y, x) for y in starts(height_px) for x in starts(width_px)]


def asinh_normalise(values, scale_adu: float):
    """``asinh(v / scale_adu)`` (dimensionless), NaN as 0."""
    return np.nan_to_num(np.arcsinh(values / np.float32(scale_adu)), nan=0.0).astype(np.float32)


class PatchDataset:
    """Map-style dataset of patches (see the module docstring); ``len`` and ``[i]`` only."""

    def __init__(self, store: Path | str, params: LoaderParams = LoaderParams()):
        self.store = location(store)  # a local path or an object-store prefix (pickles to DataLoader workers)
        self.params = params
        self.sessions = select_sessions(store, params)
        if not self.sessions:
            raise ValueError(f"{store}: no complete session holds {params.input} and {params.target}"
                             f" in split {params.split}")  # fmt: skip
        records = index(store)
        self.shapes = [tuple(records[key]["shape"]) for key in self.sessions]
        self.epoch = 0
        areas = np.array([h * w for h, w in self.shapes], dtype=float)
        self._cumulative_area = np.cumsum(areas) / areas.sum()
        self._tiles = None
        if params.mode == "tiled":
            self._tiles = [
                (s, y, x) for s, (h, w) in enumerate(self.shapes) for y, x in tile_origins(h, w, params.patch_px)
            ]
        self._root, self._pid, self._arrays, self._cache = None, None, {}, OrderedDict()

    def __len__(self) -> int:
        return len(self._tiles) if self._tiles is not None else self.params.patches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Draw a different (still deterministic) set of random patches for ``epoch``."""
        self.epoch = int(epoch)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_root=None, _pid=None, _arrays={}, _cache=OrderedDict())
        return state

    def origin(self, i: int) -> tuple[int, int, int]:
        """``(session position, y, x)`` of patch ``i``; a function of ``(seed, epoch, i)`` only."""
        if not 0 <= i < len(self):
            raise IndexError(f"patch {i} out of range 0..{len(self) - 1}")
        if self._tiles is not None:
            return self._tiles[i]
        p = self.params.patch_px
        rng = np.random.default_rng([self.params.seed, self.epoch, i])
        s = int(np.searchsorted(self._cumulative_area, rng.random(), side="right"))
        h, w = self.shapes[s]
        return s, int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))

    def _array(self, session: str, name: str) -> zarr.Array | None:
        """The session's array ``name`` (None if absent), opened once per process."""
        if self._pid != os.getpid():
            self._root, self._pid, self._arrays, self._cache = None, os.getpid(), {}, OrderedDict()
        if (session, name) not in self._arrays:
            if self._root is None:
                self._root = zarr.open_group(zarr_store(self.store), mode="r", zarr_format=3)
            group = self._root[session]
            self._arrays[(session, name)] = group[name] if name in group else None
        return self._arrays[(session, name)]

    def _frame(self, session: str, name: str, frame: int | None) -> np.ndarray:
        """The whole decoded frame, from the per-process LRU cache (``cache_mb``)."""
        key = (session, name, frame)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        array = self._array(session, name)
        values = np.asarray(array[...] if frame is None else array[frame])
        self._cache[key] = values
        budget = self.params.cache_mb * 2**20
        while len(self._cache) > 1 and sum(v.nbytes for v in self._cache.values()) > budget:
            self._cache.popitem(last=False)
        return values

    def _read(self, session: str, spec: str, y: int, x: int) -> np.ndarray:
        name, frame = parse_variable(spec)
        if self._array(session, name) is None:
            raise KeyError(f"{self.store}/{session}: no variable {name!r}")
        p = self.params.patch_px
        window = (slice(y, y + p), slice(x, x + p))
        if self.params.cache_mb:
            return self._frame(session, name, frame)[window].copy()
        return np.asarray(self._array(session, name)[window if frame is None else (frame, *window)])

    def _mask(self, session: str, y: int, x: int) -> np.ndarray:
        mask = self._read(session, "mask", y, x).astype(np.int32)
        for spec in {self.params.input, self.params.target}:
            name, frame = parse_variable(spec)
            if frame is not None:
                mask |= self._read(session, f"{name}_mask[{frame}]", y, x).astype(np.int32)
        return mask

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        s, y, x = self.origin(int(i))
        session = self.sessions[s]
        data = {"input": self._read(session, self.params.input, y, x),
                "target": self._read(session, self.params.target, y, x)}  # fmt: skip
        mask = self._mask(session, y, x)
        for name, values in data.items():
            mask |= np.where(np.isfinite(values), 0, int(Flag.NO_DATA)).astype(np.int32)
            if self.params.normalise == "asinh":
                data[name] = asinh_normalise(values, self.params.asinh_scale_adu)
            else:
                data[name] = values.astype(np.float32)
        sample = {name: values[None] for name, values in data.items()}
        sample["mask"] = mask[None]
        if self.params.with_variance and self._array(session, "variance") is not None:
            sample["variance"] = self._read(session, "variance", y, x).astype(np.float32)[None]
        sample["index"] = np.array([s, y, x], dtype=np.int64)
        return sample


def torch_dataset(store: Path | str, params: LoaderParams = LoaderParams()):
    """The same dataset as a ``torch.utils.data.Dataset`` of tensors (PyTorch must be installed)."""
    return _torch_class()(store, params)


def _torch_class():
    """``TorchPatchDataset``, defined on first use so that NumPy users never import torch."""
    global TorchPatchDataset
    if "TorchPatchDataset" in globals():
        return TorchPatchDataset
    import torch
    from torch.utils.data import Dataset

    class TorchPatchDataset(PatchDataset, Dataset):
        """``PatchDataset`` whose samples are tensors, for ``torch.utils.data.DataLoader``."""

        def __getitem__(self, i):
            return {name: torch.from_numpy(values) for name, values in super().__getitem__(i).items()}

    TorchPatchDataset.__qualname__ = "TorchPatchDataset"
    return TorchPatchDataset


def __getattr__(name):
    """Resolve ``TorchPatchDataset`` lazily (so spawned DataLoader workers can unpickle it)."""
    if name == "TorchPatchDataset":
        return _torch_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
