"""Run ``skyprep run`` on SLURM: a dask-jobqueue ``SLURMCluster`` of worker jobs, this process as scheduler and client.

    pip install -e .[slurm]
    python deploy/slurm/skyprep_slurm.py ARCHIVE --out STORE.zarr --jobs 8 [--config-file deploy/slurm/jobqueue.yaml]
    python deploy/slurm/skyprep_slurm.py --print-job-script      # show what would be submitted

Run it on a login node (or inside a small SLURM job of its own); ARCHIVE and STORE must be on
a filesystem every compute node sees, or in an object store (``s3://...``) they all reach.
Before submitting, the numba kernels are compiled once into ``--numba-cache`` (a directory on
the shared filesystem), which every worker job then loads instead of compiling. Extra arguments
after ``--`` go to ``skyprep run``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from dask_jobqueue import SLURMCluster

from pipeline.cli import main as skyprep
from pipeline.runner import DASK_YAML

HERE = Path(__file__).resolve().parent
NUMBA_CACHE = Path.home() / ".cache" / "skyprep" / "numba"


def make_cluster(config_file: Path = HERE / "jobqueue.yaml", numba_cache: Path = NUMBA_CACHE,
                 **overrides) -> SLURMCluster:  # fmt: skip
    """A SLURMCluster configured by ``config_file`` (dask-jobqueue's schema), keyword overrides
    winning; each job's script also exports skyprep's worker settings (``DASK_CONFIG``) and the
    shared kernel cache (``NUMBA_CACHE_DIR``)."""
    settings = yaml.safe_load(Path(config_file).read_text())["jobqueue"]["slurm"]
    kwargs = {key.replace("-", "_"): value for key, value in settings.items() if value is not None}
    kwargs["job_script_prologue"] = [*kwargs.get("job_script_prologue", []),
                                     f"export DASK_CONFIG={shlex.quote(str(DASK_YAML))}",
                                     f"export NUMBA_CACHE_DIR={shlex.quote(str(numba_cache))}"]  # fmt: skip
    return SLURMCluster(**{**kwargs, **overrides})


def compile_kernels(numba_cache: Path) -> str:
    """``skyprep compile`` into ``numba_cache`` (once per environment; quick when already there)."""
    numba_cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pipeline", "compile"], capture_output=True, text=True,
                          env={**os.environ, "NUMBA_CACHE_DIR": str(numba_cache)})  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"skyprep compile failed:\n{done.stderr}")
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive", nargs="?", help="the input archive (a path or an object-store URL)")
    p.add_argument("--out", help="the Zarr store (a path or an object-store URL)")
    p.add_argument("--jobs", type=int, default=4, help="SLURM worker jobs")
    p.add_argument("--config-file", type=Path, default=HERE / "jobqueue.yaml")
    p.add_argument("--numba-cache", type=Path, default=NUMBA_CACHE,
                   help=f"compiled kernels, on a filesystem the compute nodes see (default {NUMBA_CACHE})")  # fmt: skip
    p.add_argument("--print-job-script", action="store_true")
    args, rest = p.parse_known_args(argv)
    numba_cache = args.numba_cache.expanduser().resolve()
    with make_cluster(args.config_file, numba_cache) as cluster:
        if args.print_job_script:
            print(cluster.job_script())
            return 0
        if args.archive is None or args.out is None:
            p.error("ARCHIVE and --out are required")
        print(compile_kernels(numba_cache), file=sys.stderr)
        cluster.scale(jobs=args.jobs)
        rest = [a for a in rest if a != "--"]
        return skyprep(["run", args.archive, "--out", args.out, "--scheduler", cluster.scheduler_address, *rest])


if __name__ == "__main__":
    sys.exit(main())
