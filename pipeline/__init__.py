"""skyprep: raw CCD observation archives to an ML-ready Zarr store."""

__version__ = "0.1.0"
