"""Acceptance benchmark of the FITS reading layer (slow; targets and figures in benchmarks/README.md).

Runs benchmarks/bench_fits.py on a 2048 x 2080 RICE uint16 frame and checks the issue's targets
on one layout, 128 x 128 tiles: the whole frame through the chunked path costs at most
``CHUNKED_OVER_ASTROPY`` plain astropy reads, and a 256 x 256 cutout at least ``CUTOUT_SPEEDUP``
times less than that read. The chunked target holds for fpack's one-row tiles too; their cutout
cannot reach its target (it decodes 256 full rows, 1/8 of the frame).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CHUNKED_OVER_ASTROPY, CUTOUT_SPEEDUP = 1.2, 20  # the targets


def _load_bench():
    spec = importlib.util.spec_from_file_location("skyprep_bench_fits", HERE / "bench_fits.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return _load_bench().main(["--repeats", "15", "--workdir", str(tmp_path_factory.mktemp("bench_fits"))])["tilings"]


@pytest.mark.slow
def test_both_targets_hold_on_128_tiles(report):
    tiles = report["tiles_128"]
    assert tiles["decoder"] == "rice", tiles
    assert tiles["chunked_over_astropy"] <= CHUNKED_OVER_ASTROPY, tiles
    assert tiles["cutout_speedup"] >= CUTOUT_SPEEDUP, tiles


@pytest.mark.slow
def test_chunked_full_read_of_one_row_tiles_meets_its_target(report):
    assert report["one_row"]["chunked_over_astropy"] <= CHUNKED_OVER_ASTROPY, report["one_row"]
    assert report["one_row"]["cutout_speedup"] < CUTOUT_SPEEDUP  # the tiling, not the reader, limits a cutout
