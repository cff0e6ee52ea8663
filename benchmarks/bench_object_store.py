"""fsspec (s3fs) against obstore on a real S3-protocol server (moto on 127.0.0.1): the two access
patterns of the job, byte-range reads of FITS tiles and small-object writes of Zarr chunks.

    .venv/bin/python benchmarks/bench_object_store.py [--repeats 5]

Reads: a 2048 x 2080 uint16 RICE_1 frame (one-row tiles, as fpack writes raw frames) as one
object; single tiles at random (one request each), and 512-row strips (each strip's tiles are
one contiguous byte range). Writes: 256 objects of 64 KiB one after the other, and a 2048 x 2048
float32 Zarr array of 256 x 256 chunks written and read whole through zarr's ``FsspecStore`` and
``ObjectStore``. Medians of interleaved repeats; the server runs on the same 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import obstore
import s3fs
import zarr
from astropy.io import fits
from obstore.store import S3Store
from zarr.storage import FsspecStore, ObjectStore

from pipeline.io.fits_reader import _open_tiles
from tests.s3_server import S3Server


def _frame_file(directory: Path) -> tuple[bytes, np.ndarray]:
    """A raw-like compressed frame and the (bytes, file offset) extents of its tiles."""
    pixels = np.random.default_rng(0).poisson(1100, (2080, 2048)).astype(np.uint16)
    path = directory / "raw.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(pixels, compression_type="RICE_1")]).writeto(path)
    tiles = _open_tiles(str(path), 1)
    extents = tiles.extents.copy()
    tiles.close()
    return path.read_bytes(), extents


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tiles", type=int, default=200)
    p.add_argument("--objects", type=int, default=256)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, S3Server() as server:
        os.environ.update(server.environment)
        bucket = server.bucket("bench")
        data, extents = _frame_file(Path(tmp))
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        store = S3Store(bucket)
        obstore.put(store, "raw.fits.fz", data)
        rng = np.random.default_rng(1)
        picks = rng.choice(len(extents), args.tiles, replace=False)
        strips = [(extents[y0, 1], extents[y0 + 511, 1] + extents[y0 + 511, 0]) for y0 in range(0, 2048, 512)]
        payload = rng.integers(0, 255, 64 * 1024, dtype=np.uint8).tobytes()
        image = rng.normal(1000, 30, (2048, 2048)).astype(np.float32)
        key = f"{bucket}/raw.fits.fz"
        cases = {
            "tile reads, s3fs cat_file": lambda: [
                fs.cat_file(key, start=int(o), end=int(o + n)) for n, o in extents[picks]
            ],
            "tile reads, obstore get_range": lambda: [
                obstore.get_range(store, "raw.fits.fz", start=int(o), length=int(n)) for n, o in extents[picks]
            ],
            "strip reads, s3fs cat_file": lambda: [fs.cat_file(key, start=int(a), end=int(b)) for a, b in strips],
            "strip reads, obstore get_range": lambda: [
                obstore.get_range(store, "raw.fits.fz", start=int(a), end=int(b)) for a, b in strips
            ],
            "object writes, s3fs pipe_file": lambda: [
                fs.pipe_file(f"{bucket}/w/s3fs/{i}", payload) for i in range(args.objects)
            ],
            "object writes, obstore put": lambda: [
                obstore.put(store, f"w/obs/{i}", payload) for i in range(args.objects)
            ],
        }
        zarr_stores = {
            "FsspecStore (s3fs)": lambda name: FsspecStore(
                s3fs.S3FileSystem(asynchronous=True, skip_instance_cache=True), path=f"{bucket}/{name}"
            ),
            "ObjectStore (obstore)": lambda name: ObjectStore(S3Store(bucket, prefix=name)),
        }
        for label, make in zarr_stores.items():

            def write(make=make, label=label):
                z = zarr.create_array(make(label.split()[0]), shape=image.shape, chunks=(256, 256), dtype="f4",
                                      overwrite=True)  # fmt: skip
                z[...] = image

            def read(make=make, label=label):
                assert (zarr.open_array(make(label.split()[0]), mode="r")[...] == image).all()

            cases[f"zarr write 64 chunks, {label}"] = write
            cases[f"zarr read 64 chunks, {label}"] = read
        for fn in cases.values():  # warm connections
            fn()
        times = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, fn in cases.items():
                times[name].append(_timed(fn))
        result = {name: statistics.median(t) for name, t in times.items()}
        for name, seconds in result.items():
            print(f"{name:<44} {seconds * 1000:9.1f} ms")
        print(json.dumps({"tile_bytes_median": int(np.median(extents[:, 0])), "tiles": args.tiles,
                          "objects": args.objects, "seconds": result}))  # fmt: skip


if __name__ == "__main__":
    main()
