"""Drawing synthetic noisy frames (``syn``, ADU) from a clean stack with a session's noise model.

Per amplifier, in electrons, for a pixel of the stack ``mean`` (ADU of the nominal gain
``g_nom``) with the session's ``flat``, ``dark`` (e-/s) and ``bias`` (e-) masters, the
amplifier's header gain ``g_h`` (the masters' and the cosmic-ray shapes' electrons are the
header's, like the calibration's) and the model's gain ``g`` (e-/ADU; ``c = g / g_h``)::

    expected = c * (g_nom * mean * flat + dark * DARKTIME)
    syn_raw  = min(rint(L + (expected + s * (Poisson(expected) - expected) + c * (bias + cosmic rays)) / g
                         + s * (white + row offset)), SATURATE)
    syn      = syn_raw - L

so the expected ``syn`` in ADU is the data's whatever ``g`` is; ``g`` sets the shot noise.

``L`` is the overscan level the pipeline subtracted, so ``syn`` is quantised like ``os``. White
read noise (ADU) is Gaussian or, where the overscan showed otherwise, the measured quantile
function of a Gaussian deviate; row offsets (ADU, one per row and amplifier) are a stationary
Gaussian process with the measured power spectrum (white deviates per row filtered by
``row_filter``); cosmic rays arrive at the measured rate per pixel and second, each a measured
hit shape. ``s = sqrt(1 - 1/count)`` removes the noise the stack of ``count`` frames still
carries (``subtract_base_noise``; 1 when off): the result then has one frame's variance about
the truth, not ``1 + 1/count`` of it. Pixels with no stack value are NaN.

Randomness is counter-based: every random number is splitmix64 of a 64-bit stream key
(``SynthKey.stream_key``: the seed, the session, the draw's keys and the stream) plus a counter
that names what it is for, so a draw needs no generator state and any patch or strip is drawn
without the rest of the frame and equals the crop of the whole frame drawn at once:

- a pixel: its index ``c`` on the session grid (``Stream.PIXELS``): 32 bits, the lower half of
  the 64 of counter ``c // 2`` for an even ``c``, the upper half for an odd one (two pixels per
  hash), give its normal deviate; below ``POISSON_EXACT_BELOW_E`` the shot noise's 64 bits are
  one more mix of the pair's bits (``_EXACT_MIX`` plus the parity), and a measured (not Gaussian)
  white noise's deviate another (``_WHITE_MIX``);
- a row offset: the white deviate of every session row (``Stream.ROWS``, one key per amplifier),
  so a patch filters only its rows and ``row_filter``'s reach;
- cosmic rays: per ``COSMIC_TILE_PX`` tile of the session grid (``Stream.COSMICS``), counter 0..
  for the tile's hit count, then two per hit (position, shape).

Normal deviates from 32 bits: a table of the normal quantile function at ``2**NORMAL_TABLE_BITS``
levels, linearly interpolated (at most ``1.4e-4`` off) between the levels ``2**-NORMAL_TAIL_BITS``
and ``1 - 2**-NORMAL_TAIL_BITS`` (``|z| < 2.66``), and the tails (one deviate in 128) by Wichura's
AS 241 (``PPND7``, relative error ``1e-7``) at the uniform's midpoint: deviates reach 6.3 sigma.
Shot noise below ``POISSON_EXACT_BELOW_E`` expected electrons is exact: a Poisson is the sum of
independent Poissons, so Poisson(``l``) is drawn as the tabulated Poisson of ``l`` rounded down to
a multiple of ``1 / POISSON_GRID_PER_E`` (inversion of 32 bits by a guided table search) plus the
Poisson of the remainder (below 1/16 e-: inversion of 32 more bits against its CDF at 0..5), both
from one more mix of the pixel's bits, and the Gaussian white noise is the pixel's deviate. Above
it, one deviate ``z`` draws the sum of the shot noise and the Gaussian white noise (ADU): the
Cornish-Fisher expansion ``a z + b (z^2 - 1)`` with ``v = l / g^2 + white^2`` (their variance),
``b = l / (6 g^3 v)`` and ``a^2 = v - 2 b^2``: the sum's mean and variance exactly, its third
cumulant (``l / g^3``, the Poisson's) to ``4 b^3`` (relative ``1/(54 l)`` without white noise,
where it is ``sqrt(l - 1/18) z + (z^2 - 1) / 6`` in electrons). A measured white noise is added
apart (its own deviate), to the shot noise's expansion alone.

The per-pixel work, the row offsets and the cosmic rays are one compiled call (``_synthesize``),
row by row in short loops the compiler vectorises (float32 arithmetic); the pixels of a small
mean are flagged and drawn apart, and the cosmic rays are a sparse list of deposits.
``load_kernel`` loads it ahead of the first task; ``DRAW_VERSION`` is recorded with
``syn`` (``pipeline.io.provenance.syn_record``). Tests against scipy: ``tests/test_synthesis_generator.py``.
"""

from __future__ import annotations

import enum
import hashlib
import math
import struct
import weakref
import zlib
from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy import special

from .noise_fit import MAX_HIT_EXTENT_PX, QUANTILE_LEVELS, CosmicFit, ReadNoise, fit_read_noise
from .noise_model import AmpModel, NoiseModel

DRAW_VERSION = 3  # the random draw's version, recorded with syn: a new one draws other frames for the same keys
COSMIC_TILE_PX = 512  # cosmic-ray arrivals: one random stream per tile
POISSON_EXACT_BELOW_E = 30.0  # expected electrons below which shot noise is drawn exactly
POISSON_GRID_PER_E = 16  # the exact draw's tables: Poisson means on a grid of 1/16 e- (the remainder drawn apart)
POISSON_GUIDE_BITS = 7  # a table search starts from one of 2**7 guide entries per mean
ROW_FILTER_LOSS = 1e-4  # fraction of the row offsets' variance the truncated filter may leave out
NORMAL_TABLE_BITS = 12
NORMAL_TAIL_BITS = 8  # uniforms below 2**-NORMAL_TAIL_BITS (or as far above 1) take AS 241, not the table
WHITE_TABLE_SIGMAS = 4.5  # the measured white quantile function is tabulated over |z| <= this
WHITE_TABLE_POINTS = 1025


class Stream(enum.IntEnum):
    """Independent random streams of one draw."""

    PIXELS = 0
    ROWS = 1
    COSMICS = 2


@dataclass(frozen=True)
class SynthKey:
    """What determines a realization: the seed, the session's name and the draw's own keys
    (``(realization,)`` for stored ones; the loader uses ``(epoch, index)``)."""

    seed: int
    session: str
    draw: tuple[int, ...]

    def entropy(self) -> list[int]:
        return [int(self.seed), zlib.crc32(self.session.encode()), len(self.draw), *(int(k) for k in self.draw)]

    def stream_key(self, stream: Stream, *keys: int) -> np.uint64:
        """64 bits keying the counter-based random numbers of ``stream`` (and ``keys``, e.g. an amplifier)."""
        words = [*self.entropy(), int(stream), *(int(k) for k in keys)]
        digest = hashlib.blake2b(struct.pack(f"<{len(words)}q", *words), digest_size=8).digest()
        return np.uint64(int.from_bytes(digest, "little"))


@dataclass(frozen=True, eq=False)
class Patch:
    """Clean inputs of the rows ``[y0, y0 + ny)`` and columns ``[x0, x0 + nx)`` of a session:
    ``mean_adu``, ``flat`` (unitless), ``dark_e_per_s``, ``bias_e`` and the stack's ``count``."""

    y0: int
    x0: int
    mean_adu: np.ndarray
    flat: np.ndarray
    dark_e_per_s: np.ndarray
    bias_e: np.ndarray
    count: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.mean_adu.shape


def row_filter(read: ReadNoise, rows: int) -> np.ndarray:
    """Taps ``h[0..L]`` (ADU per unit deviate; ``h[-j] = h[j]``) that turn white deviates ``w`` into
    row offsets ``sum_j h[|j|] w[y - j]`` with the measured spectrum ``read.row_psd_adu2``.

    The zero-phase filter of the spectrum sampled on ``2 * rows`` frequencies (an amplifier's
    ``rows``: its lowest measured frequency), cut where the taps left out carry less than
    ``ROW_FILTER_LOSS`` of the variance. Empty when the model has no row noise.
    """
    if read.row_adu == 0 or rows == 0:
        return np.zeros(0)
    n = 2 * rows
    power = np.interp(np.fft.rfftfreq(n), read.row_psd_freq, read.row_psd_adu2)
    taps = np.fft.irfft(np.sqrt(np.maximum(power, 0.0)), n)[: n // 2 + 1]
    energy = np.cumsum(np.concatenate([taps[:1] ** 2, 2 * taps[1:] ** 2]))
    keep = int(np.searchsorted(energy, (1 - ROW_FILTER_LOSS) * energy[-1])) + 1
    return taps[:keep]


def white_table(read: ReadNoise) -> np.ndarray:
    """The measured white read noise (ADU) as a function of a normal deviate ``z``, at
    ``WHITE_TABLE_POINTS`` equally spaced ``z`` over ``+-WHITE_TABLE_SIGMAS``: the overscan's
    standardised quantile function ``read.quantiles`` at ``Phi(z)``, held at its outermost
    measured levels beyond them."""
    z = np.linspace(-WHITE_TABLE_SIGMAS, WHITE_TABLE_SIGMAS, WHITE_TABLE_POINTS)
    return read.white_adu * np.interp(special.ndtr(z), QUANTILE_LEVELS, read.quantiles)


@dataclass(frozen=True, eq=False)
class _Prepared:
    """A model's values as the compiled draw takes them (built once per model object)."""

    regions: np.ndarray  # (amps, 4) int64: y0, y1, x0, x1
    values: np.ndarray  # (amps, 5) float64: model gain, c, overscan level, saturation, white ADU
    gaussian: np.ndarray  # (amps,) bool
    white_tables: np.ndarray  # (amps, WHITE_TABLE_POINTS) float64
    row_filters: np.ndarray  # (amps, longest) float64, zero padded
    row_taps: np.ndarray  # (amps,) int64
    start: np.ndarray
    dy: np.ndarray
    dx: np.ndarray
    charge: np.ndarray


_PREPARED: dict[int, tuple[weakref.ref, _Prepared]] = {}


def _prepare(model: NoiseModel) -> _Prepared:
    found = _PREPARED.get(id(model))
    if found is not None and found[0]() is model:
        return found[1]
    amps = model.amps
    filters = [row_filter(a.read, a.region[1] - a.region[0]) for a in amps]
    longest = max([len(f) for f in filters] + [1])
    cosmic = model.cosmic
    prepared = _Prepared(
        regions=np.array([a.region for a in amps], np.int64).reshape(len(amps), 4),
        values=np.array([(a.synthesis_gain_e_per_adu, a.synthesis_gain_e_per_adu / a.gain_e_per_adu, a.overscan_adu,
                          a.saturate_adu, a.read.white_adu) for a in amps], np.float64).reshape(len(amps), 5),
        gaussian=np.array([a.read.gaussian for a in amps], np.bool_),
        white_tables=np.array([white_table(a.read) for a in amps], np.float64).reshape(len(amps), -1),
        row_filters=np.array([np.pad(f, (0, longest - len(f))) for f in filters], np.float64).reshape(len(amps), -1),
        row_taps=np.array([len(f) for f in filters], np.int64),
        start=np.asarray(cosmic.start, np.int64),
        dy=np.asarray(cosmic.dy, np.int64),
        dx=np.asarray(cosmic.dx, np.int64),
        charge=np.asarray(cosmic.charge_e, np.float64),
    )  # fmt: skip
    ident = id(model)
    _PREPARED[ident] = (weakref.ref(model, lambda ref, k=ident: _forget(k, ref)), prepared)
    return prepared


def _forget(ident: int, ref: weakref.ref) -> None:
    """Drop a collected model's prepared values (unless its id already names a newer model)."""
    if _PREPARED.get(ident, (None,))[0] is ref:
        del _PREPARED[ident]


def _model_arguments(model: NoiseModel) -> tuple:
    """The draw kernel's arguments after the keys: the model's prepared values and the tables."""
    prepared = _prepare(model)
    return (prepared.regions, prepared.values, prepared.gaussian, prepared.white_tables, prepared.row_filters,
            prepared.row_taps, model.gain_nominal_e_per_adu, model.darktime_s,
            model.cosmic.rate_per_px_s * model.exptime_s, prepared.start, prepared.dy, prepared.dx, prepared.charge,
            _NORMAL_TABLE, _POISSON_CDF, _POISSON_GUIDE)  # fmt: skip


def _stream_keys(key: SynthKey, amps: int) -> tuple[np.uint64, np.ndarray, np.uint64]:
    """The keys of a draw's streams: pixels, rows (one per amplifier, uint64 array), cosmic rays."""
    rows = np.array([key.stream_key(Stream.ROWS, index) for index in range(amps)], np.uint64)
    return key.stream_key(Stream.PIXELS), rows, key.stream_key(Stream.COSMICS)


def synthesize_patch(patch: Patch, model: NoiseModel, key: SynthKey, subtract_base_noise: bool = True,
                     out: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """A synthetic overscan-corrected frame (float32 ADU) over ``patch`` (see the module doc),
    drawn into ``out`` when given (a C-contiguous float32 array of the patch's shape: a loader's
    buffer, so no frame is allocated per sample) and returned."""
    if out is None:
        out = np.empty(patch.shape, np.float32)
    elif out.shape != patch.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous float32 of shape {patch.shape}, got {out.dtype} {out.shape}")
    clean = (patch.mean_adu, patch.flat, patch.dark_e_per_s, patch.bias_e)
    _synthesize(*(np.ascontiguousarray(a, np.float32) for a in clean), np.ascontiguousarray(patch.count, np.uint16),
                out, patch.y0, patch.x0, *model.shape, *_stream_keys(key, len(model.amps)), *_model_arguments(model),
                subtract_base_noise)  # fmt: skip
    return out


def synthesize_patches(clean: tuple[np.ndarray, ...], origins: np.ndarray, model: NoiseModel, keys: list[SynthKey],
                       subtract_base_noise: bool, out: np.ndarray, members: np.ndarray) -> np.ndarray:  # fmt: skip
    """Draw patches of one session's batch in one compiled call: patch ``members[m]`` of the
    batch, at session pixel ``origins[m]`` (y, x), keyed ``keys[m]``, into ``out[members[m]]``.
    ``clean``: the batch's ``mean`` (ADU), ``flat``, ``dark`` (e-/s), ``bias`` (e-) float32 and
    ``count`` uint16 windows, each (B, P, P) C-contiguous like ``out`` (float32). Each patch is
    ``synthesize_patch``'s draw of it alone. Returns whether each holds no NaN and no inf ((M,) bool)."""
    dtypes = (np.float32,) * 5 + (np.uint16,)
    for values, dtype in zip((out, *clean[:4], clean[4]), dtypes):
        if values.dtype != dtype or values.shape != out.shape or not values.flags.c_contiguous:
            raise ValueError(f"windows must be C-contiguous {np.dtype(dtype)} of shape {out.shape}, got "
                             f"{values.dtype} {values.shape}")  # fmt: skip
    streams = [_stream_keys(key, len(model.amps)) for key in keys]
    pixel_keys = np.array([pixel for pixel, _, _ in streams], np.uint64)
    row_keys = np.array([rows for _, rows, _ in streams], np.uint64).reshape(len(keys), len(model.amps))
    cosmic_keys = np.array([cosmic for _, _, cosmic in streams], np.uint64)
    finite = np.empty(len(keys), np.bool_)
    _synthesize_batch(*clean, out, np.asarray(members, np.int64), np.asarray(origins, np.int64).reshape(-1, 2),
                      *model.shape, pixel_keys, row_keys, cosmic_keys, *_model_arguments(model), subtract_base_noise,
                      finite)  # fmt: skip
    return finite


def load_kernel() -> None:
    """Load the draw's compiled kernel (numba's cache) with the argument types ``synthesize_patch``
    passes, by drawing a 2 x 2 patch of a minimal model."""
    read = fit_read_noise(np.random.default_rng(0).normal(1000.0, 3.0, (64, 16)))
    amp = AmpModel("load", (0, 2, 0, 2), 1.0, None, 0.0, 1e9, read)
    model = NoiseModel((2, 2), 1.0, 1.0, 1.0, (amp,), CosmicFit(0.0, 0.0, 0, 1, 1.0, (0,), (), (), ()))
    ones = np.ones((2, 2), np.float32)
    synthesize_patch(Patch(0, 0, ones, ones, ones, ones, np.ones((2, 2), np.uint16)), model, SynthKey(0, "load", (0,)))


def _normal_table() -> np.ndarray:
    """The normal quantile function at the ``2**NORMAL_TABLE_BITS + 1`` levels ``k / 2**NORMAL_TABLE_BITS``,
    its infinite ends replaced by the next levels' values (the tails are drawn by ``_normal_tail``)."""
    table = special.ndtri(np.arange((1 << NORMAL_TABLE_BITS) + 1) / (1 << NORMAL_TABLE_BITS))
    table[0], table[-1] = table[1], table[-2]
    return table.astype(np.float32)


def _poisson_tables() -> tuple[np.ndarray, np.ndarray]:
    """Inversion tables of Poisson(``j / POISSON_GRID_PER_E``) for the grid means below
    ``POISSON_EXACT_BELOW_E``: ``cdf[j, k]``, the CDF at ``k`` in units of ``2**-32`` (rounded; the
    last column ``2**32 - 1``), and ``guide[j, b]``, the first ``k`` whose ``cdf`` exceeds
    ``b * 2**(32 - POISSON_GUIDE_BITS)`` (where a search for a uniform in bucket ``b`` starts)."""
    means = np.arange(int(POISSON_EXACT_BELOW_E * POISSON_GRID_PER_E)) / POISSON_GRID_PER_E
    counts = np.arange(int(4 * POISSON_EXACT_BELOW_E) + 64)  # beyond where the last mean's tail drops below 2**-33
    length = int(np.argmax(special.pdtrc(counts, means[-1]) <= 2.0**-33)) + 2
    cdf = np.rint(special.pdtr(np.arange(length), means[:, None]) * 2.0**32)
    cdf = np.minimum(cdf, 2.0**32 - 1).astype(np.uint32)
    cdf[:, -1] = 2**32 - 1
    starts = np.arange(1 << POISSON_GUIDE_BITS, dtype=np.uint64) << np.uint64(32 - POISSON_GUIDE_BITS)
    guide = np.array([np.searchsorted(row, starts, side="right") for row in cdf], np.uint8)
    return cdf, guide


_NORMAL_TABLE = _normal_table()
_POISSON_CDF, _POISSON_GUIDE = _poisson_tables()

_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_LOW = np.uint64(0xFFFFFFFF)
_FRACTION_BITS = np.uint32(32 - NORMAL_TABLE_BITS)
_FRACTION_MASK = np.uint32((1 << (32 - NORMAL_TABLE_BITS)) - 1)
_TAIL_SHIFT = np.uint32(1 << (32 - NORMAL_TAIL_BITS))  # bits32 + this (mod 2**32) is below _TAIL_SPAN in the tails
_TAIL_SPAN = np.uint32(1 << (33 - NORMAL_TAIL_BITS))
_GUIDE_SHIFT = np.uint32(32 - POISSON_GUIDE_BITS)
_ROW_COUNTER = 1 << 32  # row counters: the session row plus this (rows a filter reaches above row 0 stay positive)
_POISSON_CHUNK = 64.0  # a tile's hit count is a sum of Poisson draws of at most this mean
_TO_UNIT = 1.0 / 4294967296.0
_KERNEL = {"cache": True, "error_model": "numpy", "boundscheck": False}


@njit(**_KERNEL, inline="always")
def _mix(z):
    """splitmix64's finaliser: a bijective hash of a 64-bit integer."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(**_KERNEL, inline="always")
def _bits(key, counter):
    """The ``counter``-th output of splitmix64 started at ``key`` (64 random bits)."""
    return _mix(key + np.uint64(counter) * _GOLDEN)


@njit(**_KERNEL)
def _normal_tail(p):
    """Wichura's AS 241 (PPND7) normal quantile for ``p`` below 0.075 or above 0.925."""
    r = math.sqrt(-math.log(min(p, 1.0 - p)))
    if r <= 5.0:
        r -= 1.6
        z = (((0.17023821103 * r + 1.3067284816) * r + 2.75681539) * r + 1.4234372777) / (
            (0.12021132975 * r + 0.7370016425) * r + 1.0
        )
    else:
        r -= 5.0
        z = (((0.0176351 * r + 0.01772474) * r + 0.5316466) * r + 6.6579046) / ((0.01810693 * r + 0.28568213) * r + 1.0)
    return -z if p < 0.5 else z


@njit(**_KERNEL, inline="always")
def _in_tail(bits32):
    """Whether the uniform 32 bits fall in a tail (below ``2**-NORMAL_TAIL_BITS`` or as far above 1)."""
    return np.uint32(bits32 + _TAIL_SHIFT) < _TAIL_SPAN


@njit(**_KERNEL, inline="always")
def _normal_centre(table, bits32):
    """The table's normal deviate for the uniform 32 bits (right outside the tails, see ``_normal``)."""
    i = np.int32(bits32 >> _FRACTION_BITS)
    frac = np.float32(np.int32(bits32 & _FRACTION_MASK)) * np.float32(1.0 / (1 << (32 - NORMAL_TABLE_BITS)))
    lo = table[i]
    return lo + frac * (table[i + 1] - lo)


@njit(**_KERNEL)
def _normal(table, bits32):
    """A standard normal deviate from the uniform 32 bits ``bits32`` (see the module doc)."""
    if _in_tail(bits32):
        return np.float32(_normal_tail((np.float64(bits32) + 0.5) * _TO_UNIT))
    return _normal_centre(table, bits32)


@njit(**_KERNEL)
def _poisson(lam, bits):
    """Poisson(lam) by sequential inversion of the uniform ``bits / 2**64`` (for small ``lam``)."""
    u = np.float64(bits >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    p = math.exp(-lam)
    cumulative = p
    k = 0
    while u > cumulative and k < 1000:
        k += 1
        p *= lam / k
        cumulative += p
    return k


@njit(**_KERNEL, inline="always")
def _poisson_below_step(r, bits32):
    """Poisson(``r``), ``0 <= r < 1 / POISSON_GRID_PER_E``, by inversion of the uniform 32 bits
    without branches: the number of the CDF's values at 0..5 not above the uniform (beyond 5 the
    probability is below ``2**-33``; ``exp(-r)`` by its series to ``r**7``)."""
    u = (np.float64(bits32) + 0.5) * _TO_UNIT
    p = 1.0 + r * (-1.0 + r * (0.5 + r * (-1.0 / 6 + r * (1.0 / 24 + r * (-1.0 / 120 + r * (1.0 / 720 - r / 5040))))))
    cumulative, k = p, 0
    for t in range(1, 7):
        k += u >= cumulative
        p *= r / t
        cumulative += p
    return k


@njit(**_KERNEL)
def _poisson_exact(lam, bits, cdf, guide):
    """Poisson(``lam``), ``lam < POISSON_EXACT_BELOW_E``, from 64 uniform bits: the tabulated Poisson
    of ``lam`` rounded down to the grid (the upper 32 bits inverted by a guided search: two steps
    without branches, more in the rare long buckets) plus the Poisson of the remainder (the lower 32)."""
    j = min(int(lam * POISSON_GRID_PER_E), cdf.shape[0] - 1)
    u = np.uint32(bits >> _S32)
    last = cdf.shape[1] - 1
    k = np.int64(guide[j, u >> _GUIDE_SHIFT])
    k = min(k + (u >= cdf[j, k]), last)
    k = min(k + (u >= cdf[j, k]), last)
    while k < last and u >= cdf[j, k]:
        k += 1
    return k + _poisson_below_step(lam - j / POISSON_GRID_PER_E, np.uint32(bits & _LOW))


@njit(**_KERNEL)
def _uniform_int(bits32, n):
    """An integer in ``[0, n)`` from 32 uniform bits (multiply-shift)."""
    return np.int64((bits32 * np.uint64(n)) >> _S32)


@njit(**_KERNEL)
def _tile_hits(tile_key, expected):
    """The number of hits (Poisson of mean ``expected``) of a tile, and the next free counter."""
    hits, counter = 0, 0
    while expected > 0:
        hits += _poisson(min(expected, _POISSON_CHUNK), _bits(tile_key, counter))
        expected -= _POISSON_CHUNK
        counter += 1
    return hits, counter


@njit(**_KERNEL)
def _cosmic_deposits(y0, x0, ny, nx, frame_ny, frame_nx, key, hits_per_px, start, dy, dx, charge):
    """The cosmic-ray charge (e-) landing on rows ``[y0, y0 + ny)`` and columns ``[x0, x0 + nx)``:
    ``(row, column, charge)`` arrays of the deposits (relative to ``y0, x0``), in row order."""
    shapes = start.size - 1
    tile, reach = COSMIC_TILE_PX, MAX_HIT_EXTENT_PX
    tiles_x = (frame_nx + tile - 1) // tile
    capacity = 0
    if hits_per_px > 0 and shapes > 0:
        longest = np.max(start[1:] - start[:-1])
        for ty in range(max(0, (y0 - reach) // tile), min(frame_ny - 1, y0 + ny - 1) // tile + 1):
            for tx in range(max(0, (x0 - reach) // tile), min(frame_nx - 1, x0 + nx - 1) // tile + 1):
                th, tw = min(tile, frame_ny - ty * tile), min(tile, frame_nx - tx * tile)
                capacity += _tile_hits(_bits(key, ty * tiles_x + tx), hits_per_px * th * tw)[0] * longest
    rows, cols, charges = np.empty(capacity, np.int64), np.empty(capacity, np.int64), np.empty(capacity)
    n = 0
    if capacity > 0:
        for ty in range(max(0, (y0 - reach) // tile), min(frame_ny - 1, y0 + ny - 1) // tile + 1):
            for tx in range(max(0, (x0 - reach) // tile), min(frame_nx - 1, x0 + nx - 1) // tile + 1):
                ty0, tx0 = ty * tile, tx * tile
                th, tw = min(tile, frame_ny - ty0), min(tile, frame_nx - tx0)
                tile_key = _bits(key, ty * tiles_x + tx)
                hits, counter = _tile_hits(tile_key, hits_per_px * th * tw)
                for hit in range(hits):
                    where = _bits(tile_key, counter + 2 * hit)
                    ay = ty0 + _uniform_int(where >> _S32, th)
                    ax = tx0 + _uniform_int(where & _LOW, tw)
                    shape = _uniform_int(_bits(tile_key, counter + 2 * hit + 1) >> _S32, shapes)
                    for p in range(start[shape], start[shape + 1]):
                        py, px = ay + dy[p], ax + dx[p]
                        if y0 <= py < y0 + ny and x0 <= px < x0 + nx and py < frame_ny and px < frame_nx:
                            rows[n], cols[n], charges[n] = py - y0, px - x0, charge[p]
                            n += 1
    order = np.argsort(rows[:n], kind="mergesort")
    return rows[:n][order], cols[:n][order], charges[:n][order]


@njit(**_KERNEL)
def _row_offsets(rows, first_row, key, taps, count, table):
    """``rows`` offsets (ADU, unscaled) of the session rows from ``first_row``: the white deviates
    of rows ``first_row - count + 1 ..`` filtered by the symmetric ``taps[:count]``."""
    out = np.zeros(rows)
    if count == 0:
        return out
    reach = count - 1
    white = np.empty(rows + 2 * reach)
    for k in range(white.size):
        white[k] = _normal(table, np.uint32(_bits(key, first_row - reach + k + _ROW_COUNTER) >> _S32))
    for r in range(rows):
        total = taps[0] * white[r + reach]
        for j in range(1, count):
            total += taps[j] * (white[r + reach - j] + white[r + reach + j])
        out[r] = total
    return out


_EXACT_MIX, _WHITE_MIX = 1, 3  # a pixel's further bits: splitmix64 of its pair's 64 bits at counter these + its parity

# The per-row work is split into loops over a row's pixels that each touch few arrays, so that
# the compiler vectorises them (the table normals' loop is scalar: its loads are not contiguous);
# the pixels of a small mean are found by their flags and drawn apart.


@njit(**_KERNEL)
def _pair_hashes(pixel_key, first_pair, pairs):
    """The 64 random bits of the pixel pairs ``first_pair, first_pair + 1, ..`` (pair ``k``: the
    pixels of counters ``2k`` and ``2k + 1``)."""
    for m in range(pairs.size):
        pairs[m] = _bits(pixel_key, first_pair + m)


@njit(**_KERNEL)
def _normals(bits32, table, z):
    """The normal deviates of the pixels' 32 bits (``_normal``: the table, AS 241 in the tails)."""
    for j in range(z.size):
        z[j] = _normal(table, bits32[j])


@njit(**_KERNEL)
def _expected(mean, flat, dark, scale_e, dark_e, lam, small):
    """The expected electrons ``scale_e * mean * flat + dark_e * dark`` (at least 0), ``small``
    where they are below ``POISSON_EXACT_BELOW_E`` (1, else 0), and how many are."""
    found = 0
    for j in range(lam.size):
        expected = scale_e * mean[j] * flat[j] + dark_e * dark[j]
        expected = expected if expected > 0 else np.float32(0.0)
        lam[j] = expected
        below = expected < POISSON_EXACT_BELOW_E
        small[j] = below
        found += below
    return found


@njit(**_KERNEL)
def _exact_shot(n, pairs, parity, lam, small, exact, cdf, guide):
    """The exact shot noise (e-, about the mean) of the ``small`` pixels among the first ``n``
    (``small`` zero beyond them to a multiple of 8; found eight at a time), from the 64 bits of one
    more mix of the pixel's pair."""
    words = small.view(np.uint64)
    for w in range((n + 7) // 8):
        if words[w] == 0:
            continue
        for j in range(8 * w, min(8 * w + 8, n)):
            if small[j]:
                c = parity + j
                bits = _bits(pairs[c >> 1], _EXACT_MIX + (c & 1))
                exact[j] = _poisson_exact(np.float64(lam[j]), bits, cdf, guide) - np.float64(lam[j])


@njit(**_KERNEL)
def _measured_white(pairs, parity, table, white_table, white):
    """The measured white read noise (ADU) of a row's pixels: the quantile function tabulated in
    ``white_table`` at a normal deviate of the pixel's own (the upper 32 bits of one more mix of
    its pair)."""
    top = white_table.size - 1
    to_index = top / (2.0 * WHITE_TABLE_SIGMAS)
    for j in range(white.size):
        c = parity + j
        z = _normal(table, np.uint32(_bits(pairs[c >> 1], _WHITE_MIX + (c & 1)) >> _S32))
        t = min(max((np.float64(z) + WHITE_TABLE_SIGMAS) * to_index, 0.0), top)
        k = min(int(t), top - 1)
        white[j] = white_table[k] + (t - k) * (white_table[k + 1] - white_table[k])


@njit(**_KERNEL)
def _quantised(count, bias, mean, out, lam, z, exact, small, extra, white, true_e, level, inverse_gain, white_adu,
               row, saturate, subtract):  # fmt: skip
    """A row of ``syn`` (ADU): the noise (ADU, about the expected value) scaled by ``s``
    (``subtract``), quantised like ``os``, NaN where the stack has no value. The noise: where the
    mean is small, the exact shot noise plus ``white_adu`` times the deviate ``z``; else the
    Cornish-Fisher expansion ``a z + b (z^2 - 1)`` of the sum of the shot noise and that white
    noise (variance ``v = lam / g^2 + white_adu^2``, third cumulant ``lam / g^3``: ``b = lam /
    (6 g^3 v)``, ``a^2 = v - 2 b^2``); plus ``white`` (the measured white noise; 0 where it is
    Gaussian)."""
    white2 = white_adu * white_adu
    inverse_gain2 = inverse_gain * inverse_gain
    skew = inverse_gain2 * inverse_gain * _SIXTH
    for j in range(lam.size):
        zj, lj = z[j], lam[j]
        c = np.float32(count[j])
        v, ci = max(lj * inverse_gain2 + white2, _TINY), max(c, np.float32(1.0))
        r = np.float32(1.0) / (v * ci)  # one division for 1 / v and 1 / c
        b = lj * skew * (r * ci)
        a = np.sqrt(max(v - np.float32(2.0) * b * b, np.float32(0.0)))
        approximate = a * zj + b * (zj * zj - np.float32(1.0))
        noise = (exact[j] * inverse_gain + white_adu * zj if small[j] else approximate) + white[j]
        s = np.sqrt(max(np.float32(0.0), np.float32(1.0) - r * v)) if subtract else np.float32(1.0)
        electrons = lj + true_e * (bias[j] + extra[j])
        raw = np.rint(level + electrons * inverse_gain + s * (noise + row))
        value = min(max(raw, np.float32(0.0)), saturate) - level
        m = mean[j]
        out[j] = value if (m == m and c > 0) else np.float32(np.nan)


_SIXTH, _TINY = np.float32(1.0 / 6.0), np.float32(1e-30)


@njit(**_KERNEL)
def _synthesize(mean, flat, dark, bias, count, out, y0, x0, frame_ny, frame_nx, pixel_key, row_keys, cosmic_key,
                regions, values, gaussian, white_tables, row_filters, row_taps, g_nom, darktime, hits_per_px,
                start, dy, dx, charge, table, cdf, guide, subtract):  # fmt: skip
    """``synthesize_patch``'s draw into ``out``: per amplifier its row offsets, then row by row the
    loops above and the cosmic rays' charge (see the module doc)."""
    ny, nx = mean.shape
    out[:] = np.nan
    hit_rows, hit_cols, hit_charges = _cosmic_deposits(y0, x0, ny, nx, frame_ny, frame_nx, cosmic_key, hits_per_px,
                                                        start, dy, dx, charge)  # fmt: skip
    pairs, small = np.empty(nx // 2 + 1, np.uint64), np.zeros(8 * ((nx + 7) // 8), np.uint8)
    z, lam, exact = np.empty(nx, np.float32), np.empty(nx, np.float32), np.empty(nx, np.float32)
    extra, white = np.zeros(nx, np.float32), np.zeros(nx, np.float32)
    for a in range(regions.shape[0]):
        iy0, iy1 = max(regions[a, 0], y0), min(regions[a, 1], y0 + ny)
        ix0, ix1 = max(regions[a, 2], x0), min(regions[a, 3], x0 + nx)
        if iy0 >= iy1 or ix0 >= ix1:
            continue
        true_e, level, saturate = values[a, 1], np.float32(values[a, 2]), np.float32(values[a, 3])
        inverse_gain, true_e32 = np.float32(1.0 / values[a, 0]), np.float32(true_e)
        scale_e, dark_e = np.float32(true_e * g_nom), np.float32(true_e * darktime)
        white_adu = np.float32(values[a, 4]) if gaussian[a] else np.float32(0.0)
        rows = _row_offsets(iy1 - iy0, iy0, row_keys[a], row_filters[a], row_taps[a], table)
        j0, n = ix0 - x0, ix1 - ix0
        j1 = j0 + n
        small[n:] = 0
        za, la, sm, ex, xt, wh = z[:n], lam[:n], small[:n], exact[:n], extra[:n], white[:n]
        hit = np.searchsorted(hit_rows, iy0 - y0)
        for i in range(iy0 - y0, iy1 - y0):
            y = i + y0
            first = y * frame_nx + ix0
            parity = first & 1
            ps = pairs[: (parity + n + 1) // 2]
            _pair_hashes(pixel_key, first >> 1, ps)
            _normals(ps.view(np.uint32)[parity : parity + n], table, za)
            if _expected(mean[i, j0:j1], flat[i, j0:j1], dark[i, j0:j1], scale_e, dark_e, la, sm):
                _exact_shot(n, ps, parity, lam, small, exact, cdf, guide)
            if not gaussian[a]:
                _measured_white(ps, parity, table, white_tables[a], wh)
            first_hit = hit
            while hit < hit_rows.size and hit_rows[hit] == i:
                if j0 <= hit_cols[hit] < j1:
                    extra[hit_cols[hit] - j0] += hit_charges[hit]
                hit += 1
            _quantised(count[i, j0:j1], bias[i, j0:j1], mean[i, j0:j1], out[i, j0:j1], la, za, ex, sm, xt, wh, true_e32,
                       level, inverse_gain, white_adu, np.float32(rows[y - iy0]), saturate, subtract)  # fmt: skip
            for k in range(first_hit, hit):
                if j0 <= hit_cols[k] < j1:
                    extra[hit_cols[k] - j0] = 0.0
        wh[:] = 0.0


@njit(**_KERNEL)
def _synthesize_batch(mean, flat, dark, bias, count, out, members, origins, frame_ny, frame_nx, pixel_keys, row_keys,
                      cosmic_keys, regions, values, gaussian, white_tables, row_filters, row_taps, g_nom, darktime,
                      hits_per_px, start, dy, dx, charge, table, cdf, guide, subtract, finite):  # fmt: skip
    """``synthesize_patches``' draws: ``_synthesize`` of each member, whether it is finite in ``finite``."""
    for m in range(members.size):
        j = members[m]
        _synthesize(mean[j], flat[j], dark[j], bias[j], count[j], out[j], origins[m, 0], origins[m, 1], frame_ny,
                    frame_nx, pixel_keys[m], row_keys[m], cosmic_keys[m], regions, values, gaussian, white_tables,
                    row_filters, row_taps, g_nom, darktime, hits_per_px, start, dy, dx, charge, table, cdf, guide,
                    subtract)  # fmt: skip
        finite[m] = _all_finite(out[j])


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _all_finite(values):
    """Whether a 2-D C-contiguous float32 array holds no NaN and no inf: the sum of ``v - v`` (0 for
    a finite ``v``, NaN otherwise) is 0; only reassociation is allowed, so the loop vectorises and
    a NaN still propagates."""
    total = np.float32(0.0)
    for v in values.ravel():
        total += v - v
    return total == 0
