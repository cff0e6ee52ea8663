"""Command line: ``skyprep synth | run | info | split | preview | export | config | demo`` (also ``python -m pipeline``).

Exit status: 0 success, 1 when any session failed (the others still complete), 2 usage errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .config import ConfigError, dump_config, load_config
from .errors import Interrupted, SkyprepError, UsageError
from .io.lock import StoreError, store_lock


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
    from .runner import RunReport, make_client, report_path, run, stop_on_signals

    config = load_config(args.config)
    if not Path(args.input_root).is_dir():
        raise UsageError(f"input archive {args.input_root} is not a directory")
    try:
        with stop_on_signals(), store_lock(args.out), make_client(args.scheduler, args.workers, args.scheduler_file) as client:  # fmt: skip
            report = run(args.input_root, args.out, config, client, pattern=args.sessions, redo=args.redo)
    except StoreError as err:
        print(f"skyprep run: {err}", file=sys.stderr)
        return 1
    except Interrupted as stop:  # before any session started, or while the cluster shut down
        report = RunReport(store=str(args.out), stopped_by=stop.name)
    path = report_path(args.out)
    report.write_json(path)
    if report.stopped_by:
        print(f"skyprep run: {report.stop_line()}; report: {path}", file=sys.stderr)
        return report.exit_code
    print(report.table())
    print(f"report: {path}")
    return report.exit_code


def _verify(args) -> int:
    from .tools.verify import repair_commands, verify

    problems = verify(args.store)
    bad = {key: found for key, found in problems.items() if found}
    for key, found in bad.items():
        for problem in found:
            print(f"{key}: {problem}")
    sessions = {key: found for key, found in problems.items() if key != str(args.store)}
    broken = sum(bool(found) for found in sessions.values())
    print(f"{args.store}: {len(sessions) - broken} session(s) complete and intact, {broken} with problems"
          + ("; the store itself has problems" if problems.get(str(args.store)) else ""))  # fmt: skip
    if args.repair and bad:
        print("\nto repair (the archive is the one each session was read from):")
        print("\n".join(f"  {command}" for command in repair_commands(args.store, bad)))
    return 1 if bad else 0


def _info(args) -> int:
    from .tools.info import describe

    print(describe(args.store))
    return 0


def _preview(args) -> int:
    from .tools.preview import preview

    print(f"wrote {preview(args.store, args.session, args.out)}")
    return 0


def _export(args) -> int:
    from .tools.export import UnknownSession, export_session

    try:
        print(f"wrote {export_session(args.store, args.session, args.out)}")
    except UnknownSession as err:
        raise UsageError(str(err)) from None
    return 0


def _split(args) -> int:
    from .io.store import index, record_split
    from .tools import splits

    with store_lock(args.store):  # the index is rewritten: not while a run writes it
        records = index(args.store)
        if not records:
            raise UsageError(f"{args.store}: no sessions recorded")
        try:
            if args.from_json is not None:
                assignment, unknown = splits.from_json(args.from_json, records)
                how = {"from_json": str(args.from_json)}
                if unknown:
                    print(f"not in the store (ignored): {', '.join(unknown)}", file=sys.stderr)
            else:
                assignment = splits.assign(records, args.test_fraction, args.seed, args.by)
                how = {"test_fraction": args.test_fraction, "seed": args.seed, "by": args.by}
        except ValueError as err:
            raise UsageError(str(err)) from None
        record_split(args.store, assignment, how)
    counts = {side: sum(v == side for v in assignment.values()) for side in ("train", "test")}
    print(f"{args.store}: {counts['train']} train, {counts['test']} test session(s)")
    return 0


def _config(args) -> int:
    print(dump_config(load_config(args.config)), end="")
    return 0


def _demo(args) -> int:
    from .runner import make_client, report_path, run, stop_on_signals
    from .synth import SynthSpec, write_archive
    from .tools.info import describe

    root, store = Path(args.workdir) / "archive", Path(args.workdir) / "demo.zarr"
    if not root.exists():
        print(f"building a synthetic archive in {root} ...", file=sys.stderr)
        write_archive(root, SynthSpec(sessions=3, size=512, frames=8, amps=1, seed=0))
        write_archive(root, SynthSpec(sessions=1, size=512, frames=8, amps=4, seed=1))
    with stop_on_signals(), store_lock(store), make_client(None, args.workers) as client:
        report = run(root, store, load_config(None), client)
    report.write_json(report_path(store))
    if report.stopped_by:
        print(f"skyprep demo: {report.stop_line()}", file=sys.stderr)
        return report.exit_code
    print(report.table())
    print()
    print(describe(store))
    print(f"\nopen it with: xarray.open_datatree({str(store)!r}, engine='zarr')")
    return report.exit_code


def _positive(text: str) -> int:
    """An integer of at least 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
    where.add_argument("--scheduler-file", type=Path, help="scheduler file of a running Dask cluster (JSON)")
    where.add_argument("--workers", type=_positive, help="workers of the local cluster (default: cores, at most 4)")
    r.add_argument("--config", type=Path, help="YAML configuration (see `skyprep config`)")
    r.add_argument("--sessions", help="glob on '<instrument>_<band>/<obs_id>' selecting sessions")
    r.add_argument("--redo", metavar="GLOB", help="rewrite the complete sessions whose key matches GLOB")
    r.set_defaults(func=_run)

    i = sub.add_parser("info", help="summarise a store")
    i.add_argument("store", type=Path)
    i.set_defaults(func=_info)

    v = sub.add_parser("verify", help="check completeness and checksums of a store (exit 1 on problems)")
    v.add_argument("store", type=Path)
    v.add_argument("--repair", action="store_true", help="also list the commands that would fix what is found")
    v.set_defaults(func=_verify)

    pv = sub.add_parser("preview", help="draw a session's os, calib, mean and mask side by side (PNG)")
    pv.add_argument("store", type=Path)
    pv.add_argument("session", help="'<instrument>_<band>/<obs_id>'")
    pv.add_argument("-o", "--out", type=Path, required=True, help="the PNG to write")
    pv.set_defaults(func=_preview)

    ex = sub.add_parser("export", help="write a session as one multi-extension FITS file (SCI, VAR, MASK, COUNT, MEAN)")
    ex.add_argument("store", type=Path)
    ex.add_argument("session", help="'<instrument>_<band>/<obs_id>'")
    ex.add_argument("out", type=Path, help="the FITS file to write (e.g. OUT.fits.fz)")
    ex.set_defaults(func=_export)

    sp = sub.add_parser("split", help="record a reproducible train/test split of the sessions in the store")
    sp.add_argument("store", type=Path)
    how = sp.add_mutually_exclusive_group(required=True)
    how.add_argument("--test-fraction", type=float, help="fraction of the groups (see --by) put in test")
    how.add_argument("--from-json", type=Path, help='import a train_test_split.json {"train": [...], "test": [...]}')
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument(
        "--by",
        choices=("session", "instrument", "band"),
        default="session",
        help="keep all sessions of one instrument (or band) on the same side",
    )
    sp.set_defaults(func=_split)

    c = sub.add_parser("config", help="print the configuration (defaults, or a file's) as YAML")
    c.add_argument("config", type=Path, nargs="?")
    c.set_defaults(func=_config)

    d = sub.add_parser("demo", help="synthesise a small archive, process it and show the result")
    d.add_argument("--workdir", type=Path, default=Path("demo"))
    d.add_argument("--workers", type=_positive)
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
    except SkyprepError as err:
        print(f"skyprep {args.command}: {err}", file=sys.stderr)
        return 1
    except Interrupted as stop:
        print(f"skyprep {args.command}: {stop}", file=sys.stderr)
        return 128 + stop.signum
