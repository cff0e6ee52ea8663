"""skyprep: raw CCD observation archives to an ML-ready Zarr store."""

from pathlib import Path

__version__ = "0.1.0"
DASK_YAML = Path(__file__).with_name("dask.yaml")  # Dask defaults for skyprep's workers (the allocator's settings)
