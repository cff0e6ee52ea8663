"""Run ``skyprep run`` on SLURM: a dask-jobqueue ``SLURMCluster`` of worker jobs, this process as scheduler and client.

    pip install -e .[slurm]
    python deploy/slurm/skyprep_slurm.py ARCHIVE --out STORE.zarr --jobs 8 [--config-file deploy/slurm/jobqueue.yaml]
    python deploy/slurm/skyprep_slurm.py --print-job-script      # show what would be submitted

Run it on a login node (or inside a small SLURM job of its own); ARCHIVE and STORE must be on
a filesystem every compute node sees. Extra arguments after ``--`` go to ``skyprep run``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from dask_jobqueue import SLURMCluster

from pipeline.cli import main as skyprep

HERE = Path(__file__).resolve().parent


def make_cluster(config_file: Path = HERE / "jobqueue.yaml", **overrides) -> SLURMCluster:
    """A SLURMCluster configured by ``config_file`` (dask-jobqueue's schema), keyword overrides winning."""
    settings = yaml.safe_load(Path(config_file).read_text())["jobqueue"]["slurm"]
    kwargs = {key.replace("-", "_"): value for key, value in settings.items() if value is not None}
    return SLURMCluster(**{**kwargs, **overrides})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive", nargs="?", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--jobs", type=int, default=4, help="SLURM worker jobs")
    p.add_argument("--config-file", type=Path, default=HERE / "jobqueue.yaml")
    p.add_argument("--print-job-script", action="store_true")
    args, rest = p.parse_known_args(argv)
    with make_cluster(args.config_file) as cluster:
        if args.print_job_script:
            print(cluster.job_script())
            return 0
        if args.archive is None or args.out is None:
            p.error("ARCHIVE and --out are required")
        cluster.scale(jobs=args.jobs)
        rest = [a for a in rest if a != "--"]
        return skyprep(
            ["run", str(args.archive), "--out", str(args.out), "--scheduler", cluster.scheduler_address, *rest]
        )


if __name__ == "__main__":
    sys.exit(main())
