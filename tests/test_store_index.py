"""The root index and the consolidated metadata: consistent at every moment, refused when foreign or malformed."""

import json

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.io import index as store_index
from pipeline.io.index import (
    StoreIndexError,
    complete_sessions,
    consolidate,
    index,
    mark_complete,
    open_index,
)
from pipeline.io.provenance import Provenance
from pipeline.io.store import write_session

SHAPE = (32, 32)
NO_PROVENANCE = Provenance(registration=[], inputs=[], array_sha256={}, reference_check={}, config={})


def _attrs(key):
    instrument_band, obs_id = key.split("/")
    instrument, band = instrument_band.split("_")
    return {"instrument": instrument, "band": band, "obs_id": obs_id}


def _write(store, key, complete=True, writer=None):
    values = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    dataset = xr.Dataset({"calib": (("y", "x"), da.from_array(values, chunks=SHAPE))})
    dask.compute(write_session(dataset, store, key, 32, writer), scheduler="synchronous")
    if complete and writer is None:
        mark_complete(store, key, _attrs(key), NO_PROVENANCE)
    elif complete:
        writer.complete(key, _attrs(key), NO_PROVENANCE)


def _tree_sessions(store):
    tree = xr.open_datatree(store, engine="zarr", consolidated=True)
    return {f"{a}/{b}" for a in tree.children for b in tree[a].children}


def test_the_consolidated_metadata_lists_exactly_the_complete_sessions_at_every_moment(tmp_path):
    store = tmp_path / "s.zarr"
    _write(store, "cam_g/obs1")
    assert _tree_sessions(store) == complete_sessions(store) == {"cam_g/obs1"}
    _write(store, "cam_g/obs2", complete=False)  # a run killed while writing obs2
    assert _tree_sessions(store) == {"cam_g/obs1"}
    _write(store, "cam_r/obs3")  # no end-of-run consolidation: each index write keeps it
    assert _tree_sessions(store) == complete_sessions(store) == {"cam_g/obs1", "cam_r/obs3"}
    _write(store, "cam_g/obs1", complete=False)  # a rewrite begins: the session leaves both at once
    assert _tree_sessions(store) == complete_sessions(store) == {"cam_r/obs3"}
    tree = xr.open_datatree(store, engine="zarr", consolidated=True)
    np.testing.assert_array_equal(tree["cam_r/obs3"]["calib"].values.ravel(), np.arange(np.prod(SHAPE)))


def test_a_stale_consolidated_copy_is_rebuilt_from_the_index(tmp_path):
    store = tmp_path / "s.zarr"
    _write(store, "cam_g/obs1")
    _write(store, "cam_g/obs2", complete=False)
    zarr.consolidate_metadata(str(store))  # what an older skyprep (or another tool) left: obs2 listed
    assert _tree_sessions(store) == {"cam_g/obs1", "cam_g/obs2"}
    consolidate(store)
    assert _tree_sessions(store) == {"cam_g/obs1"}


def test_an_empty_directory_is_a_new_store(tmp_path):
    store = tmp_path / "s.zarr"
    store.mkdir()
    assert index(store) == {}
    open_index(store)
    _write(store, "cam_g/obs1")
    assert complete_sessions(store) == {"cam_g/obs1"}


def test_another_tools_zarr_store_is_refused_and_left_alone(tmp_path):
    store = tmp_path / "other.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=3)
    root.create_group("cam_g").create_array("obs1", shape=(4,), dtype="f4")
    before = (store / "zarr.json").read_bytes()
    with pytest.raises(StoreIndexError, match="written by another tool"):
        open_index(store)
    with pytest.raises(StoreIndexError, match="written by another tool"):
        _write(store, "cam_g/obs1")
    assert (store / "zarr.json").read_bytes() == before


def test_a_directory_that_is_not_a_zarr_store_is_refused(tmp_path):
    store = tmp_path / "notes"
    store.mkdir()
    (store / "readme.txt").write_text("mine")
    with pytest.raises(StoreIndexError, match="not a Zarr v3 store"):
        open_index(store)


def _damage_index(store, change):
    path = store / "zarr.json"
    document = json.loads(path.read_text())
    change(document["attributes"]["skyprep"])
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda meta: meta.update(sessions=[1, 2]), "'sessions' is not a mapping"),
        (lambda meta: meta["sessions"].update({"cam_g/obs1": "yes"}), "record of 'cam_g/obs1'"),
        (lambda meta: meta.pop("store_version"), "store_version None"),
        (lambda meta: meta.update(store_version=1), "store version 1; this skyprep reads and writes version 2"),
    ],
)
def test_a_malformed_index_or_another_store_version_is_an_error_naming_the_store(tmp_path, change, match):
    store = tmp_path / "s.zarr"
    _write(store, "cam_g/obs1")
    _damage_index(store, change)
    with pytest.raises(StoreIndexError, match=match):
        index(store)


def test_unreadable_root_metadata_is_an_error_naming_the_file(tmp_path):
    store = tmp_path / "s.zarr"
    _write(store, "cam_g/obs1")
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_')
    with pytest.raises(StoreIndexError, match=r"zarr.json: unreadable metadata"):
        complete_sessions(store)


def test_complete_must_be_true_not_a_truthy_string(tmp_path):
    store = tmp_path / "s.zarr"
    _write(store, "cam_g/obs1")
    _damage_index(store, lambda meta: meta["sessions"]["cam_g/obs1"].update(complete="false"))
    assert complete_sessions(store) == set()


def test_a_runs_writer_queues_completions_and_the_store_never_lists_one_before_it_is_written(tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"
    monkeypatch.setattr(store_index, "WRITE_SPACING", float("inf"))  # nothing is due until flushed
    writer = open_index(store)
    _write(store, "cam_g/obs1", writer=writer)
    _write(store, "cam_r/obs2", writer=writer)
    assert writer.complete_keys() == {"cam_g/obs1", "cam_r/obs2"}
    assert complete_sessions(store) == set() == _tree_sessions(store)  # a crash now: both rewritten next run
    writer.flush()
    assert _tree_sessions(store) == complete_sessions(store) == {"cam_g/obs1", "cam_r/obs2"}
    _write(store, "cam_g/obs3", writer=writer)  # queued, then an unmark writes it with the unmark
    _write(store, "cam_g/obs1", complete=False, writer=writer)
    assert _tree_sessions(store) == complete_sessions(store) == {"cam_r/obs2", "cam_g/obs3"}


def test_completions_are_written_at_once_while_writes_are_cheap(tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"
    monkeypatch.setattr(store_index, "WRITE_SPACING", 0.0)
    writer = open_index(store)
    _write(store, "cam_g/obs1", writer=writer)
    assert complete_sessions(store) == _tree_sessions(store) == {"cam_g/obs1"}


def test_a_runs_writer_reads_the_root_document_once(tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"
    _write(store, "cam_g/obs0")
    reads = []
    root_document = store_index._root_document
    monkeypatch.setattr(store_index, "_root_document", lambda s: reads.append(s) or root_document(s))
    writer = open_index(store)
    for n in range(1, 6):
        _write(store, f"cam_g/obs{n}", writer=writer)
    writer.flush()
    assert len(reads) == 1
    assert complete_sessions(store) == {f"cam_g/obs{n}" for n in range(6)}


@pytest.mark.parametrize("key", ["a_b/c", "a_b/c-1", "a_b/c0", "a_b/cc", "a_b/b", "a_b/d"])
def test_the_entries_under_a_session_are_found_by_prefix_exactly(key):
    paths = sorted(["a_b", "a_b/c", "a_b/c/x", "a_b/c/y", "a_b/c-1", "a_b/c-1/x", "a_b/c0", "a_b/c0/x",
                    "a_b/cc/x", "a_b/c/x/deeper", "a_b/b/x"])  # fmt: skip
    expected = [p for p in paths if p == key or p.startswith(key + "/")]
    assert store_index._under(paths, key) == expected
    assert expected or key == "a_b/d"


def test_a_run_reads_the_root_document_a_fixed_number_of_times_whatever_its_sessions(tiny_archive, tmp_path,
                                                                                      monkeypatch, client):  # fmt: skip
    from pipeline.config import Config
    from pipeline.runner import run

    reads = []
    root_document = store_index._root_document
    monkeypatch.setattr(store_index, "_root_document", lambda s: reads.append(s) or root_document(s))
    counts = []
    for sessions in ("*/*_005_000", None):  # one session, then the other two of the archive
        reads.clear()
        report = run(tiny_archive, tmp_path / "out.zarr", Config(), client, pattern=sessions, echo=lambda line: None)
        assert report.exit_code == 0 and sum(r.status == "ok" for r in report.results) >= 1
        counts.append(len(reads))
    assert len(complete_sessions(tmp_path / "out.zarr")) == 3
    assert counts[0] == counts[1] == 1, counts


@pytest.mark.parametrize("existing", [False, True])
def test_opening_a_store_for_a_run_writes_its_root_once(tmp_path, monkeypatch, existing):
    """A new store's index and an existing store's rebuilt consolidated metadata: one root write each."""
    store = tmp_path / "s.zarr"
    if existing:
        _write(store, "cam_g/obs0")
    writes = []
    write_index = store_index._write_index
    monkeypatch.setattr(store_index, "_write_index", lambda *args: writes.append(args) or write_index(*args))
    open_index(store)
    assert len(writes) == 1
    assert complete_sessions(store) == ({"cam_g/obs0"} if existing else set())
