"""``syn`` patches for a training loader: a stored realization, or a fresh one drawn on the fly.

``SynPatches(store)`` is what a loader keeps per process. ``stored(session, y, x, p, seed,
epoch, i, read)`` fills a patch from the stored realizations (which one is a function of
``(seed, epoch, i)``); ``fresh(...)`` draws a new realization of the patch from the session's
``mean``, ``count``, masters and ``noise_model`` (``pipeline.steps.synthesize.synthesize_patch``),
keyed by ``(seed, session, (epoch, i))``: the same sample in every process, every worker, every
run, with the session's own ``subtract_base_noise`` (as its stored realizations were drawn).
``read(session, name, lead, y, x, out)`` is the loader's window reader (``lead`` the indices
before ``y, x``).
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
from ..steps.synthesize import Patch, SynthKey, synthesize_patch

Reader = Callable[[str, str, tuple[int, ...], int, int, np.ndarray], None]
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
        self._windows: dict[tuple[int, int], dict[str, np.ndarray]] = {}  # the clean windows' buffers, per shape

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

    def stored(self, session: str, y: int, x: int, out: np.ndarray, seed: int, epoch: int, index: int,
               read: Reader) -> None:  # fmt: skip
        """Fill ``out`` (P, P) with a stored realization of ``syn`` at ``(y, x)``."""
        realization = realization_of(seed, epoch, index, int(self.record(session)["realizations"]))
        read(session, "syn", (realization,), y, x, out)

    def fresh(self, session: str, y: int, x: int, out: np.ndarray, seed: int, epoch: int, index: int,
              read: Reader, mean_out: np.ndarray | None = None) -> None:  # fmt: skip
        """Fill ``out`` (P, P) with a new realization drawn at ``(y, x)`` for ``(seed, epoch, index)``;
        the clean ``mean`` window is read into ``mean_out`` when given (a (P, P) float32 buffer:
        the loader's target when it is ``mean``, so that window is read once)."""
        if out.shape not in self._windows:
            self._windows[out.shape] = {name: np.empty(out.shape, CONTRACT[name].dtype) for name in CLEAN}
        windows = dict(self._windows[out.shape])
        if mean_out is not None:
            windows["mean"] = mean_out
        for name in CLEAN:
            read(session, name, (), y, x, windows[name])
        patch = Patch(y, x, *(windows[name] for name in CLEAN))
        key, subtract = SynthKey(seed, session, (epoch, index)), self.subtract_base_noise(session)
        if out.dtype == np.float32 and out.flags.c_contiguous:
            synthesize_patch(patch, self.model(session), key, subtract, out=out)
        else:
            out[...] = synthesize_patch(patch, self.model(session), key, subtract)
