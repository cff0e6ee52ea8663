"""Command line: ``skyprep synth | run | synthesize | noise | info | verify | split | preview | export | config | compile | demo``
(also ``python -m pipeline``).

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
from .io.objects import ObjectPath, location, writable_tree


def _synth(args) -> int:
    from .synth import SynthSpec, write_archive

    try:
        spec = SynthSpec(sessions=args.sessions, size=args.size, frames=args.frames, amps=args.amps, seed=args.seed,
                         row_noise_e=args.row_noise_e)  # fmt: skip
    except ValueError as err:
        raise UsageError(str(err)) from None
    out_root = _where(args.out_root)
    with writable_tree(out_root) as local:
        dirs = write_archive(local, spec)
    print(f"wrote {len(dirs)} session(s) under {out_root}")
    return 0


def _run(args) -> int:
    from .runner import RunReport, make_client, report_path, run, stop_on_signals

    config = load_config(args.config)
    root, out = _where(args.input_root, config.storage.options), _where(args.out, config.storage.options)
    if isinstance(root, ObjectPath) and not root.exists():
        raise UsageError(f"input archive {root}: no objects under this prefix")
    if isinstance(root, Path) and not root.is_dir():
        raise UsageError(f"input archive {root} is not a directory")
    in_memory = any(isinstance(w, ObjectPath) and w.scheme == "memory" for w in (root, out))
    if in_memory and (args.scheduler or args.scheduler_file or args.processes):
        raise UsageError("memory:// exists in this process only: its workers cannot be elsewhere "
                         "(no --scheduler, --scheduler-file or --processes)")  # fmt: skip
    try:
        with stop_on_signals() as stop, store_lock(out), make_client(args.scheduler, args.workers,
                                                                     args.scheduler_file, args.processes) as client:  # fmt: skip
            report = run(root, out, config, client, pattern=args.sessions, redo=args.redo, stop=stop.check)
    except StoreError as err:
        print(f"skyprep run: {err}", file=sys.stderr)
        return 1
    except Interrupted as stop:  # before any session started, or while the cluster shut down
        report = RunReport(store=str(out), stopped_by=stop.name)
    path = report_path(out)
    report.write_json(path)
    if report.stopped_by:
        print(f"skyprep run: {report.stop_line()}; report: {path}", file=sys.stderr)
        return report.exit_code
    print(report.table())
    print(f"report: {path}")
    return report.exit_code


def _synthesize(args) -> int:
    from .runner import make_client
    from .steps.params import SynthesisParams
    from .tools.synthesize import synthesize_store

    store = _where(args.store)
    if not (store / "zarr.json").exists():
        raise UsageError(f"{store}: not a skyprep store")
    try:
        params = SynthesisParams(realizations=args.realizations, seed=args.seed)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        with store_lock(store), make_client(args.scheduler, args.workers, args.scheduler_file):
            results = synthesize_store(store, params, args.sessions)
    except StoreError as err:
        print(f"skyprep synthesize: {err}", file=sys.stderr)
        return 1
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    print(f"{store}: {counts['ok']} drawn, {counts['skipped']} skipped, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


def _verify(args) -> int:
    from .tools.verify import repair_commands, verify

    store = _where(args.store)
    problems = verify(store)
    bad = {key: found for key, found in problems.items() if found}
    for key, found in bad.items():
        for problem in found:
            print(f"{key}: {problem}")
    sessions = {key: found for key, found in problems.items() if key != str(store)}
    broken = sum(bool(found) for found in sessions.values())
    print(f"{store}: {len(sessions) - broken} session(s) complete and intact, {broken} with problems"
          + ("; the store itself has problems" if problems.get(str(store)) else ""))  # fmt: skip
    if args.repair and bad:
        print("\nto repair (the archive is the one each session was read from):")
        print("\n".join(f"  {command}" for command in repair_commands(store, bad)))
    return 1 if bad else 0


def _info(args) -> int:
    from .tools.info import describe

    print(describe(_where(args.store)))
    return 0


def _preview(args) -> int:
    from .tools.preview import preview

    print(f"wrote {preview(_where(args.store), args.session, _where(args.out))}")
    return 0


def _noise(args) -> int:
    from .tools.noise_report import noise_report

    try:
        figures = noise_report(_where(args.store), args.session, _where(args.out), args.realization)
    except ValueError as err:
        raise UsageError(str(err)) from None
    bins = ", ".join(f"{100 * v:+.1f}%" for v in figures.variance_ratio_minus_1)
    print(f"syn/os variance per flux bin - 1: {bins}")
    print(f"syn/os row-noise power - 1: {100 * figures.row_power_ratio_minus_1:+.1f}% ({figures.pixels} pixels)")
    print(f"wrote {args.out}")
    return 0


def _export(args) -> int:
    from .tools.export import UnknownSession, export_session, export_syn

    try:
        if args.syn:
            print(f"wrote {export_syn(_where(args.store), args.session, _where(args.out), args.realization)}")
        else:
            print(f"wrote {export_session(_where(args.store), args.session, _where(args.out))}")
    except (UnknownSession, ValueError) as err:
        raise UsageError(str(err)) from None
    return 0


def _split(args) -> int:
    from .io.index import index, record_split
    from .tools import splits

    store = _where(args.store)
    with store_lock(store):  # the index is rewritten: not while a run writes it
        records = index(store)
        if not records:
            raise UsageError(f"{store}: no sessions recorded")
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
        record_split(store, assignment, how)
    counts = {side: sum(v == side for v in assignment.values()) for side in ("train", "test")}
    print(f"{store}: {counts['train']} train, {counts['test']} test session(s)")
    return 0


def _config(args) -> int:
    print(dump_config(load_config(args.config)), end="")
    return 0


def _compile(args) -> int:
    from .runner import warm_kernels

    cache = warm_kernels()
    print(f"kernels: {cache.compiled} compiled, {cache.loaded} loaded from the cache in {cache.directory}")
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
    with stop_on_signals() as stop, store_lock(store), make_client(None, args.workers) as client:
        report = run(root, store, load_config(None), client, stop=stop.check)
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


def _where(text: str, options: dict | None = None) -> Path | ObjectPath:
    """A location given on the command line: a local path, ``file://`` URL or object-store URL."""
    try:
        return location(text, options)
    except ValueError as err:
        raise UsageError(str(err)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skyprep", description="Raw CCD observation archives to an ML-ready Zarr store.")
    p.add_argument("--version", action="version", version=f"skyprep {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic MuSCAT-style archive with ground truth")
    s.add_argument("out_root", help="where to write it: a folder or an object-store URL (s3://BUCKET/PREFIX)")
    s.add_argument("--sessions", type=int, default=3)
    s.add_argument("--size", type=int, default=512, help="trimmed frame side, pixels (2048 = full MuSCAT)")
    s.add_argument("--frames", type=int, default=8, help="e91 frames per session")
    s.add_argument("--amps", type=int, default=1, choices=(1, 2, 4, 8))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--row-noise-e", type=float, default=0.0, help="RMS per-row readout offset (banding), e-")
    s.set_defaults(func=_synth)

    r = sub.add_parser("run", help="process an archive into a Zarr store")
    r.add_argument("input_root", help="the archive: a folder or an object-store URL (s3://, gs://, az://, memory://)")
    r.add_argument("--out", required=True, help="the Zarr store, a folder or an object-store URL (created or resumed)")
    where = r.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:port)")
    where.add_argument("--scheduler-file", type=Path, help="scheduler file of a running Dask cluster (JSON)")
    where.add_argument("--workers", type=_positive, help="threads of the local cluster (default: cores, at most 4)")
    r.add_argument("--processes", action="store_true",
                   help="run the local cluster's workers as separate single-threaded processes instead of threads")  # fmt: skip
    r.add_argument("--config", type=Path, help="YAML configuration (see `skyprep config`)")
    r.add_argument("--sessions", help="glob on '<instrument>_<band>/<obs_id>' selecting sessions")
    r.add_argument("--redo", metavar="GLOB", help="rewrite the complete sessions whose key matches GLOB")
    r.set_defaults(func=_run)

    sy = sub.add_parser("synthesize", help="(re)draw the synthetic frames syn from the store (no archive needed)")
    sy.add_argument("store", help="a store folder or URL")
    sy.add_argument("--realizations", type=int, default=1, help="frames per session (0 removes syn)")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--sessions", help="glob on '<instrument>_<band>/<obs_id>' selecting sessions")
    where = sy.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:port)")
    where.add_argument("--scheduler-file", type=Path, help="scheduler file of a running Dask cluster (JSON)")
    where.add_argument("--workers", type=_positive, help="workers of the local cluster (default: cores, at most 4)")
    sy.set_defaults(func=_synthesize)

    i = sub.add_parser("info", help="summarise a store")
    i.add_argument("store", help="a store folder or URL")
    i.set_defaults(func=_info)

    v = sub.add_parser("verify", help="check completeness and checksums of a store (exit 1 on problems)")
    v.add_argument("store", help="a store folder or URL")
    v.add_argument("--repair", action="store_true", help="also list the commands that would fix what is found")
    v.set_defaults(func=_verify)

    pv = sub.add_parser("preview", help="draw a session's os, calib, mean and mask side by side (PNG)")
    pv.add_argument("store", help="a store folder or URL")
    pv.add_argument("session", help="'<instrument>_<band>/<obs_id>'")
    pv.add_argument("-o", "--out", required=True, help="the PNG to write (a path or URL)")
    pv.set_defaults(func=_preview)

    nz = sub.add_parser("noise", help="compare a session's syn with its os: PTC, residual histograms, row noise (PNG)")
    nz.add_argument("store", help="a store folder or URL")
    nz.add_argument("session", help="'<instrument>_<band>/<obs_id>'")
    nz.add_argument("-o", "--out", required=True, help="the PNG to write (a path or URL)")
    nz.add_argument("--realization", type=int, default=0)
    nz.set_defaults(func=_noise)

    ex = sub.add_parser("export", help="write a session as one multi-extension FITS file (SCI, VAR, MASK, COUNT, MEAN)")
    ex.add_argument("store", help="a store folder or URL")
    ex.add_argument("session", help="'<instrument>_<band>/<obs_id>'")
    ex.add_argument(
        "out", help="the FITS file to write (e.g. OUT.fits.fz; a path or URL); with --syn, the archive root"
    )
    ex.add_argument(
        "--syn",
        action="store_true",
        help="write syn as OUT/<instrument>_<band>/<obs_id>/data/<obs_id>_syn.fits.fz (the archive's layout)",
    )
    ex.add_argument("--realization", type=int, default=0, help="with --syn: which realization")
    ex.set_defaults(func=_export)

    sp = sub.add_parser("split", help="record a reproducible train/test split of the sessions in the store")
    sp.add_argument("store", help="a store folder or URL")
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

    k = sub.add_parser(
        "compile",
        help="compile the numba kernels into numba's cache (NUMBA_CACHE_DIR) once, so new workers start warm",
    )
    k.set_defaults(func=_compile)

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
