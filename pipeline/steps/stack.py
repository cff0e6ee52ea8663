"""Sigma-clipped stacking of a cube of frames, pixel by pixel along the frame axis.

``sigma_clip_stack(data, mask, variance, params)`` takes a cube ``(n, ny, nx)`` (frame axis
first) and returns the clipped combine (mean, median or inverse-variance weighted mean), the
population standard deviation and the number of the kept values, and the per-value rejection
mask. It is a numba kernel (SIMD across pixels, row chunks on a thread pool, no temporaries
larger than the outputs), meant to be called by the Dask graph on strips of the cube.

Semantics (reference: astropy 8.0.2)
------------------------------------
With the default ``ClipParams(rejection="final_bounds")`` the ``clipped`` mask is exactly what
this call adds to the input mask::

    astropy.stats.sigma_clip(np.ma.MaskedArray(data, mask), sigma_lower=..., sigma_upper=...,
                             maxiters=..., cenfunc="median"|"mean", stdfunc="std"|"mad_std",
                             axis=0)          # default copy=True, masked=True, grow=False

i.e. ``clipped == result.mask & ~(mask | ~isfinite(data))``. With *string* ``cenfunc`` and
``stdfunc`` and an ``axis``, astropy 8.0.2 does not run ``SigmaClip._sigmaclip_withaxis``: it
takes the C fast path ``SigmaClip._sigmaclip_fast`` (``astropy/stats/src/compute_bounds.c``),
whose rules, reproduced here, are:

* A value is *valid* when it is finite and not masked on input. Invalid values never enter the
  statistics, are never kept and are never reported as ``clipped``.
* Per pixel, in float64 (the ufunc casts float32 input to double), over the currently kept
  values ``x`` (count ``c``):

  - ``median``: the middle value, or ``0.5 * (a + b)`` of the two middle values for even ``c``;
  - ``mean = sum(x) / c``; ``std = sqrt(sum((x - mean)**2) / c)`` (population, ddof=0);
  - ``mad_std = 1.482602218505602 * median(|x - median(x)|)``, about the *median* also when
    ``cenfunc="mean"``;
  - ``lower = cen - sigma_lower * std``, ``upper = cen + sigma_upper * std``;
  - keep ``lower <= x <= upper`` (rejection is the strict ``x < lower`` or ``x > upper``).

  The loop stops when an iteration rejects nothing, when it rejects everything, or after
  ``maxiters`` bound computations (``maxiters=None``, like astropy's ``0``, means until
  convergence). The iteration is per pixel; there is no global convergence test.
* The mask is ``invalid | (data < lower) | (data > upper)`` with the bounds of the *last*
  iteration, applied to *all* valid values (compared in float64). A value rejected in an
  early iteration is therefore kept again if it lies inside the final bounds: the mask is not
  the union of the iterations' rejections.
* Corner cases: 0 valid values: nothing kept, ``mean``/``std`` NaN, ``count`` 0. 1 valid
  value: ``std = 0``, it is kept. Identical values: ``std = 0``, all kept. NaN bounds (only
  from an overflowing sum): nothing clipped.
* Unlike astropy (``sigma_lower or sigma``), ``sigma_lower=0`` means 0, not 3.

``ClipParams(rejection="union")`` instead reproduces ``SigmaClip._sigmaclip_withaxis``, what
astropy runs for *callable* functions (``cenfunc=astropy.stats.nanfunctions.nanmedian`` or
``nanmean``, ``stdfunc=nanstd`` or ``nanmadstd``): a value rejected by any iteration stays
rejected, and the array iterates until no value anywhere changes, or ``maxiters``. A pixel
whose iteration rejected nothing computes the very same bounds again and rejects nothing
again, so the global convergence test is equivalent to the per-pixel one used here. Each
iteration only narrows the interval of kept values, so the union-kept set is a subset of the
final-bounds-kept set (``clipped_final`` implies ``clipped_union``).

In both modes the kept values of a pixel form an interval of values, i.e. a contiguous run of
its sorted values: the kernel sorts each pixel's values once and an iteration only moves the
ends of that run (median in O(1), mad_std by merging the two monotone runs of deviations).

Precision and float32
---------------------
Everything is computed in float64, for float32 and float64 input alike. The sums (``mean``,
``std``) run over the kept values in frame order:

* ``final_bounds``: this is astropy's own arithmetic (its C code works in float64 for float32
  input too). The bounds are bit-identical for ``cenfunc="mean", stdfunc="std"`` (astropy sums
  in frame order) and for ``"median", "mad_std"`` (no sums). For ``"median", "std"`` and
  ``"mean", "mad_std"`` astropy sums in the order its Wirth selection leaves behind, so the
  bounds can differ by a few float64 ulps (~1e-16 relative): a mask could only differ for a
  value within a few float64 ulps of a bound; never observed (the tests require identity).
* ``union``: astropy computes in the dtype it holds. For the ``np.ma.MaskedArray`` call above
  that is float64 (``_sigmaclip_withaxis`` does ``.astype(float)`` on masked input; bottleneck
  sums in frame order), so the masks are identical for float32 and float64. Only when astropy
  is given a plain float32 ``ndarray`` does it compute float32 bounds (numpy float32
  ``nanmedian``/``nanstd``); the masks then differ exactly for values lying between astropy's
  float32 bound and the float64 bound (and, with several iterations, what follows from them).

Outputs (``StackResult``)
-------------------------
``mean`` is the combine (``params.combine``) of the kept values: their mean, their median
(``0.5 * (a + b)`` for an even count), or with ``weighted=True`` the inverse-variance weighted
mean ``sum(x / var) / sum(1 / var)``. ``std`` is the population standard deviation (ddof=0) of
the kept values (unweighted, whatever the combine), ``count`` their number. ``mean`` and
``std`` are NaN where ``count == 0``; they are computed in float64 and stored as float32. With
``weighted=True`` a value whose variance is not finite and positive is treated as masked on
input (it takes no part in the clipping either). The clipping itself is never weighted.

Threading: row chunks run on a module thread pool (one thread per available core) with the
GIL released; ``parallel=False`` runs on the calling thread only (e.g. inside a Dask task when
the Dask workers already use every core). Concurrent calls share the pool.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from numba import njit

from .params import ClipParams

__all__ = ["ClipParams", "StackResult", "sigma_clip_stack"]

_MAD_TO_STD = 1.482602218505602  # astropy's mad_std factor (compute_bounds.c and funcs.py)


@dataclass(frozen=True)
class StackResult:
    """Per-pixel results of sigma_clip_stack (see the module docstring)."""

    mean: np.ndarray  # (ny, nx) float32, combine of the kept values (NaN where count == 0)
    std: np.ndarray  # (ny, nx) float32, population std of the kept values (NaN where count == 0)
    count: np.ndarray  # (ny, nx) uint16, number of kept values
    clipped: np.ndarray  # (n, ny, nx) bool, rejected by the clipping although valid on input


# --------------------------------------------------------------------------------------------
# numba kernel
#
# A row of the cube is processed in blocks of _BLOCK pixels. A block's values are copied to an
# (n, _BLOCK) float64 scratch with the pixel axis innermost (NaN = invalid), so that loading,
# sorting (a Batcher sorting network of branch-free compare-exchanges), the frame-order sums
# and the bound comparisons all vectorise across pixels (SIMD); the passes take four frames at
# a time to keep the accumulators in registers. The kept values of a pixel are those in an
# interval [L, U] (the intersection of all bounds so far), i.e. the run srt[below:below + k] of
# its sorted column: the median is O(1), mad_std merges the two monotone runs of deviations
# around the median, mean and std are masked frame-order sums. The pixels of a block iterate
# in lockstep; once fewer than 1/6 of them are still iterating the rest are finished one by
# one (_finish_pixel, same arithmetic) instead of sweeping the whole block.
# --------------------------------------------------------------------------------------------

_BLOCK = 128
_COMBINE_MEAN = 0
_COMBINE_MEDIAN = 1
_COMBINE_WEIGHTED = 2
_JIT = dict(cache=True, fastmath=False, error_model="numpy", nogil=True)


# The kernel's arguments travel in named tuples (numba compiles them to plain structs: fields are
# read by name at no cost, and a call site cannot mix up their order).
class _Cube(NamedTuple):
    """The inputs: data (n, ny, nx) native float; mask and variance the same shape, or (1, 1, 1)
    placeholders when unused (one specialisation); pairs: the sorting network for n."""

    data: np.ndarray
    mask: np.ndarray
    has_mask: bool
    variance: np.ndarray
    pairs: np.ndarray


class _Clip(NamedTuple):
    """The clipping and combine settings of a ``ClipParams``, as the kernel reads them."""

    sigma_lower: float
    sigma_upper: float
    use_median: bool  # cenfunc == "median"
    use_mad: bool  # stdfunc == "mad_std"
    maxiters: int  # 0: until convergence
    union: bool  # rejection == "union"
    combine: int  # _COMBINE_MEAN, _COMBINE_MEDIAN or _COMBINE_WEIGHTED


class _Outputs(NamedTuple):
    """The result arrays the kernel fills (``StackResult``'s fields)."""

    mean: np.ndarray  # (ny, nx) float32
    std: np.ndarray  # (ny, nx) float32
    count: np.ndarray  # (ny, nx) uint16
    clipped: np.ndarray  # (n, ny, nx) bool


class _Scratch(NamedTuple):
    """One thread's work arrays for a block of _BLOCK pixels: the values ``vals`` (n, _BLOCK)
    float64 in frame order and ``srt`` sorted, then per-pixel vectors. Separate vectors (not
    rows of one 2-D array): LLVM vectorises without alias checks."""

    vals: np.ndarray  # float64, NaN = invalid
    srt: np.ndarray  # the data's dtype, +inf = invalid
    L: np.ndarray  # float64: lower end of the kept interval
    U: np.ndarray  # upper end
    lower: np.ndarray  # last lower bound
    upper: np.ndarray  # last upper bound
    s: np.ndarray  # frame-order sum of the kept values
    mu: np.ndarray  # their mean
    cen: np.ndarray  # their centre
    std: np.ndarray  # their std
    nL: np.ndarray  # the next interval's ends, sum
    nU: np.ndarray
    ns: np.ndarray
    m: np.ndarray  # int64: number of valid values
    k: np.ndarray  # number of kept values
    below: np.ndarray  # number of valid values below L
    active: np.ndarray  # 1 while the pixel iterates
    nk: np.ndarray  # the next interval's count, below
    nbelow: np.ndarray


@njit(**_JIT)
def _scratch(data):
    """Work arrays for the frames of ``data`` (``srt`` keeps exact copies: float32 fills more SIMD lanes than float64)."""
    n, b = data.shape[0], _BLOCK
    return _Scratch(
        vals=np.empty((n, b), np.float64),
        srt=np.empty((n, b), data.dtype),
        L=np.empty(b),
        U=np.empty(b),
        lower=np.empty(b),
        upper=np.empty(b),
        s=np.empty(b),
        mu=np.empty(b),
        cen=np.empty(b),
        std=np.empty(b),
        nL=np.empty(b),
        nU=np.empty(b),
        ns=np.empty(b),
        m=np.empty(b, np.int64),
        k=np.empty(b, np.int64),
        below=np.empty(b, np.int64),
        active=np.empty(b, np.int64),
        nk=np.empty(b, np.int64),
        nbelow=np.empty(b, np.int64),
    )


@lru_cache(maxsize=64)
def _sorting_network(n: int) -> np.ndarray:
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort for n keys.

    Built for the next power of two; comparators touching a padding key (index >= n) are
    dropped, which is exact because padding keys would be +inf and never move.
    """
    size = 1
    while size < n:
        size *= 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    out = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    out.flags.writeable = False
    return out


@njit(**_JIT)
def _median_col(srt, i, lo, hi):
    """Median of the sorted column srt[lo:hi, i] (hi > lo), as astropy's wirth_median."""
    k = hi - lo
    h = lo + k // 2
    if k % 2 == 0:
        return 0.5 * (np.float64(srt[h, i]) + np.float64(srt[h - 1, i]))  # float64 sum
    return np.float64(srt[h, i])


@njit(**_JIT)
def _mad_col(srt, i, lo, hi, med):
    """median(|x - med|) over the sorted column srt[lo:hi, i], without sorting deviations.

    Left of ``med`` the deviations grow leftwards, right of it rightwards; merging the two
    monotone runs outward from ``med`` yields the deviations in increasing order. ``|x - med|``
    is monotone in x on each side (rounding is monotone) and does not depend on any order, so
    the result is identical to astropy's selection on ``|x - med|``.
    """
    k = hi - lo
    p = lo + k // 2  # -> first index in [lo, hi) with srt >= med
    while p > lo and srt[p - 1, i] >= med:
        p -= 1
    while p < hi and srt[p, i] < med:
        p += 1
    left = p - 1
    right = p
    prev = 0.0
    cur = 0.0
    for _ in range(k // 2 + 1):
        if left >= lo and (right >= hi or abs(srt[left, i] - med) <= abs(srt[right, i] - med)):
            d = abs(srt[left, i] - med)
            left -= 1
        else:
            d = abs(srt[right, i] - med)
            right += 1
        prev = cur
        cur = d
    if k % 2 == 0:
        return 0.5 * (cur + prev)
    return cur


@njit(**_JIT)
def _pass_interval(vals, n, w, lo, hi, cnt, acc, below, do_sum, do_below):
    """For every pixel i, over its frame-ordered values vals[:, i] (NaN = invalid):
    cnt = #(lo <= v <= hi), acc = their sum in frame order, below = #(v < lo).

    Frames are taken four at a time so that the accumulators stay in registers; the order
    of the additions is still the frame order.
    """
    for i in range(w):
        cnt[i] = 0
        acc[i] = 0.0
        below[i] = 0
    f = 0
    while f + 4 <= n:
        r0 = vals[f]
        r1 = vals[f + 1]
        r2 = vals[f + 2]
        r3 = vals[f + 3]
        for i in range(w):
            lo_i = lo[i]
            hi_i = hi[i]
            a = r0[i]
            b = r1[i]
            c = r2[i]
            d = r3[i]
            ka = (a >= lo_i) & (a <= hi_i)
            kb = (b >= lo_i) & (b <= hi_i)
            kc = (c >= lo_i) & (c <= hi_i)
            kd = (d >= lo_i) & (d <= hi_i)
            cnt[i] += np.int64(ka) + np.int64(kb) + np.int64(kc) + np.int64(kd)
            if do_sum:
                s = acc[i]
                s += a if ka else 0.0
                s += b if kb else 0.0
                s += c if kc else 0.0
                s += d if kd else 0.0
                acc[i] = s
            if do_below:
                below[i] += np.int64(a < lo_i) + np.int64(b < lo_i) + np.int64(c < lo_i) + np.int64(d < lo_i)
        f += 4
    while f < n:
        r0 = vals[f]
        for i in range(w):
            a = r0[i]
            ka = (a >= lo[i]) & (a <= hi[i])
            cnt[i] += np.int64(ka)
            if do_sum:
                acc[i] += a if ka else 0.0
            if do_below:
                below[i] += np.int64(a < lo[i])
        f += 1


@njit(**_JIT)
def _pass_sqdev(vals, n, w, lo, hi, mu, out):
    """out[i] = sum over lo <= v <= hi of (v - mu[i])**2, in frame order."""
    for i in range(w):
        out[i] = 0.0
    f = 0
    while f + 4 <= n:
        r0 = vals[f]
        r1 = vals[f + 1]
        r2 = vals[f + 2]
        r3 = vals[f + 3]
        for i in range(w):
            lo_i = lo[i]
            hi_i = hi[i]
            m_i = mu[i]
            a = r0[i]
            b = r1[i]
            c = r2[i]
            d = r3[i]
            da = a - m_i
            db = b - m_i
            dc = c - m_i
            dd = d - m_i
            s = out[i]
            s += da * da if ((a >= lo_i) & (a <= hi_i)) else 0.0
            s += db * db if ((b >= lo_i) & (b <= hi_i)) else 0.0
            s += dc * dc if ((c >= lo_i) & (c <= hi_i)) else 0.0
            s += dd * dd if ((d >= lo_i) & (d <= hi_i)) else 0.0
            out[i] = s
        f += 4
    while f < n:
        r0 = vals[f]
        for i in range(w):
            a = r0[i]
            da = a - mu[i]
            out[i] += da * da if ((a >= lo[i]) & (a <= hi[i])) else 0.0
        f += 1


@njit(**_JIT)
def _pass_final(vals, n, w, lo, hi, cnt, acc, clipped, y, x0):
    """cnt, acc as in _pass_interval for [lo, hi]; also writes the clipped flags
    (valid on input and outside [lo, hi]) to clipped[:, y, x0:x0 + w]."""
    for i in range(w):
        cnt[i] = 0
        acc[i] = 0.0
    f = 0
    while f + 4 <= n:
        r0 = vals[f]
        r1 = vals[f + 1]
        r2 = vals[f + 2]
        r3 = vals[f + 3]
        c0 = clipped[f, y, x0 : x0 + w]
        c1 = clipped[f + 1, y, x0 : x0 + w]
        c2 = clipped[f + 2, y, x0 : x0 + w]
        c3 = clipped[f + 3, y, x0 : x0 + w]
        for i in range(w):
            lo_i = lo[i]
            hi_i = hi[i]
            a = r0[i]
            b = r1[i]
            c = r2[i]
            d = r3[i]
            ka = (a >= lo_i) & (a <= hi_i)
            kb = (b >= lo_i) & (b <= hi_i)
            kc = (c >= lo_i) & (c <= hi_i)
            kd = (d >= lo_i) & (d <= hi_i)
            c0[i] = (a == a) & ~ka
            c1[i] = (b == b) & ~kb
            c2[i] = (c == c) & ~kc
            c3[i] = (d == d) & ~kd
            cnt[i] += np.int64(ka) + np.int64(kb) + np.int64(kc) + np.int64(kd)
            t = acc[i]
            t += a if ka else 0.0
            t += b if kb else 0.0
            t += c if kc else 0.0
            t += d if kd else 0.0
            acc[i] = t
        f += 4
    while f < n:
        r0 = vals[f]
        c0 = clipped[f, y, x0 : x0 + w]
        for i in range(w):
            a = r0[i]
            ka = (a >= lo[i]) & (a <= hi[i])
            c0[i] = (a == a) & ~ka
            cnt[i] += np.int64(ka)
            acc[i] += a if ka else 0.0
        f += 1


@njit(**_JIT)
def _finish_pixel(vals, srt, L, U, lower, upper, k, s, below, clip, n, i, iteration):
    """The clipping iterations of pixel i (of n frames) from the current state on, one pixel at a
    time, after ``iteration`` iterations; the arrays are those of ``_Scratch`` (called with them
    by name: it runs once per pixel, and a structure would be passed member by member).

    Same arithmetic, in the same order, as the block loop of _do_block (used there once few
    pixels of a block are still iterating).
    """
    sigma_lower, sigma_upper, maxiters = clip.sigma_lower, clip.sigma_upper, clip.maxiters
    use_median, use_mad = clip.use_median, clip.use_mad
    need_mean = (not use_median) or (not use_mad)
    need_sorted = use_median or use_mad
    Li = L[i]
    Ui = U[i]
    ki = k[i]
    si = s[i]
    bi = below[i]
    while True:
        mu = si / ki
        cen = mu
        if need_sorted:
            med = _median_col(srt, i, bi, bi + ki)
            if use_median:
                cen = med
        if use_mad:
            std = _mad_col(srt, i, bi, bi + ki, med) * _MAD_TO_STD
        else:
            ss = 0.0
            for f in range(n):
                v = vals[f, i]
                d = v - mu
                ss += d * d if ((v >= Li) & (v <= Ui)) else 0.0
            std = math.sqrt(ss / ki)
        lo_b = cen - sigma_lower * std
        hi_b = cen + sigma_upper * std
        lower[i] = lo_b
        upper[i] = hi_b
        nLi = lo_b if lo_b > Li else Li
        nUi = hi_b if hi_b < Ui else Ui
        nki = 0
        nsi = 0.0
        nbi = 0
        for f in range(n):
            v = vals[f, i]
            kk = (v >= nLi) & (v <= nUi)
            nki += np.int64(kk)
            if need_mean:
                nsi += v if kk else 0.0
            nbi += np.int64(v < nLi)
        if nki == ki:
            break
        Li = nLi
        Ui = nUi
        ki = nki
        si = nsi
        bi = nbi
        if nki == 0:
            break
        iteration += 1
        if maxiters > 0 and iteration >= maxiters:
            break
    L[i] = Li
    U[i] = Ui
    k[i] = ki
    s[i] = si
    below[i] = bi


@njit(**_JIT)
def _do_block(y, x0, w, cube, clip, scratch, out):
    """Pixels ``[y, x0:x0 + w]`` (w <= _BLOCK) of ``cube`` clipped by ``clip`` into ``out``."""
    data, mask, has_mask, variance, pairs = cube.data, cube.mask, cube.has_mask, cube.variance, cube.pairs
    sigma_lower, sigma_upper, maxiters = clip.sigma_lower, clip.sigma_upper, clip.maxiters
    use_median, use_mad, union, combine = clip.use_median, clip.use_mad, clip.union, clip.combine
    out_mean, out_std, out_count, out_clipped = out.mean, out.std, out.count, out.clipped
    vals, srt = scratch.vals, scratch.srt
    L, U, lower, upper, s, mu = scratch.L, scratch.U, scratch.lower, scratch.upper, scratch.s, scratch.mu
    cen, std, nL, nU, ns = scratch.cen, scratch.std, scratch.nL, scratch.nU, scratch.ns
    m, k, below, active, nk, nbelow = scratch.m, scratch.k, scratch.below, scratch.active, scratch.nk, scratch.nbelow
    n = data.shape[0]
    weighted = combine == _COMBINE_WEIGHTED
    inf = np.inf
    nan = np.nan
    need_mean = (not use_median) or (not use_mad)
    need_sorted = use_median or use_mad
    need_sort = need_sorted or combine == _COMBINE_MEDIAN

    # 1. load: vals = value in frame order (NaN if invalid), srt = value (+inf if invalid)
    for i in range(w):
        m[i] = 0
        s[i] = 0.0
    for f in range(n):
        vf = vals[f]
        df = data[f, y, x0 : x0 + w]
        for i in range(w):
            a = np.float64(df[i])
            vf[i] = a if (a - a) == 0.0 else nan  # finite
        if has_mask:
            mf = mask[f, y, x0 : x0 + w]
            for i in range(w):
                if mf[i] != 0:
                    vf[i] = nan
        if weighted:
            wf = variance[f, y, x0 : x0 + w]
            for i in range(w):
                var = np.float64(wf[i])
                if not ((var > 0.0) & (var < inf)):
                    vf[i] = nan
        for i in range(w):  # count and frame-order sum of the valid values
            a = vf[i]
            ok = a == a
            m[i] += np.int64(ok)
            s[i] += a if ok else 0.0
        if need_sort:
            sf = srt[f]
            for i in range(w):
                a = vf[i]
                sf[i] = a if a == a else inf

    # 2. sort every pixel's column (invalid +inf values end up at the top): a sorting
    # network of branch-free compare-exchanges, vectorised over the pixels
    for p in range(pairs.shape[0] if need_sort else 0):
        ra = srt[pairs[p, 0]]
        rb = srt[pairs[p, 1]]
        for i in range(w):
            a = ra[i]
            b = rb[i]
            lt = a < b
            ra[i] = a if lt else b
            rb[i] = b if lt else a

    # 3. clip: astropy's compute_sigma_clipped_bounds, all pixels of the block in lockstep.
    # The kept values of a pixel are those in the interval [L, U] (intersection of all the
    # bounds so far); k = their number, s = their sum (frame order), below = the number of
    # valid values < L, so that the kept values are srt[below:below + k] of the sorted column.
    nact = 0
    for i in range(w):
        L[i] = -inf
        U[i] = inf
        k[i] = m[i]
        below[i] = 0
        active[i] = 1 if m[i] > 0 else 0
        nact += active[i]
        lower[i] = nan
        upper[i] = nan
    iteration = 0
    while nact > 0:
        if nact * 6 <= w:  # few pixels left: finish them one by one, not the whole block
            for i in range(w):
                if active[i]:
                    _finish_pixel(
                        vals=vals,
                        srt=srt,
                        L=L,
                        U=U,
                        lower=lower,
                        upper=upper,
                        k=k,
                        s=s,
                        below=below,
                        clip=clip,
                        n=n,
                        i=i,
                        iteration=iteration,
                    )
            break
        # centre and std of the kept values
        if need_mean:
            for i in range(w):
                mu[i] = s[i] / k[i] if active[i] else 0.0
        if need_sorted:
            for i in range(w):
                if active[i]:
                    cen[i] = _median_col(srt, i, below[i], below[i] + k[i])
        if use_mad:
            for i in range(w):
                if active[i]:
                    std[i] = _mad_col(srt, i, below[i], below[i] + k[i], cen[i]) * _MAD_TO_STD
        else:  # population std about the mean, summed in frame order
            _pass_sqdev(vals, n, w, L, U, mu, std)
            for i in range(w):
                std[i] = math.sqrt(std[i] / k[i]) if active[i] else 0.0
        if not use_median:
            for i in range(w):
                cen[i] = mu[i]
        # bounds; the next interval is [nL, nU] (a NaN bound does not constrain)
        for i in range(w):
            if active[i]:
                lo_b = cen[i] - sigma_lower * std[i]
                hi_b = cen[i] + sigma_upper * std[i]
                lower[i] = lo_b
                upper[i] = hi_b
                nL[i] = lo_b if lo_b > L[i] else L[i]
                nU[i] = hi_b if hi_b < U[i] else U[i]
            else:
                nL[i] = L[i]
                nU[i] = U[i]
        # count (and sum) the values kept by the new bounds: lower <= x <= upper
        _pass_interval(vals, n, w, nL, nU, nk, ns, nbelow, need_mean, need_sorted)
        nact = 0
        for i in range(w):
            if active[i]:
                if nk[i] == k[i]:  # nothing rejected (also NaN bounds): converged
                    active[i] = 0
                else:
                    L[i] = nL[i]
                    U[i] = nU[i]
                    k[i] = nk[i]
                    s[i] = ns[i]
                    below[i] = nbelow[i]
                    if nk[i] == 0:  # everything rejected
                        active[i] = 0
                    else:
                        nact += 1
        iteration += 1
        if maxiters > 0 and iteration >= maxiters:
            break

    # 4. the kept values of each pixel are those in [vlo, vhi]
    vlo = nL
    vhi = nU
    for i in range(w):
        if union:  # what is left after the iterations
            vlo[i] = L[i]
            vhi[i] = U[i]
        else:  # astropy fast path: within the last bounds (x < NaN and x > NaN are False)
            vlo[i] = -inf if math.isnan(lower[i]) else lower[i]
            vhi[i] = inf if math.isnan(upper[i]) else upper[i]

    # 5. clipped flags (valid on input and not kept), then count, mean and std of the kept
    cnt = k
    acc = s
    _pass_final(vals, n, w, vlo, vhi, cnt, acc, out_clipped, y, x0)
    for i in range(w):
        mu[i] = acc[i] / cnt[i] if cnt[i] > 0 else nan
    _pass_sqdev(vals, n, w, vlo, vhi, mu, std)
    ostd = out_std[y, x0 : x0 + w]
    ocount = out_count[y, x0 : x0 + w]
    omean = out_mean[y, x0 : x0 + w]
    for i in range(w):
        c = cnt[i]
        ocount[i] = c
        ostd[i] = math.sqrt(std[i] / c) if c > 0 else nan
    if combine == _COMBINE_MEAN:
        for i in range(w):
            omean[i] = mu[i]
    elif combine == _COMBINE_MEDIAN:
        for i in range(w):
            c = cnt[i]
            if c == 0:
                omean[i] = nan
                continue
            first = 0  # the kept values are the sorted run srt[first:first + c, i]
            while srt[first, i] < vlo[i]:
                first += 1
            omean[i] = _median_col(srt, i, first, first + c)
    else:  # inverse-variance weighted mean
        sw = s
        swx = std
        for i in range(w):
            sw[i] = 0.0
            swx[i] = 0.0
        for f in range(n):
            vf = vals[f]
            wf = variance[f, y, x0 : x0 + w]
            for i in range(w):
                v = vf[i]
                if (v >= vlo[i]) & (v <= vhi[i]):
                    wt = 1.0 / np.float64(wf[i])
                    sw[i] += wt
                    swx[i] += wt * v
        for i in range(w):
            omean[i] = swx[i] / sw[i] if cnt[i] > 0 else nan


@njit(**_JIT)
def _do_rows(y0, y1, cube, clip, out):
    """Rows y0 <= y < y1, block by block, with one set of scratch arrays (serial)."""
    nx = cube.data.shape[2]
    scratch = _scratch(cube.data)
    for y in range(y0, y1):
        for x0 in range(0, nx, _BLOCK):
            _do_block(y, x0, min(_BLOCK, nx - x0), cube, clip, scratch, out)


# Parallelism: the kernel is compiled with nogil=True and row chunks are run on a small thread
# pool. Compared to numba's parallel=True/prange this compiles in half the time (no parfor
# gufunc), needs no threading layer (workqueue is not thread-safe, OpenMP is not fork-safe),
# and calls from several threads at once (a Dask threaded scheduler) share the same pool
# instead of oversubscribing the cores.
_POOL: ThreadPoolExecutor | None = None
_POOL_PID = -1  # a forked child must not reuse the parent's pool (its threads do not exist)
_POOL_LOCK = threading.Lock()


def _n_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _pool() -> ThreadPoolExecutor:
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            _POOL = ThreadPoolExecutor(_n_threads(), thread_name_prefix="skyprep-stack")
            _POOL_PID = os.getpid()
        return _POOL


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def _as_native_float(a: np.ndarray) -> np.ndarray:
    """float32/float64 in native byte order as is; others converted (a copy).

    Big-endian FITS data must be converted (numba cannot read it). Integers and float16 up to
    2 bytes are exact in float32; anything else goes to float64 (astropy uses float64 too).
    """
    if a.dtype.kind == "f" and a.dtype.itemsize in (4, 8):
        return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))
    small = a.dtype.kind in "biuf" and a.dtype.itemsize <= 2
    return a.astype(np.float32 if small else np.float64)


def sigma_clip_stack(
    data: np.ndarray,
    mask: np.ndarray | None = None,
    variance: np.ndarray | None = None,
    params: ClipParams = ClipParams(),
    *,
    parallel: bool = True,
) -> StackResult:
    """Sigma-clip ``data`` (n, ny, nx) along axis 0 and combine the kept values.

    ``mask`` (same shape, bool or integer; nonzero = do not use) and non-finite values are
    excluded from everything. ``variance`` (same shape) is needed for ``params.weighted``.
    ``parallel=False`` runs on the calling thread only (for use inside an already parallel
    scheduler). See the module docstring for the exact (astropy) semantics.
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"data must be (n, ny, nx), got shape {data.shape}")
    data = _as_native_float(data)
    n, ny, nx = data.shape
    if n > np.iinfo(np.uint16).max:
        raise ValueError(f"at most 65535 frames (count is uint16), got {n}")

    if mask is None:
        has_mask = False
        mask_arr = np.zeros((1, 1, 1), np.bool_)
    else:
        has_mask = True
        mask_arr = np.asarray(mask)
        if mask_arr.shape != data.shape:
            raise ValueError(f"mask shape {mask_arr.shape} != data shape {data.shape}")
        if mask_arr.dtype.kind not in "biu":
            raise TypeError(f"mask must be bool or integer, got {mask_arr.dtype}")
        if not mask_arr.dtype.isnative:
            mask_arr = mask_arr.astype(mask_arr.dtype.newbyteorder("="))

    if params.weighted:
        if variance is None:
            raise ValueError("params.weighted=True needs a variance cube")
        var_arr = np.asarray(variance)
        if var_arr.shape != data.shape:
            raise ValueError(f"variance shape {var_arr.shape} != data shape {data.shape}")
        var_arr = _as_native_float(var_arr)
        combine = _COMBINE_WEIGHTED
    else:
        var_arr = np.zeros((1, 1, 1), data.dtype)  # unused; keeps one specialisation
        combine = _COMBINE_MEDIAN if params.combine == "median" else _COMBINE_MEAN

    out_mean = np.empty((ny, nx), np.float32)
    out_std = np.empty((ny, nx), np.float32)
    out_count = np.empty((ny, nx), np.uint16)
    out_clipped = np.empty((n, ny, nx), np.bool_)
    if data.size == 0:
        out_mean.fill(np.nan)
        out_std.fill(np.nan)
        out_count.fill(0)
        out_clipped.fill(False)
        return StackResult(out_mean, out_std, out_count, out_clipped)

    cube = _Cube(data=data, mask=mask_arr, has_mask=has_mask, variance=var_arr, pairs=_sorting_network(n))
    clip = _Clip(
        sigma_lower=float(params.sigma_lower),
        sigma_upper=float(params.sigma_upper),
        use_median=params.cenfunc == "median",
        use_mad=params.stdfunc == "mad_std",
        maxiters=int(params.maxiters or 0),  # None / 0 -> until convergence (astropy: `maxiters or inf`)
        union=params.rejection == "union",
        combine=combine,
    )
    out = _Outputs(mean=out_mean, std=out_std, count=out_count, clipped=out_clipped)
    nthreads = _n_threads() if parallel else 1
    if nthreads > 1 and ny > 1:
        # a few row chunks per thread balance the load (blocks iterate unequally)
        nchunks = min(ny, 4 * nthreads)
        bounds = [c * ny // nchunks for c in range(nchunks + 1)]
        futures = [_pool().submit(_do_rows, bounds[c], bounds[c + 1], cube, clip, out) for c in range(nchunks)]
        for fut in futures:
            fut.result()
    else:
        _do_rows(0, ny, cube, clip, out)
    return StackResult(out_mean, out_std, out_count, out_clipped)
