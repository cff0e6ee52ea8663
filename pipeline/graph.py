"""The Dask graph of one observation session: wiring only (steps are other modules' pure
functions, inputs come from :mod:`pipeline.io.inputs`, variables are the contract's rows).

Keys carry the session's name. Frames are full-width row strips (tile-aligned); the only
whole-frame tasks are the amplifier reduction and the source detection on the stack. The e91
work is one registration task per session and one task per strip that reads, moves and stacks
the rows of every frame it needs (:mod:`pipeline.steps.e91`: every e91 row decoded once). Tasks
that need rows of an array take the graph's own blocks (``blocks.row_blocks``): nothing runs twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed

from .blocks import RowBlocks, row_blocks, rows_of, split
from .config import Config
from .graph_noise import noise_products
from .io.contract import CONTRACT
from .io.discover import Session
from .io.fits_reader import lazy_image, read_cutout, read_image, read_rows, strip_bounds
from .io.inputs import Layout, e91_frame, layout, masters, reference_image
from .io.provenance import SessionSummary, input_files
from .steps.amplifiers import Amplifier, amp_value_map, mosaic, reduce_amp
from .steps.calibrate import CalibParams, Masters, calibrate_block
from .steps.cosmics import CosmicParams, cosmic_rays
from .steps.e91 import Frame, applied_shifts, central_window, measure, stack_strip, wcs_offsets
from .steps.masks import MASK_DTYPE, Flag
from .steps.overscan import OverscanParams
from .steps.reference import robust_difference
from .steps.register import Offset, RegisterParams
from .steps.sanity import header_problems, master_warnings, triage
from .steps.sources import SourceParams, source_mask
from .steps.stack import ClipParams, sigma_clip_stack
from .steps.synthesize import load_kernel as load_synthesis_kernel


@dataclass(frozen=True)
class SessionGraph:
    """A session's lazy products and the small results computed with them."""

    session: Session
    dataset: xr.Dataset  # every store variable, lazy
    summary: Delayed  # of SessionSummary


def key_base(session: Session, config: Config) -> str:
    """The session's part of every key of its graph: its name and a token of its inputs and config."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', session.key)}-{tokenize(session, config)[:8]}"


def build_session(session: Session, config: Config) -> SessionGraph:
    """Build the lazy graph of ``session``; raise a ``SkyprepError`` (naming the file) on bad input."""
    base, raw = key_base(session, config), layout(session, config.instrument)
    strip, attrs = config.chunks.strip_rows, raw.attrs
    gains = [(str(session.raw), attrs.gain)] + [(a.ref.label, a.gain_e_per_adu) for a in raw.amps]
    header_warnings = triage(header_problems(str(session.raw), gains, attrs.exptime, attrs.darktime), config.sanity)
    os_adu, raw_flags = _reduced_raw(raw, strip, config.overscan, base)
    geometry = "; ".join(a.described for a in raw.amps)
    lazy_masters = masters(session, raw.shape, strip, base, raw.profile, attrs.gain, geometry)
    products = split(
        da.map_blocks(
            _calibrate_strip, os_adu, raw_flags, *lazy_masters.arrays(),
            amps=raw.amps, darktime_s=attrs.darktime, gain_nominal=attrs.gain, params=config.calibration,
            name=f"calibrate-{base}", meta=np.empty((0, 0), object),
        ),
        {name: CONTRACT[name].dtype for name in ("calib", "variance", "mask")},
        base,
    )  # fmt: skip
    calibration_mask = products["mask"]  # registration needs no cosmic-ray flags: it need not wait for them
    products["mask"] = _with_cosmic_rays(products, attrs.gain, config.cosmics, base)
    variables = {"os": os_adu, **products}
    if not config.write_variance:
        del variables["variance"]
    variables |= {n: a.astype(CONTRACT[n].dtype) for n, a in zip(("bias", "dark", "flat"), lazy_masters.arrays())}
    offsets: list[Offset] | Delayed = []
    model: Delayed | None = None
    if session.e91:
        stacked, offsets = _e91_stack(session, products["calib"], calibration_mask, raw, config, base)
        variables.update(stacked)
        model, syn = noise_products(raw, variables, config, session.key, base)
        variables |= {"syn": syn} if syn is not None else {}
    for product, path in session.references.items():
        name = f"ref_{product}"
        ref = lazy_image(reference_image(path, raw.shape), strip, f"ref-{product}-{base}")
        variables[name] = ref.astype(CONTRACT[name].dtype)
    every_row = slice(0, raw.shape[0])
    reference_check = {
        product: dask.delayed(_reference_difference, pure=True)(
            row_blocks(variables[product], every_row), row_blocks(variables[f"ref_{product}"], every_row),
            row_blocks(products["mask"], every_row) if product == "calib" else None,
            dask_key_name=f"ref-diff-{product}-{base}")
        for product in ("os", "calib") if f"ref_{product}" in variables
    }  # fmt: skip
    sanity_warnings = dask.delayed(_master_sanity, pure=True)(
        header_warnings,
        row_blocks(lazy_masters.flat, every_row),
        row_blocks(lazy_masters.dark_e_per_s, every_row),
        str(session.masters["SKYFLAT"]),
        str(session.masters["DARK"]),
        config.calibration.low_flat,
        config.sanity,
        dask_key_name=f"sanity-{base}",
    )
    inputs = dask.delayed(input_files, pure=True)(list(session.inputs), dask_key_name=f"sha256-inputs-{base}")
    dataset = xr.Dataset(
        {name: (CONTRACT[name].dims, array, CONTRACT[name].attributes()) for name, array in variables.items()},
        coords={"y": np.arange(raw.shape[0]), "x": np.arange(raw.shape[1])},
        attrs=attrs.to_dict(),
    )
    summary = dask.delayed(SessionSummary, pure=True)(
        offsets, inputs, reference_check, model, config.synthesis, sanity_warnings
    )
    return SessionGraph(session, dataset, summary)


def _master_sanity(header_warnings: list[str], flat: RowBlocks, dark: RowBlocks, *args: object) -> list[str]:
    return master_warnings(header_warnings, rows_of(flat), rows_of(dark), *args)


def load_kernels() -> None:
    """Load the compiled kernels the session tasks call (stack, cosmic rays, the draw of ``syn``),
    with the argument types they call them with (numba's on-disk cache), ahead of the first task:
    ``runner.run`` has every worker do it while the client builds the first graphs."""
    mask = np.zeros((2, 9, 9), MASK_DTYPE)
    sigma_clip_stack(np.zeros(mask.shape, np.float32), mask, None, ClipParams(), parallel=False)
    cosmic_rays(np.zeros((9, 9), np.float32), np.ones((9, 9), np.float32), mask[0], 1.0, CosmicParams())
    load_synthesis_kernel()


def _reduced_raw(raw: Layout, strip: int, params: OverscanParams, base: str) -> tuple[da.Array, da.Array]:
    """Overscan-corrected, trimmed, assembled raw (ADU) and its saturation flags, as strips."""
    reduce = dask.delayed(_reduce_from_file, pure=True, nout=2)
    pieces = [reduce(amp, params, dask_key_name=f"amp-{i}-{base}") for i, amp in enumerate(raw.amps)]
    assembled = dask.delayed(_mosaic_pair, pure=True, nout=2)(pieces, raw.amps, dask_key_name=f"mosaic-{base}")
    chunks = (tuple(y1 - y0 for y0, y1 in strip_bounds(raw.shape[0], strip)), raw.shape[1])
    os_adu = da.from_delayed(assembled[0], raw.shape, np.float32, name=f"os-{base}").rechunk(chunks)
    flags = da.from_delayed(assembled[1], raw.shape, MASK_DTYPE, name=f"satflags-{base}").rechunk(chunks)
    return os_adu, flags


def _reduce_from_file(amp: Amplifier, params: OverscanParams) -> tuple[np.ndarray, np.ndarray]:
    return reduce_amp(read_image(amp.ref), amp, params)


def _mosaic_pair(pieces: list[tuple[np.ndarray, np.ndarray]], amps: list[Amplifier]) -> tuple[np.ndarray, np.ndarray]:
    return mosaic([p[0] for p in pieces], amps), mosaic([p[1] for p in pieces], amps)


def _calibrate_strip(os_adu: np.ndarray, raw_flags: np.ndarray, *masters: np.ndarray, amps: list[Amplifier],
                     darktime_s: float, gain_nominal: float, params: CalibParams,
                     block_info: dict | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    (y0, y1), _ = block_info[0]["array-location"]
    gain = amp_value_map(amps, [a.gain_e_per_adu for a in amps], y0, y1)
    rdnoise = amp_value_map(amps, [a.rdnoise_e for a in amps], y0, y1)
    return calibrate_block(os_adu, raw_flags, gain, rdnoise, Masters(*masters), darktime_s, gain_nominal, params)


def _with_cosmic_rays(products: dict[str, da.Array], gain_e_per_adu: float, params: CosmicParams,
                      base: str) -> da.Array:  # fmt: skip
    """The calibration mask with COSMIC_RAY set, strip by strip with ``params.margin_px()`` rows of overlap.

    ``map_overlap`` merges a last strip shorter than the margin into its neighbour; the result is
    cut back to the frame's strips, which the store's chunks require."""
    margin = min(params.margin_px(), products["calib"].shape[0] - 1)
    flagged = da.map_overlap(
        _flag_cosmic_rays, products["calib"], products["variance"], products["mask"],
        depth={0: margin, 1: 0}, boundary="none", align_arrays=False, trim=True, dtype=MASK_DTYPE,
        meta=np.empty((0, 0), MASK_DTYPE), name=f"cosmics-{base}", gain_e_per_adu=gain_e_per_adu, params=params,
    )  # fmt: skip
    return flagged.rechunk(products["mask"].chunks)


def _flag_cosmic_rays(calib: np.ndarray, variance: np.ndarray, mask: np.ndarray, *, gain_e_per_adu: float,
                      params: CosmicParams) -> np.ndarray:  # fmt: skip
    found = cosmic_rays(calib, variance, mask, gain_e_per_adu, params)
    return mask | np.where(found, Flag.COSMIC_RAY, 0).astype(MASK_DTYPE)


def _e91_stack(session: Session, calib: da.Array, calib_mask: da.Array, raw: Layout, config: Config,
               base: str) -> tuple[dict[str, da.Array], list[Offset] | Delayed]:  # fmt: skip
    """Registered e91 frames, their masks and the sigma-clipped stack with its source mask, and
    the frames' offsets. Registration reads the central cutouts of all frames in one task (unless
    the WCSs give the offsets); one task per strip reads, moves and stacks the rows it needs."""
    (ny, nx), (cy, cx) = raw.shape, central_window(raw.shape, config.register.cutout_px)
    frames = [e91_frame(path, raw.shape, config.stack.weighted, raw.profile, raw.attrs.gain) for path in session.e91]
    headers = [(path.name, f.sci.header) for path, f in zip(session.e91, frames)]
    offsets, note = wcs_offsets(raw.raw[0].header, headers, raw.shape, config.register.method, config.register.params)
    # one node holding the frames' handles (headers included): passing the list itself to every
    # task would make Dask traverse and hash it once per task on the client
    handles = dask.delayed(frames, name=f"e91-frames-{base}", traverse=False)
    if offsets is None:
        offsets = dask.delayed(_measure, pure=True)(row_blocks(calib, cy), row_blocks(calib_mask, cy), handles, cy, cx,
                                                    config.register.params, note, dask_key_name=f"register-{base}")  # fmt: skip
    bounds, subpixel = strip_bounds(ny, config.chunks.strip_rows), config.register.subpixel
    packed = [dask.delayed(stack_strip, pure=True)(handles, offsets, y0, y1, subpixel, config.stack, read_rows,
                                                   dask_key_name=f"stack-{y0}-{base}")
              for y0, y1 in bounds]  # fmt: skip

    def part(key: str, lead: tuple[int, ...] = ()) -> da.Array:
        return da.concatenate([da.from_delayed(getattr(p, key), (*lead, y1 - y0, nx), CONTRACT[key].dtype,
                                               name=f"{key}-{y0}-{base}")
                               for p, (y0, y1) in zip(packed, bounds)], axis=len(lead))  # fmt: skip

    mean, count = part("mean"), part("count")
    sources = dask.delayed(_source_mask, pure=True)(row_blocks(mean, slice(0, ny)), row_blocks(count, slice(0, ny)),
                                                    config.sources, dask_key_name=f"sources-{base}")  # fmt: skip
    shifts = dask.delayed(applied_shifts, pure=True)(offsets, subpixel, dask_key_name=f"shifts-{base}")
    n = len(frames)
    return {
        "e91": part("e91", (n,)), "e91_mask": part("e91_mask", (n,)),
        "shift": da.from_delayed(shifts, (n, 2), CONTRACT["shift"].dtype, name=f"shift-{base}"),
        "mean": mean, "count": count, "std": part("std"),
        "source_mask": da.from_delayed(sources, raw.shape, CONTRACT["source_mask"].dtype,
                                       name=f"source-mask-{base}").rechunk(mean.chunks),
    }, offsets  # fmt: skip


def _measure(reference: RowBlocks, reference_mask: RowBlocks, frames: list[Frame], rows: slice, cols: slice,
             params: RegisterParams, note: str) -> list[Offset]:  # fmt: skip
    return measure(rows_of(reference)[:, cols], rows_of(reference_mask)[:, cols] != 0, frames, rows, cols, params, note,
                   read_cutout)  # fmt: skip


def _reference_difference(
    ours: RowBlocks, reference: RowBlocks, mask: RowBlocks | None
) -> dict[str, float | int | None]:
    return robust_difference(rows_of(ours), rows_of(reference), None if mask is None else rows_of(mask) == 0)


def _source_mask(mean: RowBlocks, count: RowBlocks, params: SourceParams) -> np.ndarray:
    return source_mask(rows_of(mean), None, rows_of(count) == 0, params)
