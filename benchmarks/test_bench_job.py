"""Acceptance benchmarks of the whole job (slow: minutes, several GB of disk in /tmp).

Memory: ``skyprep run`` on one session of 40 e91 frames of 4096 x 4096 peaks below
``bench_memory.TARGET_MB`` resident on one worker, each e91 strip decoded once. End to end:
``skyprep run`` over two 2048 x 2048 sessions takes at most ``bench_end_to_end.TARGET_RATIO``
times the astropy decompression floor, measured in the same run (the median of three
floor-job-floor repeats, each on a new cluster). Targets and figures: benchmarks/README.md.
"""

from __future__ import annotations

import pytest

from benchmarks import bench_end_to_end, bench_memory


@pytest.mark.slow
def test_memory_target(tmp_path_factory):
    report = bench_memory.run_benchmark(tmp_path_factory.mktemp("bench-memory"))
    assert report["e91_strip_reads"] == report["e91_strips"]
    assert report["worker_peak_rss_mb"] < bench_memory.TARGET_MB, report


@pytest.mark.slow
def test_end_to_end_target(tmp_path_factory):
    report = bench_end_to_end.run_benchmark(tmp_path_factory.mktemp("bench-e2e"))
    assert report["ratio"] <= bench_end_to_end.TARGET_RATIO, report
