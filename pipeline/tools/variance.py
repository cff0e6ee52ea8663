"""Regenerate the variance of a stored session's ``calib`` from the uncertainty model
(:mod:`pipeline.steps.uncertainty`), lazily, from the masters the store was made from.

The session folder is the recorded session attribute ``session_dir``; its masters must still
have the SHA-256 recorded in ``inputs``.
"""

from __future__ import annotations

import dataclasses

import dask.array as da
import numpy as np
import xarray as xr

from ..blocks import split
from ..config import Config
from ..errors import InputError, SkyprepError
from ..graph import key_base
from ..io.discover import Session, load_session
from ..io.inputs import layout, masters
from ..io.objects import location
from ..io.provenance import input_file
from ..steps.amplifiers import Amplifier, amp_value_map
from ..steps.calibrate import Masters
from ..steps.uncertainty import variance_from_terms, variance_terms

TERMS = ("K0", "K1", "K2", "K3")


def variance_from_model(ds: xr.Dataset) -> xr.DataArray:
    """The variance of ``ds.calib`` (ADU^2), lazy, regenerated from the stored frame and parameters.

    The masters are read (lazily) from the session folder ``ds.attrs['session_dir']``; their
    SHA-256 must match the one recorded in ``ds.attrs['inputs']``, else ``InputError`` names the file.
    """
    if "session_dir" not in ds.attrs:
        raise SkyprepError("the session has no session_dir attribute (written by an older skyprep): rerun it")
    session = load_session(location(ds.attrs["session_dir"]))
    config = dataclasses.replace(Config(), instrument=ds.attrs.get("config", {}).get("instrument"))
    recorded = {str(location(entry["path"])): entry["sha256"] for entry in ds.attrs["inputs"]}
    terms = variance_model_terms(session, config, recorded)
    calib = ds["calib"].data
    data = da.map_blocks(variance_from_terms, calib, *(t.rechunk(calib.chunks) for t in terms), dtype=np.float32)
    return xr.DataArray(data, dims=ds["calib"].dims, coords=ds["calib"].coords,
                        attrs={"long_name": "variance of calib (from the uncertainty model)", "units": "adu2"})  # fmt: skip


def variance_model_terms(session: Session, config: Config, recorded_sha256: dict[str, str]) -> list[da.Array]:
    """The uncertainty model's terms ``K0..K3`` of ``session``, lazy strips (float64); raise
    ``InputError`` naming a master whose SHA-256 differs from the recorded one."""
    for path in session.masters.values():
        found = input_file(path).sha256
        if recorded_sha256.get(str(path)) != found:
            raise InputError(path, f"master differs from the one the store was made from (SHA-256 {found})")
    base, raw = key_base(session, config), layout(session, config.instrument)
    lazy = masters(session, raw.shape, config.chunks.strip_rows, base, raw.profile, raw.attrs.gain)
    packed = da.map_blocks(_terms_strip, *lazy.arrays(), amps=raw.amps, darktime_s=raw.attrs.darktime,
                           gain_nominal=raw.attrs.gain, name=f"variance-terms-{base}", meta=np.empty((0, 0), object))  # fmt: skip
    return list(split(packed, dict.fromkeys(TERMS, np.float64), base).values())


def _terms_strip(*blocks: np.ndarray, amps: list[Amplifier], darktime_s: float, gain_nominal: float,
                 block_info: dict | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    (y0, y1), _ = block_info[0]["array-location"]
    rdnoise = amp_value_map(amps, [a.rdnoise_e for a in amps], y0, y1)
    masters_block = Masters(*blocks)
    terms = variance_terms(masters_block, rdnoise, gain_nominal, darktime_s)
    return {k: np.broadcast_to(v, masters_block.flat.shape) for k, v in terms.items()}
