"""Zarr codecs on the pipeline's own arrays: write time, whole-array read time and ratio.

    python -m benchmarks.bench_codecs STORE [--session KEY] [--frames 4] [--repeats 3]

STORE is a store written by ``skyprep run`` (e.g. the end-to-end benchmark's
``/tmp/skyprep-bench/e2e-2x2048-20.zarr``). Every image variable of one session (cubes: the
first ``--frames`` frames) is rewritten into a scratch array with the store's chunks and each
codec; best of ``--repeats`` write and read times (one process, one thread of zarr's codec
pipeline per chunk as in a Dask task) and the compression ratio (array bytes / bytes on disk).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from pipeline.io.index import index

CODECS = {
    "zstd (zarr default, level 3)": [ZstdCodec(level=0)],
    "zstd level 1": [ZstdCodec(level=1)],
    "blosc-lz4 + shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "blosc-zstd1 + shuffle": [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
}


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(values: np.ndarray, chunks: tuple[int, ...], codec: list, scratch: Path, repeats: int) -> dict:
    """Write and read times (s) and ratio of ``values`` stored with ``codec``."""
    shutil.rmtree(scratch, ignore_errors=True)
    array = zarr.create_array(str(scratch), shape=values.shape, chunks=chunks, dtype=values.dtype, compressors=codec)

    def write():
        array[...] = values

    write_s = _best(write, repeats)
    read_s = _best(lambda: array[...], repeats)
    return {"write_s": write_s, "read_s": read_s, "ratio": values.nbytes / _disk_bytes(scratch)}


def run_benchmark(store: Path, session: str | None = None, frames: int = 4, repeats: int = 3) -> dict:
    key = session or sorted(index(store))[0]
    group = zarr.open_group(str(store), path=key, mode="r")
    results = {}
    with tempfile.TemporaryDirectory(prefix="skyprep-codecs-") as tmp:
        for name in sorted(group.array_keys()):
            array = group[name]
            if array.ndim < 2:
                continue
            values = array[:frames] if array.ndim == 3 else array[...]
            results[name] = {
                "dtype": str(values.dtype),
                **{
                    label: measure(values, array.chunks, codec, Path(tmp) / "a.zarr", repeats)
                    for label, codec in CODECS.items()
                },
            }
    if not results:
        raise ValueError(f"{store} [{key}]: no image arrays to measure")
    return {"benchmark": "codecs", "store": str(store), "session": key, "frames": frames, "arrays": results}


def format_table(report: dict) -> str:
    labels = list(CODECS)
    lines = [
        f"codecs on {report['store']} [{report['session']}] (cubes: {report['frames']} frames); "
        "write s / read s / ratio",
        "| array | dtype | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for name, row in report["arrays"].items():
        cells = [f"{row[k]['write_s']:.3f} / {row[k]['read_s']:.3f} / {row[k]['ratio']:.2f}" for k in labels]
        lines.append(f"| {name} | {row['dtype']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--session", default=None, help="session key (default: the first in the index)")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    report = run_benchmark(args.store, args.session, args.frames, args.repeats)
    print(format_table(report))
    return report


if __name__ == "__main__":
    main()
