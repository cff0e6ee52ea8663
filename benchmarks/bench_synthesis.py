"""The on-the-fly synthesis a loader would call per sample, against references in the same run.

    python -m benchmarks.bench_synthesis [--patch 256] [--patches 200] [--repeats 3] [--json PATH]

A session of 1024 x 1024 (one amplifier, 4 e91 frames) is observed in memory with the synthetic
generator and its noise model fitted (``tests/noise_session.py``); then per repeat, over the
same random patch origins: ``synthesize_patch`` (the draw, one compiled loop), the reads a
stored-``syn`` sample needs at the least (one window copied from an in-memory frame) and the
five an on-the-fly sample needs (``mean``, ``flat``, ``dark``, ``bias``, ``count``), and a
``numpy`` normal draw of a patch (the machine's speed). Reported: milliseconds per patch,
medians over the repeats, and the ratios, which are what survives the shared machine's drift.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from pipeline.steps.synthesize import Patch, SynthKey, synthesize_patch
from pipeline.synth import SynthSpec
from tests.noise_session import fit_model, observe


def _seconds_per_patch(work, origins) -> float:
    t0 = time.perf_counter()
    for i, (y, x) in enumerate(origins):
        work(i, y, x)
    return (time.perf_counter() - t0) / len(origins)


def run_benchmark(patch_px: int = 256, patches: int = 200, repeats: int = 3) -> dict:
    spec = SynthSpec(sessions=1, size=1024, frames=4, amps=1, seed=3, max_drift=0.0, row_noise_e=3.0)
    obs = observe(spec)
    model = fit_model(obs)
    s = obs.session
    frames = {"mean": obs.mean_adu, "flat": s.flat, "dark": s.dark_e_per_s, "bias": s.bias_e, "count": obs.count}
    rng = np.random.default_rng(0)
    origins = rng.integers(0, 1024 - patch_px, (patches, 2))
    p = patch_px
    out = np.empty((p, p), np.float32)

    def read_one(i, y, x):
        out[...] = frames["mean"][y : y + p, x : x + p]

    def read_five(i, y, x):
        for values in frames.values():
            out[...] = values[y : y + p, x : x + p]

    def draw(i, y, x):
        window = (slice(y, y + p), slice(x, x + p))
        patch = Patch(int(y), int(x), *(frames[k][window] for k in ("mean", "flat", "dark", "bias", "count")))
        synthesize_patch(patch, model, SynthKey(0, "bench", (0, i)))

    def normal(i, y, x):
        rng.standard_normal((p, p), dtype=np.float32)

    draw(0, 0, 0)  # load the compiled kernel
    results = {name: [] for name in ("draw", "read_one", "read_five", "normal")}
    for _ in range(repeats):
        for name, work in (("draw", draw), ("read_one", read_one), ("read_five", read_five), ("normal", normal)):
            results[name].append(_seconds_per_patch(work, origins))
    ms = {name: 1e3 * statistics.median(values) for name, values in results.items()}
    report = {
        "patch_px": patch_px,
        "patches": patches,
        "repeats": repeats,
        "ms_per_patch": ms,
        "draw_over_normal": ms["draw"] / ms["normal"],
        "draw_over_read_one": ms["draw"] / ms["read_one"],
        "all_repeats_ms": {name: [1e3 * v for v in values] for name, values in results.items()},
    }
    print(f"{patch_px} px patches, median of {repeats} x {patches}: "
          + ", ".join(f"{name} {value:.3f} ms" for name, value in ms.items())
          + f"; draw / normal draw {report['draw_over_normal']:.1f}, draw / one window read {report['draw_over_read_one']:.0f}")  # fmt: skip
    return report


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--patches", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    report = run_benchmark(args.patch, args.patches, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
