"""The on-the-fly synthesis a loader would call per sample, against references in the same run.

    python -m benchmarks.bench_synthesis [--patch 256] [--patches 200] [--repeats 3] [--json PATH]
    python -m benchmarks.bench_synthesis --loader [--size 2048] [--sessions 2] [--samples 1000] [--repeats 3]

A session of 1024 x 1024 (one amplifier, 4 e91 frames) is observed in memory with the synthetic
generator and its noise model fitted (``tests/noise_session.py``); then per repeat, over the
same random patch origins: ``synthesize_patch`` (the draw, one compiled loop), the reads a
stored-``syn`` sample needs at the least (one window copied from an in-memory frame) and the
five an on-the-fly sample needs (``mean``, ``flat``, ``dark``, ``bias``, ``count``), and a
``numpy`` normal draw of a patch (the machine's speed). Reported: milliseconds per patch,
medians over the repeats, and the ratios, which are what survives the shared machine's drift.
CPU time (``time.process_time``) is reported next to wall time.

``--loader``: a store written by ``skyprep run`` (``--sessions`` synthetic sessions of ``--size``
pixels, 4 e91 frames, ``synthesis.realizations: 2``), read by the loader
(``pipeline.tools.loader.PatchDataset``, default parameters but ``mean`` as the target, batches
of 32 through ``__getitems__``), in rounds that alternate three routes over the same sample
indices: ``mean`` as the input, a stored ``syn`` realization as the input, and ``syn`` drawn on
the fly (``synthesize_on_the_fly``: five clean windows and the draw). Reported: samples per second
of each route (medians over the rounds) and the on-the-fly rate over the stored rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np

from pipeline.steps.synthesize import POISSON_EXACT_BELOW_E, Patch, SynthKey, synthesize_patch
from pipeline.synth import SynthSpec
from tests.noise_session import fit_model, observe


def _seconds_per_patch(work, origins) -> tuple[float, float]:
    """Wall and CPU seconds per call of ``work``."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i, (y, x) in enumerate(origins):
        work(i, y, x)
    return (time.perf_counter() - t0) / len(origins), (time.process_time() - c0) / len(origins)


def run_benchmark(patch_px: int = 256, patches: int = 200, repeats: int = 3, scale: float = 1.0) -> dict:
    """``scale`` multiplies the session's stack and dark current (below about 0.03 every pixel's
    expected charge is under ``POISSON_EXACT_BELOW_E``: the exact shot noise's cost)."""
    spec = SynthSpec(sessions=1, size=1024, frames=4, amps=1, seed=3, max_drift=0.0, row_noise_e=3.0)
    obs = observe(spec)
    model = fit_model(obs)
    s = obs.session
    frames = {"mean": obs.mean_adu * np.float32(scale), "flat": s.flat, "dark": s.dark_e_per_s * np.float32(scale),
              "bias": s.bias_e, "count": obs.count}  # fmt: skip
    frames = {name: np.ascontiguousarray(values) for name, values in frames.items()}
    rng = np.random.default_rng(0)
    origins = rng.integers(0, 1024 - patch_px, (patches, 2))
    p = patch_px
    out = np.empty((p, p), np.float32)

    def read_one(i, y, x):
        out[...] = frames["mean"][y : y + p, x : x + p]

    def read_five(i, y, x):
        for values in frames.values():
            out[...] = values[y : y + p, x : x + p]

    windows = {k: [np.ascontiguousarray(frames[k][y : y + p, x : x + p]) for y, x in origins] for k in frames}

    def draw(i, y, x):  # contiguous windows, as a loader reads them
        patch = Patch(int(y), int(x), *(windows[k][i] for k in ("mean", "flat", "dark", "bias", "count")))
        synthesize_patch(patch, model, SynthKey(0, "bench", (0, i)), out=out)

    def normal(i, y, x):
        rng.standard_normal((p, p), dtype=np.float32)

    draw(0, 0, 0)  # load the compiled kernel
    results = {name: [] for name in ("draw", "read_one", "read_five", "normal")}
    cpu = {name: [] for name in results}
    for _ in range(repeats):
        for name, work in (("draw", draw), ("read_one", read_one), ("read_five", read_five), ("normal", normal)):
            wall, cpu_s = _seconds_per_patch(work, origins)
            results[name].append(wall)
            cpu[name].append(cpu_s)
    ms = {name: 1e3 * statistics.median(values) for name, values in results.items()}
    cpu_ms = {name: 1e3 * statistics.median(values) for name, values in cpu.items()}
    below = np.mean(model.amps[0].synthesis_gain_e_per_adu / model.amps[0].gain_e_per_adu
                    * (model.gain_nominal_e_per_adu * frames["mean"] * frames["flat"]
                       + frames["dark"] * model.darktime_s) < POISSON_EXACT_BELOW_E)  # fmt: skip
    report = {
        "patch_px": patch_px,
        "patches": patches,
        "repeats": repeats,
        "scale": scale,
        "fraction_below_switch": float(below),
        "ms_per_patch": ms,
        "cpu_ms_per_patch": cpu_ms,
        "draw_over_normal": ms["draw"] / ms["normal"],
        "draw_over_read_one": ms["draw"] / ms["read_one"],
        "all_repeats_ms": {name: [1e3 * v for v in values] for name, values in results.items()},
    }
    print(f"{patch_px} px patches (scale {scale:g}, {below:.0%} of pixels below the switch), median of {repeats} x {patches}: "
          + ", ".join(f"{name} {value:.3f} ms (CPU {cpu_ms[name]:.3f})" for name, value in ms.items())
          + f"; draw / normal draw {report['draw_over_normal']:.1f}, draw / one window read {report['draw_over_read_one']:.0f}")  # fmt: skip
    return report


def _store_with_syn(workdir: Path, size: int, sessions: int) -> Path:
    from pipeline.config import Config
    from pipeline.runner import make_client, run
    from pipeline.steps.params import SynthesisParams
    from pipeline.synth import write_archive

    archive, store = workdir / "archive", workdir / "store.zarr"
    write_archive(archive, SynthSpec(sessions=sessions, size=size, frames=4, amps=1, seed=5))
    with make_client(workers=2) as client:
        report = run(archive, store, Config(synthesis=SynthesisParams(realizations=2)), client, echo=lambda line: None)
    assert report.exit_code == 0, report.table()
    return store


def run_loader_benchmark(size: int = 2048, sessions: int = 2, samples: int = 1000, repeats: int = 3,
                         workdir: Path | None = None) -> dict:  # fmt: skip
    import tempfile

    from pipeline.tools.loader import LoaderParams, PatchDataset

    batch = 32
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = _store_with_syn(Path(tmp), size, sessions)
        clean = LoaderParams(input="mean", target="mean", patches_per_epoch=samples)
        datasets = {
            "loader sample (mean)": PatchDataset(store, clean),
            "stored syn": PatchDataset(store, dataclasses.replace(clean, input="syn")),
            "syn on the fly": PatchDataset(store, dataclasses.replace(clean, input="syn", synthesize_on_the_fly=True)),
        }
        p = clean.patch_px
        batches = [list(range(i, min(i + batch, samples))) for i in range(0, samples, batch)]
        for dataset in datasets.values():  # stores opened, kernel loaded
            dataset.__getitems__(batches[0])
        wall = {name: [] for name in datasets}
        cpu = {name: [] for name in datasets}
        for _ in range(repeats):
            for name, dataset in datasets.items():
                t0, c0 = time.perf_counter(), time.process_time()
                for indices in batches:
                    dataset.__getitems__(indices)
                wall[name].append(samples / (time.perf_counter() - t0))
                cpu[name].append(samples / (time.process_time() - c0))
    per_s = {name: statistics.median(values) for name, values in wall.items()}
    per_cpu_s = {name: statistics.median(values) for name, values in cpu.items()}
    report = {
        "size": size,
        "sessions": sessions,
        "samples": samples,
        "repeats": repeats,
        "samples_per_s": per_s,
        "samples_per_cpu_s": per_cpu_s,
        "fresh_over_stored": per_s["syn on the fly"] / per_s["stored syn"],
        "all_rounds_per_s": wall,
    }
    print(f"{sessions} sessions of {size} px, {p} px samples, median of {repeats} x {samples}: "
          + ", ".join(f"{name} {value:.0f}/s ({per_cpu_s[name]:.0f} per CPU s)" for name, value in per_s.items())
          + f"; on the fly / stored {report['fresh_over_stored']:.2f}")  # fmt: skip
    return report


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--patches", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the stack and dark (0.02: all below the switch)")
    ap.add_argument("--loader", action="store_true", help="loader throughput: stored syn against syn on the fly")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.loader:
        report = run_loader_benchmark(args.size, args.sessions, args.samples, args.repeats, args.workdir)
    else:
        report = run_benchmark(args.patch, args.patches, args.repeats, args.scale)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
