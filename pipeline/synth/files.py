"""Writing files: fpack-style compressed FITS images, JSON and NPZ, each atomically.

Every file is first written under a hidden temporary name in its directory and then renamed,
so a crash never leaves a half-written file under the final name. Compression follows the
observatory: uint16 lossless ``RICE_1``; float32 ``RICE_1`` quantised at level 64 with
``SUBTRACTIVE_DITHER_1`` and a dither seed fixed by the file name; uint8 masks ``PLIO_1``
(lossless). Tiles are fpack's default, one image row each.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

FLOAT_QUANTIZE_LEVEL = 64
SUBTRACTIVE_DITHER_1 = 1
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def dither_seed(name: str) -> int:
    """Deterministic fpack dither seed in 1..10000 for the file called ``name``."""
    return 1 + zlib.crc32(name.encode()) % 10000


def compressed_image(
    data: np.ndarray, header: fits.Header | None = None, name: str | None = None, seed: int = 1
) -> fits.CompImageHDU:
    """A tile-compressed image HDU with the codec chosen by ``data``'s dtype.

    ``name`` goes into the header verbatim (astropy's ``name=`` would upper-case Mosaic's ``im1``).
    """
    header = fits.Header() if header is None else header.copy()
    if name is not None:
        header["EXTNAME"] = name
    if data.dtype == np.uint16:
        options = {"compression_type": "RICE_1"}
    elif data.dtype == np.uint8:
        options = {"compression_type": "PLIO_1"}
    elif data.dtype == np.float32:
        options = {
            "compression_type": "RICE_1",
            "quantize_level": FLOAT_QUANTIZE_LEVEL,
            "quantize_method": SUBTRACTIVE_DITHER_1,
            "dither_seed": seed,
        }
    else:
        raise TypeError(f"no compression chosen for dtype {data.dtype} (uint16, uint8, float32)")
    return fits.CompImageHDU(data, header=header, tile_shape=(1, data.shape[1]), **options)


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it to ``path`` if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_fits(path: Path, hdus: Sequence[fits.CompImageHDU], primary: fits.PrimaryHDU | None = None) -> Path:
    """Write ``primary`` (default: empty) followed by ``hdus`` to ``path``."""
    hdul = fits.HDUList([primary if primary is not None else fits.PrimaryHDU(), *hdus])
    with _atomic(path) as tmp:
        hdul.writeto(tmp)
    return path


def write_images(path: Path, images: Sequence[tuple[str | None, np.ndarray, fits.Header | None]]) -> Path:
    """Empty primary plus one compressed image per ``(extname, data, header)``.

    Float dithering is seeded by the file name and the image's position, so rewrites are
    byte-identical.
    """
    hdus = [
        compressed_image(data, header, name, dither_seed(f"{path.name}[{index}]"))
        for index, (name, data, header) in enumerate(images, start=1)
    ]
    return write_fits(path, hdus)


def write_json(path: Path, obj: Mapping) -> Path:
    with _atomic(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return path


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Uncompressed ``.npz`` for ``numpy.load``; fixed zip timestamps keep rewrites byte-identical.

    (zlib would dominate the run time at 2048 x 2048, and ``numpy.savez`` stamps the clock.)
    """
    with _atomic(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            with archive.open(entry, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(array), allow_pickle=False)
    return path
