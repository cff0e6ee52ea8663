"""The whole command as a user lives through it: ``skyprep run`` against the decompression floor
and against a naive astropy + ccdproc script, in one run.

    python -m benchmarks.bench_command [--sessions 3 --size 2048 --frames 20 --repeats 3 --json PATH]

The archive is the synthetic generator's (``SynthSpec(sessions, size, frames)``), written once
into the work directory and reused. Each repeat measures, back to back:

* floor: every image extension of every input FITS file decompressed once by astropy, one task
  per file on a LocalCluster of single-threaded worker processes, one per core (started and
  warmed before the clock starts); measured before and after the two commands, the smaller is
  the repeat's floor;
* job: ``skyprep run ARCHIVE --out STORE`` (``python -m pipeline``) as a subprocess into a fresh
  store, wall time from spawn to exit: imports, the LocalCluster's start, discovery, the job,
  the report;
* processes: the same with ``--processes`` (worker processes instead of the default threads);
* naive: ``benchmarks/naive_ccdproc.py`` (astropy + ccdproc, one session at a time) as a
  subprocess, wall time from spawn to exit.

Figures: the median over the repeats of job / floor and naive / job, and the peak resident
memory of each command's process tree. Targets: job / floor <= 2.0 (moonshot 1.5),
naive / job >= 2 (moonshot 3).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from benchmarks.bench_end_to_end import floor_seconds
from benchmarks.common import REPO, local_client, machine, publish, skyprep, timed_command, warm_kernels_command
from pipeline.io.discover import find_sessions
from pipeline.synth import SynthSpec, write_archive

TARGET_RATIO = 2.0
TARGET_SPEEDUP = 2.0
NAIVE_SCRIPT = REPO / "benchmarks" / "naive_ccdproc.py"


def archive_for(workdir: Path, sessions: int, size: int, frames: int) -> Path:
    """The synthetic archive of ``sessions`` x ``size`` px with ``frames`` e91 frames (written once)."""
    archive = workdir / f"e2e-archive-{sessions}x{size}-{frames}"
    if not (archive / ".complete").exists():
        shutil.rmtree(archive, ignore_errors=True)
        write_archive(archive, SynthSpec(sessions=sessions, size=size, frames=frames),
                      workers=len(os.sched_getaffinity(0)))  # fmt: skip
        (archive / ".complete").touch()
    return archive


def input_files(archive: Path, sessions: int) -> list[str]:
    """Every FITS file skyprep reads, session by session."""
    found, problems = find_sessions(archive)
    if problems or len(found) != sessions:
        raise RuntimeError(f"{archive}: expected {sessions} sessions, found {len(found)}, problems {problems}")
    return [str(p) for s in found for p in s.inputs if ".fits" in p.name]


def measure_floor(files: list[str], workers: int) -> float:
    """Seconds for astropy to decompress every image of ``files`` once on ``workers`` processes."""
    with local_client(workers) as client:
        client.run(lambda: __import__("astropy.io.fits"))
        seconds, _ = floor_seconds(client, files)
    return seconds


def run_benchmark(workdir: Path, sessions: int = 3, size: int = 2048, frames: int = 20, repeats: int = 3,
                  verbose: bool = True) -> dict:  # fmt: skip
    log = print if verbose else (lambda *a, **k: None)
    workers = len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    archive = archive_for(workdir, sessions, size, frames)
    log(
        f"archive {archive} ready in {time.perf_counter() - t0:.1f} s; kernels warmed in {warm_kernels_command():.1f} s"
    )
    files = input_files(archive, sessions)
    store, naive_out = workdir / f"command-{sessions}x{size}-{frames}.zarr", workdir / "naive-ccdproc-out"
    runs = []
    for k in range(repeats):
        load = os.getloadavg()[0]
        before = measure_floor(files, workers)
        shutil.rmtree(store, ignore_errors=True)
        job = timed_command(skyprep("run", str(archive), "--out", str(store), "--workers", str(workers)))
        if job.returncode != 0:
            raise RuntimeError(f"skyprep run failed ({job.returncode}):\n{job.stdout}\n{job.stderr}")
        shutil.rmtree(store, ignore_errors=True)
        procs = timed_command(
            skyprep("run", str(archive), "--out", str(store), "--workers", str(workers), "--processes")
        )
        if procs.returncode != 0:
            raise RuntimeError(f"skyprep run --processes failed ({procs.returncode}):\n{procs.stderr}")
        shutil.rmtree(naive_out, ignore_errors=True)
        naive = timed_command([sys.executable, str(NAIVE_SCRIPT), str(archive), str(naive_out)])
        if naive.returncode != 0:
            raise RuntimeError(f"naive ccdproc script failed:\n{naive.stderr}")
        after = measure_floor(files, workers)
        floor = min(before, after)
        runs.append({"floor_seconds": floor, "floor_seconds_before_after": [before, after],
                     "job_seconds": job.seconds, "naive_seconds": naive.seconds,
                     "job_cpu_seconds": job.cpu_seconds, "naive_cpu_seconds": naive.cpu_seconds,
                     "processes_seconds": procs.seconds, "processes_cpu_seconds": procs.cpu_seconds,
                     "processes_peak_mb": procs.peak_total_mb,
                     "job_peak_mb": job.peak_total_mb, "job_peak_process_mb": job.peak_process_mb,
                     "naive_peak_mb": naive.peak_total_mb, "load_avg_1min_at_start": load})  # fmt: skip
        log(f"repeat {k + 1}: job {job.seconds:.2f} s, floor {floor:.2f} s (before {before:.2f}, after "
            f"{after:.2f}), naive ccdproc {naive.seconds:.2f} s, --processes {procs.seconds:.2f} s: "
            f"job/floor {job.seconds / floor:.2f}, --processes/floor {procs.seconds / floor:.2f}, "
            f"naive/job {naive.seconds / job.seconds:.2f} (load {load:.1f})")  # fmt: skip
    ratios = [r["job_seconds"] / r["floor_seconds"] for r in runs]
    speedups = [r["naive_seconds"] / r["job_seconds"] for r in runs]
    processes = [r["processes_seconds"] / r["floor_seconds"] for r in runs]
    return {
        "benchmark": "command",
        "sessions": sessions,
        "size": size,
        "frames": frames,
        "workers": workers,
        "files": len(files),
        "repeats": runs,
        "ratios": ratios,
        "speedups": speedups,
        "ratio": statistics.median(ratios),
        "speedup": statistics.median(speedups),
        "processes_ratios": processes,
        "processes_ratio": statistics.median(processes),
        "processes_seconds": statistics.median(r["processes_seconds"] for r in runs),
        "processes_cpu_seconds": statistics.median(r["processes_cpu_seconds"] for r in runs),
        "processes_peak_mb": max(r["processes_peak_mb"] for r in runs),
        "job_seconds": statistics.median(r["job_seconds"] for r in runs),
        "floor_seconds": statistics.median(r["floor_seconds"] for r in runs),
        "naive_seconds": statistics.median(r["naive_seconds"] for r in runs),
        "job_cpu_seconds": statistics.median(r["job_cpu_seconds"] for r in runs),
        "naive_cpu_seconds": statistics.median(r["naive_cpu_seconds"] for r in runs),
        "job_peak_mb": max(r["job_peak_mb"] for r in runs),
        "naive_peak_mb": max(r["naive_peak_mb"] for r in runs),
        "target_ratio": TARGET_RATIO,
        "target_speedup": TARGET_SPEEDUP,
        "machine": machine(),
    }


def format_table(r: dict) -> str:
    return "\n".join([
        f"command: skyprep run over {r['sessions']} sessions of {r['size']} x {r['size']} ({r['frames']} e91), "
        f"{r['workers']} workers, {len(r['ratios'])} repeats (medians)",
        f"  job {r['job_seconds']:.1f} s, floor {r['floor_seconds']:.1f} s, naive ccdproc {r['naive_seconds']:.1f} s",
        f"  CPU seconds of the process trees: job {r['job_cpu_seconds']:.1f}, naive {r['naive_cpu_seconds']:.1f}",
        f"  job / floor {r['ratio']:.2f} (target <= {r['target_ratio']}; repeats "
        f"{', '.join(f'{x:.2f}' for x in r['ratios'])})",
        f"  naive / job {r['speedup']:.2f} (target >= {r['target_speedup']}; repeats "
        f"{', '.join(f'{x:.2f}' for x in r['speedups'])})",
        f"  --processes (worker processes instead of threads): {r['processes_seconds']:.1f} s, "
        f"{r['processes_cpu_seconds']:.1f} CPU s, / floor {r['processes_ratio']:.2f} (repeats "
        f"{', '.join(f'{x:.2f}' for x in r['processes_ratios'])})",
        f"  peak RSS of the process tree: skyprep {r['job_peak_mb']:.0f} MB (--processes {r['processes_peak_mb']:.0f}), "
        f"naive {r['naive_peak_mb']:.0f} MB",
    ])  # fmt: skip


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/skyprep-bench"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = run_benchmark(args.workdir, args.sessions, args.size, args.frames, args.repeats)
    return publish(report, format_table(report), args.json)


if __name__ == "__main__":
    main()
