"""``skyprep synthesize``: (re)draw ``syn`` for complete sessions from what the store holds.

Needs no archive: the clean stack ``mean``, its ``count``, the masters ``flat``, ``dark``,
``bias`` and the session's ``noise_model`` attribute. Idempotent and resumable: a session whose
``syn`` attribute already records the requested draw is skipped; otherwise the record is removed
first, ``syn`` rewritten strip by strip, its checksum updated and the record written last, so an
interrupted session is redrawn by the next call (``skyprep verify`` reports it meanwhile).
"""

from __future__ import annotations

import fnmatch
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import xarray as xr
import zarr

from ..graph_noise import syn_array
from ..io.contract import CONTRACT
from ..io.index import complete_sessions, consolidate
from ..io.objects import ObjectPath, location, zarr_store
from ..io.provenance import syn_record
from ..io.store import array_files_sha256, encoding
from ..steps.noise_model import NoiseModel
from ..steps.params import SynthesisParams

DEFAULT_STRIP_ROWS = 512


@dataclass(frozen=True)
class SynthResult:
    """How one session went: ``ok``, ``skipped`` (already drawn, or no stack) or ``failed``."""

    key: str
    status: str
    reason: str = ""
    seconds: float = 0.0


def synthesize_store(
    store: Path | ObjectPath | str,
    params: SynthesisParams,
    pattern: str | None = None,
    echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[SynthResult]:
    """Draw ``params.realizations`` of ``syn`` for every complete session matching ``pattern`` (a
    glob on the session key), with the Dask scheduler in effect (a ``distributed.Client``'s when
    one is active)."""
    keys = sorted(k for k in complete_sessions(store) if pattern is None or fnmatch.fnmatch(k, pattern))
    results = []
    for n, key in enumerate(keys, start=1):
        started = time.perf_counter()
        try:
            status, reason = _session(location(store), key, params)
        except (OSError, ValueError, KeyError) as err:
            status, reason = "failed", f"{type(err).__name__}: {err}"
        results.append(SynthResult(key, status, reason, time.perf_counter() - started))
        echo(f"[{n}/{len(keys)}] {key}: {status}" + (f": {reason}" if reason else ""))
    if any(r.status == "ok" for r in results):
        consolidate(store)
    return results


def _session(store: Path | ObjectPath, key: str, params: SynthesisParams) -> tuple[str, str]:
    group = zarr.open_group(zarr_store(store), path=key, mode="r+", zarr_format=3)
    attrs = dict(group.attrs)
    if "mean" not in group or "noise_model" not in attrs:
        return "skipped", "no stack (no e91 frames), so no noise model and no syn"
    wanted = syn_record(params)
    if attrs.get("syn") == wanted and "syn" in group:
        return "skipped", "already drawn with these parameters"
    model = NoiseModel.from_attrs(attrs["noise_model"])
    if "syn" in attrs:
        del group.attrs["syn"]
    if "syn" in group:
        del group["syn"]
    if params.realizations:
        strip = int(attrs.get("config", {}).get("chunks", {}).get("strip_rows", DEFAULT_STRIP_ROWS))
        nx = group["mean"].shape[1]
        inputs = {
            name: da.from_zarr(zarr.open_array(zarr_store(store), path=f"{key}/{name}", mode="r"), chunks=(strip, nx))
            for name in ("mean", "flat", "dark", "bias", "count")
        }
        syn = syn_array(model, inputs, key, params, f"{key.replace('/', '-')}-store")
        variable = CONTRACT["syn"]
        dataset = xr.Dataset({"syn": (variable.dims, syn, variable.attributes())})
        chunk_px = int(attrs.get("config", {}).get("chunks", {}).get("store_chunk_px", strip))
        with dask.annotate(priority=1):
            dataset.to_zarr(zarr_store(store), group=key, mode="a", consolidated=False, zarr_format=3,
                            encoding=encoding(dataset, chunk_px))  # fmt: skip
        checksums = dict(attrs.get("array_sha256", {}))
        checksums["syn"] = array_files_sha256(store / key / "syn")
        group.attrs["array_sha256"] = checksums
    elif "syn" in attrs.get("array_sha256", {}):
        group.attrs["array_sha256"] = {k: v for k, v in attrs["array_sha256"].items() if k != "syn"}
    group.attrs["syn"] = wanted
    return "ok", ""
