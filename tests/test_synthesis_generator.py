"""The random draw of ``syn`` against independent truth (scipy.stats): the shot noise's distribution
at small means (exact Poisson), around the switch and above it (Cornish-Fisher), the normal
deviates' moments and tails, the independence of neighbouring counters (adjacent pixels, the
two deviates of one pixel, consecutive samples), and determinism given the key, also across
spawned processes.

Each draw goes through ``synthesize_patch`` with a model that isolates one term: gain 1, no
overscan level, no saturation, no row noise, no cosmic rays, no base-noise subtraction, an overscan level of ``LEVEL_ADU``; shot
noise alone (no white noise) gives integer electrons, white noise alone (zero mean: the shot
noise of 0 e- is 0) gives ``WHITE_ADU`` times the normal deviate, quantised to ``1 / WHITE_ADU``.
"""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from pipeline.steps.noise_fit import CosmicFit, fit_read_noise
from pipeline.steps.noise_model import AmpModel, NoiseModel
from pipeline.steps.synthesize import POISSON_EXACT_BELOW_E, Patch, SynthKey, synthesize_patch

SIZE = 512
WHITE_ADU = 1000.0
LEVEL_ADU = 10 * WHITE_ADU  # the overscan level: raw values stay positive (they are clipped at 0)
P_MIN = 1e-3  # the p-value below which a goodness-of-fit test fails (one false failure in 1000 runs)


def _model(white_adu: float, size: int = SIZE) -> NoiseModel:
    read = fit_read_noise(np.random.default_rng(0).normal(1000, 3, (64, 16)))
    read = replace(read, white_adu=white_adu, row_adu=0.0, gaussian=True)
    amp = AmpModel("SCI", (0, size, 0, size), 1.0, None, LEVEL_ADU, 1e12, read)
    return NoiseModel((size, size), 1.0, 1.0, 1.0, (amp,), CosmicFit(0.0, 0.0, 0, 1, 1.0, (0,), (), (), ()))


def _draw(expected_e: np.ndarray, white_adu: float, key: SynthKey, y0: int = 0, x0: int = 0) -> np.ndarray:
    """``syn`` (float64) of a patch whose expected electrons are ``expected_e`` (gain 1, no dark)."""
    shape = expected_e.shape
    zeros = np.zeros(shape, np.float32)
    patch = Patch(y0, x0, expected_e.astype(np.float32), np.ones(shape, np.float32), zeros, zeros,
                  np.full(shape, 10, np.uint16))  # fmt: skip
    return synthesize_patch(patch, _model(white_adu), key, subtract_base_noise=False).astype(np.float64)


def _shot(lam: float, draw: int = 0) -> np.ndarray:
    return _draw(np.full((SIZE, SIZE), lam), 0.0, SynthKey(11, "shot", (draw,))).ravel()


def _deviates(draw: tuple[int, ...] = (0,), size: int = SIZE) -> np.ndarray:
    """Normal deviates, ``(size, size)``, quantised to ``1 / WHITE_ADU``."""
    return _draw(np.zeros((size, size)), WHITE_ADU, SynthKey(12, "white", draw)) / WHITE_ADU


def _chi_square_p(values: np.ndarray, first: int, pmf: np.ndarray, below: float = 0.0, minimum: float = 20.0) -> float:
    """p-value of a chi-square test of integer ``values`` against the probabilities ``pmf`` of
    ``first, first + 1, ..`` (``below``: the probability of values below ``first``, counted with
    the first bin; the mass beyond the last, with the last), adjacent bins merged until each
    expects at least ``minimum``."""
    n = values.size
    observed = np.bincount(np.clip(values - first, 0, pmf.size - 1).astype(np.int64), minlength=pmf.size)
    expected = n * pmf.copy()
    expected[0] += n * below
    expected[-1] = n - expected[:-1].sum()
    o, e, merged_o, merged_e = [], [], 0.0, 0.0
    for k in range(pmf.size):
        merged_o, merged_e = merged_o + observed[k], merged_e + expected[k]
        if merged_e >= minimum and expected[k + 1 :].sum() >= minimum:
            o.append(merged_o)
            e.append(merged_e)
            merged_o, merged_e = 0.0, 0.0
    o[-1], e[-1] = o[-1] + merged_o, e[-1] + merged_e
    o, e = np.array(o), np.array(e)
    assert o.size >= 2 and o.sum() == n
    return float(stats.chi2.sf(((o - e) ** 2 / e).sum(), o.size - 1))


def _moments_agree(values: np.ndarray, lam: float) -> None:
    """Mean, variance, skewness and excess kurtosis against the Poisson's (scipy), each within 5
    standard errors: the mean's and variance's from the Poisson's moments, the skewness's and
    kurtosis's from 64 batches of the sample."""
    n = values.size
    mean, variance, skewness, kurtosis = (float(m) for m in stats.poisson.stats(lam, moments="mvsk"))
    assert abs(values.mean() - mean) < 5 * math.sqrt(lam / n)
    assert abs(values.var() / variance - 1) < 5 * math.sqrt((2 + 1 / lam) / n)
    batches = values.reshape(64, -1)
    for statistic, truth in ((stats.skew, skewness), (stats.kurtosis, kurtosis)):
        error = np.std(statistic(batches, axis=1)) / math.sqrt(64)
        assert abs(statistic(values) - truth) < 5 * error, (statistic.__name__, statistic(values), truth, error)


@pytest.mark.parametrize("lam", [0.02, 0.7, 3.0, 12.3, 29.97])
def test_shot_noise_below_the_switch_is_poisson(lam):
    drawn = _shot(lam)
    assert np.all(drawn == np.rint(drawn)) and drawn.min() >= 0
    k = np.arange(int(lam + 12 * math.sqrt(lam) + 12))
    assert _chi_square_p(drawn, 0, stats.poisson.pmf(k, lam)) > P_MIN
    _moments_agree(drawn, lam)


def test_shot_noise_of_means_spread_over_the_exact_range_is_their_poisson_mixture():
    """Every pixel its own mean, uniform over ``[0, POISSON_EXACT_BELOW_E)``: the counts' histogram
    against the sum of the pixels' Poisson pmfs (every grid step of the tables visited)."""
    lam = np.random.default_rng(5).uniform(0, POISSON_EXACT_BELOW_E, (SIZE, SIZE)).astype(np.float32)
    drawn = _draw(lam, 0.0, SynthKey(13, "mixture", (0,))).ravel()
    k = np.arange(int(POISSON_EXACT_BELOW_E * 2 + 20))
    pmf = stats.poisson.pmf(k[:, None], lam.ravel().astype(np.float64)[None, :]).mean(axis=1)
    assert _chi_square_p(drawn, 0, pmf) > P_MIN
    assert abs(drawn.mean() - lam.mean()) < 5 * math.sqrt(lam.mean() / drawn.size)


@pytest.mark.parametrize("lam", [30.0, 31.5, 100.0, 1000.0, 20000.0])
def test_shot_noise_above_the_switch_has_the_poisson_distribution(lam):
    """Cornish-Fisher: continuous, so rounded to integers here; its distance from the Poisson
    (total variation 4.5e-4 at 30 e-, 1.3e-4 at 100; docs/synthesis.md) is below what a
    chi-square test of 512 x 512 draws detects, and the moments agree."""
    drawn = _shot(lam)
    first = int(lam - 8 * math.sqrt(lam))
    k = np.arange(first, int(lam + 8 * math.sqrt(lam)) + 2)
    assert _chi_square_p(drawn, first, stats.poisson.pmf(k, lam), below=stats.poisson.cdf(first - 1, lam)) > P_MIN
    _moments_agree(drawn, lam)


def test_shot_noise_changes_distribution_exactly_at_the_switch():
    """Seen through a gain of 0.01 e-/ADU (ADU of 0.01 e-): below the switch whole electrons, at
    it continuous values."""
    model = _model(0.0)
    model = replace(model, amps=(replace(model.amps[0], gain_e_per_adu=0.01),))
    shape = (64, 64)
    zeros = np.zeros(shape, np.float32)

    def electrons(lam):
        patch = Patch(0, 0, np.full(shape, lam, np.float32), np.ones(shape, np.float32), zeros, zeros,
                      np.full(shape, 10, np.uint16))  # fmt: skip
        return synthesize_patch(patch, model, SynthKey(1, "s", (0,)), subtract_base_noise=False) * 0.01

    below, at = electrons(POISSON_EXACT_BELOW_E - 0.01), electrons(POISSON_EXACT_BELOW_E)
    assert np.all(np.abs(below - np.rint(below)) < 1e-3)
    assert np.mean(np.abs(at - np.rint(at)) > 0.02) > 0.5


def test_normal_deviates_have_the_normal_moments_and_tails():
    z = np.concatenate([_deviates((d,)).ravel() for d in range(4)])  # 2**20 deviates
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1 - 1 / (12 * WHITE_ADU**2)) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > P_MIN
    # beyond the table (2**-8 of each side: |z| > 2.66, drawn by AS 241) and far out, both sides
    for t in (1.0, 2.0, 2.66, 3.0, 3.5, 4.0, 4.5):
        for side in (z < -t, z > t):
            expected = n * stats.norm.sf(t)
            assert abs(side.sum() - expected) < 5 * math.sqrt(expected) + 1, (t, side.sum(), expected)
    assert np.abs(z).max() < 6.4  # 32-bit uniforms: the extreme deviate is 6.3 sigma


def test_normal_deviates_in_fine_bins_across_the_table_and_tail_boundary():
    """A chi-square over bins of 0.05 sigma from -5 to 5 (the table's linear interpolation and the
    switch to AS 241 at 2.66 sigma included), against the normal's bin probabilities."""
    z = np.concatenate([_deviates((d,)).ravel() for d in range(4, 8)])
    edges = np.concatenate([[-np.inf], np.arange(-5.0, 5.0001, 0.05), [np.inf]])
    observed = np.histogram(z, edges)[0]
    expected = z.size * np.diff(stats.norm.cdf(edges))
    keep = expected >= 20
    o = np.append(observed[keep], observed[~keep].sum())
    e = np.append(expected[keep], expected[~keep].sum())
    assert stats.chi2.sf(((o - e) ** 2 / e).sum(), o.size - 1) > P_MIN


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_neighbouring_counters_are_independent():
    z = _deviates((0,))
    n = z[:, 1:].size
    bound = 5 / math.sqrt(n)
    assert abs(_correlation(z[:, 1:], z[:, :-1])) < bound  # adjacent columns
    assert abs(_correlation(z[1:], z[:-1])) < bound  # adjacent rows (counters a frame width apart)
    assert abs(_correlation(z[1:, 1:], z[:-1, :-1])) < bound
    # consecutive samples of the loader (epoch, i) and (epoch, i + 1), the next epoch, another seed
    for other in ((0, 1), (1, 0)):
        assert abs(_correlation(_deviates((0, 0)), _deviates(other))) < bound
    assert abs(_correlation(z, _draw(np.zeros((SIZE, SIZE)), WHITE_ADU, SynthKey(13, "white", (0,))))) < bound
    # the two pixels of one pair (the lower and upper halves of one 64 bits): even columns
    # against the next odd ones (counters 2k, 2k + 1; the frame width is even)
    assert abs(_correlation(z[:, 0::2], z[:, 1::2])) < 5 / math.sqrt(z[:, 0::2].size)
    # squares (dependence a correlation of the values misses)
    assert abs(_correlation(z[:, 1:] ** 2, z[:, :-1] ** 2)) < bound


@pytest.mark.parametrize(("lam", "white"), [(5.0, 2.0), (29.0, 0.7), (200.0, 3.0), (1000.0, 20.0)])
def test_shot_and_white_noise_together_have_the_distribution_of_their_sum(lam, white):
    """Shot noise and Gaussian white noise (ADU of 1 e-) drawn together, quantised: against the
    Poisson convolved with the normal and rounded (scipy), by chi-square and the variance. Below
    the switch the exact Poisson and the white deviate come from different bits of the pixel; above
    it one deviate draws their sum (Cornish-Fisher), so a wrong variance, a dependence between the
    two or a lost skewness shows here."""
    drawn = _draw(np.full((SIZE, SIZE), lam), white, SynthKey(15, "sum", (0,))).ravel()
    n = np.arange(int(max(0.0, lam - 12 * math.sqrt(lam) - 12)), int(lam + 12 * math.sqrt(lam) + 12))
    spread = math.sqrt(lam + white**2)
    first = int(lam - 8 * spread)
    k = np.arange(first, int(lam + 8 * spread) + 2)
    poisson = stats.poisson.pmf(n, lam)
    pmf = (poisson[None, :] * (stats.norm.cdf((k[:, None] + 0.5 - n) / white)
                               - stats.norm.cdf((k[:, None] - 0.5 - n) / white))).sum(axis=1)  # fmt: skip
    below = float((poisson * stats.norm.cdf((first - 0.5 - n) / white)).sum())
    assert _chi_square_p(drawn, first, pmf, below=below) > P_MIN
    variance = lam + white**2 + 1 / 12  # the rounding of a continuous value adds 1/12
    assert abs(drawn.var() / variance - 1) < 5 * math.sqrt(2 / drawn.size) * (1 + lam / variance)


def test_the_draw_is_a_function_of_the_key_and_the_pixel():
    key = SynthKey(3, "s", (2, 7))
    lam = np.random.default_rng(1).uniform(0, 60, (200, 300))
    whole = _draw(lam, 7.0, key)
    np.testing.assert_array_equal(whole, _draw(lam, 7.0, key))
    # any window drawn alone is the crop of the whole, whatever its width or place in the row
    for y0, x0, h, w in ((0, 0, 1, 1), (5, 3, 17, 29), (100, 263, 64, 37), (199, 0, 1, 300)):
        np.testing.assert_array_equal(
            _draw(lam[y0 : y0 + h, x0 : x0 + w], 7.0, key, y0, x0), whole[y0 : y0 + h, x0 : x0 + w]
        )
    for other in (
        SynthKey(3, "s", (2, 8)),
        SynthKey(3, "s", (3, 7)),
        SynthKey(4, "s", (2, 7)),
        SynthKey(3, "t", (2, 7)),
    ):
        assert np.mean(_draw(lam, 7.0, other) == whole) < 0.2


def _draw_in_a_process(draw: tuple[int, ...]) -> np.ndarray:
    return _deviates(draw, size=128)


def test_the_draw_is_identical_in_spawned_processes():
    draws = [(0, i) for i in range(4)]
    here = [_draw_in_a_process(d) for d in draws]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = list(pool.map(_draw_in_a_process, draws))
    for a, b in zip(here, there, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_batch_draw_is_each_patch_drawn_alone_and_flags_the_non_finite_ones():
    """``synthesize_patches`` (the loader's batch draw) against ``synthesize_patch`` of each member
    alone, and its finiteness flags against ``np.isfinite`` (a NaN mean pixel, a pixel of count 0)."""
    from pipeline.steps.synthesize import synthesize_patches

    rng = np.random.default_rng(4)
    p, origins = 48, np.array([[0, 0], [30, 200], [400, 7], [100, 100]])
    mean = rng.uniform(0, 60, (4, p, p)).astype(np.float32)
    mean[1, 3, 5] = np.nan
    flat, zeros = np.ones_like(mean), np.zeros_like(mean)
    count = np.full(mean.shape, 10, np.uint16)
    count[2, 40, 1] = 0
    model, keys = _model(7.0), [SynthKey(3, "s", (1, i)) for i in (8, 5)]
    out = np.full(mean.shape, -1.0, np.float32)
    members = np.array([2, 1])  # the others are left alone
    finite = synthesize_patches((mean, flat, zeros, zeros, count), origins[members], model, keys, False, out, members)
    for m, j in enumerate(members.tolist()):
        patch = Patch(*origins[j].tolist(), mean[j], flat[j], zeros[j], zeros[j], count[j])
        alone = synthesize_patch(patch, model, keys[m], subtract_base_noise=False)
        np.testing.assert_array_equal(out[j], alone)
        assert not finite[m] and np.isnan(alone).sum() == 1
    assert (out[[0, 3]] == -1).all()
    clean = np.ones((1, p, p), np.float32)
    one = synthesize_patches((clean, clean, clean * 0, clean * 0, count[:1]), origins[:1], model, keys[:1], False,
                             out[:1], np.array([0]))  # fmt: skip
    assert one[0] and np.isfinite(out[0]).all()
    with pytest.raises(ValueError, match="uint16"):
        synthesize_patches((clean,) * 5, origins[:1], model, keys[:1], False, out[:1], np.array([0]))
