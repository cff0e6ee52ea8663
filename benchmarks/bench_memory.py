"""Memory benchmark: ``skyprep run`` on one session of 40 e91 frames of 4096 x 4096, one worker.

    python -m benchmarks.bench_memory [--size 4096 --frames 40 --strip-rows 256 --json PATH]

The session is written in the MuSCAT layout with a fast path (lossless uint16 RICE for every
image, so that writing 40 frames takes seconds, not the synthetic generator's minutes): constant
masters (bias 0 e-, dark 0 e-/s, flat 1), a raw frame with overscan, and e91 frames of sky plus
Gaussian noise and a few hundred stars, each carrying the synthetic archive's TAN WCS with its
drift (``pipeline.synth``), so registration uses ``method: wcs`` and every frame is stacked.

The whole job runs (``pipeline.runner.run``: reading, calibration, registration, sigma-clip
stack, source mask, Zarr writes) on a ``LocalCluster`` of one single-threaded worker process.
The worker's resident set size is sampled by ``common.PeakRSS`` (psutil); the target is a peak
below ``TARGET_MB`` although the e91 cube alone is ``frames * size**2 * 4`` bytes. The Dask task
stream shows that every e91 strip is read once: one task per strip reads the rows of every
frame it needs, shifts and stacks them (``pipeline.steps.e91.stack_strip``), and none runs twice.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from distributed import get_task_stream

from benchmarks.common import PeakRSS, local_client, machine
from pipeline.config import ChunkParams, Config, RegisterConfig
from pipeline.io.fits_reader import strip_bounds
from pipeline.runner import run
from pipeline.synth import SynthSpec
from pipeline.synth.files import write_fits, write_images
from pipeline.synth.layout import raw_hdus
from pipeline.synth.session import draw_session

TARGET_MB = 1500.0
_STACK_KEY = re.compile(r"stack-\d+-.+-[0-9a-f]{8}")
SKY_ADU, NOISE_ADU = 1000.0, 10.0
READ_NOISE_ADU = 5.0


def write_session(root: Path, size: int, frames: int, seed: int = 5) -> Path:
    """A MuSCAT-layout session of ``frames`` e91 frames of ``size`` x ``size`` (fast uint16 files)."""
    spec = SynthSpec(sessions=1, size=size, frames=frames, amps=1, seed=seed)
    session = draw_session(spec, 0)
    out = root / session.ident.relpath
    obs_id = session.ident.obs_id
    rng = np.random.default_rng(seed)
    zeros, ones = np.zeros((size, size), np.uint16), np.ones((size, size), np.uint16)
    for kind, data in (("BIAS", zeros), ("DARK", zeros), ("SKYFLAT", ones)):
        write_images(out / "calib" / f"{kind}_{obs_id}.fits.fz", [("SCI", data, None)])
    amp = session.amps[0]
    raw = (1000 + SKY_ADU + READ_NOISE_ADU * rng.standard_normal(amp.raw_shape)).astype(np.uint16)
    primary, hdus = raw_hdus(session.cards(session.date_obs()), session.amps, session.readouts, [raw], size)
    write_fits(out / "data" / f"{obs_id}_raw.fits.fz", hdus, primary)
    stars_y, stars_x = rng.integers(20, size - 20, (2, 400))
    for k in range(frames):
        dy, dx = (int(round(v)) for v in session.drift_px[k])
        frame = rng.standard_normal((size, size), dtype=np.float32)
        frame *= NOISE_ADU
        frame += SKY_ADU
        frame[stars_y + dy, stars_x + dx] += 20000.0
        header_cards = session.cards(session.date_obs(k), rlevel=91, shift=(dy, dx))
        write_images(
            out / "e91" / f"{session.ident.site}-ep04-{k:04d}-e91.fits.fz",
            [("SCI", frame.astype(np.uint16), fits.Header(header_cards))],
        )
    return out


def run_benchmark(
    workdir: Path,
    size: int = 4096,
    frames: int = 40,
    strip_rows: int = 256,
    memory_limit: str = "4GB",
    verbose: bool = True,
) -> dict:
    log = print if verbose else (lambda *a, **k: None)
    archive = workdir / f"memory-archive-{size}-{frames}"
    t0 = time.perf_counter()
    if not (archive / ".complete").exists():
        write_session(archive, size, frames)
        (archive / ".complete").touch()
    log(f"archive {archive} ready in {time.perf_counter() - t0:.1f} s")
    store = workdir / f"memory-{size}-{frames}.zarr"
    config = Config(
        register=RegisterConfig(method="wcs"), chunks=ChunkParams(strip_rows=strip_rows, store_chunk_px=strip_rows)
    )
    with local_client(1, memory_limit) as client:
        client.run(lambda: __import__("pipeline.graph"))  # imports (numba) are part of the baseline
        with PeakRSS(client) as rss, get_task_stream(client) as stream:
            t0 = time.perf_counter()
            shutil.rmtree(store, ignore_errors=True)
            report = run(archive, store, config, client, echo=log)
            seconds = time.perf_counter() - t0
    if report.exit_code != 0:
        raise RuntimeError(f"skyprep run failed:\n{report.table()}")
    # the strip tasks, each reading the rows of every e91 frame it needs (run more than once = read again)
    reads = [str(t["key"]) for t in stream.data if _STACK_KEY.fullmatch(str(t["key"]))]
    (peak,), (baseline,) = rss.peak_mb.values(), rss.baseline_mb.values()
    return {
        "benchmark": "memory",
        "size": size,
        "frames": frames,
        "strip_rows": strip_rows,
        "cube_gb": frames * size * size * 4 / 1e9,
        "seconds": seconds,
        "worker_peak_rss_mb": peak,
        "worker_baseline_rss_mb": baseline,
        "target_mb": TARGET_MB,
        "e91_strip_reads": len(reads),
        "e91_strips": len(strip_bounds(size, strip_rows)),
        "machine": machine(),
    }


def format_table(r: dict) -> str:
    return "\n".join(
        [
            f"memory: skyprep run, 1 session of {r['frames']} e91 frames of {r['size']} x {r['size']} "
            f"({r['cube_gb']:.1f} GB float32 cube), 1 worker, strips of {r['strip_rows']} rows",
            f"  worker peak RSS {r['worker_peak_rss_mb']:.0f} MB (idle worker {r['worker_baseline_rss_mb']:.0f} MB), "
            f"target < {r['target_mb']:.0f} MB; {r['seconds']:.0f} s; "
            f"e91 strips read {r['e91_strip_reads']} times for {r['e91_strips']} strips (all frames per strip)",
        ]
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--strip-rows", type=int, default=256)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/skyprep-bench"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = run_benchmark(args.workdir, args.size, args.frames, args.strip_rows)
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
