"""End-to-end benchmark: ``skyprep run`` against the decompression floor, on the same cluster.

    python -m benchmarks.bench_end_to_end [--sessions 2 --size 2048 --frames 20 --repeats 3 --json PATH]

The archive is the synthetic generator's (``SynthSpec(sessions, size, frames)``: per session a
raw frame, four calibration masters, the archive's own products and ``frames`` e91 frames with
SCI, BPM and ERR), written once into the work directory and reused.

Each repeat starts a new ``LocalCluster`` of single-threaded worker processes, one per core (what
``skyprep run`` starts on this machine), and measures on it:

* floor: every input FITS file of every session opened with astropy and every image extension
  decompressed once (``hdu.data``), one task per file over the same workers; measured before
  and after the job, the smaller wall time is the repeat's floor (the conservative choice);
* job: ``pipeline.runner.run`` with the default configuration (or ``--config``) into a fresh
  store, wall time.

The machine is shared and its speed drifts by 10% or more between runs, so the figure is the
median over the repeats of each repeat's job / floor (every repeat's figures are in the report).
Target: job / floor <= ``TARGET_RATIO``. Also reported: seconds per session and each worker's
peak resident memory (sampled by ``common.PeakRSS``, highest over the repeats).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from astropy.io import fits

from benchmarks.common import PeakRSS, local_client, machine, publish
from pipeline.config import Config, load_config
from pipeline.io.discover import find_sessions
from pipeline.runner import run
from pipeline.synth import SynthSpec, write_archive

TARGET_RATIO = 2.5


def decompress(path: str) -> int:
    """Decompress every image extension of ``path`` with astropy; return the pixels decoded."""
    pixels = 0
    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            if hdu.is_image and hdu.data is not None:
                pixels += hdu.data.size
    return pixels


def floor_seconds(client, files: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    pixels = sum(client.gather(client.map(decompress, files, pure=False)))
    return time.perf_counter() - t0, pixels


def run_benchmark(
    workdir: Path,
    sessions: int = 2,
    size: int = 2048,
    frames: int = 20,
    config: Config | None = None,
    repeats: int = 3,
    verbose: bool = True,
) -> dict:
    config = config or Config()
    log = print if verbose else (lambda *a, **k: None)
    workers = len(os.sched_getaffinity(0))
    archive = workdir / f"e2e-archive-{sessions}x{size}-{frames}"
    t0 = time.perf_counter()
    if not (archive / ".complete").exists():
        shutil.rmtree(archive, ignore_errors=True)
        write_archive(archive, SynthSpec(sessions=sessions, size=size, frames=frames), workers=workers)
        (archive / ".complete").touch()
    log(f"archive {archive} ready in {time.perf_counter() - t0:.1f} s")
    found, problems = find_sessions(archive)
    if problems or len(found) != sessions:
        raise RuntimeError(f"{archive}: expected {sessions} sessions, found {len(found)}, problems {problems}")
    files = [str(p) for s in found for p in s.inputs if ".fits" in p.name]
    store = workdir / f"e2e-{sessions}x{size}-{frames}.zarr"
    runs = [_repeat(archive, store, files, config, workers, log) for _ in range(repeats)]
    ratios = [r["job_seconds"] / r["floor_seconds"] for r in runs]
    median = sorted(range(repeats), key=ratios.__getitem__)[repeats // 2]
    peaks = {}
    for r in runs:
        for k, mb in enumerate(sorted(r["worker_peak_rss_mb"].values(), reverse=True)):
            peaks[f"worker {k}"] = max(peaks.get(f"worker {k}", 0.0), mb)
    return {
        "benchmark": "end_to_end",
        "sessions": sessions,
        "size": size,
        "frames": frames,
        "workers": workers,
        "files": len(files),
        "mpixels_decoded_by_floor": runs[0]["pixels"] / 1e6,
        "repeats": runs,
        "ratios": ratios,
        "floor_seconds": runs[median]["floor_seconds"],
        "job_seconds": runs[median]["job_seconds"],
        "ratio": ratios[median],
        "target_ratio": TARGET_RATIO,
        "seconds_per_session": runs[median]["job_seconds"] / sessions,
        "config": config.to_dict(),
        "worker_peak_rss_mb": peaks,
        "machine": machine(),
    }


def _repeat(archive: Path, store: Path, files: list[str], config: Config, workers: int, log) -> dict:
    """One floor-job-floor measurement on a new cluster."""
    shutil.rmtree(store, ignore_errors=True)
    with local_client(workers) as client:
        client.run(lambda: __import__("pipeline.graph"))  # imports (numba) are not part of either
        floor_before, pixels = floor_seconds(client, files)
        with PeakRSS(client) as rss:
            t0 = time.perf_counter()
            report = run(archive, store, config, client, echo=lambda *a, **k: None)
            job = time.perf_counter() - t0
        floor_after, _ = floor_seconds(client, files)
    if report.exit_code != 0:
        raise RuntimeError(f"skyprep run failed:\n{report.table()}")
    floor = min(floor_before, floor_after)
    log(
        f"job {job:.2f} s, floor {floor:.2f} s (before {floor_before:.2f}, after {floor_after:.2f}): "
        f"ratio {job / floor:.2f}"
    )
    return {
        "job_seconds": job,
        "floor_seconds": floor,
        "floor_seconds_before_after": [floor_before, floor_after],
        "pixels": pixels,
        "worker_peak_rss_mb": rss.peak_mb,
    }


def format_table(r: dict) -> str:
    peaks = ", ".join(f"{v:.0f}" for v in r["worker_peak_rss_mb"].values())
    return "\n".join(
        [
            f"end to end: skyprep run over {r['sessions']} sessions of {r['size']} x {r['size']} "
            f"(1 raw, 4 masters, {r['frames']} e91), {r['workers']} workers x 1 thread, {len(r['ratios'])} repeats",
            f"  median repeat: job {r['job_seconds']:.1f} s ({r['seconds_per_session']:.1f} s/session), floor "
            f"{r['floor_seconds']:.1f} s (astropy decompression of {r['files']} files), "
            f"ratio {r['ratio']:.2f} (target <= {r['target_ratio']}; all repeats: "
            f"{', '.join(f'{x:.2f}' for x in r['ratios'])}); worker peak RSS MB: {peaks}",
        ]
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/skyprep-bench"))
    ap.add_argument("--config", type=Path, default=None, help="skyprep configuration (YAML); default: defaults")
    ap.add_argument("--repeats", type=int, default=3, help="floor-job-floor measurements, each on a new cluster")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = run_benchmark(args.workdir, args.sessions, args.size, args.frames, load_config(args.config), args.repeats)
    return publish(report, format_table(report), args.json)


if __name__ == "__main__":
    main()
