"""A compact uncertainty model of the calibrated frame, in the spirit of the NOAO Mosaic one.

The observatory's (BANZAI) variance of ``calib`` (see :mod:`pipeline.steps.calibrate`), with
``F`` the flat, ``D = DARK * DARKTIME`` (e-), ``g`` the nominal gain (e-/ADU), ``R`` the
amplifier's read noise (e-), ``sB, sD, sF`` the masters' errors, rewritten in terms of ``calib``
(ADU) itself::

    variance = K0 + K2 * |calib + K1| + K3 * calib^2          (ADU^2)
    K0 = (R^2 + sB^2 + (sD * DARKTIME)^2) / (g F)^2            constant term (read noise, masters)
    K1 = D / (g F)                                             constant removed from the data (ADU)
    K2 = 1 / (g F)                                             Poisson term (ADU per ADU)
    K3 = (sF / F)^2                                            flat-field error

since the Poisson signal after bias is ``calib * g * F + D``. The terms depend only on the
masters, the dark time and the read noise per amplifier, never on the exposure's pixels: the
store keeps ``calib`` and the few parameters (``amp_rdnoise``, ``amp_gain``, ``gain``,
``darktime``, the amplifier layout in the raw file's headers, the masters named with their
SHA-256 in ``inputs``), and :func:`pipeline.tools.variance.variance_from_model` regenerates the
variance lazily.
"""

from __future__ import annotations

import numpy as np

from .calibrate import Masters


def variance_terms(masters: Masters, rdnoise_e: np.ndarray | float, gain_nominal: float, darktime_s: float) -> dict:
    """The model's terms ``K0`` (ADU^2), ``K1`` (ADU), ``K2`` (1), ``K3`` (1) for a block of rows (float64)."""
    flat = np.asarray(masters.flat, np.float64)
    scale = 1.0 / (gain_nominal * flat)
    const_e2 = (np.square(rdnoise_e) + np.square(masters.bias_err_e)
                + np.square(np.multiply(masters.dark_err_e_per_s, darktime_s)))  # fmt: skip
    return {
        "K0": const_e2 * scale**2,
        "K1": masters.dark_e_per_s * darktime_s * scale,
        "K2": scale,
        "K3": np.square(np.asarray(masters.flat_err, np.float64) / flat),
    }


def variance_from_terms(calib_adu: np.ndarray, k0, k1, k2, k3) -> np.ndarray:
    """``K0 + K2 |calib + K1| + K3 calib^2``: the variance of ``calib``, ADU^2 (float32)."""
    calib = np.asarray(calib_adu, np.float64)
    with np.errstate(invalid="ignore"):
        return (k0 + k2 * np.abs(calib + k1) + k3 * calib**2).astype(np.float32)
