"""A/B of the sigma-clip stack kernel against another git revision of it, in one process.

    python benchmarks/bench_stack_ab.py REV [--size 1024 --frames 20 --repeats 15]

Loads ``pipeline/steps/stack.py`` of ``REV`` (``git show``) next to this worktree's, runs both on
the same seeded cube (``bench_stack.make_cube``) on one thread, interleaved (the order swaps
every repeat), timing each call's CPU time of that thread (``time.thread_time``: a loaded
machine's waits are not counted), for three clip settings, and checks the outputs are
bit-identical. Prints, per setting, the median of the per-repeat ratios this / REV and the ratio
of the best times. ``REV`` = ``HEAD`` measures the noise (the same code against itself).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_stack import make_cube  # noqa: E402
from pipeline.steps import stack  # noqa: E402

SETTINGS = ({}, {"stdfunc": "mad_std", "combine": "median"}, {"rejection": "union", "cenfunc": "mean"})


def load_revision(rev: str, folder: Path):
    """``pipeline/steps/stack.py`` of ``rev`` as a module of its own."""
    source = subprocess.run(["git", "show", f"{rev}:pipeline/steps/stack.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    path = folder / "stack_ab_reference.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("stack_ab_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _cpu_seconds(module, cube: np.ndarray, settings: dict):
    start = time.thread_time()
    result = module.sigma_clip_stack(cube, params=module.ClipParams(maxiters=5, **settings), parallel=False)
    return time.thread_time() - start, result


def compare(reference, cube: np.ndarray, settings: dict, repeats: int) -> dict:
    """Median per-repeat and best-time ratios of this kernel over ``reference`` on ``cube``."""
    pair = {"this": stack, "reference": reference}
    for module in pair.values():
        _cpu_seconds(module, cube[:, :64], settings)  # compile or load from numba's cache
    seconds = {name: [] for name in pair}
    for repeat in range(repeats):
        results = {}
        for name in sorted(pair, reverse=repeat % 2 == 1):
            elapsed, results[name] = _cpu_seconds(pair[name], cube, settings)
            seconds[name].append(elapsed)
        for field in ("mean", "std", "count", "clipped"):
            a, b = getattr(results["this"], field), getattr(results["reference"], field)
            assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)), field
    ratios = [a / b for a, b in zip(seconds["this"], seconds["reference"])]
    return {
        "median_ratio": statistics.median(ratios),
        "best_ratio": min(seconds["this"]) / min(seconds["reference"]),
        "this_median_s": statistics.median(seconds["this"]),
        "reference_median_s": statistics.median(seconds["reference"]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    cube = make_cube(args.frames, args.size)
    report = {}
    with tempfile.TemporaryDirectory() as folder:
        reference = load_revision(args.rev, Path(folder))
        for settings in SETTINGS:
            report[str(settings or "default")] = row = compare(reference, cube, settings, args.repeats)
            print(f"{settings or 'default'}: this / {args.rev} median {row['median_ratio']:.3f}, "
                  f"best {row['best_ratio']:.3f} ({row['this_median_s']:.3f} s vs {row['reference_median_s']:.3f} s "
                  "CPU, one thread); outputs bit-identical", flush=True)  # fmt: skip
    return report


if __name__ == "__main__":
    main()
