"""The Dask graph of one observation session.

Wiring only: every numeric step is a pure function of another module, applied here per block.
Keys carry the session's name. Frames are full-width row strips (tile-aligned); the only
whole-frame tasks are the amplifier reduction (the overscan needs every row) and the source
detection on the stack. The e91 work is coarse: one registration task per session and one task
per strip that reads the rows of every frame it needs, moves and stacks them, so no task holds
more than one strip of the e91 cube and every e91 row is decoded once. Tasks that need rows of
an array take the graph's own blocks (``_row_blocks``), so nothing upstream is computed twice.
"""

from __future__ import annotations

import dataclasses
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
from .config import Config
from .io.discover import Session, SessionError
from .io.fits_reader import (
    ImageRef,
    lazy_image,
    list_images,
    primary_header,
    read_cutout,
    read_image,
    read_rows,
    strip_bounds,
)
from .io.keywords import MissingKeyword, amp_elements, lookup, records, resolve, select_profile, session_elements
from .io.units import header_factor, header_unit
from .steps.amplifiers import Amplifier, amp_value_map, detector_shape, mosaic, reduce_amp
from .steps.calibrate import Masters, calibrate_block
from .steps.cosmics import CosmicParams, cosmic_rays
from .steps.masks import MASK_DTYPE, Flag, cf_attrs
from .steps.reference import robust_difference
from .steps.register import Offset, celestial_wcs, measure_offsets, wcs_offset
from .steps.resample import bpm_flags, shift_rows
from .steps.sources import source_mask
from .steps.stack import ClipParams, sigma_clip_stack
from .steps.uncertainty import variance_terms


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
    base, amps_refs, profile, amps, meta, shape = _layout(session, config)
    strip = config.chunks.strip_rows

    os_adu, raw_flags = _reduced_raw(amps, shape, strip, config, base)
    masters = _masters(session, shape, strip, base, profile, meta["gain"])
    products = _split(
        da.map_blocks(
            _calibrate_strip, os_adu, raw_flags, *masters,
            amps=amps, darktime_s=meta["darktime"], gain_nominal=meta["gain"], params=config.calibration,
            name=f"calibrate-{base}", meta=np.empty((0, 0), object),
        ),
        {"calib": np.float32, "variance": np.float32, "mask": MASK_DTYPE},
        base,
    )  # fmt: skip
    calibration_mask = products["mask"]  # registration needs no cosmic-ray flags: it need not wait for them
    products["mask"] = _with_cosmic_rays(products, meta, config.cosmics, base)
    variables = {"os": (("y", "x"), os_adu), **{k: (("y", "x"), v) for k, v in products.items()}}
    if not config.write_variance:
        del variables["variance"]
    summary = {"offsets": []}
    if session.e91:
        stacked, offsets = _e91_stack(
            session,
            products["calib"],
            calibration_mask,
            shape,
            config,
            base,
            amps_refs[0].header,
            profile,
            meta["gain"],
        )
        variables.update(stacked)
        summary["offsets"] = offsets
    for product, path in session.references.items():
        ref = _extensions(path, shape)["SCI"]
        dtype = np.uint8 if product == "mask" else np.float32
        variables[f"ref_{product}"] = (("y", "x"), lazy_image(ref, strip, f"ref-{product}-{base}").astype(dtype))
    every_row = slice(0, shape[0])
    summary["reference"] = {
        product: dask.delayed(_reference_difference, pure=True)(
            _row_blocks(variables[product][1], every_row), _row_blocks(variables[f"ref_{product}"][1], every_row),
            _row_blocks(products["mask"], every_row) if product == "calib" else None,
            dask_key_name=f"ref-diff-{product}-{base}")
        for product in ("os", "calib") if f"ref_{product}" in variables
    }  # fmt: skip
    summary["checksums"] = dask.delayed(_checksums, pure=True)(
        [str(p) for p in session.inputs], dask_key_name=f"sha256-inputs-{base}"
    )
    dataset = xr.Dataset(
        variables,
        coords={"y": np.arange(shape[0]), "x": np.arange(shape[1])},
        attrs={**meta, "software": f"skyprep {__version__}"},
    )
    _annotate(dataset)
    return SessionGraph(session, dataset, dask.delayed(summary))


def load_kernels() -> None:
    """Load the compiled kernels the session tasks call, with the argument types they call them
    with (numba's on-disk cache, about 0.2 s in a new process), ahead of the first task:
    ``runner.run`` has every worker do it while the client builds the first graphs."""
    mask = np.zeros((2, 9, 9), MASK_DTYPE)
    sigma_clip_stack(np.zeros(mask.shape, np.float32), mask, None, ClipParams(), parallel=False)
    cosmic_rays(np.zeros((9, 9), np.float32), np.ones((9, 9), np.float32), mask[0], 1.0, CosmicParams())


def _layout(session: Session, config: Config):
    """Key base, raw image extensions, profile, amplifiers, metadata and detector shape of ``session``."""
    base = f"{_name(session)}-{tokenize(session, config)[:8]}"
    amps_refs = list_images(session.raw)
    profile = select_profile(amps_refs[0].header, session.instrument, config.instrument)
    primary = primary_header(session.raw)
    amps = [Amplifier.from_header(ref, profile, primary) for ref in amps_refs]
    meta = _metadata(session, amps, profile)
    box_y, box_x = detector_shape(amps)
    return base, amps_refs, profile, amps, meta, (box_y.stop - box_y.start, box_x.stop - box_x.start)


def _metadata(session: Session, amps: list[Amplifier], profile) -> dict:
    """Session attributes: the values the pipeline uses (units in the names), ``metadata`` (every
    logical element found, ``{value, units, keyword}``; ``Detector.Amp[n].*`` per amplifier) and
    the raw headers (primary, and each amplifier's effective header) as text."""
    header, source = amps[0].ref.header, amps[0].ref.label
    primary = primary_header(session.raw)

    def get(element, default=None):
        try:
            return lookup(header, element, profile, source, primary)
        except KeyError:
            if default is None:
                raise
            return default

    try:
        nominal = resolve(primary, "Detector.gain", profile, f"{session.raw}[0]")
    except MissingKeyword:  # one-amplifier files: the nominal gain sits in the image's header
        nominal = resolve(header, "Detector.gain", profile, source)
    gain = nominal.value
    logical = {
        **records(header, session_elements(), profile, source, primary=primary),
        "Detector.gain": nominal.record(),
    }
    for n, amp in enumerate(amps, start=1):
        logical.update(records(amp.ref.header, amp_elements(), profile, amp.ref.label, amp=n, primary=primary))
    return {
        "metadata": logical,
        "header_primary": primary.tostring(sep="\n", endcard=False, padding=False),
        "header_amps": [amp.ref.header.tostring(sep="\n", endcard=False, padding=False) for amp in amps],
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
        raise SessionError(
            f"{ref.label}: shape {ref.shape[1]} x {ref.shape[0]} does not match the raw frame's trimmed {shape[1]} x {shape[0]}"
        )
    return ref


def _in_unit(ref: ImageRef, strip: int, name: str, unit: str, assumed: str, profile, gain_e_per_adu: float) -> da.Array:
    """The image as strips, converted from its ``BUNIT`` (``assumed`` when absent) to ``unit``."""
    factor = header_factor(ref.header, unit, assumed, gain_e_per_adu, profile, ref.label)
    values = lazy_image(ref, strip, name)
    return values if factor == 1.0 else values * np.float32(factor)


def _masters(session: Session, shape, strip, base: str, profile, gain_e_per_adu: float) -> list:
    """Bias (e-), dark (e-/s), flat, BPM and their errors as strips (0 when a file has none).

    Bias and dark (and their ERR) are converted from their ``BUNIT`` (ADU with the master's own
    ``GAIN``, else the nominal one; totals divided by the master's dark time)."""
    exts = {kind: _extensions(path, shape) for kind, path in session.masters.items()}
    units = {"BIAS": "electron", "DARK": "electron/s", "SKYFLAT": ""}

    def load(kind, ext, name):
        if kind == "SKYFLAT":
            return lazy_image(exts[kind][ext], strip, name)
        sci = exts[kind]["SCI"]
        assumed = header_unit(sci.header, units[kind], profile, sci.label) if ext == "ERR" else units[kind]
        return _in_unit(exts[kind][ext], strip, name, units[kind], assumed, profile, gain_e_per_adu)

    values = [load(kind, "SCI", f"{kind.lower()}-{base}") for kind in ("BIAS", "DARK", "SKYFLAT")]
    if "BPM" in exts:
        bpm = lazy_image(exts["BPM"]["SCI"], strip, f"bpm-{base}")
    else:
        bpm = da.zeros(shape, dtype=np.uint8, chunks=(strip, shape[1]))
    errors = [
        load(kind, "ERR", f"{kind.lower()}-err-{base}") if "ERR" in exts[kind]
        else da.zeros(shape, dtype=np.float32, chunks=(strip, shape[1]))
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


def variance_model_terms(session: Session, config: Config, recorded_sha256: dict[str, str]) -> list[da.Array]:
    """The uncertainty model's terms ``K0..K3`` (:mod:`pipeline.steps.uncertainty`) of ``session``, lazy
    strips; raise ``ValueError`` naming a master whose SHA-256 differs from the recorded one."""
    for path in session.masters.values():
        found = _checksum(str(path))["sha256"]
        if recorded_sha256.get(str(path)) != found:
            raise ValueError(f"{path}: master differs from the one the store was made from (SHA-256 {found})")
    base, _, profile, amps, meta, shape = _layout(session, config)
    masters = _masters(session, shape, config.chunks.strip_rows, base, profile, meta["gain"])
    packed = da.map_blocks(_terms_strip, *masters, amps=amps, darktime_s=meta["darktime"], gain_nominal=meta["gain"],
                           name=f"variance-terms-{base}", meta=np.empty((0, 0), object))  # fmt: skip
    return list(_split(packed, dict.fromkeys(("K0", "K1", "K2", "K3"), np.float64), base).values())


def _terms_strip(
    bias, dark, flat, bpm, bias_err, dark_err, flat_err, *, amps, darktime_s, gain_nominal, block_info=None
):
    (y0, y1), _ = block_info[0]["array-location"]
    rdnoise = amp_value_map(amps, [a.rdnoise_e for a in amps], y0, y1)
    masters = Masters(bias, dark, flat, bpm, bias_err, dark_err, flat_err)
    return {
        k: np.broadcast_to(v, flat.shape) for k, v in variance_terms(masters, rdnoise, gain_nominal, darktime_s).items()
    }


def _with_cosmic_rays(products: dict, meta: dict, params: CosmicParams, base: str) -> da.Array:
    """The calibration mask with COSMIC_RAY set, strip by strip with ``params.margin_px()`` rows of overlap.

    ``map_overlap`` merges a last strip shorter than the margin into its neighbour; the result is
    cut back to the frame's strips, which the store's chunks require."""
    margin = min(params.margin_px(), products["calib"].shape[0] - 1)
    flagged = da.map_overlap(
        _flag_cosmic_rays, products["calib"], products["variance"], products["mask"],
        depth={0: margin, 1: 0}, boundary="none", align_arrays=False, trim=True, dtype=MASK_DTYPE,
        meta=np.empty((0, 0), MASK_DTYPE), name=f"cosmics-{base}",
        gain_e_per_adu=meta["gain"], params=params,
    )  # fmt: skip
    return flagged.rechunk(products["mask"].chunks)


def _flag_cosmic_rays(calib, variance, mask, *, gain_e_per_adu, params):
    found = cosmic_rays(calib, variance, mask, gain_e_per_adu, params)
    return mask | np.where(found, Flag.COSMIC_RAY, 0).astype(MASK_DTYPE)


def _split(packed: da.Array, outputs: dict, base: str) -> dict[str, da.Array]:
    """Arrays of the named entries of a blockwise dict-valued array (each block computed once)."""
    return {
        key: da.map_blocks(_getitem, packed, key, dtype=dtype, meta=np.empty((0,) * packed.ndim, dtype),
                           name=f"{key}-{base}")
        for key, dtype in outputs.items()
    }  # fmt: skip


def _getitem(block, key):
    return block[key]


@dataclass(frozen=True)
class _Frame:
    """An e91 exposure's extensions and the factors that bring its values (and ERR) to ADU."""

    sci: ImageRef
    bpm: ImageRef | None
    err: ImageRef | None
    factor: float
    err_factor: float


def _e91_stack(session: Session, calib: da.Array, calib_mask: da.Array, shape, config: Config, base: str,
               reference_header, profile, gain_e_per_adu: float):  # fmt: skip
    """Registered e91 frames, their masks and the sigma-clipped stack with its source mask.

    ``reference_header``: the raw frame's header, whose WCS is the session grid's (``wcs``).
    Frames (and ERR) are converted to ADU from their ``BUNIT`` (the frame's ``GAIN``, else
    ``gain_e_per_adu``). One task per strip reads the rows of every frame it needs (each frame
    row is decoded once), moves them onto the grid and stacks them; registration reads the
    central cutouts of all frames in one task."""
    ny, nx = shape
    cut = min(config.register.cutout_px, ny, nx)
    cy, cx = slice((ny - cut) // 2, (ny - cut) // 2 + cut), slice((nx - cut) // 2, (nx - cut) // 2 + cut)
    frames = [_frame(path, shape, config.stack.weighted, profile, gain_e_per_adu) for path in session.e91]
    wcs_offsets, wcs_note = _wcs_offsets(reference_header, [f.sci for f in frames], shape, config.register)
    if wcs_offsets is not None:
        offsets = wcs_offsets
    else:
        offsets = dask.delayed(_measure, pure=True)(_row_blocks(calib, cy), _row_blocks(calib_mask, cy), frames, cy, cx,
                                                    config.register.params, wcs_note, dask_key_name=f"register-{base}")  # fmt: skip
    n = len(frames)
    bounds = strip_bounds(ny, config.chunks.strip_rows)
    packed = [dask.delayed(_stack_strip, pure=True)(frames, offsets, y0, y1, config.register.subpixel, config.stack,
                                                    dask_key_name=f"stack-{y0}-{base}")
              for y0, y1 in bounds]  # fmt: skip

    def part(key, dtype, lead=()):
        return da.concatenate([da.from_delayed(p[key], (*lead, y1 - y0, nx), dtype, name=f"{key}-{y0}-{base}")
                               for p, (y0, y1) in zip(packed, bounds)], axis=len(lead))  # fmt: skip

    mean, count = part("mean", np.float32), part("count", np.uint16)
    sources = dask.delayed(_source_mask, pure=True)(_row_blocks(mean, slice(0, ny)), _row_blocks(count, slice(0, ny)),
                                                    config.sources, dask_key_name=f"sources-{base}")  # fmt: skip
    source = da.from_delayed(sources, shape, np.uint8, name=f"source-mask-{base}").rechunk(mean.chunks)
    shifts = da.from_delayed(dask.delayed(_applied_shifts, pure=True)(offsets, config.register.subpixel,
                                                                      dask_key_name=f"shifts-{base}"),
                             (n, 2), np.float32, name=f"shift-{base}")  # fmt: skip
    variables = {
        "e91": (("frame", "y", "x"), part("e91", np.float32, (n,))),
        "e91_mask": (("frame", "y", "x"), part("e91_mask", MASK_DTYPE, (n,))),
        "shift": (("frame", "axis"), shifts),
        "mean": (("y", "x"), mean),
        "count": (("y", "x"), count),
        "std": (("y", "x"), part("std", np.float32)),
        "source_mask": (("y", "x"), source),
    }
    return variables, offsets


def _frame(path: Path, shape, weighted: bool, profile, gain_e_per_adu: float) -> _Frame:
    """The e91 file's SCI (BPM, and ERR when ``weighted``) with their factors to ADU."""
    ext = _extensions(path, shape)
    if weighted and "ERR" not in ext:
        raise SessionError(f"{path}: no ERR extension, needed by stack.weighted (inverse-variance weights)")
    sci = ext["SCI"]
    factor = header_factor(sci.header, "adu", "adu", gain_e_per_adu, profile, sci.label)
    err, err_factor = (ext["ERR"], header_factor(ext["ERR"].header, "adu", header_unit(sci.header, "adu", profile, sci.label),
                                                 gain_e_per_adu, profile, ext["ERR"].label)) if weighted else (None, 1.0)  # fmt: skip
    return _Frame(sci, ext.get("BPM"), err, factor, err_factor)


def _wcs_offsets(reference_header, frames: list[ImageRef], shape, params) -> tuple[list[Offset] | None, str]:
    """Offsets of ``frames`` from the WCSs when ``params.method`` is ``wcs`` and every header has a
    valid celestial WCS; else ``None`` and, for ``wcs``, why not (for the registration records)."""
    if params.method != "wcs":
        return None, ""
    reference, why = celestial_wcs(reference_header)
    if reference is None:
        return None, f"WCS not used: raw frame: {why}"
    found = []
    for ref in frames:
        wcs, why = celestial_wcs(ref.header)
        if wcs is None:
            return None, f"WCS not used: {Path(ref.path).name}: {why}"
        found.append(wcs)
    return [wcs_offset(reference, wcs, shape, params.params) for wcs in found], ""


def _row_blocks(array: da.Array, rows: slice) -> tuple[list, int, slice]:
    """The Delayed full-width row blocks of ``array`` holding ``rows``, their first row and ``rows``.

    The blocks keep the keys of the session graph: a task taking them shares the graph's
    computation (a Dask array passed to ``dask.delayed`` would be optimised into a renamed copy
    and everything upstream of it computed again)."""
    starts = np.concatenate([[0], np.cumsum(array.chunks[0])])
    first = int(np.searchsorted(starts, rows.start, side="right")) - 1
    last = int(np.searchsorted(starts, rows.stop, side="left"))
    return list(array.to_delayed(optimize_graph=False).ravel()[first:last]), int(starts[first]), rows


def _rows(blocks_start_rows) -> np.ndarray:
    """The rows of a ``_row_blocks`` triple, computed."""
    blocks, start, rows = blocks_start_rows
    return np.concatenate(blocks)[rows.start - start : rows.stop - start]


def _measure(reference, reference_mask, frames: list[_Frame], rows: slice, cols: slice, params, note) -> list[Offset]:
    """Offsets of ``frames`` from their central cutouts (read here, one frame at a time)."""

    def cutouts():
        for frame in frames:
            values = read_cutout(frame.sci, rows.start, rows.stop, cols.start, cols.stop) * np.float32(frame.factor)
            bad = (
                None if frame.bpm is None else read_cutout(frame.bpm, rows.start, rows.stop, cols.start, cols.stop) != 0
            )
            yield values, bad

    offsets = measure_offsets(_rows(reference)[:, cols], cutouts(), _rows(reference_mask)[:, cols] != 0, params)
    return [dataclasses.replace(offset, note=note) for offset in offsets] if note else offsets


def _reference_difference(ours, reference, mask):
    return robust_difference(_rows(ours), _rows(reference), None if mask is None else _rows(mask) == 0)


def _source_mask(mean, count, params):
    return source_mask(_rows(mean), None, _rows(count) == 0, params)


def _stack_strip(frames: list[_Frame], offsets: list[Offset], y0: int, y1: int, subpixel: bool, params) -> dict:
    """Session rows ``[y0, y1)`` of every frame moved onto the grid, and their stack.

    Each frame's rows are read here: those the offset (rounded unless ``subpixel``) brings onto
    the strip. A frame that failed registration is left in place and flagged NOT_REGISTERED."""
    nx = frames[0].sci.shape[1]
    values = np.empty((len(frames), y1 - y0, nx), np.float32)
    masks = np.empty(values.shape, MASK_DTYPE)
    variance = np.empty(values.shape, np.float32) if params.weighted else None
    for k, (frame, offset) in enumerate(zip(frames, offsets)):
        dy, dx = _applied(offset, subpixel)
        a, b = max(0, y0 + math.floor(dy)), min(frame.sci.shape[0], y1 + math.ceil(dy))
        b = max(a, b)
        window = _read(frame.sci, a, b, frame.factor)
        flags = bpm_flags(_read(frame.bpm, a, b)) if frame.bpm is not None else np.zeros(window.shape, MASK_DTYPE)
        window_var = None if frame.err is None else np.square(_read(frame.err, a, b, frame.err_factor))
        out, mask, var = shift_rows(window, flags, window_var, a, y0, y1, dy, dx)
        values[k], masks[k] = out, mask
        if variance is not None:
            variance[k] = var
        if not offset.ok:
            masks[k] |= MASK_DTYPE(Flag.NOT_REGISTERED)
    result = sigma_clip_stack(values, masks, variance, params, parallel=False)  # Dask parallelises
    masks[result.clipped] |= MASK_DTYPE(Flag.CLIPPED)  # in place: no cube-sized temporaries
    return {"e91": values, "e91_mask": masks, "mean": result.mean, "std": result.std, "count": result.count}


def _read(ref: ImageRef, y0: int, y1: int, factor: float = 1.0) -> np.ndarray:
    """Rows ``[y0, y1)`` of ``ref`` (none when empty), times ``factor``."""
    rows = read_rows(ref, y0, y1)
    return rows if factor == 1.0 else rows * np.float32(factor)


def _applied(offset: Offset, subpixel: bool) -> tuple[float, float]:
    """The offset a frame is moved by: measured (rounded unless ``subpixel``), 0 when refused."""
    if not offset.ok:
        return 0, 0
    return (offset.dy, offset.dx) if subpixel else (round(offset.dy), round(offset.dx))


def _applied_shifts(offsets, subpixel: bool) -> np.ndarray:
    """(dy, dx) translation applied to each frame: minus the offset (rounded unless ``subpixel``);
    NaN when refused."""
    return np.array(
        [tuple(-v for v in _applied(o, subpixel)) if o.ok else (np.nan, np.nan) for o in offsets], np.float32
    )


def _checksums(paths: list[str]) -> list[dict]:
    return [_checksum(path) for path in paths]


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
