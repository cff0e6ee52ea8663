"""Source mask of a frame (the dataset's convention: uint8, 0 = source, 1 = background) with sep.

sep (SExtractor as a library) estimates the background, then detects pixels of the 3 x 3-filtered,
background-subtracted frame above ``threshold_sigma`` times the background rms (or sqrt of the
given variance) in connected groups of at least ``min_area_px``. Deblending is off: only the union
of the footprints matters. Footprints are hole-filled and grown by a disk of ``dilate_px``.

Masked pixels (``mask`` True, non-finite image or variance, variance <= 0) take no part in the
background; the detection counts them as no signal with infinite noise, and they never belong to
a footprint themselves. They are returned as background (1) unless a footprint covers them:
enclosed by one (a masked saturated core) or within ``dilate_px`` of one. Callers that need to
tell them apart keep their own mask.
"""

from __future__ import annotations

import numpy as np
import sep
from scipy import ndimage

from .params import SourceParams

SOURCE = 0
BACKGROUND = 1
_BACKGROUND_BOX_PX = 64  # sep.Background mesh size


def source_mask(
    image: np.ndarray,
    variance: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    params: SourceParams = SourceParams(),
) -> np.ndarray:
    """uint8 mask of ``image``'s shape: 0 on sources, 1 on background (see module docstring for
    masked pixels). ``variance`` is in image units squared; ``mask`` is True where bad."""
    data = np.array(image, dtype=np.float32)  # a native-endian, C-contiguous copy, as sep needs
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    if variance is not None:
        variance = np.array(variance, dtype=np.float32)
        bad |= ~(np.isfinite(variance) & (variance > 0))
        variance[bad] = 1.0
    if bad.all():
        return np.full(data.shape, BACKGROUND, dtype=np.uint8)
    data[bad] = 0.0  # sep must not see NaN, even masked
    background = sep.Background(data, mask=bad, bw=_BACKGROUND_BOX_PX, bh=_BACKGROUND_BOX_PX)
    data -= background.back()
    noise = {"err": background.rms()} if variance is None else {"var": variance}
    options = dict(mask=bad, minarea=params.min_area_px, deblend_cont=1.0, clean=False, **noise)
    segmentation = detect(data, params.threshold_sigma, **options)
    detected = (segmentation > 0) & ~bad  # sep's footprints can reach onto masked pixels
    footprint = grow(ndimage.binary_fill_holes(detected), params.dilate_px)
    return np.where(footprint, SOURCE, BACKGROUND).astype(np.uint8)


def detect(data: np.ndarray, threshold: float, **options) -> np.ndarray:
    """sep's segmentation map of ``data`` (0 off sources).

    sep keeps the pixels of the objects open along its scan in a buffer allocated per call (about
    40 bytes a pixel, default 300000 pixels). Large or many simultaneously open objects can
    overflow it; the buffer is then raised, for the rest of the process, to the frame size (which
    cannot overflow) and the detection repeated.
    """
    try:
        return sep.extract(data, threshold, segmentation_map=True, **options)[1]
    except Exception as error:  # sep raises a bare Exception
        if "pixel buffer full" not in str(error):
            raise
    sep.set_extract_pixstack(max(sep.get_extract_pixstack(), data.size))
    return sep.extract(data, threshold, segmentation_map=True, **options)[1]


def grow(footprint: np.ndarray, radius_px: int) -> np.ndarray:
    """``footprint`` dilated by a disk of ``radius_px`` pixels (unchanged for radius 0)."""
    if radius_px <= 0:
        return footprint
    y, x = np.mgrid[-radius_px : radius_px + 1, -radius_px : radius_px + 1]
    return ndimage.binary_dilation(footprint, structure=x**2 + y**2 <= radius_px**2)
