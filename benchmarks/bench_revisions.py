"""End to end across git revisions: which change moved the job's ratio to the floor.

    python -m benchmarks.bench_revisions REV [REV ...] [--rounds 3 --sessions 2 --workdir DIR --json PATH]

``git archive REV pipeline benchmarks`` of each revision (and of the working tree, ``this``) is
unpacked into its own folder. Each round then runs every version's own ``bench_end_to_end``
once (``--repeats 1``: floor, job, floor on a new cluster) as a fresh process, in an order that
rotates every round, all on the same archive in ``--workdir``. A first round warms each copy's
numba cache and is not counted. Prints, per version, the median job / floor ratio over the
rounds and its ratio to the first revision given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def unpack(rev: str, folder: Path) -> Path:
    """The ``pipeline`` and ``benchmarks`` packages of ``rev`` in ``folder``."""
    archive = subprocess.run(["git", "archive", rev, "pipeline", "benchmarks"], cwd=ROOT, check=True,
                             capture_output=True)  # fmt: skip
    tarfile.open(fileobj=BytesIO(archive.stdout)).extractall(folder, filter="data")
    return folder


def one_run(code: Path, workdir: Path, sessions: int) -> dict:
    """One floor-job-floor repeat of the ``bench_end_to_end`` found in ``code``."""
    out = workdir / f"revision-{os.getpid()}.json"
    command = [sys.executable, "-W", "ignore", "-m", "benchmarks.bench_end_to_end", "--repeats", "1",
               "--sessions", str(sessions), "--workdir", str(workdir), "--json", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{code}: bench_end_to_end failed:\n{done.stderr[-3000:]}")
    report = json.loads(out.read_text())
    return {"ratio": report["ratio"], "job_seconds": report["job_seconds"], "floor_seconds": report["floor_seconds"],
            "load_avg_1min": os.getloadavg()[0]}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("revs", nargs="+")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sessions", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/skyprep-bench"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        codes = {rev: unpack(rev, Path(tmp) / rev) for rev in args.revs}
        codes["this"] = ROOT
        labels = list(codes)
        runs: dict[str, list[dict]] = {label: [] for label in labels}
        for k in range(args.rounds + 1):
            order = labels[k % len(labels) :] + labels[: k % len(labels)]
            for label in order:
                result = one_run(codes[label], args.workdir, args.sessions)
                print(f"round {k}{' (warm-up)' if k == 0 else ''} {label}: job/floor {result['ratio']:.2f} "
                      f"(job {result['job_seconds']:.1f} s, floor {result['floor_seconds']:.1f} s, "
                      f"load {result['load_avg_1min']:.1f})", flush=True)  # fmt: skip
                if k:
                    runs[label].append(result)
    base = statistics.median(r["ratio"] for r in runs[labels[0]])
    summary = {}
    for label in labels:
        ratio = statistics.median(r["ratio"] for r in runs[label])
        summary[label] = {"ratio": ratio, "relative_to_first": ratio / base, "rounds": runs[label]}
        each = ", ".join(f"{r['ratio']:.2f}" for r in runs[label])
        print(f"{label:<10} job/floor {ratio:.2f} (rounds {each}), {ratio / base:.2f}x {labels[0]}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
