"""Store layout and loader throughput on this machine (``python benchmarks/bench_loader.py``).

Two tables, printed as Markdown:

1. layout: random 256 x 256 patch reads per second, whole-frame reads per second and bytes on
   disk of one float32 image variable, for several chunk / shard / codec choices (zarr-python);
2. loader: patches per second of ``pipeline.tools.loader.PatchDataset`` from one process and through a
   2-worker PyTorch ``DataLoader`` (when torch is installed), against the two routes it replaces:
   a memory-mapped ``.npy`` per frame, and decoding the frame's ``.fits.fz`` for every patch.

The frames are sky-like (Poisson noise on a smooth background, ADU) so the codecs see realistic
entropy. Patch reads are timed after one warm-up pass, so the page cache holds the files (as it
does during training).
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

PATCH = 256
CODECS = {
    "zstd": lambda: [ZstdCodec(level=3)],
    "blosc-lz4": lambda: [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "none": lambda: None,
}


def sky_frames(n_frames: int, size_px: int, seed: int = 0) -> np.ndarray:
    """``(n, size, size)`` float32 frames: a sky of ~1000 ADU with Poisson noise and a gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size_px, 0:size_px] / size_px
    sky = 1000.0 + 200.0 * yy + 100.0 * xx
    return np.stack([rng.poisson(sky).astype(np.float32) for _ in range(n_frames)])


def origins(n: int, n_frames: int, size_px: int, seed: int = 1) -> np.ndarray:
    """``n`` random ``(frame, y, x)`` patch origins."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.integers(0, n_frames, n), rng.integers(0, size_px - PATCH + 1, (2, n)).T])


def rate_per_s(read, points) -> float:
    """Reads per second of ``read(point)`` over ``points`` (after one warm-up read each)."""
    for p in points[: min(len(points), 64)]:
        read(p)
    start = time.perf_counter()
    for p in points:
        read(p)
    return len(points) / (time.perf_counter() - start)


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def layout_row(frames: np.ndarray, root: Path, chunk_px: int, shard_px: int | None, codec: str, n: int) -> dict:
    """Measure one layout: a cube ``(frame, y, x)`` with ``(1, chunk, chunk)`` chunks."""
    path = root / f"c{chunk_px}_s{shard_px}_{codec}.zarr"
    shards = None if shard_px is None else (1, shard_px, shard_px)
    array = zarr.create_array(
        str(path),
        shape=frames.shape,
        dtype="float32",
        chunks=(1, chunk_px, chunk_px),
        shards=shards,
        compressors=CODECS[codec](),
        zarr_format=3,
    )
    array[...] = frames
    array = zarr.open_array(str(path), mode="r")
    points = origins(n, frames.shape[0], frames.shape[1])
    patches = rate_per_s(lambda p: array[p[0], p[1] : p[1] + PATCH, p[2] : p[2] + PATCH], points)
    whole = rate_per_s(lambda k: array[k], np.arange(frames.shape[0]))
    return {
        "chunk": chunk_px,
        "shard": shard_px or "-",
        "codec": codec,
        "patches/s": patches,
        "frames/s": whole,
        "MB": directory_bytes(path) / 1e6,
    }


def loader_rows(frames: np.ndarray, root: Path, n: int) -> list[dict]:
    """Patches per second: the skyprep loader (1 process, 2-worker DataLoader), .npy memmap, .fits.fz."""
    import dask
    import dask.array as da
    import xarray as xr
    from astropy.io import fits

    from pipeline.config import ChunkParams
    from pipeline.io.index import index, mark_complete
    from pipeline.io.provenance import Provenance
    from pipeline.io.store import write_session
    from pipeline.tools.loader import LoaderParams, PatchDataset

    store = root / "loader.zarr"
    size = frames.shape[1]
    for k, frame in enumerate(frames):
        image = da.from_array(frame, chunks=(size, size))
        ds = xr.Dataset(
            {name: (("y", "x"), image) for name in ("os", "calib")}
            | {"mask": (("y", "x"), da.zeros((size, size), dtype=np.uint16, chunks=size))}
        )
        dask.compute(write_session(ds, store, f"bench_x/obs{k}", ChunkParams().store_chunk_px))  # the default layout
        mark_complete(store, f"bench_x/obs{k}", {"instrument": "bench", "band": "x", "obs_id": f"obs{k}"},
                      Provenance([], [], {}, {}, {}))  # fmt: skip
    assert len(index(store)) == len(frames)
    params = LoaderParams(input="os", target="calib", patch_px=PATCH, patches_per_epoch=n, with_variance=False)
    dataset = PatchDataset(store, params)
    rows = [{"route": "skyprep PatchDataset (os + calib + mask), 1 process",
             "patches/s": rate_per_s(lambda i: dataset[i], np.arange(n))}]  # fmt: skip
    try:
        from torch.utils.data import DataLoader

        from pipeline.tools.loader import torch_dataset

        loader = DataLoader(torch_dataset(store, params), batch_size=32, num_workers=2,
                            multiprocessing_context="forkserver", persistent_workers=True)  # fmt: skip
        sum(len(batch["input"]) for batch in loader)  # first epoch: the workers start and open the arrays
        start = time.perf_counter()
        count = sum(len(batch["input"]) for batch in loader)
        rows.append(
            {
                "route": "skyprep via torch DataLoader, 2 workers, batch 32, second epoch",
                "patches/s": count / (time.perf_counter() - start),
            }
        )
    except ImportError:
        rows.append({"route": "torch DataLoader (torch not installed)", "patches/s": float("nan")})
    points = origins(n, len(frames), size)
    npys = []
    for k, frame in enumerate(frames):
        np.save(root / f"frame{k}.npy", frame)
        npys.append(np.load(root / f"frame{k}.npy", mmap_mode="r"))
    rows.append(
        {
            "route": ".npy memory-mapped, one array per patch",
            "patches/s": rate_per_s(lambda p: np.array(npys[p[0]][p[1] : p[1] + PATCH, p[2] : p[2] + PATCH]), points),
        }
    )
    for k, frame in enumerate(frames):
        fits.CompImageHDU(frame, compression_type="RICE_1", quantize_level=16).writeto(root / f"frame{k}.fits.fz")

    def fits_patch(p):
        with fits.open(root / f"frame{p[0]}.fits.fz") as hdul:
            return np.array(hdul[1].data[p[1] : p[1] + PATCH, p[2] : p[2] + PATCH])

    rows.append(
        {
            "route": ".fits.fz decoded per patch (astropy)",
            "patches/s": rate_per_s(fits_patch, points[: max(n // 20, 8)]),
        }
    )
    return rows


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    fmt = [f"{v:.1f}" if isinstance(v, float) else str(v) for row in rows for v in row.values()]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for i in range(len(rows)):
        lines.append("| " + " | ".join(fmt[i * len(keys) : (i + 1) * len(keys)]) + " |")
    return "\n".join(lines)


def main(argv=None) -> tuple[list[dict], list[dict]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="frame side, pixels")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--patches", type=int, default=2000, help="random patches per measurement")
    p.add_argument("--skip-layout", action="store_true")
    args = p.parse_args(argv)
    frames = sky_frames(args.frames, args.size)
    root = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        layout = []
        if not args.skip_layout:
            for chunk_px, shard_px in ((128, None), (256, None), (512, None), (128, 1024), (256, 1024)):
                for codec in CODECS:
                    layout.append(layout_row(frames, root, chunk_px, shard_px, codec, args.patches))
            print(f"## layout: {args.frames} frames of {args.size}^2 float32\n\n{markdown(layout)}\n", flush=True)
        loader = loader_rows(frames, root, args.patches)
        print(f"## loader: random {PATCH}^2 patches\n\n{markdown(loader)}\n", flush=True)
        return layout, loader
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
