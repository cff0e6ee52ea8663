"""Cosmic-ray detection in a single calibrated frame (L.A.Cosmic, van Dokkum 2001: astroscrappy's
algorithm, run by the numba kernel of ``pipeline.steps.lacosmic``).

Cosmic rays are only flagged (``Flag.COSMIC_RAY``); ``calib`` is never repaired. The detector
works on the calibrated frame in ADU with its propagated variance (ADU^2) as the noise model and
the nominal gain (e-/ADU) to reach electrons. Pixels already known to be unusable (bad, no data,
low flat) and saturated pixels, grown by ``saturation_grow_px`` so the wings of saturated stars
are protected as astroscrappy's own ``satlevel`` would, are excluded from the detection.
Everything works on any block of rows; a block needs ``margin_px()`` rows of context each side
(the block's own edges are mirrored, which is what the frame's edges get).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .lacosmic import detect_cosmics
from .masks import Flag
from .params import CosmicParams

_EXCLUDED = Flag.BAD_PIXEL | Flag.LOW_FLAT | Flag.NO_DATA
_EDGE_PAD_PX = 8  # mirrored context at the block's edges, so stars cut by an edge keep their shape


def cosmic_rays(calib_adu: np.ndarray, variance_adu2: np.ndarray, mask: np.ndarray, gain_e_per_adu: float,
                params: CosmicParams) -> np.ndarray:  # fmt: skip
    """Boolean map of cosmic-ray pixels in a calibrated block (ADU, its variance in ADU^2)."""
    mask = np.asarray(mask)
    if not params.enabled or mask.size == 0:
        return np.zeros(mask.shape, bool)
    saturated = (mask & Flag.SATURATED.value) != 0
    if params.saturation_grow_px > 0 and saturated.any():
        saturated = ndimage.binary_dilation(saturated, iterations=params.saturation_grow_px)
    valid = np.isfinite(calib_adu) & np.isfinite(variance_adu2) & (variance_adu2 > 0)
    excluded = saturated | ((mask & _EXCLUDED.value) != 0) | ~valid
    pad = _EDGE_PAD_PX
    data = np.pad(np.where(valid, calib_adu, 0.0).astype(np.float32), pad, mode="reflect")
    var = np.pad(np.where(valid, variance_adu2, 1.0).astype(np.float32), pad, mode="reflect")
    found = detect_cosmics(data, np.pad(excluded, pad, mode="reflect"), var, float(gain_e_per_adu),
                           params.sigclip, params.sigfrac, params.objlim, params.niter)  # fmt: skip
    return found[pad:-pad, pad:-pad] & ~excluded
