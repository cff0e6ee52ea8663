"""The patch loader and splits on a small store written through `pipeline.io.store` from known arrays."""

import json
import subprocess
import sys

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from pipeline.io.store import index, mark_complete, record_split, splits, write_session
from pipeline.steps.masks import Flag
from pipeline.tools.loader import LoaderParams, PatchDataset, tile_origins
from pipeline.tools.splits import assign, from_json, to_json

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
    data = {name: (dims[a.ndim], da.from_array(a, chunks=(1,) * (a.ndim - 2) + (CHUNK, CHUNK)))
            for name, a in arrays.items()}  # fmt: skip
    dask.compute(write_session(xr.Dataset(data), path, key, CHUNK))
    inst_band, obs_id = key.split("/")
    instrument, band = inst_band.split("_")
    mark_complete(path, key, {"instrument": instrument, "band": band, "obs_id": obs_id}, {})


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


@pytest.mark.parametrize("mapped_mb", [0, 256])
def test_patches_equal_the_stored_arrays_at_their_origin(store, mapped_mb):
    path, truth = store
    params = LoaderParams(input="os", target="calib", patch_px=64, patches_per_epoch=20, seed=3, mapped_mb=mapped_mb)
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
    maps = ds._reader.maps
    assert maps.mapped <= max(mapped_mb * 2**20, CHUNK * CHUNK * 4) and len(maps._maps) >= 1


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
    params = LoaderParams(input="e91[0]", target="mean", patch_px=64, mode="tiled", normalise="asinh",
                          asinh_scale_adu=7.0)  # fmt: skip
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
    records = {f"m{i % 2}_{'gr'[i % 2]}/o{i}": {"instrument": f"m{i % 2}", "band": "gr"[i % 2], "obs_id": f"o{i}"}
               for i in range(10)}  # fmt: skip
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
    assert recorded == assign(index(path), 0.34, seed=5)
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


def test_torch_dataloader_with_two_workers(store):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from pipeline.tools.loader import torch_dataset

    path, truth = store
    PatchDataset(path, LoaderParams(patch_px=32))[0]  # the parent has read the store before forking
    ds = torch_dataset(path, LoaderParams(patch_px=32, patches_per_epoch=12, seed=9))
    assert isinstance(ds, torch.utils.data.Dataset)
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="forkserver")
    batches = list(loader)
    assert len(batches) == 3 and batches[0]["input"].shape == (4, 1, 32, 32)
    reference = PatchDataset(path, LoaderParams(patch_px=32, patches_per_epoch=12, seed=9))
    for b, batch in enumerate(batches):
        for j in range(4):
            expected = reference[4 * b + j]
            np.testing.assert_array_equal(batch["index"][j].numpy(), expected["index"])
            np.testing.assert_array_equal(batch["input"][j].numpy(), expected["input"])


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
