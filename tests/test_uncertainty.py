"""The compact uncertainty model regenerates the materialised variance from the store."""

import numpy as np
import pytest
from distributed import Client

from pipeline.config import Config
from pipeline.errors import InputError, SkyprepError
from pipeline.io.store import open_store
from pipeline.runner import run
from pipeline.steps.calibrate import Masters, variance_e2
from pipeline.steps.uncertainty import variance_from_terms, variance_terms
from pipeline.tools.variance import variance_from_model


def test_terms_reproduce_the_observatory_propagation():
    rng = np.random.default_rng(5)
    shape = (40, 50)
    masters = Masters(
        rng.normal(300, 5, shape),
        np.abs(rng.normal(0.1, 0.02, shape)),
        rng.normal(1, 0.05, shape),
        np.zeros(shape),
        rng.uniform(0, 3, shape),
        rng.uniform(0, 0.01, shape),
        rng.uniform(0, 0.01, shape),
    )
    rdnoise, gain, darktime = np.full(shape, 11.0), 1.7, 60.0
    os_e = rng.normal(2000, 300, shape)
    os_e[:3] = 250.0  # below the bias: the Poisson term takes the absolute value
    calib_adu = (os_e - masters.bias_e - masters.dark_e_per_s * darktime) / masters.flat / gain
    expected = variance_e2(os_e, rdnoise, masters, darktime) / gain**2
    terms = variance_terms(masters, rdnoise, gain, darktime)
    np.testing.assert_allclose(variance_from_terms(calib_adu, *terms.values()), expected, rtol=1e-6)


@pytest.fixture(scope="module")
def store(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("unc") / "out.zarr"
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        report = run(archive, out, Config(), client, pattern="mosaic_g/*", echo=lambda line: None)
    assert report.exit_code == 0, report.table()
    return out


def test_model_regenerates_the_stored_variance(store):
    ds = open_store(store)["mosaic_g/20240315_001_000"].to_dataset()
    model = variance_from_model(ds)
    assert model.chunks is not None  # lazy
    np.testing.assert_allclose(model.values, ds["variance"].values, rtol=4 * np.finfo(np.float32).eps)


def test_model_refuses_a_changed_master(store, archive, archive_copy):
    ds = open_store(store)["mosaic_g/20240315_001_000"].to_dataset()
    inputs = [dict(entry) for entry in ds.attrs["inputs"]]
    for entry in inputs:
        entry["path"] = entry["path"].replace(str(archive), str(archive_copy))
    master = next(p for p in (archive_copy / "mosaic_g" / "20240315_001_000" / "calib").iterdir() if "BIAS" in p.name)
    master.write_bytes(master.read_bytes() + b" " * 2880)
    ds.attrs["inputs"] = inputs
    ds.attrs["session_dir"] = ds.attrs["session_dir"].replace(str(archive), str(archive_copy))
    with pytest.raises(InputError, match=master.name):
        variance_from_model(ds).compute()


def test_model_needs_the_recorded_session_folder(store):
    ds = open_store(store)["mosaic_g/20240315_001_000"].to_dataset()
    assert ds.attrs["session_dir"].endswith("mosaic_g/20240315_001_000")
    del ds.attrs["session_dir"]
    with pytest.raises(SkyprepError, match="session_dir"):
        variance_from_model(ds)
