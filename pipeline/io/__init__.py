"""The edges: FITS in, Zarr out, the archive's layout and the keyword dictionary."""
