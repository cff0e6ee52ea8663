"""Interruption and operations from the command line (issue 13): SIGINT and SIGTERM (also as pid 1)
stop a run cleanly, ``--redo``, ``verify --repair``, the lock for ``split`` and ``demo``, clear
usage errors, one progress counter, a quiet shutdown."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr
import zarr
from astropy.io import fits
from distributed import Client

from pipeline.config import Config
from pipeline.io.index import complete_sessions, index
from pipeline.io.lock import lock_path, store_lock
from pipeline.runner import run
from pipeline.synth import SynthSpec, write_archive
from pipeline.tools.verify import consolidated_sessions, verify

SESSIONS = 6
SPEC = SynthSpec(sessions=SESSIONS, size=128, frames=3, amps=1, seed=3)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """An archive of ``SESSIONS`` small sessions (read-only)."""
    root = tmp_path_factory.mktemp("interrupt") / "archive"
    write_archive(root, SPEC)
    return root


def _cmd(*args) -> list[str]:
    return [sys.executable, "-m", "pipeline", *map(str, args)]


def _skyprep(*args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=timeout)


def _stop_after_first_session(cmd: list[str], sig: int, prefix: tuple[str, ...] = ()) -> tuple[int, str]:
    """Start ``cmd`` (after ``prefix``), send ``sig`` to it once its first session finished; its exit
    status and stderr."""
    child = subprocess.Popen([*prefix, *cmd], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 120
    for line in child.stderr:
        lines.append(line)
        if re.match(r"\[1/\d+\]", line) or time.monotonic() > deadline:
            break
    if prefix:  # signal the command itself (pid 1 of its namespace), not the unshare(1) around it
        inner = int((Path(f"/proc/{child.pid}/task/{child.pid}/children").read_text().split() or ["0"])[0])
        assert inner, "unshare has no child"
        os.kill(inner, sig)
    else:
        child.send_signal(sig)
    out, err = child.communicate(timeout=60)
    return child.returncode, "".join(lines) + err


def _assert_consistent(store: Path) -> None:
    """Consolidated metadata, ``open_datatree`` and ``verify`` say exactly what the index says."""
    complete = complete_sessions(store)
    assert consolidated_sessions(store) == complete
    tree = xr.open_datatree(store, engine="zarr")
    shown = {f"{inst}/{obs}" for inst in tree.children for obs in tree[inst].children}
    assert shown == complete
    root = zarr.open_group(str(store), mode="r", use_consolidated=True)
    assert {f"{i}/{o}" for i, g in root.groups() for o, _ in g.groups()} == complete
    problems = verify(store)
    assert not problems.get(str(store)), problems
    assert all(not problems[key] for key in complete), problems
    for key in set(problems) - complete - {str(store)}:
        assert problems[key] == ["incomplete (not marked complete in the index; the next run rewrites it)"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_cleanly_and_a_rerun_completes_the_rest(many, tmp_path, sig):
    store = tmp_path / "out.zarr"
    cmd = _cmd("run", many, "--out", store, "--workers", "1")
    code, err = _stop_after_first_session(cmd, sig)
    name = signal.Signals(sig).name
    assert code == 128 + sig, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    stop_lines = [line for line in err.splitlines() if "stopped by" in line]
    assert len(stop_lines) == 1 and stop_lines[0].startswith(f"skyprep run: stopped by {name}:"), err
    assert not lock_path(store).exists()
    report = json.loads((store.parent / f"{store.name}.report.json").read_text())
    assert report["stopped_by"] == name
    statuses = {s["key"]: s["status"] for s in report["sessions"]}
    complete = complete_sessions(store)
    assert {k for k, s in statuses.items() if s == "ok"} == complete
    assert 1 <= len(complete) < SESSIONS
    assert set(statuses.values()) <= {"ok", "stopped"} and len(statuses) == SESSIONS
    _assert_consistent(store)

    again = _skyprep("run", many, "--out", store, "--workers", "1")
    assert again.returncode == 0, again.stderr
    assert f"{SESSIONS - len(complete)} session(s) to process, {len(complete)} already complete" in again.stderr
    assert len(complete_sessions(store)) == SESSIONS
    _assert_consistent(store)


def test_a_signal_whose_exception_a_finalizer_swallowed_still_stops_the_run(many, tmp_path):
    """The handler's exception raised inside a ``__del__`` is lost (Python prints and ignores it);
    the stop request it recorded stops the run after the session that finishes next."""
    from pipeline.errors import Interrupted
    from pipeline.runner import stop_on_signals

    class Finalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs here, inside the finalizer

    with stop_on_signals() as stop:
        Finalizer()
        assert stop.signum == signal.SIGTERM  # the exception is gone, the request is not
        with pytest.raises(Interrupted, match="SIGTERM"):
            stop.check()
        with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
            report = run(many, tmp_path / "out.zarr", Config(), client, window=1, stop=stop.check, echo=lambda _: None)
    statuses = [r.status for r in report.results]
    assert report.stopped_by == "SIGTERM" and statuses.count("ok") == 1 and statuses.count("stopped") == SESSIONS - 1
    assert complete_sessions(tmp_path / "out.zarr") == {r.key for r in report.results if r.status == "ok"}


def test_sigterm_stops_a_run_that_is_pid_1(many, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed: no new pid namespace to run skyprep as pid 1")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --pid is not permitted here: {probe.stderr.decode().strip()}")
    store = tmp_path / "out.zarr"
    inner = _cmd("run", many, "--out", store, "--workers", "1")
    prefix = ("unshare", "--pid", "--fork", "--mount-proc")
    code, err = _stop_after_first_session(inner, signal.SIGTERM, prefix)
    assert "skyprep run: stopped by SIGTERM:" in err, err
    assert "Traceback" not in err
    assert code == 128 + signal.SIGTERM, err
    assert not lock_path(store).exists()
    _assert_consistent(store)
    again = _skyprep("run", many, "--out", store, "--workers", "1")  # not refused by its own pid
    assert again.returncode == 0, again.stderr
    assert len(complete_sessions(store)) == SESSIONS


@pytest.fixture(scope="module")
def done_store(many, tmp_path_factory):
    """``many`` processed to the end by the command line (read-only), with its stderr."""
    store = tmp_path_factory.mktemp("done") / "out.zarr"
    finished = _skyprep("run", many, "--out", store, "--workers", "2")
    assert finished.returncode == 0, finished.stderr
    return store, finished.stderr


@pytest.fixture
def store(done_store, tmp_path):
    copy = tmp_path / "out.zarr"
    shutil.copytree(done_store[0], copy)
    return copy


def test_the_progress_counter_counts_each_session_once(done_store):
    counts = [int(n) for n in re.findall(r"^\[(\d+)/\d+\]", done_store[1], re.M)]
    assert counts == list(range(1, SESSIONS + 1))


def test_the_progress_counter_counts_sessions_failing_while_built_in_the_same_count(many, tmp_path):
    """A session refused while its graph is built (no GAIN) and sessions finishing later share
    one counter: 1 to N, none repeated (they once had a counter each)."""
    root = tmp_path / "archive"
    shutil.copytree(many, root)
    raw = sorted(root.glob("*/*/data/*_raw.fits.fz"))[1]
    with fits.open(raw) as hdul:
        hdul = fits.HDUList([hdu.copy() for hdu in hdul])
    for hdu in hdul:
        hdu.header.remove("GAIN", ignore_missing=True, remove_all=True)
    hdul.writeto(raw, overwrite=True)
    lines = []
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        report = run(root, tmp_path / "out.zarr", Config(), client, window=2, echo=lines.append)
    assert [r.status for r in report.results].count("failed") == 1
    counts = [int(m.group(1)) for line in lines if (m := re.match(r"\[(\d+)/(\d+)\]", line))]
    assert counts == list(range(1, SESSIONS + 1)), lines


def test_a_successful_run_writes_no_traceback(done_store):
    err = done_store[1]
    assert "Traceback" not in err and "CancelledError" not in err and "ERROR" not in err, err


def test_redo_rewrites_only_the_chosen_complete_sessions(many, store):
    keys = sorted(index(store))
    chosen = keys[0]
    before = {key: (store / key / "zarr.json").stat().st_mtime_ns for key in keys}
    done = _skyprep("run", many, "--out", store, "--workers", "1", "--redo", chosen)
    assert done.returncode == 0, done.stderr
    assert f"1 session(s) to process, {SESSIONS - 1} already complete" in done.stderr
    after = {key: (store / key / "zarr.json").stat().st_mtime_ns for key in keys}
    assert [k for k in keys if after[k] != before[k]] == [chosen]
    assert complete_sessions(store) == set(keys)
    assert not any(verify(store).values())


def test_redo_matching_no_complete_session_is_a_usage_error(many, store):
    done = _skyprep("run", many, "--out", store, "--redo", "nothing/*")
    assert done.returncode == 2
    assert "--redo 'nothing/*' matches no complete session" in done.stderr
    assert "Traceback" not in done.stderr


def test_verify_repair_lists_the_commands_that_fix_what_it_found(many, store):
    keys = sorted(index(store))
    corrupt, incomplete = keys[0], keys[1]
    chunk = next(p for p in sorted((store / corrupt / "calib" / "c").rglob("*")) if p.is_file())
    chunk.write_bytes(bytes(b ^ 0xFF for b in chunk.read_bytes()))
    root = json.loads((store / "zarr.json").read_text())
    root["attributes"]["skyprep"]["sessions"][incomplete]["complete"] = False  # index says incomplete,
    (store / "zarr.json").write_text(json.dumps(root))  # the consolidated copy still lists it: stale
    done = _skyprep("verify", store, "--repair")
    assert done.returncode == 1
    out = done.stdout
    assert f"consolidated metadata lists {incomplete}, which the index does not mark complete" in out
    assert f"skyprep run {many} --out {store} --redo '{corrupt}'" in out
    assert f"skyprep run {many} --out {store} --sessions '{incomplete}'" in out
    repair = next(line.strip() for line in out.splitlines() if "consolidate(" in line)
    assert subprocess.run(repair, shell=True, cwd=Path(__file__).parents[1]).returncode == 0
    for command in (f"run {many} --out {store} --redo {corrupt}", f"run {many} --out {store} --sessions {incomplete}"):
        assert _skyprep(*command.split(), "--workers", "1").returncode == 0
    assert not any(verify(store).values())
    assert _skyprep("verify", store, "--repair").returncode == 0


def test_verify_without_repair_lists_no_commands(store):
    shutil.rmtree(store / sorted(index(store))[0] / "mean")
    done = _skyprep("verify", store)
    assert done.returncode == 1 and "skyprep run" not in done.stdout


@pytest.mark.parametrize("command", ["split", "demo"])
def test_split_and_demo_refuse_while_another_run_holds_the_lock(store, tmp_path, command):
    where = store
    args = ("split", store, "--test-fraction", "0.5")
    if command == "demo":
        where = tmp_path / "demo" / "demo.zarr"
        where.parent.mkdir()
        shutil.copytree(store, where)
        (where.parent / "archive").mkdir()  # an archive exists: demo goes straight to the run
        args = ("demo", "--workdir", where.parent, "--workers", "1")
    before = (where / "zarr.json").read_bytes()
    with store_lock(where):
        done = _skyprep(*args)
    assert done.returncode == 1, done.stderr
    assert "in use by another skyprep run" in done.stderr and "Traceback" not in done.stderr
    assert (where / "zarr.json").read_bytes() == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--workers", "-1"), "--workers: must be at least 1, got -1"),
        (("--workers", "0"), "--workers: must be at least 1, got 0"),
        (("--scheduler-file", "/nonexistent/scheduler.json"), "scheduler file /nonexistent/scheduler.json does not"),
        (("--sessions", "nothing/*"), "--sessions 'nothing/*' matches no session"),
    ],
    ids=["workers-negative", "workers-zero", "missing-scheduler-file", "sessions-match-nothing"],
)
def test_impossible_run_options_are_usage_errors(many, tmp_path, extra, message):
    started = time.monotonic()
    done = _skyprep("run", many, "--out", tmp_path / "out.zarr", *extra, timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 20
    assert not (tmp_path / "out.zarr" / "zarr.json").exists()


def test_an_unreachable_scheduler_is_an_error_at_once(many, tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    done = _skyprep("run", many, "--out", tmp_path / "out.zarr", "--scheduler", address, timeout=60)
    assert done.returncode == 1, done.stderr
    assert f"cannot reach the Dask scheduler at {address}" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 15
    assert not lock_path(tmp_path / "out.zarr").exists()
