"""L.A.Cosmic (van Dokkum 2001) exactly as astroscrappy 1.3.0 runs it, compiled with numba.

Reproduces ``astroscrappy.detect_cosmics(data, inmask=excluded, invar=variance, gain=...,
readnoise=..., sigclip=..., sigfrac=..., objlim=..., niter=..., satlevel=np.inf, sepmed=True,
cleantype="meanmask", fsmode="median")[0]`` for float32 data and variance: the same float32
arithmetic (including the double-precision top edge of astroscrappy's C Laplacian and the order
in which its compiled C sums the Laplacian inside the frame), the same median-filter edges
(borders copied from the input) and the same mask dilations. The masks are identical in every
test (tests/test_lacosmic.py); the Laplacian S can differ by a few float32 ulps, mostly on the
frame's outer pixels, where astroscrappy's compiled sums are reassociated in ways not reproduced.

It is much faster than astroscrappy on one core (docs/calibration.md; benchmarks/README.md,
"Cosmic-ray detection"), which made cosmic-ray detection the job's largest cost no more: the separable
medians are evaluated a whole row at a time with branch-free sorting networks so that LLVM
vectorises them, and the fine-structure image is evaluated only at candidate pixels.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_F32 = np.float32
_FOUR = np.float32(4.0)
_TWO = np.float32(2.0)
_VAR_FLOOR = np.float32(0.00001)  # astroscrappy's floor on the smoothed variance (e^2)
_FS_FLOOR = np.float32(0.01)  # astroscrappy's floor on the fine-structure contrast


@njit(cache=True)
def _sort2(a, b):
    """The ordered pair (min, max), branch-free."""
    return (b if a > b else a), (a if a > b else b)


@njit(cache=True)
def _med5(p0, p1, p2, p3, p4):
    """Median of 5 values (Devillard's network)."""
    p0, p1 = _sort2(p0, p1)
    p3, p4 = _sort2(p3, p4)
    p0, p3 = _sort2(p0, p3)
    p1, p4 = _sort2(p1, p4)
    p1, p2 = _sort2(p1, p2)
    p2, p3 = _sort2(p2, p3)
    p1, p2 = _sort2(p1, p2)
    return p2


@njit(cache=True)
def _med7(p0, p1, p2, p3, p4, p5, p6):
    """Median of 7 values (Devillard's network)."""
    p0, p5 = _sort2(p0, p5)
    p0, p3 = _sort2(p0, p3)
    p1, p6 = _sort2(p1, p6)
    p2, p4 = _sort2(p2, p4)
    p0, p1 = _sort2(p0, p1)
    p3, p5 = _sort2(p3, p5)
    p2, p6 = _sort2(p2, p6)
    p2, p3 = _sort2(p2, p3)
    p3, p6 = _sort2(p3, p6)
    p4, p5 = _sort2(p4, p5)
    p1, p4 = _sort2(p1, p4)
    p1, p3 = _sort2(p1, p3)
    p3, p4 = _sort2(p3, p4)
    return p3


@njit(cache=True)
def _med9(p0, p1, p2, p3, p4, p5, p6, p7, p8):
    """Median of 9 values (Smith's network, as in Devillard)."""
    p1, p2 = _sort2(p1, p2)
    p4, p5 = _sort2(p4, p5)
    p7, p8 = _sort2(p7, p8)
    p0, p1 = _sort2(p0, p1)
    p3, p4 = _sort2(p3, p4)
    p6, p7 = _sort2(p6, p7)
    p1, p2 = _sort2(p1, p2)
    p4, p5 = _sort2(p4, p5)
    p7, p8 = _sort2(p7, p8)
    p0, p3 = _sort2(p0, p3)
    p5, p8 = _sort2(p5, p8)
    p4, p7 = _sort2(p4, p7)
    p3, p6 = _sort2(p3, p6)
    p1, p4 = _sort2(p1, p4)
    p2, p5 = _sort2(p2, p5)
    p4, p7 = _sort2(p4, p7)
    p4, p2 = _sort2(p4, p2)
    p6, p4 = _sort2(p6, p4)
    p4, p2 = _sort2(p4, p2)
    return p4


@njit(cache=True)
def _median_of_lines(lines, out, hw):
    """out[i] = median of lines[0][i] ... lines[2 hw][i], hw in 2, 3, 4 (vectorised over i)."""
    l0, l1, l2, l3, l4, l5, l6, l7, l8 = lines
    if hw == 2:
        for i in range(out.size):
            out[i] = _med5(l0[i], l1[i], l2[i], l3[i], l4[i])
    elif hw == 3:
        for i in range(out.size):
            out[i] = _med7(l0[i], l1[i], l2[i], l3[i], l4[i], l5[i], l6[i])
    else:
        for i in range(out.size):
            out[i] = _med9(l0[i], l1[i], l2[i], l3[i], l4[i], l5[i], l6[i], l7[i], l8[i])


@njit(cache=True)
def _lines(a, first, step, n, hw):
    """Nine equal-length 1-D views a[first + k * step : ... + n] for k = 0 .. 2 hw (the rest repeat the last).

    ``step`` 1 gives shifted views of a row, ``step`` equal to the row length gives successive rows.
    """
    w = 2 * hw
    return (
        a[first : first + n],
        a[first + min(1, w) * step :][:n],
        a[first + min(2, w) * step :][:n],
        a[first + min(3, w) * step :][:n],
        a[first + min(4, w) * step :][:n],
        a[first + min(5, w) * step :][:n],
        a[first + min(6, w) * step :][:n],
        a[first + min(7, w) * step :][:n],
        a[first + min(8, w) * step :][:n],
    )


@njit(cache=True)
def _sepmedfilt(src, out, rows, hw):
    """astroscrappy's sepmedfilt(2 hw + 1) of ``src`` into ``out`` (``rows`` is scratch); a border of hw is copied.

    Rows are filtered first, then columns of the result (``rows`` is only read at the filtered columns).
    """
    ny, nx = src.shape
    n = nx - 2 * hw
    flat_rows = rows.reshape(-1)
    if n > 0:
        for j in range(ny):
            _median_of_lines(_lines(src[j], 0, 1, n, hw), rows[j, hw : nx - hw], hw)
    for j in range(ny):
        o = out[j]
        o[:] = src[j]
        if hw <= j < ny - hw and n > 0:
            _median_of_lines(_lines(flat_rows, (j - hw) * nx + hw, nx, n, hw), o[hw : nx - hw], hw)


@njit(cache=True)
def _noise(clean_var, noise, rows):
    """Noise (e) from the 7 x 7 separable median of the variance (e^2), floored as astroscrappy does."""
    _sepmedfilt(clean_var, noise, rows, 3)
    for j in range(noise.shape[0]):
        o = noise[j]
        for i in range(o.size):
            v = o[i]
            o[i] = np.sqrt(_VAR_FLOOR if v < _VAR_FLOOR else v)


@njit(cache=True)
def _sub_laplacian(img, jj, ii):
    """astroscrappy's Laplacian at (jj, ii) of the 2 x 2 replicated ``img``, with its C edge arithmetic."""
    ny2, nx2 = 2 * img.shape[0], 2 * img.shape[1]
    j, i = jj // 2, ii // 2
    c = img[j, i]
    right = c if ii % 2 == 0 else (img[j, i + 1] if ii < nx2 - 1 else c)
    left = c if ii % 2 == 1 else (img[j, i - 1] if ii > 0 else c)
    down = c if jj % 2 == 0 else (img[j + 1, i] if jj < ny2 - 1 else c)
    up = c if jj % 2 == 1 else (img[j - 1, i] if jj > 0 else c)
    p = _FOUR * c
    if jj == 0:  # astroscrappy evaluates its top edge in double precision
        d = np.float64(p)
        if ii < nx2 - 1:
            d -= np.float64(right)
        if ii > 0:
            d -= np.float64(left)
        return _F32(d - np.float64(down))
    if ii < nx2 - 1:
        p -= right
    if ii > 0:
        p -= left
    if jj < ny2 - 1:
        p -= down
    return p - up


@njit(cache=True)
def _clip0(p):
    """Negative Laplacians set to zero."""
    return _F32(0.0) if p < _F32(0.0) else p


@njit(cache=True)
def _snr_edge(img, noise, j, i):
    """S at a pixel of the frame's border (the general, slow path of ``_snr``)."""
    p00 = _clip0(_sub_laplacian(img, 2 * j, 2 * i))
    p10 = _clip0(_sub_laplacian(img, 2 * j + 1, 2 * i))
    p11 = _clip0(_sub_laplacian(img, 2 * j + 1, 2 * i + 1))
    p01 = _clip0(_sub_laplacian(img, 2 * j, 2 * i + 1))
    return ((((p00 + p10) + p11) + p01) / _FOUR) / (_TWO * noise[j, i])


@njit(cache=True)
def _snr(img, noise, s):
    """astroscrappy's S: the 2 x 2 subsampled, clipped, rebinned Laplacian of ``img`` (e) over 2 ``noise`` (e)."""
    ny, nx = img.shape
    for j in range(ny):
        if j == 0 or j == ny - 1:
            for i in range(nx):
                s[j, i] = _snr_edge(img, noise, j, i)
            continue
        n = nx - 2
        o, left, c, right = s[j, 1:], img[j, :n], img[j, 1:], img[j, 2:]
        u, d, nz = img[j - 1, 1:], img[j + 1, 1:], noise[j, 1:]
        for i in range(n):
            v = c[i]
            q = _FOUR * v - v
            p00 = _clip0((q - left[i]) - (v + u[i]))  # the compiled C computes ((4c - R) - L) - (D + U)
            p01 = _clip0(((_FOUR * v - right[i]) - v) - (v + u[i]))
            p10 = _clip0((q - left[i]) - (d[i] + v))
            p11 = _clip0(((_FOUR * v - right[i]) - v) - (d[i] + v))
            o[i] = ((((p00 + p10) + p11) + p01) / _FOUR) / (_TWO * nz[i])
        s[j, 0] = _snr_edge(img, noise, j, 0)
        s[j, nx - 1] = _snr_edge(img, noise, j, nx - 1)


@njit(cache=True)
def _subtract_median(s, m, rows):
    """S' = S - its 7 x 7 separable median, in place (``m`` and ``rows`` are scratch)."""
    _sepmedfilt(s, m, rows, 3)
    for j in range(s.shape[0]):
        a, b = s[j], m[j]
        for i in range(a.size):
            a[i] = a[i] - b[i]


@njit(cache=True)
def _med9_at(r, i):
    """Median of r[i - 4 : i + 5]."""
    return _med9(r[i - 4], r[i - 3], r[i - 2], r[i - 1], r[i], r[i + 1], r[i + 2], r[i + 3], r[i + 4])


@njit(cache=True)
def _m7(f5, j, i):
    """astroscrappy's sepmedfilt9 of the fine-structure image ``f5`` at one pixel."""
    ny, nx = f5.shape
    if j < 4 or j >= ny - 4 or i < 4 or i >= nx - 4:
        return f5[j, i]
    return _med9(
        _med9_at(f5[j - 4], i),
        _med9_at(f5[j - 3], i),
        _med9_at(f5[j - 2], i),
        _med9_at(f5[j - 1], i),
        _med9_at(f5[j], i),
        _med9_at(f5[j + 1], i),
        _med9_at(f5[j + 2], i),
        _med9_at(f5[j + 3], i),
        _med9_at(f5[j + 4], i),
    )


@njit(cache=True)
def _candidates(sp, f5, noise, good, sigclip, objlim, out):
    """Pixels with S' > sigclip whose contrast to the fine structure exceeds objlim; their number."""
    ny, nx = sp.shape
    n = 0
    for j in range(ny):
        for i in range(nx):
            out[j, i] = False
            if sp[j, i] > sigclip and good[j, i]:
                f = (f5[j, i] - _m7(f5, j, i)) / noise[j, i]
                if f < _FS_FLOOR:
                    f = _FS_FLOOR
                if sp[j, i] / f > objlim:
                    out[j, i] = True
                    n += 1
    return n


@njit(cache=True)
def _dilate3(src, dst):
    """astroscrappy's dilate3: 3 x 3 binary dilation, the 1-pixel border copied from ``src``."""
    ny, nx = src.shape
    n = nx - 2
    dst[0] = src[0]
    dst[ny - 1] = src[ny - 1]
    for j in range(1, ny - 1):
        u, c, d, o = src[j - 1], src[j], src[j + 1], dst[j, 1:]
        u0, u1, u2, c0, c1, c2, d0, d1, d2 = u[:n], u[1:], u[2:], c[:n], c[1:], c[2:], d[:n], d[1:], d[2:]
        for i in range(n):
            o[i] = u0[i] | u1[i] | u2[i] | c0[i] | c1[i] | c2[i] | d0[i] | d1[i] | d2[i]
        dst[j, 0] = c[0]
        dst[j, nx - 1] = c[nx - 1]


@njit(cache=True)
def _grow(src, dst, good, sp, limit):
    """Neighbours of ``src`` (itself included) that are good and have S' > limit."""
    _dilate3(src, dst)
    for j in range(dst.shape[0]):
        o, g, s = dst[j], good[j], sp[j]
        for i in range(o.size):
            o[i] = o[i] & g[i] & (s[i] > limit)


@njit(cache=True)
def _accumulate(found, crmask):
    """crmask |= found; the number of pixels in ``found``."""
    n = 0
    for j in range(found.shape[0]):
        for i in range(found.shape[1]):
            if found[j, i]:
                crmask[j, i] = True
                n += 1
    return n


@njit(cache=True)
def _has_isolated(crmask, mask):
    """Whether a cosmic-ray pixel cleaned by ``_clean_meanmask`` has no usable pixel in its 5 x 5 box."""
    ny, nx = crmask.shape
    for j in range(2, ny - 2):
        for i in range(2, nx - 2):
            if crmask[j, i]:
                alone = True
                for dj in range(-2, 3):
                    for k in range(-2, 3):
                        if not (crmask[j + dj, i + k] or mask[j + dj, i + k]):
                            alone = False
                if alone:
                    return True
    return False


@njit(cache=True)
def _clean_meanmask(img, crmask, mask, background):
    """astroscrappy's clean_meanmask: cosmic-ray pixels (2 px from the edge) set to their 5 x 5 masked mean."""
    ny, nx = img.shape
    for j in range(2, ny - 2):
        for i in range(2, nx - 2):
            if crmask[j, i]:
                total = _F32(0.0)
                count = 0
                for dj in range(-2, 3):
                    for k in range(-2, 3):
                        if not (crmask[j + dj, i + k] or mask[j + dj, i + k]):
                            total += img[j + dj, i + k]
                            count += 1
                img[j, i] = background if count == 0 else _F32(np.float64(total) / count)


def _lower_median(values: np.ndarray) -> np.float32:
    """astroscrappy's median: the ((n - 1) // 2)-th smallest value."""
    k = (values.size - 1) // 2
    return np.partition(values, k)[k]


def detect_cosmics(
    data_adu: np.ndarray,
    excluded: np.ndarray,
    variance_adu2: np.ndarray,
    gain_e_per_adu: float,
    sigclip: float,
    sigfrac: float,
    objlim: float,
    niter: int,
) -> np.ndarray:
    """Cosmic-ray map of a float32 frame (ADU) with its variance (ADU^2); ``excluded`` pixels are never used.

    Equals astroscrappy's crmask for ``satlevel=np.inf, sepmed=True, cleantype="meanmask",
    fsmode="median"`` (the read noise is unused once the variance is given). Frames need at least
    9 x 9 pixels.
    """
    data = np.ascontiguousarray(data_adu, dtype=np.float32)
    variance = np.ascontiguousarray(variance_adu2, dtype=np.float32)
    gain = np.float32(gain_e_per_adu)
    clean, var = data * gain, variance * (gain * gain)
    mask = np.empty(clean.shape, bool)
    _dilate3(np.ascontiguousarray(excluded, dtype=bool), mask)
    good = ~mask
    sigclip, objlim = np.float32(sigclip), np.float32(objlim)
    sigcliplow = np.float32(sigfrac) * sigclip
    noise, s, tmp, rows = (np.empty_like(clean) for _ in range(4))
    found, grown = np.empty(clean.shape, bool), np.empty(clean.shape, bool)
    crmask = np.zeros(clean.shape, bool)
    backgrounds = None
    for _ in range(niter):
        _noise(var, noise, rows)
        _snr(clean, noise, s)
        _subtract_median(s, tmp, rows)
        _sepmedfilt(clean, tmp, rows, 2)
        _candidates(s, tmp, noise, good, sigclip, objlim, found)
        _grow(found, grown, good, s, sigclip)
        _grow(grown, found, good, s, sigcliplow)
        if _accumulate(found, crmask) == 0:
            break
        if backgrounds is None and _has_isolated(crmask, mask):
            backgrounds = (_lower_median((data * gain)[good]), _lower_median((variance * (gain * gain))[good]))
        clean_bg, var_bg = backgrounds if backgrounds is not None else (np.float32(0.0), np.float32(0.0))
        _clean_meanmask(clean, crmask, mask, clean_bg)
        _clean_meanmask(var, crmask, mask, var_bg)
    return crmask
