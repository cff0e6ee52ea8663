"""The patch loader and splits on a small store written through `pipeline.io.store` from known arrays."""

import json
import subprocess
import sys
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.io.index import index, index_document, mark_complete, open_index, record_split, splits
from pipeline.io.provenance import Provenance
from pipeline.io.store import write_session
from pipeline.steps.masks import Flag
from pipeline.tools.loader import LoaderParams, PatchDataset, tile_origins
from pipeline.tools.splits import assign, from_json, to_json

NO_PROVENANCE = Provenance(registration=[], inputs=[], array_sha256={}, reference_check={}, config={})

CHUNK = 64
SESSIONS = {  # key: (shape, e91 frames)
    "muscat3_g/obs1": ((192, 256), 3),
    "muscat3_r/obs2": ((256, 192), 2),
    "muscat4_g/obs3": ((128, 128), 0),
}


def _session(rng, shape, frames):
    def image(dtype=np.float32):
        return rng.normal(100, 20, shape).astype(dtype)

    mask = rng.integers(0, 4, shape).astype(np.uint16)
    variables = {"os": image(), "calib": image(), "variance": image() ** 2, "mask": mask}
    if frames:
        variables["e91"] = rng.normal(50, 10, (frames, *shape)).astype(np.float32)
        variables["e91"][0, :3, :3] = np.nan
        variables["e91_mask"] = (rng.integers(0, 2, (frames, *shape)) * int(Flag.CLIPPED)).astype(np.uint16)
        variables["mean"] = image()
    return variables


def _write(path, key, arrays):
    dims = {2: ("y", "x"), 3: ("frame", "y", "x")}
    data = {
        name: (dims[a.ndim], da.from_array(a, chunks=(1,) * (a.ndim - 2) + (CHUNK, CHUNK)))
        for name, a in arrays.items()
    }
    dask.compute(write_session(xr.Dataset(data), path, key, CHUNK))
    inst_band, obs_id = key.split("/")
    instrument, band = inst_band.split("_")
    mark_complete(path, key, {"instrument": instrument, "band": band, "obs_id": obs_id}, NO_PROVENANCE)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("loader") / "store.zarr"
    rng = np.random.default_rng(7)
    truth = {key: _session(rng, shape, frames) for key, (shape, frames) in SESSIONS.items()}
    for key, arrays in truth.items():
        _write(path, key, arrays)
    return path, truth


def _window(array, y, x, p, frame=None):
    return (array if frame is None else array[frame])[y : y + p, x : x + p]


def test_patches_equal_the_stored_arrays_at_their_origin(store):
    path, truth = store
    params = LoaderParams(input="os", target="calib", patch_px=64, patches_per_epoch=20, seed=3)
    ds = PatchDataset(path, params)
    assert ds.sessions == sorted(SESSIONS)
    for i in range(len(ds)):
        sample = ds[i]
        s, y, x = sample["index"]
        t = truth[ds.sessions[s]]
        assert sample["input"].shape == (1, 64, 64) and sample["input"].dtype == np.float32
        np.testing.assert_array_equal(sample["input"][0], _window(t["os"], y, x, 64))
        np.testing.assert_array_equal(sample["target"][0], _window(t["calib"], y, x, 64))
        np.testing.assert_array_equal(sample["mask"][0], _window(t["mask"], y, x, 64))
        np.testing.assert_array_equal(sample["variance"][0], _window(t["variance"], y, x, 64))
        stored = zarr.open_group(str(path), mode="r")[ds.sessions[s]]
        np.testing.assert_array_equal(sample["target"][0], stored["calib"][y : y + 64, x : x + 64])
    assert len(ds._reader.files) >= 1


def test_e91_frame_input_carries_its_mask_and_skips_sessions_without_it(store):
    path, truth = store
    ds = PatchDataset(path, LoaderParams(input="e91[1]", target="mean", patch_px=32, patches_per_epoch=30, seed=1))
    assert ds.sessions == ["muscat3_g/obs1", "muscat3_r/obs2"]
    assert PatchDataset(path, LoaderParams(input="e91[2]", target="mean", patch_px=32)).sessions == ["muscat3_g/obs1"]
    assert PatchDataset(path, LoaderParams(input="os", target="mean", patch_px=32)).sessions == ds.sessions
    for i in range(len(ds)):
        sample = ds[i]
        s, y, x = sample["index"]
        t = truth[ds.sessions[s]]
        np.testing.assert_array_equal(sample["input"][0], _window(t["e91"], y, x, 32, frame=1))
        np.testing.assert_array_equal(sample["target"][0], _window(t["mean"], y, x, 32))
        expected = _window(t["mask"], y, x, 32) | _window(t["e91_mask"], y, x, 32, frame=1)
        np.testing.assert_array_equal(sample["mask"][0], expected)


def test_nan_is_flagged_no_data_and_asinh_matches_numpy(store):
    path, truth = store
    params = LoaderParams(
        input="e91[0]", target="mean", patch_px=64, mode="tiled", normalise="asinh", asinh_scale_adu=7.0
    )
    sample = PatchDataset(path, params)[0]
    assert tuple(sample["index"]) == (0, 0, 0)
    t = truth["muscat3_g/obs1"]
    assert np.all(sample["mask"][0, :3, :3] & int(Flag.NO_DATA))
    assert not np.any(sample["mask"][0, 3:, 3:] & int(Flag.NO_DATA))
    raw = _window(t["e91"], 0, 0, 64, frame=0)
    expected = np.where(np.isnan(raw), 0.0, np.log(raw / 7.0 + np.sqrt((raw / 7.0) ** 2 + 1)))
    np.testing.assert_allclose(sample["input"][0], expected, rtol=1e-6)


def test_random_patches_are_deterministic_for_a_seed(store):
    path, _ = store
    params = LoaderParams(patch_px=48, patches_per_epoch=16, seed=11)
    a, b = PatchDataset(path, params), PatchDataset(path, params)
    origins = [tuple(a[i]["index"]) for i in range(16)]
    assert origins == [tuple(b[i]["index"]) for i in reversed(range(16))][::-1]
    assert len(set(origins)) > 8
    other = PatchDataset(path, LoaderParams(patch_px=48, patches_per_epoch=16, seed=12))
    assert origins != [tuple(other[i]["index"]) for i in range(16)]
    a.set_epoch(1)
    assert origins != [tuple(a[i]["index"]) for i in range(16)]


def test_tiles_cover_every_frame_exactly():
    assert tile_origins(128, 150, 64) == [(y, x) for y in (0, 64) for x in (0, 64, 86)]


def test_tiled_mode_covers_each_session(store):
    path, _ = store
    ds = PatchDataset(path, LoaderParams(patch_px=64, mode="tiled"))
    expected = sum(len(tile_origins(*shape, 64)) for shape, _ in SESSIONS.values())
    assert len(ds) == expected
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_bad_parameters_are_refused(store):
    path, _ = store
    with pytest.raises(ValueError, match="e91"):
        LoaderParams(input="e91(1)")
    with pytest.raises(ValueError, match="smaller than patch_px"):
        PatchDataset(path, LoaderParams(patch_px=200))
    with pytest.raises(ValueError, match="no complete session"):
        PatchDataset(path, LoaderParams(input="e91[5]"))


def test_split_is_reproducible_and_grouped():
    records = {
        f"m{i % 2}_{'gr'[i % 2]}/o{i}": {"instrument": f"m{i % 2}", "band": "gr"[i % 2], "obs_id": f"o{i}"}
        for i in range(10)
    }
    first = assign(records, 0.3, seed=4)
    assert first == assign(records, 0.3, seed=4)
    assert sum(v == "test" for v in first.values()) == 3
    assert any(assign(records, 0.3, seed=s) != first for s in range(5, 10))
    by_instrument = assign(records, 0.5, seed=0, by="instrument")
    for inst in ("m0", "m1"):
        assert len({v for k, v in by_instrument.items() if k.startswith(inst)}) == 1
    with pytest.raises(ValueError, match="cannot split"):
        assign({"a/1": {"instrument": "a"}}, 0.5, seed=0, by="instrument")


def test_split_json_round_trip_and_errors(tmp_path):
    records = {"a_g/o1": {"obs_id": "o1"}, "a_g/o2": {"obs_id": "o2"}, "b_r/o3": {"obs_id": "o3"}}
    split = assign(records, 0.34, seed=2)
    path = tmp_path / "train_test_split.json"
    path.write_text(json.dumps(to_json(split)))
    assert from_json(path, records) == (split, [])
    path.write_text(json.dumps({"train": ["o1", "o2", "extra"], "test": ["b_r/o3"]}))
    assert from_json(path, records) == ({"a_g/o1": "train", "a_g/o2": "train", "b_r/o3": "test"}, ["extra"])
    path.write_text(json.dumps({"train": ["o1"], "test": ["o3"]}))
    with pytest.raises(ValueError, match="not listed: a_g/o2"):
        from_json(path, records)
    path.write_text(json.dumps({"train": ["o1", "o2", "o3"], "test": ["o1"]}))
    with pytest.raises(ValueError, match="both train and test"):
        from_json(path, records)


def test_split_command_records_the_split_and_the_loader_respects_it(store, tmp_path):
    path, _ = store
    cmd = [sys.executable, "-m", "pipeline", "split", str(path), "--test-fraction", "0.34", "--seed", "5"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    recorded = splits(path)
    assert set(recorded) == set(SESSIONS) and recorded == assign(index(path), 0.34, seed=5)
    assert all(record["split"] == recorded[key] for key, record in index(path).items())
    exported = tmp_path / "split.json"
    exported.write_text(json.dumps(to_json(recorded)))
    record_split(path, {}, {})
    cmd = [sys.executable, "-m", "pipeline", "split", str(path), "--from-json", str(exported)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert splits(path) == recorded
    for side in ("train", "test"):
        ds = PatchDataset(path, LoaderParams(patch_px=32, split=side, patches_per_epoch=10))
        assert ds.sessions == sorted(k for k, v in recorded.items() if v == side)
        assert {ds.sessions[int(ds[i]["index"][0])] for i in range(10)} <= set(ds.sessions)


@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_torch_dataloader_with_two_workers_gives_the_numpy_batches(store, start):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from pipeline.tools.loader import torch_dataset

    path, truth = store
    params = LoaderParams(input="e91[1]", target="mean", patch_px=32, patches_per_epoch=12, seed=9, normalise="asinh")
    PatchDataset(path, params)[0]  # the parent has read the store before the workers start
    ds = torch_dataset(path, params)
    assert isinstance(ds, torch.utils.data.Dataset)
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=start, pin_memory=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator")  # a CPU-only machine
        batches = list(loader)
    assert len(batches) == 3 and batches[0]["input"].shape == (4, 1, 32, 32)
    reference = PatchDataset(path, params)
    for b, batch in enumerate(batches):
        expected = reference.batch(range(4 * b, 4 * b + 4))
        assert set(batch) == set(expected)
        for name, values in expected.items():
            np.testing.assert_array_equal(batch[name].numpy(), values)


def test_info_table_shows_shape_split_and_completeness_from_the_index(store):
    from pipeline.tools.info import describe

    path, truth = store
    assignment = assign(index(path), 0.34, seed=1)
    record_split(path, assignment, {"seed": 1})
    rows = {line.split()[0]: line.split() for line in describe(path).splitlines()[2:]}
    for key, (shape, frames) in SESSIONS.items():
        assert rows[key][1:] == [f"{shape[0]}x{shape[1]}", str(frames), "0", assignment[key], "yes"]


def test_preview_writes_a_png_of_the_expected_size(store, tmp_path):
    import matplotlib.image

    from pipeline.tools.preview import figure_size_px

    path, _ = store
    out = tmp_path / "obs1.png"
    cmd = [sys.executable, "-m", "pipeline", "preview", str(path), "muscat3_g/obs1", "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(out).shape[:2]
    assert (width, height) == figure_size_px(4) == (1600, 440)
    missing = subprocess.run([*cmd[:4], str(path), "muscat3_g/nope", "-o", str(out)], capture_output=True, text=True)
    assert missing.returncode == 2 and "muscat3_g/nope" in missing.stderr


def test_a_batch_equals_its_samples_and_origins_do_not_depend_on_the_batch(store):
    path, _ = store
    ds = PatchDataset(path, LoaderParams(input="e91[1]", target="mean", patch_px=32, patches_per_epoch=40, seed=5))
    batch = ds.__getitems__([7, 3, 30, 3])
    for j, i in enumerate([7, 3, 30, 3]):
        single = ds[i]
        assert set(single) == set(batch[j]) == {"input", "target", "mask", "variance", "index"}
        for name, values in single.items():
            np.testing.assert_array_equal(batch[j][name], values)
    assert ds.origin(30) == tuple(ds.origins(range(40))[30]) == tuple(ds.origins([30])[0])
    stacked = ds.batch([7, 3])
    assert stacked["input"].shape == (2, 1, 32, 32) and stacked["index"].shape == (2, 3)
    np.testing.assert_array_equal(stacked["mask"][1], ds[3]["mask"])
    with pytest.raises(IndexError):
        ds.__getitems__([0, 40])


def test_random_origins_are_uniform_over_every_patch_position(store):
    path, _ = store
    ds = PatchDataset(path, LoaderParams(patch_px=64, patches_per_epoch=30000, seed=2))
    origins = ds.origins(range(len(ds)))
    areas = np.array([h * w for h, w in ds.shapes], dtype=float)
    counts = np.bincount(origins[:, 0], minlength=len(ds.sessions))
    expected = len(ds) * areas / areas.sum()
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))  # session chosen by area
    for s, (h, w) in enumerate(ds.shapes):
        y, x = origins[origins[:, 0] == s, 1:].T
        assert y.min() == 0 and y.max() == h - 64 and x.min() == 0 and x.max() == w - 64
        hist = np.bincount(y, minlength=h - 63)  # every origin row equally likely
        assert abs(hist.mean() - len(y) / (h - 63)) < 1e-9 and hist.std() < 4 * np.sqrt(hist.mean())


def _write_raw_session(path, key, arrays, chunks=(32, 32), compressors=None, shards=None):
    """A session written by zarr-python directly (any layout), then marked complete."""
    if index_document(path) is None:
        open_index(path)
    group = zarr.open_group(str(path), mode="a", zarr_format=3).require_group(key)
    for name, a in arrays.items():
        lead = (1,) * (a.ndim - 2)
        array = group.create_array(name, shape=a.shape, dtype=a.dtype, chunks=(*lead, *chunks), compressors=compressors,
                                   shards=None if shards is None else (*lead, *shards), overwrite=True)  # fmt: skip
        array[...] = a
    inst_band, obs_id = key.split("/")
    instrument, band = inst_band.split("_")
    mark_complete(path, key, {"instrument": instrument, "band": band, "obs_id": obs_id}, NO_PROVENANCE)


@pytest.mark.parametrize("normalise", [None, "asinh"])
def test_nan_and_inf_become_zero_and_are_flagged_no_data(tmp_path, normalise):
    rng = np.random.default_rng(4)
    arrays = {name: rng.normal(100, 10, (64, 64)).astype(np.float32) for name in ("os", "calib", "variance")}
    arrays["mask"] = np.zeros((64, 64), np.uint16)
    arrays["os"][1, 2], arrays["os"][5, 5], arrays["calib"][3, 4], arrays["variance"][7, 1] = (
        np.inf,
        -np.inf,
        np.nan,
        np.inf,
    )
    arrays["calib"][32:, 32:] = np.nan  # a whole chunk of the fill value: zarr writes no file for it
    path = tmp_path / "s.zarr"
    _write(path, "muscat3_g/obs1", arrays)
    assert not (path / "muscat3_g/obs1/calib/c/1/1").exists() and (path / "muscat3_g/obs1/calib/c/0/0").exists()
    params = LoaderParams(patch_px=64, mode="tiled", normalise=normalise, asinh_scale_adu=5.0)
    sample = PatchDataset(path, params)[0]
    bad = {name: ~np.isfinite(arrays[name]) for name in ("os", "calib", "variance")}
    flagged = (sample["mask"][0] & int(Flag.NO_DATA)) != 0
    np.testing.assert_array_equal(flagged, bad["os"] | bad["calib"] | bad["variance"])
    for role, name in (("input", "os"), ("target", "calib")):
        good = np.where(bad[name], 0.0, arrays[name])
        expected = good if normalise is None else np.log(good / 5.0 + np.sqrt((good / 5.0) ** 2 + 1))
        np.testing.assert_allclose(sample[role][0], expected, rtol=1e-6)
        assert np.all(sample[role][0][bad[name]] == 0)
    np.testing.assert_array_equal(sample["variance"][0], np.where(bad["variance"], 0.0, arrays["variance"]))


@pytest.mark.parametrize("layout", ["v1 (blosc-lz4, 512 px chunks)", "sharded", "uncompressed"])
def test_any_zarr_layout_is_read_and_equals_the_stored_arrays(tmp_path, layout):
    from zarr.codecs import BloscCodec

    rng = np.random.default_rng(8)
    arrays = {name: rng.normal(100, 10, (96, 80)).astype(np.float32) for name in ("os", "calib", "variance")}
    arrays["mask"] = rng.integers(0, 4, (96, 80)).astype(np.uint16)
    options = {"v1 (blosc-lz4, 512 px chunks)": {"chunks": (512, 512), "compressors": [BloscCodec(cname="lz4")]},
               "sharded": {"chunks": (16, 16), "shards": (32, 80)}, "uncompressed": {"chunks": (40, 24)}}[layout]  # fmt: skip
    path = tmp_path / "s.zarr"
    _write_raw_session(path, "muscat3_g/obs1", arrays, **options)
    ds = PatchDataset(path, LoaderParams(patch_px=40, patches_per_epoch=24, seed=1))
    for sample in ds.__getitems__(range(24)):
        _, y, x = sample["index"]
        for role, name in (("input", "os"), ("target", "calib"), ("mask", "mask"), ("variance", "variance")):
            np.testing.assert_array_equal(sample[role][0], _window(arrays[name], y, x, 40))
    kinds = {type(ds._reader.array("muscat3_g/obs1", name)).__name__ for name in arrays}
    assert kinds == ({"ChunkFileArray"} if layout == "uncompressed" else {"_TensorstoreArray"})


def test_a_truncated_chunk_file_is_an_input_error(tmp_path):
    from pipeline.errors import InputError

    arrays = {name: np.ones((64, 64), np.float32) for name in ("os", "calib", "variance")} | {
        "mask": np.ones((64, 64), np.uint16)
    }
    path = tmp_path / "s.zarr"
    _write(path, "muscat3_g/obs1", arrays)
    chunk = path / "muscat3_g/obs1/calib/c/0/0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(InputError, match=r"calib/c/0/0: chunk file of 100 bytes, expected 16384"):
        PatchDataset(path, LoaderParams(patch_px=64, mode="tiled"))[0]


def test_a_patch_as_xarray_sits_on_the_frame_pixel_grid(store):
    path, truth = store
    ds = PatchDataset(path, LoaderParams(patch_px=32, patches_per_epoch=4, seed=3))
    view = ds.to_xarray(2)
    s, y, x = ds.origin(2)
    assert view.attrs["session"] == ds.sessions[s] and dict(view.sizes) == {"y": 32, "x": 32}
    assert int(view.y[0]) == y and int(view.x[-1]) == x + 31
    np.testing.assert_array_equal(view["input"].values, _window(truth[ds.sessions[s]]["os"], y, x, 32))
    np.testing.assert_array_equal(view["mask"].values, ds[2]["mask"][0])


def test_preview_of_a_session_without_a_finite_pixel_draws_it_blank(tmp_path):
    from pipeline.tools.preview import preview

    path = tmp_path / "nan.zarr"
    nan = np.full((64, 64), np.nan, np.float32)
    _write(path, "muscat3_g/nan1", {"os": nan, "calib": nan, "mask": np.zeros((64, 64), np.uint16)})
    out = preview(path, "muscat3_g/nan1", tmp_path / "nan.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, None, 3e38, -3e38])
def test_all_finite_agrees_with_numpy(bad):
    from pipeline.tools.loader import all_finite

    values = np.random.default_rng(1).normal(0, 1e3, (48, 48)).astype(np.float32)
    if bad is not None:
        values[17, 5] = bad
    assert all_finite(values) == bool(np.isfinite(values).all())


def test_incomplete_sessions_are_never_served(tmp_path):
    """Sessions written but never marked complete, unmarked (as before a rewrite), or with a
    record that only looks complete are left out; the complete one is the only one served."""
    from pipeline.io import index as store_index

    rng = np.random.default_rng(6)
    path = tmp_path / "s.zarr"
    for key in ("muscat3_g/done", "muscat3_g/unmarked", "muscat3_g/string"):
        _write(path, key, _session(rng, (64, 64), 0))
    unfinished = {
        name: (("y", "x"), da.from_array(a, chunks=(CHUNK, CHUNK))) for name, a in _session(rng, (64, 64), 0).items()
    }
    dask.compute(write_session(xr.Dataset(unfinished), path, "muscat3_g/never", CHUNK))  # written, never marked
    store_index.unmark(path, "muscat3_g/unmarked")
    root = json.loads((path / "zarr.json").read_text())
    root["attributes"]["skyprep"]["sessions"]["muscat3_g/string"]["complete"] = "true"  # edited by hand
    (path / "zarr.json").write_text(json.dumps(root))
    assert set(index(path)) == {"muscat3_g/done", "muscat3_g/string"}
    ds = PatchDataset(path, LoaderParams(patch_px=32, patches_per_epoch=50))
    assert ds.sessions == ["muscat3_g/done"]
    assert {int(ds[i]["index"][0]) for i in range(50)} == {0}
