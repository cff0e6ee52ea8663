"""The session graph does each piece of work once: every e91 row is decoded by one strip task,
the strips holding the cosmic-ray step are computed once although the writer, the registration
and the reference check all use them, and one registration prepares its reference once."""

from __future__ import annotations

import dask
import numpy as np

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
