"""Frames of any height: strips, the cosmic-ray overlap and the store's chunks must agree."""

import numpy as np
import pytest
import xarray as xr

from pipeline.config import ChunkParams, Config
from pipeline.io.index import complete_sessions
from pipeline.runner import run
from pipeline.synth import SynthSpec, write_archive


def _calib_and_mask(root, out, client, strip_rows):
    config = Config(chunks=ChunkParams(strip_rows=strip_rows, store_chunk_px=strip_rows))
    report = run(root, out, config, client, echo=lambda line: None)
    assert report.exit_code == 0, report.table()
    (key,) = complete_sessions(out)
    ds = xr.open_zarr(out, group=key)
    return ds["calib"].values, ds["mask"].values


@pytest.mark.parametrize("size", [65, 81])  # last strip of 1 and 17 rows: shorter than the overlap
def test_a_last_strip_shorter_than_the_cosmic_ray_margin_is_written(tmp_path, client, size):
    root = tmp_path / "archive"
    write_archive(root, SynthSpec(sessions=1, size=size, frames=2, amps=1, seed=size))
    calib, mask = _calib_and_mask(root, tmp_path / "strips.zarr", client, 64)
    whole_calib, whole_mask = _calib_and_mask(root, tmp_path / "whole.zarr", client, 128)
    np.testing.assert_array_equal(calib, whole_calib)
    np.testing.assert_array_equal(mask, whole_mask)
