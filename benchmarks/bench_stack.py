"""Benchmark of the sigma-clipped stack: skyprep vs astropy vs ccdproc, in one process.

    python benchmarks/bench_stack.py [--frames 20 --size 2048 --repeats 3 --json PATH]

The cube is (frames, size, size) float32, seeded: sky 1000 ADU + Gaussian noise (10 ADU), a
few hundred faint "stars" (same in every frame), cosmic-ray-like positive outliers (0.5% of
the values, 100-20000 ADU, some 2-3 pixel tracks) and negative outliers (0.05%, dead/low
values). Every method clips with sigma 3 about the median using the std and then averages:

* skyprep  ``sigma_clip_stack(cube, params=ClipParams(maxiters=5))`` (mean, std, count, mask),
           on all cores; ``skyprep_1thread`` the same with ``parallel=False`` (one core, as
           inside a Dask task when the workers already use every core);
* astropy  ``sigma_clip(cube, sigma=3, maxiters=5, cenfunc="median", stdfunc="std", axis=0)``
           then ``.mean(axis=0)`` of the masked array;
* ccdproc  ``Combiner([CCDData(frame, unit="adu") ...])`` (copies to float64),
           ``.sigma_clipping(3, 3, func="median", dev_func="std")`` and ``.average_combine()``.
           ccdproc 2.5.1 clips in a single pass by its nature (it calls astropy with
           ``maxiters=1``), so it does less clipping work than the other two.

All methods run in the same process, interleaved (repeat r runs each method once), and the best
wall time of the repeats is reported, with the speed-up of skyprep over the others. Memory:
``peak_rss_mb`` is the increase of the process peak RSS (VmHWM, reset via
``/proc/self/clear_refs`` before each method, Linux) over the RSS before the call, taken during
the timed runs; ``tracemalloc_peak_mb`` is the tracemalloc peak of a separate untimed run (numpy
buffers are traced; numba's small per-thread scratch is not). The input cube is excluded from
both.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

try:
    import pipeline  # noqa: F401
except ImportError:  # run as a script from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.steps.stack import ClipParams, sigma_clip_stack  # noqa: E402

SIGMA = 3.0
MAXITERS = 5


def make_cube(frames: int, size: int, seed: int = 12345) -> np.ndarray:
    """Seeded (frames, size, size) float32 cube of sky + noise + stars + outliers."""
    rng = np.random.default_rng(seed)
    cube = rng.standard_normal((frames, size, size), dtype=np.float32)
    cube *= 10.0
    cube += 1000.0
    # faint static stars, identical in every frame
    nstars = max(1, size * size // 10000)
    yy, xx = rng.integers(3, size - 3, (2, nstars))
    amp = rng.uniform(50, 2000, nstars).astype(np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            cube[:, yy + dy, xx + dx] += amp * (0.5 if (dy or dx) else 1.0)
    # cosmic rays: positive outliers, some as short tracks
    ncr = int(0.005 * cube.size)
    f, y, x = (rng.integers(0, s, ncr) for s in cube.shape)
    cube[f, y, x] += rng.uniform(100, 20000, ncr).astype(np.float32)
    track = rng.random(ncr) < 0.3
    cube[f[track], y[track], np.minimum(x[track] + 1, size - 1)] += 500.0
    # negative outliers
    nneg = int(0.0005 * cube.size)
    f, y, x = (rng.integers(0, s, nneg) for s in cube.shape)
    cube[f, y, x] -= rng.uniform(100, 900, nneg).astype(np.float32)
    return cube


# ---------------------------------------------------------------------------------------------
# the three methods; each returns (mean image, something to check against)
# ---------------------------------------------------------------------------------------------


def run_skyprep(cube):
    res = sigma_clip_stack(cube, params=ClipParams(sigma_lower=SIGMA, sigma_upper=SIGMA, maxiters=MAXITERS))
    return res.mean, res.clipped


def run_skyprep_1thread(cube):
    res = sigma_clip_stack(
        cube, params=ClipParams(sigma_lower=SIGMA, sigma_upper=SIGMA, maxiters=MAXITERS), parallel=False
    )
    return res.mean, res.clipped


def run_astropy(cube):
    from astropy.stats import sigma_clip

    clipped = sigma_clip(cube, sigma=SIGMA, maxiters=MAXITERS, cenfunc="median", stdfunc="std", axis=0)
    return clipped.mean(axis=0), clipped.mask


def run_ccdproc(cube):
    from astropy.nddata import CCDData
    from ccdproc import Combiner

    combiner = Combiner([CCDData(frame, unit="adu") for frame in cube])
    combiner.sigma_clipping(low_thresh=SIGMA, high_thresh=SIGMA, func="median", dev_func="std")
    combined = combiner.average_combine()
    return combined.data, None


METHODS = {
    "skyprep": run_skyprep,
    "skyprep_1thread": run_skyprep_1thread,
    "astropy": run_astropy,
    "ccdproc": run_ccdproc,
}


# ---------------------------------------------------------------------------------------------
# measurement helpers
# ---------------------------------------------------------------------------------------------


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def timed(fn, cube):
    """(seconds, peak RSS increase in MB or None, result) of one call."""
    gc.collect()
    can_reset = _reset_peak_rss()
    rss0 = _status_kb("VmRSS")
    t0 = time.perf_counter()
    out = fn(cube)
    dt = time.perf_counter() - t0
    hwm = _status_kb("VmHWM")
    peak = (hwm - rss0) / 1024 if (can_reset and hwm is not None and rss0 is not None) else None
    return dt, peak, out


def traced_peak_mb(fn, cube) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        fn(cube)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def run_benchmark(
    frames: int = 20,
    size: int = 2048,
    repeats: int = 3,
    methods: tuple[str, ...] = ("skyprep", "skyprep_1thread", "astropy", "ccdproc"),
    seed: int = 12345,
    verbose: bool = True,
) -> dict:
    warnings.simplefilter("ignore")  # astropy / numpy runtime warnings on masked data
    log = print if verbose else (lambda *a, **k: None)
    t0 = time.perf_counter()
    cube = make_cube(frames, size, seed)
    log(f"cube {cube.shape} {cube.dtype} ({cube.nbytes / 2**20:.0f} MB) built in {time.perf_counter() - t0:.1f} s")

    # numba warm-up (compiles or loads the cache) on a small cube of the same dtype/layout
    t0 = time.perf_counter()
    sigma_clip_stack(np.ascontiguousarray(cube[:, :16, :16]))
    warm = time.perf_counter() - t0
    log(f"skyprep warm-up (numba compile / cache load): {warm:.2f} s")

    times: dict[str, list[float]] = {m: [] for m in methods}
    rss: dict[str, list[float]] = {m: [] for m in methods}
    results = {}
    for r in range(repeats):
        for m in methods:
            dt, peak, out = timed(METHODS[m], cube)
            times[m].append(dt)
            if peak is not None:
                rss[m].append(peak)
            log(
                f"  repeat {r + 1}/{repeats} {m:8s} {dt:7.3f} s"
                + (f"  peak RSS +{peak:.0f} MB" if peak is not None else "")
            )
            if r == 0:
                results[m] = out
            del out
    traced = {m: traced_peak_mb(METHODS[m], cube) for m in methods}

    # sanity: skyprep must agree with astropy
    check = {}
    if "skyprep" in results and "astropy" in results:
        sk_mean, sk_clipped = results["skyprep"]
        ap_mean, ap_mask = results["astropy"]
        check["clipped_mismatches_vs_astropy"] = int(np.count_nonzero(sk_clipped != ap_mask))
        ap_mean = np.ma.filled(ap_mean.astype(np.float64), np.nan)
        diff = np.abs(sk_mean - ap_mean) / np.maximum(np.abs(ap_mean), 1e-30)
        check["mean_max_rel_diff_vs_astropy"] = float(np.nanmax(diff))
    results.clear()

    best = {m: min(times[m]) for m in methods}
    report = {
        "frames": frames,
        "size": size,
        "dtype": "float32",
        "repeats": repeats,
        "params": {
            "sigma": SIGMA,
            "maxiters_skyprep_astropy": MAXITERS,
            "maxiters_ccdproc": 1,
            "cenfunc": "median",
            "stdfunc": "std",
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "load_avg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "numba_warmup_s": warm,
        "seconds": times,
        "best_seconds": best,
        "peak_rss_mb": {m: (max(v) if v else None) for m, v in rss.items()},
        "tracemalloc_peak_mb": traced,
        "check": check,
    }
    try:
        import numba

        from pipeline import stack as _stack

        report["machine"]["numba"] = numba.__version__
        report["machine"]["skyprep_threads"] = _stack._n_threads()  # row-chunk thread pool
    except Exception:  # pragma: no cover
        pass
    if "skyprep" in best:
        report["speedup"] = {m: best[m] / best["skyprep"] for m in methods if m != "skyprep"}
    return report


def format_table(report: dict) -> str:
    lines = [
        f"sigma-clip stack of {report['frames']} x {report['size']} x {report['size']} "
        f"float32, best of {report['repeats']}",
        f"{'method':16s} {'best s':>8s} {'speed-up':>9s} {'peak RSS MB':>12s} {'tracemalloc MB':>15s}",
    ]
    for m, t in report["best_seconds"].items():
        sp = "1.0x" if m == "skyprep" else f"{report.get('speedup', {}).get(m, float('nan')):.1f}x"
        rss = report["peak_rss_mb"].get(m)
        rss_s = f"{rss:.0f}" if rss is not None else "n/a"
        lines.append(f"{m:16s} {t:8.3f} {sp:>9s} {rss_s:>12s} {report['tracemalloc_peak_mb'][m]:15.0f}")
    if report.get("check"):
        lines.append(
            "check: "
            + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in report["check"].items())
        )
    lines.append("(speed-up = method time / skyprep time; ccdproc clips in a single pass)")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument(
        "--methods",
        default="skyprep,skyprep_1thread,astropy,ccdproc",
        help="comma-separated subset of skyprep,skyprep_1thread,astropy,ccdproc",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    args = ap.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}")
    report = run_benchmark(args.frames, args.size, args.repeats, methods, args.seed)
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
