"""The session graph does each piece of work once: every e91 row is decoded by one strip task,
the strips holding the cosmic-ray step are computed once although the writer, the registration
and the reference check all use them, and one registration prepares its reference once."""

from __future__ import annotations

import dask
import numpy as np
from dask.core import flatten, get_deps

from pipeline import graph
from pipeline.config import ChunkParams, Config
from pipeline.io.discover import load_session
from pipeline.io.store import write_session
from pipeline.runner import _provenance
from pipeline.steps import register
from pipeline.steps.register import measure_offset, measure_offsets

KEY = "muscat3_g/20240315_000_000"
CONFIG = Config(chunks=ChunkParams(strip_rows=64, store_chunk_px=64))  # 4 strips of the 256-row test frames


def _count_calls(monkeypatch, name):
    calls = []
    original = getattr(graph, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(graph, name, counted)
    return calls


def _run_session(root, tmp_path):
    session = load_session(root / KEY)
    built = graph.build_session(session, CONFIG)
    store = str(tmp_path / "store.zarr")
    written = write_session(built.dataset, store, KEY, CONFIG.chunks.store_chunk_px)
    done = dask.delayed(_provenance)(written, built.summary, [p.name for p in session.e91], {})
    with dask.config.set(scheduler="synchronous"):
        return done.compute(), built


def test_every_e91_row_is_decoded_once_and_cosmic_strips_computed_once(archive, tmp_path, monkeypatch):
    reads = _count_calls(monkeypatch, "read_rows")
    cosmics = _count_calls(monkeypatch, "cosmic_rays")
    summary, built = _run_session(archive, tmp_path)
    assert len(cosmics) == 4  # one per strip (overlap rows are context, not extra runs)
    e91 = [str(p) for p in load_session(archive / KEY).e91]
    assert e91, KEY
    rows = {}
    for ref, y0, y1 in reads:
        if str(ref.path) in e91:
            rows.setdefault((str(ref.path), ref.index), []).append((y0, y1))
    assert len(rows) == 2 * len(e91)  # SCI and BPM of every frame, read by the strip tasks only
    ny = built.dataset.sizes["y"]
    for (path, index), spans in rows.items():
        covered = np.zeros(ny, int)
        for y0, y1 in spans:
            covered[y0:y1] += 1
        assert covered.max() == 1, (path, index)  # no row decoded twice
        offset = summary.registration[e91.index(path)]
        assert covered.sum() == ny - abs(round(offset.dy)), (path, index)  # exactly the rows the shift keeps


def test_measure_offsets_prepares_the_reference_once_and_agrees_with_measure_offset(monkeypatch):
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:128, :128]
    stars = [(rng.uniform(10, 118), rng.uniform(10, 118), rng.uniform(200, 2000)) for _ in range(25)]

    def field(dy, dx):
        image = sum(f * np.exp(-((yy - y - dy) ** 2 + (xx - x - dx) ** 2) / 4.5) for y, x, f in stars)
        return image + rng.normal(0, 3, image.shape)

    reference = field(0, 0)
    images = [field(1.3, -2.6), field(-3.2, 0.4)]
    prepared = []
    original = register.prepare
    monkeypatch.setattr(register, "prepare", lambda image, mask=None: prepared.append(1) or original(image, mask))
    together = measure_offsets(reference, [(image, None) for image in images])
    assert len(prepared) == 1 + len(images)
    monkeypatch.setattr(register, "prepare", original)
    assert together == [measure_offset(reference, image) for image in images]
    for offset, (dy, dx) in zip(together, [(1.3, -2.6), (-3.2, 0.4)]):
        assert offset.ok and abs(offset.dy - dy) < 0.1 and abs(offset.dx - dx) < 0.1


def test_a_stacked_e91_strip_is_consumed_by_tasks_that_wait_for_nothing_else(archive, tmp_path):
    """An e91 strip (every frame's rows: the largest block of the graph) is freed as soon as it is
    stacked only if every task reading it can run then: each needs nothing but that strip's stack
    task and what the stack task itself needed. (A task that also waits for a master's strip or the
    whole-frame source mask holds every e91 strip in memory until the end of the session.)"""
    session = load_session(archive / KEY)
    built = graph.build_session(session, CONFIG)
    written = write_session(built.dataset, str(tmp_path / "store.zarr"), KEY, CONFIG.chunks.store_chunk_px)
    done = dask.delayed(_provenance)(written, built.summary, [p.name for p in session.e91], {})
    tasks = dict(done.__dask_graph__())
    dependencies, dependents = get_deps(tasks)

    def upstream(key):
        seen, todo = set(), [key]
        while todo:
            for dep in dependencies[todo.pop()]:
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    strips = [
        set(keys) for keys in zip(*(flatten(built.dataset[name].data.__dask_keys__()) for name in ("e91", "e91_mask")))
    ]
    assert len(strips) == 4, strips  # one per strip of the 256-row test frames
    for strip in strips:
        available = set(strip).union(*(upstream(key) for key in strip))
        readers = {reader for key in strip for reader in dependents[key]}
        assert readers, strip
        for reader in readers:
            waits_for = dependencies[reader] - available
            assert not waits_for, (reader, waits_for)
