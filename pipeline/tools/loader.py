"""Training patches from the store: a map-style dataset, NumPy first, PyTorch when installed.

``PatchDataset(store, LoaderParams(...))[i]`` is a dict of NumPy arrays for one patch:

- ``input``, ``target``: float32 ``(1, P, P)``, the chosen variables (``os``, ``calib``, ``mean``,
  ``e91[k]`` for frame k, ... any pair of image variables), optionally normalised;
- ``mask``: int32 ``(1, P, P)``, the session's ``mask`` OR-ed with ``e91_mask[k]`` of every
  ``e91[k]`` involved, and ``no_data`` wherever input, target or variance is NaN or inf
  (bits of ``pipeline.steps.masks.Flag``);
- ``variance``: float32 ``(1, P, P)``, the variance of ``calib`` in ADU^2, never normalised
  (when ``with_variance``);
- ``index``: int64 ``(3,)``, the session's position in ``dataset.sessions`` and the patch
  origin ``(y, x)`` in pixels: ``input == store[session][var][y:y+P, x:x+P]``.

NaN and inf never leave the loader: they become 0 (in ADU, and under every normalisation) and
are flagged ``no_data``. Patch ``i`` depends only on ``(seed, epoch, i)``, never on the worker
or the batch that draws it. ``dataset.__getitems__(indices)`` (PyTorch's batched fetching)
reads every window of a batch before assembling it; ``dataset.to_xarray(i)`` is a patch as an
``xarray.Dataset`` with the frame's pixel coordinates.

Windows are read straight from the store, never through a cache of whole frames: an array in
the store's layout (``docs/store-layout.md``: uncompressed chunks) read from the chunk files a
window touches, one ``preadv`` each (``pipeline.io.chunk_files``), any other Zarr v3 array
(compressed cubes, other layouts) through tensorstore. The store is opened lazily in the process
that reads (so each DataLoader worker opens its own: BRIEF section 5 on forked workers), and only
the root index is read up front.

Normalisation ``asinh``: ``v -> asinh(v / asinh_scale_adu)``, linear (``v / scale``) for
``|v|`` below the scale (about the sky noise, a few ADU to tens of ADU) and logarithmic above
it, so bright stars do not dominate the loss.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
import zarr

from .. import DASK_YAML
from ..errors import InputError
from ..io.chunk_files import ChunkFileArray, ChunkFiles, read_windows, readable
from ..io.contract import Presence, named
from ..io.index import index, is_complete, splits
from ..io.objects import ObjectPath, location, zarr_store
from ..steps.masks import Flag
from .syn_patches import SynPatches

_VARIABLE = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*)(\[(?P<frame>\d+)\])?$")
MODES = ("random", "tiled")
NORMALISATIONS = (None, "asinh")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
SYN = "syn"  # served through pipeline.tools.syn_patches: a stored realization or one drawn on the fly
OPEN_ARRAYS = 1024  # per process: (session, variable) handles kept open, least recently used closed


@dataclass(frozen=True)
class LoaderParams:
    """What a patch is. ``input``/``target``: ``name`` or ``name[k]`` (frame k of a cube).

    ``split``: ``train``, ``test`` or None for every complete session. ``mode``: ``random``
    draws ``patches_per_epoch`` patches (session chosen with probability proportional to its
    area, origin uniform: every patch position of the split equally likely); ``tiled`` covers
    every frame with ``patch_px`` tiles (the last row/column of tiles is moved inside the frame).
    ``asinh_scale_adu``: the ``asinh`` normalisation's linear scale.
    ``syn`` (no frame index) serves one of the session's stored realizations, chosen by ``(seed,
    epoch, i)``; with ``synthesize_on_the_fly`` (``input="syn"`` only) a new realization of the
    patch is drawn for ``(seed, epoch, i)`` from the session's ``mean``, masters and noise model
    instead (``pipeline.tools.syn_patches``): unlimited pairs, the same in every worker.
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
    synthesize_on_the_fly: bool = False

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
        if self.synthesize_on_the_fly and self.input != SYN:
            raise ValueError(f"synthesize_on_the_fly draws the input: it needs input={SYN!r}, not {self.input!r}")
        if self.patch_px <= 0 or self.patches_per_epoch <= 0 or self.asinh_scale_adu <= 0:
            raise ValueError("patch_px, patches_per_epoch, asinh_scale_adu must be positive")


def parse_variable(spec: str) -> tuple[str, int | None]:
    """``'e91[3]' -> ('e91', 3)``, ``'calib' -> ('calib', None)``."""
    match = _VARIABLE.match(spec)
    if match is None:
        raise ValueError(f"variable {spec!r}: expected 'name' or 'name[frame]'")
    frame = match["frame"]
    return match["name"], None if frame is None else int(frame)


def _split(spec: str) -> tuple[str, tuple[int, ...]]:
    """``'e91[3]' -> ('e91', (3,))``, ``'calib' -> ('calib', ())``: the array and its leading index."""
    name, frame = parse_variable(spec)
    return name, () if frame is None else (frame,)


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
        if not is_complete(record):
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


def asinh_normalise(values: np.ndarray, scale_adu: float, out: np.ndarray | None = None) -> np.ndarray:
    """``asinh(v / scale_adu)`` (dimensionless, float32) of finite values (the loader zeroes the
    others first); ``out`` may be ``values`` (in place)."""
    scaled = np.multiply(values, np.float32(1.0 / scale_adu), out=out, dtype=np.float32)
    return np.arcsinh(scaled, out=scaled)


def all_finite(values: np.ndarray) -> bool:
    """Whether a C-contiguous float array holds no NaN and no inf. Fast path: the dot product of
    the array with itself is finite (it is NaN or inf when the array holds one, or values beyond
    about 1e19, which the exact check then clears)."""
    flat = values.reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.isfinite(np.dot(flat, flat)) or np.isfinite(flat).all())


def uniform_draws(key: int, counters: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1), one per uint64 counter: SplitMix64 of ``key + counter``.

    A pure function of (key, counter), vectorised, so a batch of patches costs one call.
    """
    with np.errstate(over="ignore"):
        z = np.uint64(key) + counters.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


class _TensorstoreArray:
    """Any other Zarr v3 array (compressed, sharded, older layouts), windows read by tensorstore."""

    def __init__(self, directory: Path, context):
        import tensorstore as ts

        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(directory)}}
        self.store = ts.open(spec, read=True, context=context).result()

    def window(self, lead: tuple[int, ...], y: int, x: int, out: np.ndarray):
        """A future of ``array[*lead, y:y+P, x:x+P]`` (``out`` is P x P), to be copied into ``out``."""
        p_y, p_x = out.shape
        return self.store[(*lead, slice(y, y + p_y), slice(x, x + p_x))].read()


class _ZarrArray:
    """An array in an object store (``s3://``, ``gs://``, ``memory://``...): windows read by
    zarr-python through the store's obstore client, one window at a time (no memory map there)."""

    def __init__(self, array: zarr.Array):
        self.array = array

    def window(self, lead: tuple[int, ...], y: int, x: int, out: np.ndarray) -> None:
        """Copy ``array[*lead, y:y+P, x:x+P]`` into ``out`` (P, P)."""
        p_y, p_x = out.shape
        out[...] = self.array[(*lead, slice(y, y + p_y), slice(x, x + p_x))]


def tune_allocator() -> None:
    """Give this process the allocator settings of skyprep's Dask workers (``pipeline/dask.yaml``).

    Samples are freshly allocated arrays of a few hundred KiB; with glibc's defaults every batch
    freed hands its memory back to the OS and the next one page-faults it in again, which made
    batches of 32 about half as fast as single samples (benchmarks/README.md). glibc only.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    environ = yaml.safe_load(DASK_YAML.read_text())["distributed"]["nanny"]["pre-spawn-environ"]
    libc.mallopt(_M_TRIM_THRESHOLD, int(environ["MALLOC_TRIM_THRESHOLD_"]))
    libc.mallopt(_M_MMAP_THRESHOLD, int(environ["MALLOC_MMAP_THRESHOLD_"]))


class _StoreReader:
    """The store's arrays, opened once per process (least recently used closed beyond ``OPEN_ARRAYS``)."""

    def __init__(self, store: Path | ObjectPath):
        self.store, self.pid = store, os.getpid()
        tune_allocator()
        self.files = ChunkFiles()
        self._arrays, self._context = OrderedDict(), None

    def array(self, session: str, name: str) -> ChunkFileArray | _TensorstoreArray | _ZarrArray:
        key = (session, name)
        if key in self._arrays:
            self._arrays.move_to_end(key)
            return self._arrays[key]
        directory = self.store / session / name
        try:
            array = zarr.open_array(zarr_store(directory), mode="r", zarr_format=3)
        except FileNotFoundError as error:
            raise InputError(directory, f"session {session} has no variable {name!r}") from error
        if isinstance(directory, ObjectPath):
            self._arrays[key] = _ZarrArray(array)
        elif readable(array):
            self._arrays[key] = ChunkFileArray(array, directory, self.files)
        else:
            self._arrays[key] = _TensorstoreArray(directory, self._tensorstore_context())
        if len(self._arrays) > OPEN_ARRAYS:
            self._arrays.popitem(last=False)
        return self._arrays[key]

    def _tensorstore_context(self):
        import tensorstore as ts

        if self._context is None:
            self._context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
        return self._context

    def window(self, session: str, name: str, lead: tuple[int, ...], y: int, x: int, out: np.ndarray):
        """Fill ``out`` (P, P) with ``store[session][name][*lead, y:y+P, x:x+P]`` now, or return the
        future that gives it (tensorstore reads, kept in flight until the batch is assembled)."""
        return self.array(session, name).window(lead, y, x, out)

    def windows(self, sessions: list[str], name: str, lead: tuple[int, ...], yx: np.ndarray, out: np.ndarray):
        """Fill ``out[j]`` (``out`` (B, P, P)) with ``store[sessions[j]][name][*lead, y:y+P, x:x+P]``,
        ``(y, x) = yx[j]`` in pixels: the chunk-file windows in one pass, tensorstore's reads all in
        flight before the first is waited for. Per window: whether it holds no NaN and no inf."""
        arrays = [self.array(session, name) for session in sessions]
        finite = np.ones(len(arrays), bool)
        by_dtype, pending = {}, []
        for j, (array, (y, x)) in enumerate(zip(arrays, yx.tolist())):
            if isinstance(array, ChunkFileArray):
                by_dtype.setdefault(array.dtype, []).append((j, array, lead, y, x))
            else:
                pending.append((j, array.window(lead, y, x, out[j])))
        for windows in by_dtype.values():
            finite[[j for j, *_ in windows]] = read_windows(windows, out)
        for j, future in pending:
            if future is not None:
                out[j] = future.result()
            finite[j] = out.dtype.kind != "f" or all_finite(out[j])
        return finite


class PatchDataset:
    """Map-style dataset of patches (see the module docstring): ``len``, ``[i]``,
    ``__getitems__(indices)`` and ``to_xarray(i)``."""

    def __init__(self, store: Path | str, params: LoaderParams = LoaderParams()):
        self.store = location(store)  # a local path or an object-store prefix (pickles to DataLoader workers)
        self.params = params
        self.sessions = select_sessions(store, params)
        if not self.sessions:
            raise ValueError(f"{store}: no complete session holds {params.input} and {params.target}"
                             f" in split {params.split}")  # fmt: skip
        records = index(store)
        self.shapes = np.array([records[key]["shape"] for key in self.sessions], dtype=np.int64)
        self.epoch = 0
        areas = self.shapes.prod(axis=1).astype(float)
        self._cumulative_area = np.cumsum(areas) / areas.sum()
        self._cumulative_area[-1] = 1.0
        self._tiles = None
        if params.mode == "tiled":
            self._tiles = np.array(
                [(s, y, x) for s, (h, w) in enumerate(self.shapes) for y, x in tile_origins(h, w, params.patch_px)],
                dtype=np.int64,
            )
        self._reader = None
        self._syn = None

    def __len__(self) -> int:
        return len(self._tiles) if self._tiles is not None else self.params.patches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Draw a different (still deterministic) set of random patches for ``epoch``."""
        self.epoch = int(epoch)

    def __getstate__(self):
        return {**self.__dict__, "_reader": None, "_syn": None}

    def origins(self, indices) -> np.ndarray:
        """``(B, 3)`` int64 ``(session position, y, x)`` of patches ``indices``; each row a function
        of ``(seed, epoch, i)`` only."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"patch indices {indices.min()}..{indices.max()} out of range 0..{len(self) - 1}")
        if self._tiles is not None:
            return self._tiles[indices]
        p = self.params.patch_px
        key = int(np.random.SeedSequence([self.params.seed, self.epoch]).generate_state(1, np.uint64)[0])
        u = uniform_draws(key, indices[:, None].astype(np.uint64) * np.uint64(3) + np.arange(3, dtype=np.uint64))
        s = np.minimum(np.searchsorted(self._cumulative_area, u[:, 0], side="right"), len(self.sessions) - 1)
        span = self.shapes[s] - p + 1  # origins y, x uniform in [0, h - p], [0, w - p]
        return np.column_stack([s, (u[:, 1] * span[:, 0]).astype(np.int64), (u[:, 2] * span[:, 1]).astype(np.int64)])

    def origin(self, i: int) -> tuple[int, int, int]:
        """``(session position, y, x)`` of patch ``i``."""
        return tuple(int(v) for v in self.origins([i])[0])

    def _store_reader(self) -> _StoreReader:
        if self._reader is None or self._reader.pid != os.getpid():
            self._reader = _StoreReader(self.store)
        return self._reader

    def _reads(self) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        """``(role, variable, leading index)`` of every window a sample reads: the roles of the
        sample, then ``frame_mask`` for each ``e91_mask[k]`` OR-ed into ``mask``."""
        params = self.params
        roles = [("input", params.input), ("target", params.target)]
        roles += [("variance", "variance")] * params.with_variance + [("mask", "mask")]
        frames = sorted({(name, frame) for name, frame in map(parse_variable, (params.input, params.target))
                         if frame is not None})  # fmt: skip
        reads = [(role, *_split(spec)) for role, spec in roles]
        return tuple(reads + [("frame_mask", f"{name}_mask", (frame,)) for name, frame in frames])

    def __getitems__(self, indices) -> list[dict[str, np.ndarray]]:
        """Samples ``indices``, read together (PyTorch's batched fetching calls this) into one
        array per role, each sample a view of it: each variable's windows of the batch in one pass
        (``_StoreReader.windows``), then frame masks, bad values and normalisation batch-wide."""
        p = self.params.patch_px
        origins, numbers = self.origins(indices), np.asarray(indices, dtype=np.int64).reshape(-1)
        sessions = [self.sessions[s] for s in origins[:, 0].tolist()]
        reads = self._reads()
        batch = {role: np.empty((len(origins), 1, p, p), np.int32 if role == "mask" else np.float32)
                 for role, _, _ in reads if role != "frame_mask"}  # fmt: skip
        frame_masks = np.empty((len(origins), sum(role == "frame_mask" for role, _, _ in reads), p, p), np.int32)
        reader, finite, k = self._store_reader(), {}, 0
        drawn_from_target = self.params.synthesize_on_the_fly and self.params.target == "mean"  # read once, by the draw
        for role, name, lead in reads:
            if role == "frame_mask":
                out, k = frame_masks[:, k], k + 1
            else:
                out = batch[role][:, 0]
            if name == SYN and not lead:
                means = batch["target"][:, 0] if drawn_from_target else None
                finite[role], finite_mean = self._syn_windows(reader, sessions, origins[:, 1:], out, numbers, means)
                if drawn_from_target:
                    finite["target"] = finite_mean
            elif not (role == "target" and drawn_from_target):
                finite[role] = reader.windows(sessions, name, lead, origins[:, 1:], out)
        self._assemble(batch, frame_masks, finite)
        return [{role: values[j] for role, values in batch.items()} | {"index": origin}
                for j, origin in enumerate(origins)]  # fmt: skip

    def _syn_windows(self, reader: _StoreReader, sessions: list[str], yx: np.ndarray, out: np.ndarray,
                     numbers: np.ndarray, means: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
        """Fill ``out`` (B, P, P) with the ``syn`` windows of samples ``numbers`` at ``yx``: stored,
        or drawn on the fly (their clean ``mean`` windows read into ``means`` when given). Returns
        whether each ``syn`` window, and each ``mean`` window the draw read, holds no NaN and no inf."""
        if self._syn is None:
            self._syn = SynPatches(self.store)
        seed, epoch = self.params.seed, self.epoch
        if not self.params.synthesize_on_the_fly:
            return self._syn.stored(sessions, yx, out, seed, epoch, numbers, reader.windows), None
        finite_mean, finite = self._syn.fresh(sessions, yx, out, seed, epoch, numbers, reader.windows, means)
        return finite, finite_mean

    def _assemble(self, batch: dict[str, np.ndarray], frame_masks: np.ndarray, finite: dict[str, np.ndarray]) -> None:
        """A batch's (B, 1, P, P) windows in place: frame masks (B, F, P, P) OR-ed into ``mask``,
        NaN/inf of the windows not ``finite`` (per role, (B,) bool) to 0 and flagged ``no_data``,
        then normalised."""
        mask = batch["mask"][:, 0]
        for k in range(frame_masks.shape[1]):
            mask |= frame_masks[:, k]
        for role in ("input", "target", "variance"):
            values = batch.get(role)
            if values is None:
                continue
            for j in np.flatnonzero(~finite[role]).tolist():
                bad = ~np.isfinite(values[j, 0])
                values[j, 0][bad] = 0.0
                mask[j][bad] |= int(Flag.NO_DATA)
            if self.params.normalise == "asinh" and role != "variance":
                asinh_normalise(values, self.params.asinh_scale_adu, out=values)

    def batch(self, indices) -> dict[str, np.ndarray]:
        """Patches ``indices`` stacked: ``input``, ``target``, ``mask``, ``variance`` ``(B, 1, P, P)``,
        ``index`` ``(B, 3)``."""
        samples = self.__getitems__(indices)
        return {name: np.stack([sample[name] for sample in samples]) for name in samples[0]}

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.__getitems__([int(i)])[0]

    def to_xarray(self, i: int):
        """Patch ``i`` as an ``xarray.Dataset`` on the frame's pixel grid (``y``, ``x`` in pixels),
        the session and origin in its attributes (for xbatcher-style code)."""
        import xarray as xr

        sample = self[i]
        s, y, x = (int(v) for v in sample["index"])
        p = self.params.patch_px
        variables = {name: (("y", "x"), values[0]) for name, values in sample.items() if name != "index"}
        coords = {"y": np.arange(y, y + p), "x": np.arange(x, x + p)}
        attrs = {"session": self.sessions[s], "patch": int(i), "epoch": self.epoch, "input": self.params.input,
                 "target": self.params.target, "normalise": str(self.params.normalise)}  # fmt: skip
        return xr.Dataset(variables, coords=coords, attrs=attrs)


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

        def __getitems__(self, indices):
            return [{name: torch.from_numpy(values) for name, values in sample.items()}
                    for sample in super().__getitems__(indices)]  # fmt: skip

        def __getitem__(self, i):
            return self.__getitems__([int(i)])[0]

    TorchPatchDataset.__qualname__ = "TorchPatchDataset"
    return TorchPatchDataset


def __getattr__(name):
    """Resolve ``TorchPatchDataset`` lazily (so spawned DataLoader workers can unpickle it)."""
    if name == "TorchPatchDataset":
        return _torch_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
