"""The Dask graph of one observation session.

Wiring only: every numeric step is a pure function of another module, applied here per block.
Keys carry the session's name. Frames are full-width row strips (tile-aligned); the only
whole-frame tasks are the amplifier reduction (the overscan needs every row) and the source
detection on the stack. No task holds more than one strip of the e91 cube.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from . import __version__
from .amplifiers import Amplifier, amp_value_map, detector_shape, mosaic, reduce_amp
from .calibrate import Masters, calibrate_block
from .config import Config
from .discover import Session, SessionError
from .fits_reader import ImageRef, lazy_image, list_images, primary_header, read_image, strip_bounds
from .keywords import lookup, select_profile
from .masks import MASK_DTYPE, Flag, cf_attrs
from .register import measure_offset
from .sources import source_mask
from .stack import sigma_clip_stack


@dataclass(frozen=True)
class SessionGraph:
    """A session's lazy products and the small results computed with them."""

    session: Session
    dataset: xr.Dataset  # every store variable, lazy
    summary: object  # Delayed dict: registration results and input checksums


def _name(session: Session) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", session.key)


def build_session(session: Session, config: Config) -> SessionGraph:
    """Build the lazy graph of ``session``; raise ``SessionError``/``FitsError`` on bad input."""
    base = f"{_name(session)}-{tokenize(session, config)[:8]}"
    amps_refs = list_images(session.raw)
    profile = select_profile(amps_refs[0].header, session.instrument, config.instrument)
    amps = [Amplifier.from_header(ref, profile) for ref in amps_refs]
    meta = _metadata(session, amps, profile)
    box_y, box_x = detector_shape(amps)
    shape = (box_y.stop - box_y.start, box_x.stop - box_x.start)
    strip = config.chunks.strip_rows

    os_adu, raw_flags = _reduced_raw(amps, shape, strip, config, base)
    masters = _masters(session, shape, strip, base)
    products = _split(
        da.map_blocks(
            _calibrate_strip, os_adu, raw_flags, *masters,
            amps=amps, darktime_s=meta["darktime"], gain_nominal=meta["gain"], params=config.calibration,
            name=f"calibrate-{base}", meta=np.empty((0, 0), object),
        ),
        {"calib": np.float32, "variance": np.float32, "mask": MASK_DTYPE},
        base,
    )  # fmt: skip
    variables = {"os": (("y", "x"), os_adu), **{k: (("y", "x"), v) for k, v in products.items()}}
    if not config.write_variance:
        del variables["variance"]
    summary = {"offsets": []}
    if session.e91:
        stacked, offsets = _e91_stack(session, products["calib"], products["mask"], shape, config, base)
        variables.update(stacked)
        summary["offsets"] = offsets
    for product, path in session.references.items():
        ref = _extensions(path, shape)["SCI"]
        dtype = np.uint8 if product == "mask" else np.float32
        variables[f"ref_{product}"] = (("y", "x"), lazy_image(ref, strip, f"ref-{product}-{base}").astype(dtype))
    summary["checksums"] = [dask.delayed(_checksum, pure=True)(str(p), dask_key_name=f"sha256-{i}-{base}")
                            for i, p in enumerate(session.inputs)]  # fmt: skip
    dataset = xr.Dataset(
        variables,
        coords={"y": np.arange(shape[0]), "x": np.arange(shape[1])},
        attrs={**meta, "software": f"skyprep {__version__}"},
    )
    _annotate(dataset)
    return SessionGraph(session, dataset, dask.delayed(summary))


def _metadata(session: Session, amps: list[Amplifier], profile) -> dict:
    """Normalised logical metadata (units in the names) from the first amplifier's header."""
    header, source = amps[0].ref.header, amps[0].ref.label

    def get(element, default=None):
        try:
            return lookup(header, element, profile, source)
        except KeyError:
            if default is None:
                raise
            return default

    primary = primary_header(session.raw)
    gain = float(primary["GAIN"]) if "GAIN" in primary else amps[0].gain_e_per_adu
    return {
        "instrument": session.instrument,
        "band": session.band,
        "obs_id": session.obs_id,
        "profile": profile.name,
        "filter": get("Instrument.filter", ""),
        "object": get("Observation.object", ""),
        "date_obs": get("Exposure.date_obs", ""),
        "exptime": get("Exposure.exptime"),
        "darktime": get("Exposure.darktime"),
        "gain": gain,
        "amp_gain": [a.gain_e_per_adu for a in amps],
        "amp_rdnoise": [a.rdnoise_e for a in amps],
        "rdnoise": float(np.sqrt(np.mean(np.square([a.rdnoise_e for a in amps])))),
        "n_amps": len(amps),
    }


def _reduced_raw(amps, shape, strip, config: Config, base: str):
    """Overscan-corrected, trimmed, assembled raw (ADU) and its saturation flags, as strips."""
    reduce = dask.delayed(_reduce_from_file, pure=True, nout=2)
    pieces = [reduce(amp, config.overscan, dask_key_name=f"amp-{i}-{base}") for i, amp in enumerate(amps)]
    assembled = dask.delayed(_mosaic_pair, pure=True, nout=2)(pieces, amps, dask_key_name=f"mosaic-{base}")
    chunks = tuple(y1 - y0 for y0, y1 in strip_bounds(shape[0], strip))
    os_adu = da.from_delayed(assembled[0], shape, np.float32, name=f"os-{base}").rechunk((chunks, shape[1]))
    flags = da.from_delayed(assembled[1], shape, MASK_DTYPE, name=f"satflags-{base}").rechunk((chunks, shape[1]))
    return os_adu, flags


def _reduce_from_file(amp: Amplifier, params):
    return reduce_amp(read_image(amp.ref), amp, params)


def _mosaic_pair(pieces, amps):
    return mosaic([p[0] for p in pieces], amps), mosaic([p[1] for p in pieces], amps)


def _extensions(path: Path, shape: tuple[int, int]) -> dict[str, ImageRef]:
    """Image extensions of ``path`` by upper-case EXTNAME; the first image is also ``SCI``
    when none is named so. Each must have the detector's ``shape``."""
    refs = list_images(path)
    found = {ref.name.upper(): ref for ref in refs if ref.name}
    found.setdefault("SCI", refs[0])
    for ref in found.values():
        _check_shape(ref, shape)
    return found


def _check_shape(ref: ImageRef, shape: tuple[int, int]) -> None:
    if ref.shape != shape:
        raise SessionError(f"{ref.label}: shape {ref.shape[1]} x {ref.shape[0]} does not match the raw frame's trimmed {shape[1]} x {shape[0]}")
    return ref


def _masters(session: Session, shape, strip, base: str) -> list:
    """Bias (e-), dark (e-/s), flat, BPM and their errors as strips (0 when a file has none)."""
    exts = {kind: _extensions(path, shape) for kind, path in session.masters.items()}
    values = [lazy_image(exts[kind]["SCI"], strip, f"{kind.lower()}-{base}") for kind in ("BIAS", "DARK", "SKYFLAT")]
    if "BPM" in exts:
        bpm = lazy_image(exts["BPM"]["SCI"], strip, f"bpm-{base}")
    else:
        bpm = da.zeros(shape, np.uint8, chunks=(strip, shape[1]))
    errors = [
        lazy_image(exts[kind]["ERR"], strip, f"{kind.lower()}-err-{base}") if "ERR" in exts[kind]
        else da.zeros(shape, np.float32, chunks=(strip, shape[1]))
        for kind in ("BIAS", "DARK", "SKYFLAT")
    ]  # fmt: skip
    return [*values, bpm, *errors]


def _calibrate_strip(os_adu, raw_flags, bias, dark, flat, bpm, bias_err, dark_err, flat_err, *,
                     amps, darktime_s, gain_nominal, params, block_info=None):  # fmt: skip
    (y0, y1), _ = block_info[0]["array-location"]
    masters = Masters(bias, dark, flat, bpm, bias_err, dark_err, flat_err)
    gain = amp_value_map(amps, [a.gain_e_per_adu for a in amps], y0, y1)
    rdnoise = amp_value_map(amps, [a.rdnoise_e for a in amps], y0, y1)
    return calibrate_block(os_adu, raw_flags, gain, rdnoise, masters, darktime_s, gain_nominal, params)


def _split(packed: da.Array, outputs: dict, base: str) -> dict[str, da.Array]:
    """Arrays of the named entries of a blockwise dict-valued array (each block computed once)."""
    return {
        key: da.map_blocks(_getitem, packed, key, dtype=dtype, meta=np.empty((0,) * packed.ndim, dtype),
                           name=f"{key}-{base}")
        for key, dtype in outputs.items()
    }  # fmt: skip


def _getitem(block, key):
    return block[key]


def _e91_stack(session: Session, calib: da.Array, calib_mask: da.Array, shape, config: Config, base: str):
    """Registered e91 frames, their masks and the sigma-clipped stack with its source mask."""
    strip = config.chunks.strip_rows
    ny, nx = shape
    cut = min(config.register.cutout_px, ny, nx)
    cy, cx = slice((ny - cut) // 2, (ny - cut) // 2 + cut), slice((nx - cut) // 2, (nx - cut) // 2 + cut)
    margin = math.ceil(config.register.params.max_shift_px) + 1
    bounds = strip_bounds(ny, strip)
    frames, masks, offsets = [], [], []
    for k, path in enumerate(session.e91):
        exts = _extensions(path, shape)
        data = lazy_image(exts["SCI"], strip, f"e91-read-{k}-{base}")
        if "BPM" in exts:
            bpm = lazy_image(exts["BPM"], strip, f"e91-bpm-{k}-{base}")
        else:
            bpm = da.zeros(shape, np.uint8, chunks=(strip, nx))
        offset = dask.delayed(_measure, pure=True)(
            calib[cy, cx], calib_mask[cy, cx], data[cy, cx], bpm[cy, cx], config.register.params,
            dask_key_name=f"offset-{k}-{base}",
        )
        offsets.append(offset)
        blocks = []
        for y0, y1 in bounds:
            a, b = max(0, y0 - margin), min(ny, y1 + margin)
            blocks.append(dask.delayed(_shift_strip, pure=True, nout=2)(
                data[a:b], bpm[a:b], a, y0, y1, offset, dask_key_name=f"e91-shift-{k}-{y0}-{base}"))  # fmt: skip
        frames.append(da.concatenate([da.from_delayed(blk[0], (y1 - y0, nx), np.float32)
                                      for blk, (y0, y1) in zip(blocks, bounds)]))  # fmt: skip
        masks.append(da.concatenate([da.from_delayed(blk[1], (y1 - y0, nx), MASK_DTYPE)
                                     for blk, (y0, y1) in zip(blocks, bounds)]))  # fmt: skip
    n = len(frames)
    packed = da.map_blocks(_stack_strip, *frames, *masks, n=n, params=config.stack,
                           name=f"stack-{base}", meta=np.empty((0, 0), object))  # fmt: skip
    stacked = _split(packed, {"mean": np.float32, "std": np.float32, "count": np.uint16}, base)
    e91_mask = da.map_blocks(_getitem, packed, "e91_mask", new_axis=0, chunks=((n,), *packed.chunks),
                             dtype=MASK_DTYPE, meta=np.empty((0, 0, 0), MASK_DTYPE), name=f"e91_mask-{base}")  # fmt: skip
    mean = stacked["mean"]
    sources = dask.delayed(source_mask, pure=True)(mean, None, stacked["count"] == 0, config.sources,
                                                   dask_key_name=f"sources-{base}")  # fmt: skip
    source = da.from_delayed(sources, shape, np.uint8, name=f"source-mask-{base}").rechunk(mean.chunks)
    shifts = da.from_delayed(dask.delayed(_applied_shifts, pure=True)(offsets, dask_key_name=f"shifts-{base}"),
                             (n, 2), np.float32, name=f"shift-{base}")  # fmt: skip
    variables = {
        "e91": (("frame", "y", "x"), da.stack(frames)),
        "e91_mask": (("frame", "y", "x"), e91_mask),
        "shift": (("frame", "axis"), shifts),
        "mean": (("y", "x"), mean),
        "count": (("y", "x"), stacked["count"]),
        "std": (("y", "x"), stacked["std"]),
        "source_mask": (("y", "x"), source),
    }
    return variables, offsets


def _measure(reference, reference_mask, frame, frame_bpm, params):
    return measure_offset(reference, frame, reference_mask != 0, frame_bpm != 0, params)


def _shift_strip(window, window_bpm, window_y0: int, y0: int, y1: int, offset):
    """Rows ``[y0, y1)`` of the frame moved onto the session grid by the integer offset.

    Content at session position (y, x) is at (y + dy, x + dx) in the frame. Pixels the frame does
    not cover are NaN and flagged NO_DATA; a frame that failed registration is left in place and
    flagged NOT_REGISTERED.
    """
    nx = window.shape[1]
    out = np.full((y1 - y0, nx), np.nan, np.float32)
    mask = np.full((y1 - y0, nx), Flag.NO_DATA, MASK_DTYPE)
    dy, dx = (int(round(offset.dy)), int(round(offset.dx))) if offset.ok else (0, 0)
    src_y0, src_y1 = y0 + dy - window_y0, y1 + dy - window_y0
    ys = slice(max(src_y0, 0), min(src_y1, window.shape[0]))
    xs = slice(max(dx, 0), min(nx + dx, nx))
    if ys.start < ys.stop and xs.start < xs.stop:
        oy, ox = ys.start - src_y0, xs.start - dx
        region = (slice(oy, oy + ys.stop - ys.start), slice(ox, ox + xs.stop - xs.start))
        out[region] = window[ys, xs]
        bpm = window_bpm[ys, xs]
        mask[region] = np.where(bpm & 1, Flag.BAD_PIXEL, 0) | np.where(bpm & 2, Flag.SATURATED, 0)
        mask[region] |= np.where(np.isfinite(out[region]), 0, Flag.NO_DATA).astype(MASK_DTYPE)
    if not offset.ok:
        mask |= Flag.NOT_REGISTERED.value
    return out, mask


def _stack_strip(*blocks, n, params):
    masks = np.stack(blocks[n:])
    result = sigma_clip_stack(np.stack(blocks[:n]), masks != 0, None, params, parallel=False)  # Dask parallelises
    e91_mask = masks | np.where(result.clipped, Flag.CLIPPED, 0).astype(MASK_DTYPE)
    return {"mean": result.mean, "std": result.std, "count": result.count, "e91_mask": e91_mask}


def _applied_shifts(offsets) -> np.ndarray:
    """(dy, dx) translation applied to each frame (minus the rounded offset; NaN when refused)."""
    return np.array([[-round(o.dy), -round(o.dx)] if o.ok else [np.nan, np.nan] for o in offsets], np.float32)


def _checksum(path: str) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": path, "bytes": Path(path).stat().st_size, "sha256": digest.hexdigest()}


_DESCRIPTIONS = {
    "os": ("overscan-corrected, trimmed, assembled raw frame", "adu"),
    "calib": ("calibrated frame", "adu"),
    "variance": ("variance of calib", "adu2"),
    "mask": ("bit mask of calib", ""),
    "e91": ("e91 frames registered onto the session grid", "adu"),
    "e91_mask": ("bit mask of each registered e91 frame", ""),
    "shift": ("(dy, dx) translation applied to each e91 frame", "pixel"),
    "mean": ("sigma-clipped mean of e91", "adu"),
    "count": ("number of e91 frames contributing to mean", "1"),
    "std": ("standard deviation of the kept e91 values", "adu"),
    "source_mask": ("source mask of the stack: 0 source, 1 background", ""),
    "ref_os": ("archive's overscan-corrected raw frame", "adu"),
    "ref_calib": ("archive's calibrated frame", "adu"),
    "ref_mean": ("archive's stack of the e91 frames", "adu"),
    "ref_mask": ("archive's source mask: 0 source, 1 background", ""),
}


def _annotate(dataset: xr.Dataset) -> None:
    for name, variable in dataset.data_vars.items():
        long_name, units = _DESCRIPTIONS[name]
        variable.attrs["long_name"] = long_name
        if units:
            variable.attrs["units"] = units
    for name in ("mask", "e91_mask"):
        if name in dataset:
            dataset[name].attrs.update(cf_attrs())
    if "shift" in dataset:
        dataset["shift"].attrs["axis_order"] = "dy dx"
