"""Command line: ``skyprep synth | run | info | config | demo`` (also ``python -m pipeline``).

Exit status: 0 success, 1 when any session failed (the others still complete), 2 usage errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .config import ConfigError, dump_config, load_config


def _synth(args) -> int:
    from .synth import SynthSpec, write_archive

    try:
        spec = SynthSpec(sessions=args.sessions, size=args.size, frames=args.frames, amps=args.amps, seed=args.seed)
    except ValueError as err:
        raise UsageError(str(err)) from None
    dirs = write_archive(args.out_root, spec)
    print(f"wrote {len(dirs)} session(s) under {args.out_root}")
    return 0


def _run(args) -> int:
    from .runner import make_client, report_path, run

    config = load_config(args.config)
    if not Path(args.input_root).is_dir():
        raise UsageError(f"input archive {args.input_root} is not a directory")
    with make_client(args.scheduler, args.workers) as client:
        report = run(args.input_root, args.out, config, client, pattern=args.sessions)
    path = report_path(args.out)
    report.write_json(path)
    print(report.table())
    print(f"report: {path}")
    return report.exit_code


def _info(args) -> int:
    from .info import describe

    print(describe(args.store))
    return 0


def _config(args) -> int:
    print(dump_config(load_config(args.config)), end="")
    return 0


def _demo(args) -> int:
    from .info import describe
    from .runner import make_client, report_path, run
    from .synth import SynthSpec, write_archive

    root, store = Path(args.workdir) / "archive", Path(args.workdir) / "demo.zarr"
    if not root.exists():
        print(f"building a synthetic archive in {root} ...", file=sys.stderr)
        write_archive(root, SynthSpec(sessions=3, size=512, frames=8, amps=1, seed=0))
        write_archive(root, SynthSpec(sessions=1, size=512, frames=8, amps=4, seed=1))
    with make_client(None, args.workers) as client:
        report = run(root, store, load_config(None), client)
    report.write_json(report_path(store))
    print(report.table())
    print()
    print(describe(store))
    print(f"\nopen it with: xarray.open_datatree({str(store)!r}, engine='zarr')")
    return report.exit_code


class UsageError(Exception):
    """A command line that cannot be carried out as given (exit status 2)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skyprep", description="Raw CCD observation archives to an ML-ready Zarr store.")
    p.add_argument("--version", action="version", version=f"skyprep {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic MuSCAT-style archive with ground truth")
    s.add_argument("out_root", type=Path)
    s.add_argument("--sessions", type=int, default=3)
    s.add_argument("--size", type=int, default=512, help="trimmed frame side, pixels (2048 = full MuSCAT)")
    s.add_argument("--frames", type=int, default=8, help="e91 frames per session")
    s.add_argument("--amps", type=int, default=1, choices=(1, 2, 4, 8))
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_synth)

    r = sub.add_parser("run", help="process an archive into a Zarr store")
    r.add_argument("input_root", type=Path)
    r.add_argument("--out", type=Path, required=True, help="the Zarr store (created or resumed)")
    where = r.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:port)")
    where.add_argument("--workers", type=int, help="workers of the local cluster (default: cores, at most 4)")
    r.add_argument("--config", type=Path, help="YAML configuration (see `skyprep config`)")
    r.add_argument("--sessions", help="glob on '<instrument>_<band>/<obs_id>' selecting sessions")
    r.set_defaults(func=_run)

    i = sub.add_parser("info", help="summarise a store")
    i.add_argument("store", type=Path)
    i.set_defaults(func=_info)

    c = sub.add_parser("config", help="print the configuration (defaults, or a file's) as YAML")
    c.add_argument("config", type=Path, nargs="?")
    c.set_defaults(func=_config)

    d = sub.add_parser("demo", help="synthesise a small archive, process it and show the result")
    d.add_argument("--workdir", type=Path, default=Path("demo"))
    d.add_argument("--workers", type=int)
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, UsageError, FileNotFoundError) as err:
        print(f"skyprep {args.command}: {err}", file=sys.stderr)
        return 2
