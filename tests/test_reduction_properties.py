"""Property-based tests over what real cameras vary, each against a direct numpy reference.

Hypothesis draws the frame size (1 to 5000 rows, odd, just off chunk and strip multiples), the
amplifier arrangement (1 to 16 amplifiers on any grid, in any file order, each flipped in x and
y at will), prescan columns, serial and parallel overscan, ``CCDSUM 2 2`` binning, the raw's
storage (``BZERO``/``BSCALE`` integers, floats, tile-compressed or plain) and the strip and chunk
settings. The reference builds the truth first and writes the camera's files from it, so the
reduction must give back exactly the truth (integers, exact in float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import xarray as xr
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import ChunkParams, Config
from pipeline.graph import build_session
from pipeline.io.discover import load_session
from pipeline.io.fits_headers import list_images
from pipeline.io.fits_reader import read_image
from pipeline.io.keywords import profiles
from pipeline.io.store import write_session
from pipeline.steps.amplifiers import Amplifier, mosaic, reduce_amp
from pipeline.steps.overscan import OverscanParams

GENERIC = profiles()["generic"]
LEAN = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
GRIDS = [(1, 1), (1, 2), (2, 1), (2, 2), (1, 4), (4, 1), (2, 4), (4, 2), (1, 8), (8, 1), (4, 4), (2, 8), (1, 16)]
STORAGE = ["uint16-rice", "uint16", "int16-bscale", "int32", "float32"]


@dataclass(frozen=True)
class Camera:
    """One raw readout layout: amplifier grid, sizes and orientation of each amplifier's data."""

    heights: tuple[int, ...]  # binned data rows of each grid row
    widths: tuple[int, ...]  # binned data columns of each grid column
    flips: tuple[tuple[bool, bool], ...]  # (flip_x, flip_y) per amplifier, row-major on the grid
    order: tuple[int, ...]  # file order of the amplifiers
    prescan: int
    overscan: int
    parallel: int  # parallel overscan rows above the data
    binning: int
    origin: tuple[int, int]  # binned detector offset (y, x) of the first pixel
    storage: str

    @property
    def shape(self) -> tuple[int, int]:
        return sum(self.heights), sum(self.widths)


@st.composite
def cameras(draw, max_rows: int = 5000) -> Camera:
    rows, cols = draw(st.sampled_from(GRIDS))
    per_row = max(1, max_rows // rows)
    heights = tuple(draw(st.lists(st.integers(1, per_row), min_size=rows, max_size=rows)))
    widths = tuple(draw(st.lists(st.integers(1, 12), min_size=cols, max_size=cols)))
    n = rows * cols
    return Camera(
        heights=heights,
        widths=widths,
        flips=tuple(draw(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=n, max_size=n))),
        order=tuple(draw(st.permutations(range(n)))),
        prescan=draw(st.integers(0, 3)),
        overscan=draw(st.integers(1, 4)),
        parallel=draw(st.integers(0, 3)),
        binning=draw(st.sampled_from([1, 2])),
        origin=(draw(st.integers(0, 3)), draw(st.integers(0, 3))),
        storage=draw(st.sampled_from(STORAGE)),
    )


def _hdu(values: np.ndarray, header: fits.Header, storage: str) -> fits.ImageHDU | fits.CompImageHDU:
    """An image HDU holding the physical ``values`` (integers) stored as ``storage`` says."""
    if storage == "uint16-rice":
        return fits.CompImageHDU(values.astype(np.uint16), header, compression_type="RICE_1")
    if storage == "uint16":
        return fits.ImageHDU(values.astype(np.uint16), header)  # stored as int16 with BZERO = 32768
    if storage == "int16-bscale":
        hdu = fits.ImageHDU(values.astype(np.float64), header)
        hdu.scale("int16", bscale=2.0, bzero=1000.0)  # values are even: stored exactly
        return hdu
    return fits.ImageHDU(values.astype(np.dtype(storage)), header)


def write_raw(path: Path, camera: Camera, truth: np.ndarray, levels: np.ndarray) -> None:
    """The raw file of ``camera`` whose reduction is ``truth`` (overscan ``levels`` per amplifier)."""
    b = camera.binning
    y_edges, x_edges = np.cumsum((0, *camera.heights)), np.cumsum((0, *camera.widths))
    oy, ox = camera.origin
    hdus = [fits.PrimaryHDU(header=fits.Header({"EXPTIME": 10.0, "DARKTIME": 12.0, "GAIN": 2.0}))]
    amps = []
    for n, (flip_x, flip_y) in enumerate(camera.flips):
        r, c = divmod(n, len(camera.widths))
        ys, xs = slice(y_edges[r], y_edges[r + 1]), slice(x_edges[c], x_edges[c + 1])
        h, w = ys.stop - ys.start, xs.stop - xs.start
        data = truth[ys, xs][:: -1 if flip_y else 1, :: -1 if flip_x else 1]  # in readout order
        p, o, q = camera.prescan, camera.overscan, camera.parallel
        raw = np.full((h + q, p + w + o), 50.0)  # prescan and parallel overscan: junk the reduction must drop
        raw[:h, p : p + w] = data + levels[n]
        raw[:, p + w :] = levels[n]
        x1, x2 = (xs.start + ox) * b + 1, (xs.stop + ox) * b
        y1, y2 = (ys.start + oy) * b + 1, (ys.stop + oy) * b
        header = fits.Header(
            {
                "EXTNAME": f"AMP{n + 1}",
                "GAIN": 2.0,
                "RDNOISE": 4.0,
                "SATURATE": 1e9,
                "CCDSUM": f"{b} {b}",
                "DATASEC": f"[{p + 1}:{p + w},1:{h}]",
                "BIASSEC": f"[{p + w + 1}:{p + w + o},1:{h + q if n % 2 else h}]",
                "DETSEC": f"[{x2 if flip_x else x1}:{x1 if flip_x else x2},{y2 if flip_y else y1}:{y1 if flip_y else y2}]",
            }
        )
        amps.append(_hdu(raw, header, camera.storage))
    hdus += [amps[k] for k in camera.order]
    fits.HDUList(hdus).writeto(path, overwrite=True)


def _truth(camera: Camera, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = 2 * rng.integers(0, 500, camera.shape)  # even: exact through BSCALE = 2
    levels = 2 * rng.integers(500, 1000, len(camera.flips))
    return truth.astype(np.float64), levels.astype(np.float64)


def reduce_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's reduction of a raw file: amplifiers from the headers, overscan, trim, mosaic."""
    amps = [Amplifier.from_header(ref, GENERIC) for ref in list_images(path)]
    pieces = [reduce_amp(read_image(amp.ref), amp, OverscanParams()) for amp in amps]
    return mosaic([p[0] for p in pieces], amps), mosaic([p[1] for p in pieces], amps)


@LEAN
@given(camera=cameras(), seed=st.integers(0, 2**16))
def test_any_amplifier_layout_reduces_to_the_truth(tmp_path, camera, seed):
    truth, levels = _truth(camera, seed)
    path = tmp_path / "raw.fits"
    write_raw(path, camera, truth, levels)
    os_adu, flags = reduce_file(path)
    assert os_adu.dtype == np.float32
    np.testing.assert_array_equal(os_adu, truth)
    assert not flags.any()


def _frame(values: np.ndarray, tile_rows: int, compressed: bool, unit: str) -> fits.HDUList:
    header = fits.Header({"BUNIT": unit} if unit else {})
    if compressed:
        image = fits.CompImageHDU(values.astype(np.float32), header, compression_type="GZIP_1", quantize_level=0.0,
                                  tile_shape=(tile_rows, values.shape[1]))  # fmt: skip
    else:
        image = fits.ImageHDU(values.astype(np.float32), header)
    return fits.HDUList([fits.PrimaryHDU(), image])


def write_session_files(directory: Path, camera: Camera, seed: int, tile_rows: int, compressed: bool) -> dict:
    """A session folder (raw and masters, no e91) and the numpy reference of its reduction."""
    truth, levels = _truth(camera, seed)
    rng = np.random.default_rng(seed + 1)
    (directory / "data").mkdir(parents=True)
    (directory / "calib").mkdir()
    write_raw(directory / "data" / f"{directory.name}_raw.fits", camera, truth, levels)
    shape = camera.shape
    bias_e = rng.integers(0, 20, shape).astype(np.float64)
    dark_e_per_s = rng.integers(0, 4, shape) / 4.0
    flat = rng.integers(3, 6, shape) / 4.0
    for kind, values, unit in (
        ("BIAS", bias_e, "electron"),
        ("DARK", dark_e_per_s, "electron/s"),
        ("SKYFLAT", flat, ""),
    ):
        _frame(values, tile_rows, compressed, unit).writeto(directory / "calib" / f"{kind}_x.fits")
    gain, darktime = 2.0, 12.0
    os_adu = truth
    calib = ((os_adu * gain - bias_e - dark_e_per_s * darktime) / flat / gain).astype(np.float32)
    return {"os": os_adu.astype(np.float32), "calib": calib}


@st.composite
def chunkings(draw) -> tuple[ChunkParams, Camera]:
    chunk = draw(st.sampled_from([4, 8, 16, 32]))
    strip = chunk * draw(st.integers(1, 3))
    rows = max(1, draw(st.integers(0, 4)) * draw(st.sampled_from([chunk, strip])) + draw(st.integers(-2, 25)))
    camera = draw(cameras(max_rows=1))  # layout drawn, then stretched to ``rows``
    per_row, extra = divmod(rows, len(camera.heights))
    if per_row == 0:
        camera = draw(cameras(max_rows=1).filter(lambda c: len(c.heights) == 1))
        per_row, extra = rows, 0
    heights = tuple(per_row + (k < extra) for k in range(len(camera.heights)))
    return ChunkParams(strip_rows=strip, store_chunk_px=chunk), _replace(camera, heights=heights)


def _replace(camera: Camera, **changes) -> Camera:
    return Camera(**{**camera.__dict__, **changes})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    setting=chunkings(),
    seed=st.integers(0, 2**16),
    tile_rows=st.integers(1, 40),
    compressed=st.booleans(),
)
def test_any_frame_height_strips_and_chunks_give_the_reference_store(tmp_path_factory, setting, seed, tile_rows,
                                                                     compressed):  # fmt: skip
    chunks, camera = setting
    root = tmp_path_factory.mktemp("archive")
    directory = root / "testcam_r" / "obs1"
    expected = write_session_files(directory, camera, seed, tile_rows, compressed)
    config = Config(chunks=chunks)
    graph = build_session(load_session(directory), config)
    store = root / "out.zarr"
    with dask.config.set(scheduler="sync"):
        dask.compute(write_session(graph.dataset, store, "testcam_r/obs1", chunks.store_chunk_px))
    written = xr.open_zarr(store, group="testcam_r/obs1", consolidated=False)
    np.testing.assert_array_equal(written["os"].values, expected["os"])
    np.testing.assert_allclose(written["calib"].values, expected["calib"], rtol=1e-6, atol=1e-4)
    assert written["mask"].shape == camera.shape
