"""``syn`` and ``noise_model`` in the store: written by ``skyprep run``, redrawn by ``skyprep
synthesize`` (idempotent, resumable, deterministic), reported by ``skyprep noise``, exported in
the archive's layout; fitted values checked against the generator's truth."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import xarray as xr
import zarr
from astropy.io import fits

from pipeline.cli import main
from pipeline.config import Config
from pipeline.io.index import complete_sessions
from pipeline.runner import run
from pipeline.steps.params import SynthesisParams
from pipeline.steps.synthesize import DRAW_VERSION
from pipeline.tools.export import export_syn
from pipeline.tools.noise_report import noise_report
from pipeline.tools.synthesize import synthesize_store
from pipeline.tools.verify import verify

CONFIG = Config(synthesis=SynthesisParams(realizations=2, seed=0))


@pytest.fixture(scope="module")
def store(archive, client, tmp_path_factory):
    path = tmp_path_factory.mktemp("syn") / "store.zarr"
    report = run(archive, path, CONFIG, client, echo=lambda line: None)
    assert report.exit_code == 0, report.table()
    assert len(complete_sessions(path)) == 3
    return path


def _open(store, key):
    return xr.open_zarr(str(store), group=key, consolidated=False)


def test_run_writes_syn_and_the_noise_model(store, archive):
    for key in sorted(complete_sessions(store)):
        ds = _open(store, key)
        syn = ds["syn"]
        assert syn.dims == ("realization", "y", "x") and syn.dtype == np.float32 and syn.shape[0] == 2
        assert syn.attrs["units"] == "adu"
        assert ds.attrs["syn"] == {
            "realizations": 2,
            "seed": 0,
            "subtract_base_noise": True,
            "draw_version": DRAW_VERSION,
        }
        for name in ("flat", "dark", "bias"):
            assert ds[name].shape == ds["os"].shape
        model = ds.attrs["noise_model"]
        truth = json.loads((archive / key / "truth" / "truth.json").read_text())
        assert model["warnings"] == []
        for amp, true in zip(model["amps"], truth["amps"], strict=True):
            assert abs(amp["gain_ptc"]["gain_e_per_adu"] / true["gain"] - 1) < 0.05
            assert abs(amp["read"]["white_adu"] * true["gain"] / true["rdnoise"] - 1) < 0.03
        assert model["cosmic_rate_unit"] == "hits per pixel per second of exposure"
        values = syn.values
        finite = np.isfinite(values[0])
        assert finite.mean() > 0.95
        assert not np.array_equal(values[0][finite], values[1][finite])
        raw = values[0][finite] + model["amps"][0]["overscan_adu"]
        if len(model["amps"]) == 1:  # integer ADU before the overscan level is removed
            assert np.allclose(raw, np.rint(raw), atol=1e-3)
    assert not any(verify(store).values())


def test_synthesize_is_idempotent_deterministic_and_resumable(store, tmp_path, client):
    copy = tmp_path / "copy.zarr"
    import shutil

    shutil.copytree(store, copy)
    key = sorted(complete_sessions(copy))[0]
    before = _open(copy, key)["syn"].values
    results = synthesize_store(copy, CONFIG.synthesis, echo=lambda line: None)
    assert {r.status for r in results} == {"skipped"}

    other = dataclasses.replace(CONFIG.synthesis, seed=5, realizations=1)
    results = synthesize_store(copy, other, pattern=key, echo=lambda line: None)
    assert [(r.key, r.status) for r in results] == [(key, "ok")]
    redrawn = _open(copy, key)["syn"].values
    assert redrawn.shape[0] == 1 and not np.array_equal(redrawn[0], before[0], equal_nan=True)

    # an interrupted redraw: syn written but its record missing
    group = zarr.open_group(str(copy), path=key, mode="r+", zarr_format=3)
    del group.attrs["syn"]
    assert any("not recorded" in p for p in verify(copy)[key])
    assert main(["synthesize", str(copy), "--realizations", "2", "--scheduler", client.scheduler.address]) == 0
    again = _open(copy, key)["syn"].values
    np.testing.assert_array_equal(again, before)  # the run's draw, strip by strip from the store
    assert not any(verify(copy).values())

    assert synthesize_store(copy, dataclasses.replace(CONFIG.synthesis, realizations=0), pattern=key,
                            echo=lambda line: None)[0].status == "ok"  # fmt: skip
    assert "syn" not in _open(copy, key)
    assert not any(verify(copy).values())


def test_syn_of_an_older_draw_is_stale_and_redrawn(store, tmp_path):
    """A ``syn`` record without the draw's version (the first generator's) or with another version
    is not the requested draw: ``skyprep synthesize`` rewrites that session, and only it."""
    import shutil

    copy = tmp_path / "old.zarr"
    shutil.copytree(store, copy)
    keys = sorted(complete_sessions(copy))
    expected = {key: _open(copy, key)["syn"].values for key in keys[:2]}
    for key, record in zip(keys[:2], ({"realizations": 2, "seed": 0, "subtract_base_noise": True},
                                      {"realizations": 2, "seed": 0, "subtract_base_noise": True, "draw_version": 1})):  # fmt: skip
        group = zarr.open_group(str(copy), path=key, mode="r+", zarr_format=3)
        group["syn"][...] = 0.0  # what an older generator drew instead
        group.attrs["syn"] = record
    results = synthesize_store(copy, CONFIG.synthesis, echo=lambda line: None)
    assert {r.key: r.status for r in results} == {keys[0]: "ok", keys[1]: "ok", keys[2]: "skipped"}
    for key in keys[:2]:
        ds = _open(copy, key)
        np.testing.assert_array_equal(ds["syn"].values, expected[key])
        assert ds.attrs["syn"]["draw_version"] == DRAW_VERSION
    assert not any(verify(copy).values())


def test_verify_flags_a_syn_record_of_another_draw_version(store, tmp_path, capsys):
    """A session whose ``syn`` record names an older draw version (or none) is a problem of that
    session alone, naming ``skyprep synthesize`` with its recorded realizations and seed; redrawing
    it as told clears it."""
    import shutil

    from pipeline.tools.verify import repair_commands

    copy = tmp_path / "stale.zarr"
    shutil.copytree(store, copy)
    keys = sorted(complete_sessions(copy))
    old = {"realizations": 2, "seed": 0, "subtract_base_noise": True, "draw_version": DRAW_VERSION - 1}
    for key, record in zip(keys[:2], (old, {k: v for k, v in old.items() if k != "draw_version"})):
        zarr.open_group(str(copy), path=key, mode="r+", zarr_format=3).attrs["syn"] = record
    problems = verify(copy)
    assert not problems[keys[2]]
    for key, version in zip(keys[:2], (DRAW_VERSION - 1, None)):
        assert len(problems[key]) == 1
        assert f"draw version {version}, this code draws version {DRAW_VERSION}" in problems[key][0]
        assert f"skyprep synthesize {copy} --sessions '{key}' --realizations 2 --seed 0" in problems[key][0]
    assert repair_commands(copy, problems) == [
        f"skyprep synthesize {copy} --sessions '{key}' --realizations 2 --seed 0" for key in keys[:2]
    ]
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert all(f"{key}: syn: drawn by an older generator" in out for key in keys[:2]) and keys[2] + ":" not in out
    for key in keys[:2]:
        synthesize_store(copy, SynthesisParams(realizations=2, seed=0), pattern=key, echo=lambda line: None)
    assert not any(verify(copy).values())


def test_noise_report_compares_syn_with_os(store, tmp_path):
    key = sorted(complete_sessions(store))[-1]
    out = tmp_path / "report.png"
    figures = noise_report(store, key, out)
    assert out.stat().st_size > 10_000
    assert max(abs(v) for v in figures.variance_ratio_minus_1) < 0.10
    with pytest.raises(FileNotFoundError):
        noise_report(store, "muscat3_g/nothing", out)


def test_export_syn_in_the_archive_layout(store, archive, tmp_path):
    key = sorted(complete_sessions(store))[-1]
    path = export_syn(store, key, tmp_path, realization=1)
    obs_id = key.split("/")[1]
    assert path == tmp_path / key / "data" / f"{obs_id}_syn.fits.fz"
    with fits.open(path) as hdul, fits.open(archive / key / "data" / f"{obs_id}_os.fits.fz") as original:
        assert len(hdul) == 2 and isinstance(hdul[1], fits.CompImageHDU)
        header = hdul[1].header
        for keyword in ("EXPTIME", "FILTER", "OBJECT", "DATE-OBS", "GAIN"):
            assert header[keyword] == original[1].header[keyword]
        stored = _open(store, key)["syn"].values
        syn, finite = stored[1], np.isfinite(stored[1])
        np.testing.assert_array_equal(np.isfinite(hdul[1].data), finite)
        # fpack quantisation: a step of (row noise) / 64, a fraction of an ADU in the background
        error = np.abs(hdul[1].data[finite] - syn[finite])
        assert np.median(error) < 0.1
        assert np.median(np.abs(hdul[1].data[finite] - stored[0][finite])) > 5
    with pytest.raises(ValueError, match="realization 5"):
        export_syn(store, key, tmp_path, realization=5)


def _zarr_reader(store):
    """A batch reader through zarr-python (independent of the loader's): ``out[j]`` the window of
    ``sessions[j]`` at ``yx[j]``; returns whether each is finite."""

    def read(sessions, name, lead, yx, out):
        _, p, q = out.shape
        for j, (session, (y, x)) in enumerate(zip(sessions, yx.tolist())):
            array = zarr.open_array(str(store), path=f"{session}/{name}", mode="r", zarr_format=3)
            out[j] = array[(*lead, slice(y, y + p), slice(x, x + q))]
        return np.isfinite(out).all(axis=(1, 2))

    return read


def _fresh_in_a_process(store, session, y, x, p, seed, epoch, index):
    from pipeline.tools.syn_patches import SynPatches

    out = np.empty((1, p, p), np.float32)
    _, finite = SynPatches(store).fresh([session], np.array([[y, x]]), out, seed, epoch, np.array([index]),
                                        _zarr_reader(store))  # fmt: skip
    assert finite[0] == np.isfinite(out[0]).all()
    return out[0]


def test_loader_patches_stored_and_on_the_fly(store):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.steps.noise_model import NoiseModel
    from pipeline.steps.synthesize import Patch, SynthKey, synthesize_patch
    from pipeline.tools.syn_patches import SynPatches, realization_of

    key = sorted(complete_sessions(store))[0]
    source, read = SynPatches(store), _zarr_reader(store)
    y, x, p = 37, 61, 96
    indices = np.arange(5, 13)  # both realizations among them
    out = np.empty((len(indices), p, p), np.float32)
    finite = source.stored([key] * len(indices), np.array([[y + 3 * i, x] for i in indices]), out, 0, 1, indices, read)
    for j, i in enumerate(indices.tolist()):
        r = realization_of(0, 1, i, 2)
        np.testing.assert_array_equal(out[j], _open(store, key)["syn"].values[r, y + 3 * i : y + 3 * i + p, x : x + p])
        assert finite[j] == np.isfinite(out[j]).all()
    assert len({realization_of(0, 1, i, 2) for i in indices.tolist()}) == 2
    assert {realization_of(0, 1, i, 2) for i in range(20)} == {0, 1}

    fresh = _fresh_in_a_process(store, key, y, x, p, 3, 1, 5)
    ds = _open(store, key)
    whole = synthesize_patch(Patch(0, 0, *(ds[n].values for n in ("mean", "flat", "dark", "bias", "count"))),
                             NoiseModel.from_attrs(ds.attrs["noise_model"]), SynthKey(3, key, (1, 5)))  # fmt: skip
    np.testing.assert_array_equal(fresh, whole[y : y + p, x : x + p])  # the right windows, the frame's draw
    assert not np.array_equal(fresh, _fresh_in_a_process(store, key, y, x, p, 3, 1, 6), equal_nan=True)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        again = list(pool.map(_fresh_in_a_process, *zip(*[(store, key, y, x, p, 3, 1, 5)] * 2)))
    for other in again:  # the same sample in every worker process
        np.testing.assert_array_equal(other, fresh)


def test_info_shows_the_noise_models(store):
    from pipeline.tools.info import describe

    text = describe(store)
    assert "noise model" in text
    for key in complete_sessions(store):
        noise = zarr.open_group(str(store), mode="r", zarr_format=3).attrs["skyprep"]["sessions"][key]["noise"]
        assert f"{noise['gain_e_per_adu']:.3f} / {noise['gain_ptc_e_per_adu']:.3f}" in text


def test_the_loader_serves_stored_syn_and_draws_it_on_the_fly(store):
    from pipeline.steps.noise_model import NoiseModel
    from pipeline.steps.synthesize import Patch, SynthKey, synthesize_patch
    from pipeline.tools.loader import LoaderParams, PatchDataset
    from pipeline.tools.syn_patches import realization_of

    p, seed = 64, 7
    stored = PatchDataset(store, LoaderParams(input="syn", target="mean", patch_px=p, patches_per_epoch=16, seed=seed))
    fresh = PatchDataset(store, dataclasses.replace(stored.params, synthesize_on_the_fly=True))
    fresh.set_epoch(2)
    assert stored.sessions and stored.sessions == fresh.sessions
    frames = {}
    for key in stored.sessions:
        ds = _open(store, key)
        clean = (ds[n].values for n in ("mean", "flat", "dark", "bias", "count"))
        frames[key] = (ds["syn"].values, Patch(0, 0, *clean), NoiseModel.from_attrs(ds.attrs["noise_model"]))
    batch = fresh.__getitems__(list(range(16)))
    for i in range(16):
        sample = stored[i]
        s, y, x = (int(v) for v in sample["index"])
        syn, patch, model = frames[stored.sessions[s]]
        window = (slice(y, y + p), slice(x, x + p))
        expected = syn[(realization_of(seed, 0, i, syn.shape[0]), *window)]
        np.testing.assert_array_equal(sample["input"][0], np.nan_to_num(expected, nan=0.0, posinf=0.0, neginf=0.0))
        s, y, x = (int(v) for v in batch[i]["index"])
        key = fresh.sessions[s]
        _, patch, model = frames[key]
        whole = synthesize_patch(patch, model, SynthKey(seed, key, (2, i)))  # the frame's draw for (seed, epoch, i)
        expected = np.nan_to_num(whole[y : y + p, x : x + p], nan=0.0, posinf=0.0, neginf=0.0)
        np.testing.assert_array_equal(batch[i]["input"][0], expected)
        target = np.nan_to_num(patch.mean_adu[y : y + p, x : x + p], nan=0.0, posinf=0.0, neginf=0.0)
        np.testing.assert_array_equal(batch[i]["target"][0], target)  # the mean window the draw read
        np.testing.assert_array_equal(fresh[i]["input"], batch[i]["input"])  # one sample, alone or batched
    fresh.set_epoch(3)
    assert not np.array_equal(fresh[0]["input"], batch[0]["input"])  # a new epoch, new noise
    with pytest.raises(ValueError, match="input='syn'"):
        LoaderParams(input="os", synthesize_on_the_fly=True)


def test_on_the_fly_draws_follow_the_sessions_recorded_base_noise_setting(store, tmp_path):
    """A session redrawn with ``subtract_base_noise`` false is drawn on the fly without the
    subtraction too (the others with it): each sample is its frame's draw with the session's
    setting, whose noise (the difference of two draws: the fixed structure cancels) is that of
    the other setting scaled by ``s = sqrt(1 - 1 / count)`` per pixel (cosmic rays' outliers
    aside)."""
    import shutil

    from pipeline.steps.noise_model import NoiseModel
    from pipeline.steps.synthesize import Patch, SynthKey, synthesize_patch
    from pipeline.tools.loader import LoaderParams, PatchDataset

    copy = tmp_path / "plain.zarr"
    shutil.copytree(store, copy)
    keys = sorted(complete_sessions(copy))
    params = SynthesisParams(realizations=2, seed=0, subtract_base_noise=False)
    assert [r.status for r in synthesize_store(copy, params, pattern=keys[0], echo=lambda line: None)] == ["ok"]
    p, seed = 64, 4
    dataset = PatchDataset(copy, LoaderParams(input="syn", target="mean", patch_px=p, patches_per_epoch=48, seed=seed,
                                              synthesize_on_the_fly=True))  # fmt: skip
    noise = {True: ([], []), False: ([], [])}  # per setting: the draw's noise, the other setting's scaled to it
    for i, sample in enumerate(dataset.__getitems__(list(range(48)))):
        s, y, x = (int(v) for v in sample["index"])
        key = dataset.sessions[s]
        ds = _open(copy, key)
        patch = Patch(y, x, *(ds[n].values[y : y + p, x : x + p] for n in ("mean", "flat", "dark", "bias", "count")))
        model, draw, again = (
            NoiseModel.from_attrs(ds.attrs["noise_model"]),
            SynthKey(seed, key, (0, i)),
            SynthKey(seed, key, (9, i)),
        )
        subtract = key != keys[0]
        drawn = synthesize_patch(patch, model, draw, subtract)
        np.testing.assert_array_equal(sample["input"][0], np.nan_to_num(drawn, nan=0.0))
        other = synthesize_patch(patch, model, draw, not subtract) - synthesize_patch(patch, model, again, not subtract)
        finite = (patch.count > 1) & np.isfinite(drawn)
        scale = np.sqrt(1 - 1 / patch.count[finite].astype(float)) ** (1 if subtract else -1)
        noise[subtract][0].append((drawn - synthesize_patch(patch, model, again, subtract))[finite])
        noise[subtract][1].append(other[finite] * scale)
    for subtract, (own, scaled) in noise.items():
        own, scaled = np.concatenate(own), np.concatenate(scaled)
        assert own.size > 10000, subtract
        variance = [np.var(values[np.abs(values) < 8 * np.std(values)]) for values in (own, scaled)]  # hits aside
        assert abs(variance[0] / variance[1] - 1) < 0.03, (subtract, variance)
