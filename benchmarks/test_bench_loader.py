"""Acceptance benchmark of the patch loader (slow; target and figures in benchmarks/README.md).

Runs benchmarks/bench_loader.py on 4 frames of 2048 x 2048 and checks the issue's target in the
same run as the routes it is compared with: at least ``PATCHES_PER_S`` random 256 x 256 patches
a second from one process (input, target and mask), and the .npy / .fits.fz reference routes measured.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PATCHES_PER_S = 2000  # the target


def _load_bench():
    spec = importlib.util.spec_from_file_location("skyprep_bench_loader", HERE / "bench_loader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_loader_throughput_target():
    _, loader = _load_bench().main(["--size", "2048", "--frames", "4", "--patches", "4000", "--skip-layout"])
    rates = {row["route"]: row["patches/s"] for row in loader}
    one_process = next(v for k, v in rates.items() if k.endswith("1 process"))
    assert one_process >= PATCHES_PER_S, rates
    assert all(math.isfinite(v) and v > 0 for k, v in rates.items() if "not installed" not in k), rates
