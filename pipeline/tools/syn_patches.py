"""``syn`` patches for a training loader: a stored realization, or a fresh one drawn on the fly.

``SynPatches(store)`` is what a loader keeps per process; both routes fill a batch.
``stored(sessions, yx, out, seed, epoch, indices, read)`` fills ``out[j]`` from the stored
realizations (which one is a function of ``(seed, epoch, indices[j])``); ``fresh(...)`` draws a
new realization of each patch from the session's ``mean``, ``count``, masters and
``noise_model`` (``pipeline.steps.synthesize.synthesize_patches``), keyed by ``(seed, session,
(epoch, i))``: the same sample in every process, every worker, every run and every batch, with
the session's own ``subtract_base_noise`` (as its stored realizations were drawn).
``read(sessions, name, lead, yx, out)`` is the loader's batch reader
(``pipeline.tools.loader._StoreReader.windows``: ``out[j]`` the window of ``sessions[j]`` at
``yx[j]``, ``lead`` the indices before ``y, x``; it returns whether each window is finite).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

from ..errors import InputError
from ..io.contract import CONTRACT
from ..steps.noise_model import NoiseModel
from ..steps.params import SynthesisParams
from ..steps.synthesize import SynthKey, synthesize_patches

Reader = Callable[[list[str], str, tuple[int, ...], np.ndarray, np.ndarray], np.ndarray]
CLEAN = ("mean", "flat", "dark", "bias", "count")


def realization_of(seed: int, epoch: int, index: int, realizations: int) -> int:
    """Which stored realization sample ``index`` of ``epoch`` serves (uniform, deterministic)."""
    return zlib.crc32(np.array([seed, epoch, index], np.int64).tobytes()) % realizations


class SynPatches:
    """Per-process access to the sessions' noise models and ``syn`` record (read once each)."""

    def __init__(self, store: Path | str):
        self.store = Path(store)
        self._models: dict[str, NoiseModel] = {}
        self._records: dict[str, dict] = {}
        self._subtract: dict[str, bool] = {}
        self._windows: dict[tuple[int, ...], dict[str, np.ndarray]] = {}  # the clean windows' buffers, per shape

    def _attrs(self, session: str) -> dict:
        return dict(zarr.open_group(str(self.store), path=session, mode="r", zarr_format=3).attrs)

    def record(self, session: str) -> dict:
        """The session's ``syn`` attribute (``realizations``, ``seed``, ...); InputError when absent."""
        if session not in self._records:
            found = self._attrs(session).get("syn")
            if not found or not found.get("realizations"):
                raise InputError(self.store / session, "no stored syn (run `skyprep synthesize`)")
            self._records[session] = found
        return self._records[session]

    def subtract_base_noise(self, session: str) -> bool:
        """Whether the session's draws remove the stack's residual noise: its ``syn`` record's
        setting, else its run's ``synthesis`` configuration's, else the synthesis default."""
        if session not in self._subtract:
            attrs = self._attrs(session)
            recorded = attrs.get("syn") or attrs.get("config", {}).get("synthesis") or {}
            self._subtract[session] = bool(recorded.get("subtract_base_noise", SynthesisParams.subtract_base_noise))
        return self._subtract[session]

    def model(self, session: str) -> NoiseModel:
        if session not in self._models:
            attrs = self._attrs(session).get("noise_model")
            if attrs is None:
                raise InputError(self.store / session, "no noise_model (a session without e91 frames)")
            self._models[session] = NoiseModel.from_attrs(attrs)
        return self._models[session]

    def stored(self, sessions: list[str], yx: np.ndarray, out: np.ndarray, seed: int, epoch: int,
               indices: np.ndarray, read: Reader) -> np.ndarray:  # fmt: skip
        """Fill ``out[j]`` (``out`` (B, P, P)) with a stored realization of ``syn`` of
        ``sessions[j]`` at ``yx[j]`` (pixels) for sample ``indices[j]``: the windows of each
        realization in one read. Returns whether each window holds no NaN and no inf."""
        chosen = np.array([realization_of(seed, epoch, int(index), int(self.record(session)["realizations"]))
                           for session, index in zip(sessions, np.asarray(indices).tolist())], np.int64)  # fmt: skip
        finite = np.ones(len(sessions), bool)
        for realization in np.unique(chosen).tolist():
            picked = np.flatnonzero(chosen == realization)
            if len(picked) == len(sessions):
                return read(sessions, "syn", (realization,), yx, out)
            part = np.empty((len(picked), *out.shape[1:]), out.dtype)
            finite[picked] = read([sessions[j] for j in picked.tolist()], "syn", (realization,), yx[picked], part)
            out[picked] = part
        return finite

    def _buffers(self, batch: int, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """The clean windows' buffers ``(batch, *shape)`` of each name in ``CLEAN`` (kept per shape,
        grown to the largest batch)."""
        found = self._windows.get(shape)
        if found is None or len(found["mean"]) < batch:
            found = {name: np.empty((batch, *shape), CONTRACT[name].dtype) for name in CLEAN}
            self._windows[shape] = found
        return {name: values[:batch] for name, values in found.items()}

    def fresh(self, sessions: list[str], yx: np.ndarray, out: np.ndarray, seed: int, epoch: int,
              indices: np.ndarray, read: Reader,
              mean_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Fill ``out[j]`` (``out`` (B, P, P) float32, each ``out[j]`` C-contiguous) with a new
        realization of ``sessions[j]`` at ``yx[j]`` (pixels) drawn for ``(seed, epoch,
        indices[j])``: the clean windows of the batch read name by name (one read each), then each
        sample drawn. The ``mean`` windows are read into ``mean_out`` when given (a (B, P, P)
        float32 buffer: the loader's target when it is ``mean``, so those windows are read once).
        Returns whether each ``mean`` window, and each drawn one, holds no NaN and no inf."""
        windows = self._buffers(len(sessions), out.shape[1:])
        if mean_out is not None:
            windows["mean"] = mean_out
        finite_mean = read(sessions, "mean", (), yx, windows["mean"])
        for name in CLEAN[1:]:
            read(sessions, name, (), yx, windows[name])
        return finite_mean, self._draw(sessions, yx, out, seed, epoch, indices, tuple(windows[name] for name in CLEAN))

    def _draw(self, sessions: list[str], yx: np.ndarray, out: np.ndarray, seed: int, epoch: int, indices: np.ndarray,
              clean: tuple[np.ndarray, ...]) -> np.ndarray:  # fmt: skip
        """Draw every sample of the batch from its ``clean`` windows, one compiled call per session;
        whether each drawn window holds no NaN and no inf."""
        finite = np.ones(len(sessions), bool)
        indices = np.asarray(indices).tolist()
        for session in dict.fromkeys(sessions):
            members = np.array([j for j, other in enumerate(sessions) if other == session], np.int64)
            keys = [SynthKey(seed, session, (epoch, indices[j])) for j in members.tolist()]
            finite[members] = synthesize_patches(clean, yx[members], self.model(session), keys,
                                                 self.subtract_base_noise(session), out, members)  # fmt: skip
        return finite
