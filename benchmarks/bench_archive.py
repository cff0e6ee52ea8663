"""The training loader at archive scale (issue 15): ``python -m benchmarks.bench_archive``.

A store of 48 sessions of 2048 x 2048 (``os``, ``calib``, ``variance``, ``mask``: 2.3 GB, more
than any per-process cache) is written once into ``--workdir`` by the store's own writer
(``pipeline.io.store.write_session`` + ``mark_complete``, the default layout), and a copy in the
layout before issue 15 (``v1``: 512 px chunks, blosc-lz4 floats, zstd integers) next to it, plus
the authors' route (one ``.npy`` per session and variable). Both are reused by later runs.

Every route reads the same random 256 x 256 windows (the loader's own origins, default
``LoaderParams``: ``os -> calib`` with ``mask`` and ``variance``, four windows per sample) from
a warm page cache, in one process unless said otherwise; the routes of one repeat run back to
back and the table gives each route's median over the repeats, the ratios being taken within
each repeat. Whole-frame reads (every variable of 8 sessions) are measured on both layouts.
Peak memory: the high-water mark of the resident set (``VmHWM``) of each DataLoader worker.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SESSIONS, SIZE, PATCH, BATCH = 48, 2048, 256, 32
VARIABLES = ("os", "calib", "variance", "mask")


def session_arrays(k: int, size_px: int) -> dict[str, np.ndarray]:
    """One session's arrays: a sky of ~1000 ADU with a gradient and Poisson noise (``os``, integer
    valued), ``calib`` (flat-fielded, noisy floats), its ``variance`` (ADU^2) and a sparse ``mask``."""
    rng = np.random.default_rng(k)
    yy, xx = np.mgrid[0:size_px, 0:size_px].astype(np.float32) / size_px
    sky = 1000.0 + 200.0 * yy + 100.0 * xx + 50.0 * k / SESSIONS
    os_adu = rng.poisson(sky).astype(np.float32)
    flat = (1.0 + 0.02 * rng.standard_normal((size_px, size_px))).astype(np.float32)
    calib = os_adu / flat
    variance = (np.maximum(calib, 0.0) / 1.8 + 9.0).astype(np.float32)
    mask = np.zeros((size_px, size_px), np.uint16)
    hits = rng.integers(0, size_px, (2, size_px * 2))
    mask[hits[0], hits[1]] = 8  # cosmic rays
    mask[:, rng.integers(0, size_px, 3)] |= 1  # bad columns
    return {"os": os_adu, "calib": calib, "variance": variance, "mask": mask}


def _mark_complete(store: Path, key: str) -> None:
    """Mark a benchmark session complete, with an empty provenance."""
    from pipeline.io.index import mark_complete
    from pipeline.io.provenance import Provenance

    instrument, obs_id = key.split("/")
    mark_complete(store, key, {"instrument": instrument, "band": "x", "obs_id": obs_id},
                  Provenance(registration=[], inputs=[], array_sha256={}, reference_check={}, config={}))  # fmt: skip


def _write_v2(store: Path, key: str, arrays: dict) -> None:
    import dask
    import dask.array as da
    import xarray as xr

    from pipeline.config import ChunkParams
    from pipeline.io.store import write_session

    chunks = ChunkParams()
    data = {name: (("y", "x"), da.from_array(a, chunks=(chunks.strip_rows, a.shape[1]))) for name, a in arrays.items()}
    dask.compute(write_session(xr.Dataset(data), store, key, chunks.store_chunk_px))
    _mark_complete(store, key)


def _write_v1(store: Path, key: str, arrays: dict) -> None:
    """The layout of store version 1 (before issue 15), written by zarr-python directly."""
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    from pipeline.io.index import index_document, open_index

    if index_document(store) is None:
        open_index(store)
    group = zarr.open_group(str(store), mode="a", zarr_format=3).require_group(key)
    for name, a in arrays.items():
        floating = np.issubdtype(a.dtype, np.floating)
        codec = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle") if floating else ZstdCodec(level=1)
        array = group.create_array(name, shape=a.shape, dtype=a.dtype, chunks=(512, 512), compressors=[codec],
                                   dimension_names=("y", "x"), overwrite=True)  # fmt: skip
        array[...] = a
    _mark_complete(store, key)


def build(workdir: Path, sessions: int, size_px: int) -> dict[str, Path]:
    """Write (or reuse) the three copies of the archive; ``{"v2": store, "v1": store, "npy": dir}``."""
    from pipeline.io.index import complete_sessions

    paths = {"v2": workdir / f"archive-{sessions}x{size_px}.zarr", "v1": workdir / f"archive-{sessions}x{size_px}-v1.zarr",
             "npy": workdir / f"archive-{sessions}x{size_px}-npy"}  # fmt: skip
    paths["npy"].mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for k in range(sessions):
        key = f"bench_x/obs{k:03d}"
        missing = [key not in complete_sessions(p) for p in (paths["v2"], paths["v1"])]
        npys = [paths["npy"] / f"obs{k:03d}_{name}.npy" for name in VARIABLES]
        if not any(missing) and all(p.exists() for p in npys):
            continue
        arrays = session_arrays(k, size_px)
        if missing[0]:
            _write_v2(paths["v2"], key, arrays)
        if missing[1]:
            _write_v1(paths["v1"], key, arrays)
        for name, path in zip(VARIABLES, npys):
            np.save(path, arrays[name])
        print(f"built session {k + 1}/{sessions} ({time.perf_counter() - start:.0f} s)", flush=True)
    return paths


def _warm(paths: list[Path]) -> None:
    """Read every file once so that the page cache holds them (as after a training epoch)."""
    for path in paths:
        subprocess.run(
            ["find", str(path), "-type", "f", "-exec", "cat", "{}", "+"], stdout=subprocess.DEVNULL, check=True
        )


def _rate(run, count: int) -> float:
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_repeat(paths: dict[str, Path], n: int, workers: tuple[int, ...]) -> dict[str, float]:
    """Samples per second of every route (and whole-frame reads, worker peaks), one pass each."""
    import tensorstore as ts
    import zarr

    from pipeline.tools.loader import LoaderParams, PatchDataset

    params = LoaderParams(patches_per_epoch=n)  # the defaults: os -> calib, 256 px, mask and variance
    dataset = PatchDataset(paths["v2"], params)
    dataset.set_epoch(1)
    for i in range(0, n, BATCH):  # opens the arrays (the timed pass reads epoch 0)
        dataset.__getitems__(range(i, min(i + BATCH, n)))
    dataset.set_epoch(0)
    origins = dataset.origins(range(n))
    sessions = [dataset.sessions[s] for s in origins[:, 0]]
    r = {}

    def loader_batches(ds=dataset):
        for i in range(0, n, BATCH):
            ds.__getitems__(range(i, min(i + BATCH, n)))

    r["skyprep loader, batches of 32 (__getitems__)"] = _rate(loader_batches, n)
    r["skyprep loader, one sample at a time (ds[i])"] = _rate(lambda: [dataset[i] for i in range(n // 2)], n // 2)

    context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
    for layout in ("v2", "v1"):
        stores = {(key, name): ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(paths[layout] / key / name)}},
                                       read=True, context=context).result()
                  for key in dataset.sessions for name in VARIABLES}  # fmt: skip

        def ts_samples(stores=stores, count=n // 2):
            for key, (_, y, x) in zip(sessions[:count], origins[:count]):
                futures = [stores[key, name][y : y + PATCH, x : x + PATCH].read() for name in VARIABLES]
                [f.result() for f in futures]

        def ts_batches(stores=stores, count=n // 2):
            for i in range(0, count, BATCH):
                futures = [stores[key, name][y : y + PATCH, x : x + PATCH].read()
                           for key, (_, y, x) in zip(sessions[i : i + BATCH], origins[i : i + BATCH]) for name in VARIABLES]  # fmt: skip
                [f.result() for f in futures]

        r[f"tensorstore direct ({layout} store), 4 reads in flight per sample"] = _rate(ts_samples, n // 2)
        r[f"tensorstore direct ({layout} store), a batch of 32 in flight"] = _rate(ts_batches, n // 2)

    arrays = {
        (key, name): zarr.open_array(str(paths["v2"] / key / name), mode="r")
        for key in dataset.sessions
        for name in VARIABLES
    }
    count = max(n // 16, 32)
    r["zarr-python direct (v2 store)"] = _rate(lambda: [arrays[key, name][y : y + PATCH, x : x + PATCH]
                                                        for key, (_, y, x) in zip(sessions[:count], origins[:count])
                                                        for name in VARIABLES], count)  # fmt: skip
    npys = {(key, name): np.load(paths["npy"] / f"{key.split('/')[1]}_{name}.npy", mmap_mode="r")
            for key in dataset.sessions for name in VARIABLES}  # fmt: skip
    r[".npy memory-mapped (the authors' route)"] = _rate(lambda: [np.array(npys[key, name][y : y + PATCH, x : x + PATCH])
                                                                 for key, (_, y, x) in zip(sessions, origins)
                                                                 for name in VARIABLES], n)  # fmt: skip
    old = PatchDataset(paths["v1"], params)
    r["skyprep loader on a v1 store (tensorstore path), batches of 32"] = _rate(lambda: loader_batches(old), n)

    r["peak RSS, one process serving 2 epochs (fresh process), MB"] = one_process_peak_mb(paths["v2"], n)
    for w in workers:
        rate, peaks = _dataloader(paths["v2"], params, w)
        r[f"skyprep via torch DataLoader, {w} workers, batch 32, pin_memory"] = rate
        r[f"peak RSS per DataLoader worker ({w} workers), MB"] = max(peaks)

    frames = dataset.sessions[:8]
    for layout in ("v2", "v1"):
        z = {key: [zarr.open_array(str(paths[layout] / key / name), mode="r") for name in VARIABLES] for key in frames}
        r[f"whole frames, zarr-python ({layout} store), frames/s"] = _rate(
            lambda z=z: [a[...] for k in frames for a in z[k]], 4 * len(frames)
        )
        t = {key: [ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(paths[layout] / key / name)}},
                           read=True, context=context).result() for name in VARIABLES] for key in frames}  # fmt: skip
        r[f"whole frames, tensorstore ({layout} store), frames/s"] = _rate(
            lambda t=t: [a.read().result() for k in frames for a in t[k]], 4 * len(frames)
        )
        tiled = PatchDataset(paths[layout], LoaderParams(mode="tiled"))
        tiles = int((tiled.origins(range(len(tiled)))[:, 0] < len(frames)).sum())  # the first 8 sessions, whole
        r[f"whole frames, skyprep loader tiled mode ({layout} store), patches/s"] = _rate(
            lambda tiled=tiled, tiles=tiles: [tiled.__getitems__(range(i, min(i + 64, tiles))) for i in range(0, tiles, 64)], tiles)  # fmt: skip
    return r


def profile(store: Path, n: int, rounds: int = 3) -> dict[str, float]:
    """Where a default sample's time goes, in microseconds per sample: each variable's windows
    read a batch of 32 at a time (``_StoreReader.windows``: the ``preadv`` s and the NaN/inf
    check), ``asinh`` of the two normalised ones (not in the default parameters), the whole
    ``__getitems__`` (batches of 32) and its user and system CPU time; stages interleaved, best of
    ``rounds`` (the machine is shared)."""
    from pipeline.tools.loader import LoaderParams, PatchDataset, asinh_normalise

    dataset = PatchDataset(store, LoaderParams(patches_per_epoch=n))
    origins = dataset.origins(range(n))
    sessions = [dataset.sessions[s] for s in origins[:, 0].tolist()]
    windows = np.empty((BATCH, PATCH, PATCH), np.float32)
    masks = np.empty((BATCH, PATCH, PATCH), np.int32)
    reader = dataset._store_reader()

    def read(name, out):
        for i in range(0, n, BATCH):
            k = min(BATCH, n - i)
            reader.windows(sessions[i : i + k], name, (), origins[i : i + k, 1:], out[:k])

    def batches():
        for i in range(0, n, BATCH):
            dataset.__getitems__(range(i, min(i + BATCH, n)))

    stages = {f"windows read, {name}": (lambda name=name: read(name, masks if name == "mask" else windows))
              for name in VARIABLES}  # fmt: skip
    stages["asinh, 2 windows (normalise='asinh' only)"] = lambda: [asinh_normalise(w, 10.0, out=w) for w in windows
                                                                   for _ in range(2 * n // BATCH)]  # fmt: skip
    stages["whole sample, batches of 32"] = batches
    batches()  # opens the arrays and the chunk files
    best = {k: float("inf") for k in stages}
    for _ in range(rounds):
        for key, stage in stages.items():
            start, times = time.perf_counter(), os.times()
            stage()
            elapsed, spent = time.perf_counter() - start, os.times()
            if elapsed / n * 1e6 < best[key] and key.startswith("whole"):
                best["whole sample, user CPU"] = (spent.user - times.user) / n * 1e6
                best["whole sample, system CPU"] = (spent.system - times.system) / n * 1e6
            best[key] = min(best[key], elapsed / n * 1e6)
    parts = sum(v for k, v in best.items() if k.startswith("windows read"))
    best["rest of a default sample (Python, allocation, origins)"] = best["whole sample, batches of 32"] - parts
    return best


_ONE_PROCESS = """
import os, sys
from pipeline.tools.loader import LoaderParams, PatchDataset
n = int(sys.argv[2])
ds = PatchDataset(sys.argv[1], LoaderParams(patches_per_epoch=n))
for epoch in range(2):
    ds.set_epoch(epoch)
    for i in range(0, n, 32):
        ds.__getitems__(range(i, min(i + 32, n)))
print(next(line.split()[1] for line in open(f"/proc/{os.getpid()}/status") if line.startswith("VmHWM:")))
"""


def one_process_peak_mb(store: Path, n: int) -> float:
    """Peak RSS (``VmHWM``, MB) of a fresh process serving two epochs of ``n`` default samples."""
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", _ONE_PROCESS, str(store), str(n)], check=True,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})  # fmt: skip
    return int(done.stdout.split()[-1]) / 1024


_TILED = """
import sys, time
from pipeline.tools.loader import LoaderParams, PatchDataset
ds = PatchDataset(sys.argv[1], LoaderParams(mode="tiled"))
tiles = [i for i in range(len(ds)) if ds.origin(i)[0] < int(sys.argv[2])]
[ds[i] for i in tiles[:4]]
start = time.perf_counter()
[ds[i] for i in tiles]
print(len(tiles) / (time.perf_counter() - start))
"""


def frames_against(paths: dict[str, Path], rev: str, rounds: int, frames: int = 8) -> dict[str, list[float]]:
    """Whole frames (tiled mode, ``ds[i]``, the first ``frames`` sessions) read by revision ``rev``'s
    loader from the v1-layout store and by this tree's loader from the v2 store, each a fresh
    process, alternating; patches/s per round. ``rev``'s copy of the v1 store shares its chunk
    files (hard links) and carries that revision's store version in its index."""
    import tempfile

    from benchmarks.bench_revisions import ROOT, unpack

    rates: dict[str, list[float]] = {rev: [], "this": []}
    with tempfile.TemporaryDirectory() as tmp:
        code = unpack(rev, Path(tmp) / "code")
        version = subprocess.run([sys.executable, "-c", "from pipeline.io.contract import STORE_VERSION as v; print(v)"],
                                 cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, check=True,
                                 capture_output=True, text=True).stdout.strip()  # fmt: skip
        store = paths["v1"].with_name(f"{paths['v1'].stem}-as-version-{version}.zarr")
        if not store.exists():
            subprocess.run(["cp", "-al", str(paths["v1"]), str(store)], check=True)
            root = json.loads((store / "zarr.json").read_text())
            root["attributes"]["skyprep"]["store_version"] = int(version)
            (store / "zarr.json").unlink()
            (store / "zarr.json").write_text(json.dumps(root))
        runs = {rev: (code, store), "this": (ROOT, paths["v2"])}
        for _ in range(rounds):
            for name, (tree, path) in runs.items():
                done = subprocess.run([sys.executable, "-W", "ignore", "-c", _TILED, str(path), str(frames)], cwd=tree,
                                      env={**os.environ, "PYTHONPATH": str(tree)}, check=True, capture_output=True,
                                      text=True)  # fmt: skip
                rates[name].append(float(done.stdout.split()[-1]))
    return rates


def _dataloader(store: Path, params, workers: int) -> tuple[float, list[float]]:
    """Samples per second of the second epoch through a DataLoader, and each worker's peak RSS (MB)."""
    from torch.utils.data import DataLoader

    from pipeline.tools.loader import torch_dataset

    loader = DataLoader(torch_dataset(store, params), batch_size=BATCH, num_workers=workers, pin_memory=True,
                        multiprocessing_context="forkserver", persistent_workers=True)  # fmt: skip
    sum(len(b["input"]) for b in loader)  # first epoch: workers start and open the arrays
    start = time.perf_counter()
    count = sum(len(b["input"]) for b in loader)
    rate = count / (time.perf_counter() - start)
    peaks = [_vm_hwm_mb(w.pid) for w in loader._iterator._workers]
    del loader
    return rate, peaks


def targets(median: dict, ratios: dict) -> dict[str, bool]:
    """The issue's targets, each met or not."""
    ts_best = "loader / best tensorstore direct (v2)"
    return {
        "loader >= 1x tensorstore direct": ratios[ts_best] >= 1.0,
        "loader >= 3x tensorstore direct (moonshot)": ratios[ts_best] >= 3.0,
        "loader >= 2000 samples/s, one process": median["skyprep loader, batches of 32 (__getitems__)"] >= 2000,
        "loader >= 5000 samples/s (moonshot)": median["skyprep loader, batches of 32 (__getitems__)"] >= 5000,
        "whole frames (loader tiled, v2) >= v1": ratios["loader tiled v2 / v1"] >= 1.0,
    }


def run_benchmark(workdir: Path, sessions: int = SESSIONS, size_px: int = SIZE, n: int = 4096, repeats: int = 3,
                  workers: tuple[int, ...] = (2, 4)) -> dict:  # fmt: skip
    paths = build(workdir, sessions, size_px)
    _warm(list(paths.values()))
    runs, loads = [], []
    for repeat in range(repeats):
        load_before = os.getloadavg()[0]
        runs.append(one_repeat(paths, n, workers))
        loads.append((load_before, os.getloadavg()[0]))
        print(f"repeat {repeat + 1}/{repeats} done (load average {loads[-1][0]:.1f} -> {loads[-1][1]:.1f})", flush=True)
    median = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
    loader = "skyprep loader, batches of 32 (__getitems__)"

    def ratio(run, a, b):
        return run[a] / run[b]

    ts_keys = [k for k in runs[0] if k.startswith("tensorstore direct (v2")]
    ratios = {
        "loader / best tensorstore direct (v2)": statistics.median(
            run[loader] / max(run[k] for k in ts_keys) for run in runs
        ),
        "loader / tensorstore direct on v1 (the issue's reference)": statistics.median(
            run[loader] / max(run[k] for k in runs[0] if k.startswith("tensorstore direct (v1")) for run in runs
        ),
        "loader / .npy": statistics.median(
            ratio(run, loader, ".npy memory-mapped (the authors' route)") for run in runs
        ),
        "loader tiled v2 / v1": statistics.median(
            ratio(
                run,
                "whole frames, skyprep loader tiled mode (v2 store), patches/s",
                "whole frames, skyprep loader tiled mode (v1 store), patches/s",
            )
            for run in runs
        ),  # fmt: skip
    }
    return {"sessions": sessions, "size_px": size_px, "samples": n, "repeats": runs, "median": median,
            "ratios": ratios, "load_average": loads, "targets": targets(median, ratios),
            "store_mb": {k: _du_mb(p) for k, p in paths.items()}}  # fmt: skip


def _du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def format_table(report: dict) -> str:
    lines = [f"{report['sessions']} sessions of {report['size_px']}^2, random {PATCH}^2 samples (os, calib, mask, variance); "
             f"median of {len(report['repeats'])} repeats; load average (before, after) {report['load_average']}",
             "", "| route | median | repeats |", "|---|---|---|"]  # fmt: skip
    for key, value in report["median"].items():
        lines.append(f"| {key} | {value:.0f} | {', '.join(f'{run[key]:.0f}' for run in report['repeats'])} |")
    lines += ["", "| ratio (within each repeat, median) | |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in report["ratios"].items()]
    lines += ["", "store sizes, MB: " + ", ".join(f"{k} {v:.0f}" for k, v in report["store_mb"].items())]
    lines += ["", "targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in report["targets"].items())]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/skyprep-bench"), help="where the archive is written once")
    p.add_argument("--sessions", type=int, default=SESSIONS)
    p.add_argument("--size", type=int, default=SIZE, help="frame side, pixels")
    p.add_argument("--samples", type=int, default=4096, help="random samples per route and repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", default="2,4", help="DataLoader worker counts ('' for none)")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--profile", action="store_true", help="only the per-sample time split (microseconds per sample)")
    p.add_argument("--frames-against", metavar="REV", help="only whole-frame reads against revision REV's loader")
    args = p.parse_args(argv)
    if args.frames_against:
        paths = build(args.workdir, args.sessions, args.size)
        _warm([paths["v1"], paths["v2"]])
        load = os.getloadavg()[0]
        rates = frames_against(paths, args.frames_against, args.repeats)
        print(f"whole frames, tiled ds[i], patches/s per round (load average {load:.1f} -> {os.getloadavg()[0]:.1f})")
        ratio = statistics.median(a / b for a, b in zip(rates["this"], rates[args.frames_against]))
        print(f"{rates}; this / {args.frames_against}: {ratio:.2f} (median of the rounds)")
        return rates
    if args.profile:
        paths = build(args.workdir, args.sessions, args.size)
        _warm([paths["v2"]])
        load = os.getloadavg()[0]
        split = profile(paths["v2"], args.samples, args.repeats)
        print(
            f"per-sample time split, us (best of {args.repeats}; load average {load:.1f} -> {os.getloadavg()[0]:.1f})"
        )
        print("\n".join(f"| {k} | {v:.0f} |" for k, v in split.items()))
        return split
    workers = tuple(int(w) for w in args.workers.split(",") if w)
    report = run_benchmark(args.workdir, args.sessions, args.size, args.samples, args.repeats, workers)
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
