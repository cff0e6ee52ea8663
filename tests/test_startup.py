"""What the command line imports before it has work to do: ``skyprep --help``, ``skyprep config``
and ``skyprep info`` must not load the science's or the cluster's dependencies (their import
costs seconds; benchmarks/README.md has the start-up figures). Each check runs in a fresh
interpreter and reads its ``sys.modules``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from pipeline.io.index import mark_complete, open_index
from pipeline.io.provenance import Provenance

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("numpy", "scipy", "dask", "distributed", "numba", "zarr", "xarray", "astropy", "pydantic", "sep")


def _modules_after(code: str) -> set[str]:
    """The names in ``sys.modules`` after running ``code`` in a new interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _loaded_after(code: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after running ``code`` in a new interpreter."""
    return {name.split(".")[0] for name in _modules_after(code)}


def _cli(*argv: str) -> str:
    """``pipeline.cli.main(argv)`` with its exit and output swallowed."""
    return (
        "import contextlib, io, pipeline.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    pipeline.cli.main({list(argv)!r})"
    )


@pytest.mark.parametrize("argv", [("--help",), ("run", "--help"), ("config",)])
def test_help_and_config_import_nothing_heavy(argv):
    loaded = _loaded_after(_cli(*argv))
    assert "pipeline" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def _small_store(tmp_path: Path) -> Path:
    """A store whose index records one complete session (arrays of 64 x 64 px, 3 e91 frames)."""
    store, key = tmp_path / "s.zarr", "muscat3_g/20240315_000_000"
    open_index(store)  # a skyprep store: its index exists before any group
    group = zarr.open_group(str(store), path=key, mode="w", zarr_format=3)
    group.create_array("calib", shape=(64, 64), dtype="float32")
    group.create_array("e91", shape=(3, 64, 64), dtype="float32")
    nothing = Provenance(registration=[], inputs=[], array_sha256={}, reference_check={}, config={})
    mark_complete(store, key, {"instrument": "muscat3", "band": "g", "obs_id": "20240315_000_000"}, nothing)
    return store


def test_info_reads_the_index_without_zarr(tmp_path):
    store = _small_store(tmp_path)
    loaded = _loaded_after(_cli("info", str(store)))
    assert "pipeline" in loaded
    assert not loaded & (set(HEAVY) - {"numpy"}), sorted(loaded & set(HEAVY))  # numpy: the contract's dtypes


def test_info_output_from_a_fresh_interpreter(tmp_path):
    store = _small_store(tmp_path)
    out = subprocess.run([sys.executable, "-m", "pipeline", "info", str(store)], cwd=REPO, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert "muscat3_g/20240315_000_000" in out.stdout and "64x64" in out.stdout and "      3" in out.stdout


def test_the_job_does_not_import_scipy_stats_or_signal():
    """``scipy.stats`` and ``scipy.signal`` cost the command more start-up than the rest of scipy
    it uses (ndimage, fft) together; the job's steps use neither."""
    loaded = _modules_after("import pipeline.runner, pipeline.graph")
    assert "scipy.ndimage" in loaded  # the probe sees scipy's submodules
    assert not {"scipy.stats", "scipy.signal"} & loaded
