"""Start-up of the command line: ``skyprep --help`` and ``skyprep info`` on a small store.

    python -m benchmarks.bench_startup [--repeats 7] [--json PATH]

Each command is a new interpreter (``python -m pipeline``), timed from spawn to exit; the
figure is the median over the repeats, with ``python -c pass`` (the interpreter's own start)
measured in the same loop. The store is one session of 256 x 256 px written by ``skyprep run``.
Target: both under ``TARGET_S``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

from benchmarks.bench_sessions import _archive
from benchmarks.common import machine, publish, skyprep, timed_command

TARGET_S = 0.5


def run_benchmark(workdir: Path, repeats: int = 7) -> dict:
    store = workdir / "startup-store.zarr"
    if not store.exists():
        made = timed_command(skyprep("run", str(_archive(workdir, 1, 256, 6)), "--out", str(store)))
        if made.returncode != 0:
            shutil.rmtree(store, ignore_errors=True)
            raise RuntimeError(f"could not write the store:\n{made.stderr}")
    commands = {"python -c pass": [sys.executable, "-c", "pass"], "skyprep --help": skyprep("--help"),
                "skyprep info": skyprep("info", str(store))}  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, argv in commands.items():
            done = timed_command(argv, sample_s=0.01)
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{done.stderr}")
            seconds[name].append(done.seconds)
    return {"benchmark": "startup", "repeats": seconds,
            "median_s": {name: statistics.median(v) for name, v in seconds.items()},
            "target_s": TARGET_S, "machine": machine()}  # fmt: skip


def format_table(r: dict) -> str:
    cells = ", ".join(f"{name} {s:.2f} s" for name, s in r["median_s"].items())
    return f"startup (median of {len(next(iter(r['repeats'].values())))}): {cells} (target < {r['target_s']} s)"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/skyprep-bench"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = run_benchmark(args.workdir, args.repeats)
    return publish(report, format_table(report), args.json)


if __name__ == "__main__":
    main()
