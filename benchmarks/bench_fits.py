"""Benchmark of the FITS reading layer on full-size compressed frames, several tilings.

    python benchmarks/bench_fits.py [--rows 2048 --cols 2080 --repeats 15 --strip 512 --json PATH]

The frame is uint16, written by astropy with RICE_1 (seeded: a 1000 ADU level with a gradient
and Poisson noise, like a raw LCO frame with its overscan columns), once with fpack's default
one-row tiles, once with 256 x 256 and once with 128 x 128 tiles (all three read by the
reader's ``"rice"`` decoder). Two more one-row-tiled frames stand for a reduced (e91) frame:
``quantized_one_row``, the same frame as float32 quantized like fpack (RICE_1, level 64,
SUBTRACTIVE_DITHER_1, a fixed ZDITHER0; ``"rice"`` decoder), and ``plio_one_row``, a uint8
PLIO_1 mask of its pixels above 1250 ADU (``"plio"`` decoder). For each, best time of
``--repeats`` interleaved runs:

* ``astropy_full``  ``fits.getdata(path, 1)``, one plain full read (the reference: it opens
                    the file and parses its headers every time);
* ``fitsio_full``   ``fitsio.read(path, ext=1)``, the same through cfitsio (the decoder these
                    layouts would otherwise get);
* ``chunked_full``  the whole frame through the pipeline's path, from a closed file (the
                    reader's open-file cache is emptied first, so the open is paid once):
                    ``lazy_image`` row strips of ``--strip`` rows computed with Dask's
                    synchronous scheduler (one core, so the figure is the cost, not a parallel
                    speed-up);
* ``cutout_256``    a central 256 x 256 cutout at (896, 912), not aligned to any tiling, with
                    ``read_cutout`` on a file the reader already holds open (as when the stack
                    reads patch after patch of the same frames); decodes only the tiles it
                    covers: 2 x 2 tiles of 256, 3 x 3 of 128, 256 rows of one-row tiles;
* ``cutout_256_cold``  the same cutout from a closed file (open and header parsing included);
* ``cutout_256_aligned``  the 256 x 256 cutout at (1024, 1024), one 256-tile, file open.

Ratios, of the best CPU (process) times, which load from other processes disturbs less than
wall times (those ratios are reported too, ``wall_*``): ``chunked_full / astropy_full``
(``chunked_over_fitsio`` likewise against cfitsio) and ``astropy_full / cutout_256``
(``cold_cutout_speedup`` for the cold cutout); the targets are benchmarks/test_bench_fits.py's.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import fitsio
import numpy as np
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.io.fits_files import close_open_files  # noqa: E402
from pipeline.io.fits_headers import image  # noqa: E402
from pipeline.io.fits_reader import lazy_image, read_cutout  # noqa: E402

TILINGS = {  # name: (tile_shape or None for one-row tiles, pixels)
    "one_row": (None, "raw"),
    "tiles_256": ((256, 256), "raw"),
    "tiles_128": ((128, 128), "raw"),
    "quantized_one_row": (None, "quantized"),
    "plio_one_row": (None, "mask"),
}
COMPRESSION = {  # pixels: the frame's dtype and astropy's compression options
    "raw": (np.uint16, {"compression_type": "RICE_1"}),
    "quantized": (
        np.float32,
        {"compression_type": "RICE_1", "quantize_level": 64, "quantize_method": 1, "dither_seed": 8433},
    ),
    "mask": (np.uint8, {"compression_type": "PLIO_1"}),
}


def make_frame(path: Path, rows: int, cols: int, tile_shape, pixels: str = "raw") -> Path:
    """A seeded raw-like frame compressed with ``tile_shape`` (None: one row): ``pixels`` is
    ``"raw"`` (uint16 counts), ``"quantized"`` (the counts as float32, quantized) or ``"mask"``
    (uint8, 1 where the counts exceed 1250 ADU)."""
    rng = np.random.default_rng(0)
    level = 1000 + 200 * np.linspace(0, 1, cols)[None, :] + 100 * np.linspace(0, 1, rows)[:, None]
    counts = rng.poisson(level)
    dtype, options = COMPRESSION[pixels]
    data = (counts > 1250) if pixels == "mask" else counts
    options = options | ({} if tile_shape is None else {"tile_shape": tile_shape})
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data.astype(dtype), **options)]).writeto(path, overwrite=True)
    return path


def _best_interleaved(methods: dict, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Best wall and best CPU (process) seconds of each method; repeat r runs every method once,
    so load from other processes on a shared machine hits all of them alike."""
    wall, cpu = dict.fromkeys(methods, float("inf")), dict.fromkeys(methods, float("inf"))
    for _ in range(repeats):
        for name, fn in methods.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
            wall[name] = min(wall[name], time.perf_counter() - start)
    return wall, cpu


def _cold(read):
    """``read`` run from a closed file: the reader's open-file cache emptied first."""

    def run():
        close_open_files()
        return read()

    return run


def measure(path: Path, repeats: int, strip: int) -> dict:
    """Best seconds of the three reads of ``path`` and their ratios; checks bit-identity."""
    ref = image(path)
    ny, nx = ref.shape
    y0, x0 = (ny - 256) // 2, (nx - 256) // 2  # (896, 912) at full size
    expected = fits.getdata(path, 1)
    assert np.array_equal(lazy_image(ref, strip, "bench").compute(scheduler="sync"), expected)
    assert np.array_equal(read_cutout(ref, y0, y0 + 256, x0, x0 + 256), expected[y0 : y0 + 256, x0 : x0 + 256])

    def cutout():
        return read_cutout(ref, y0, y0 + 256, x0, x0 + 256)

    seconds, cpu = _best_interleaved(
        {
            "astropy_full": lambda: fits.getdata(path, 1),
            "fitsio_full": lambda: fitsio.read(path, ext=1),
            "chunked_full": _cold(lambda: lazy_image(ref, strip, "bench").compute(scheduler="sync")),
            "cutout_256": cutout,
            "cutout_256_cold": _cold(cutout),
            "cutout_256_aligned": lambda: read_cutout(ref, 1024, 1280, 1024, 1280),
        },
        repeats,
    )
    return {
        "tile_rows": ref.tile_rows,
        "decoder": ref.decoder,
        "file_mb": round(path.stat().st_size / 2**20, 2),
        "best_seconds": {k: round(v, 5) for k, v in seconds.items()},
        "best_cpu_seconds": {k: round(v, 5) for k, v in cpu.items()},
        "chunked_over_astropy": round(cpu["chunked_full"] / cpu["astropy_full"], 3),
        "chunked_over_fitsio": round(cpu["chunked_full"] / cpu["fitsio_full"], 3),
        "cutout_speedup": round(cpu["astropy_full"] / cpu["cutout_256"], 1),
        "cold_cutout_speedup": round(cpu["astropy_full"] / cpu["cutout_256_cold"], 1),
        "aligned_cutout_speedup": round(cpu["astropy_full"] / cpu["cutout_256_aligned"], 1),
        "wall_chunked_over_astropy": round(seconds["chunked_full"] / seconds["astropy_full"], 3),
        "wall_cutout_speedup": round(seconds["astropy_full"] / seconds["cutout_256"], 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=2080)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--strip", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = {
        "frame": [args.rows, args.cols],
        "strip_rows": args.strip,
        "repeats": args.repeats,
        "machine": platform.platform(),
        "tilings": {},
    }
    for name, (tile_shape, pixels) in TILINGS.items():
        path = make_frame(args.workdir / f"skyprep_bench_{name}.fits.fz", args.rows, args.cols, tile_shape, pixels)
        try:
            report["tilings"][name] = measure(path, args.repeats, args.strip)
        finally:
            path.unlink()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return report


if __name__ == "__main__":
    main()
