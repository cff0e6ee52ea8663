"""The noise model: fitted parameters against the generator's truth, realism of ``syn`` against the
session's ``os`` and the truth (with the two baselines in the same test), and determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.steps import noise_fit
from pipeline.steps import noise_realism as realism
from pipeline.steps.noise_model import NoiseModel
from pipeline.steps.synthesize import Patch, SynthKey, synthesize_patch
from pipeline.synth import SynthSpec, ccd

from .noise_baselines import authors_model, gaussian_poisson_model
from .noise_session import fit_model, observe

ROW_NOISE_E = 4.0
ROW_RHO = 0.5
REALIZATIONS = 4


@pytest.fixture(scope="module")
def one_amp():
    spec = SynthSpec(sessions=1, size=512, frames=8, amps=1, seed=21, max_drift=0.0,
                     row_noise_e=ROW_NOISE_E, row_noise_rho=ROW_RHO)  # fmt: skip
    obs = observe(spec)
    return obs, fit_model(obs)


@pytest.fixture(scope="module")
def four_amps():
    spec = SynthSpec(sessions=1, size=512, frames=6, amps=4, seed=22, max_drift=0.0,
                     row_noise_e=ROW_NOISE_E, row_noise_rho=ROW_RHO)  # fmt: skip
    obs = observe(spec)
    return obs, fit_model(obs)


def _row_rms_error(rows: int, rho: float) -> float:
    """Relative 1-sigma error of the RMS of ``rows`` AR(1) samples (effective sample count)."""
    effective = rows * (1 - rho**2) / (1 + rho**2)
    return math.sqrt(1.0 / (2.0 * effective))


@pytest.mark.parametrize("which", ["one_amp", "four_amps"])
def test_fitted_parameters_match_the_truth(which, request):
    obs, model = request.getfixturevalue(which)
    session = obs.session
    for amp, readout in zip(model.amps, session.readouts, strict=True):
        ptc = amp.gain_ptc
        assert ptc is not None
        assert abs(ptc.gain_e_per_adu / readout.gain_e_per_adu - 1) < 0.05
        assert (
            abs(ptc.gain_e_per_adu - readout.gain_e_per_adu) < 4 * ptc.error_e_per_adu + 0.002 * readout.gain_e_per_adu
        )
        assert abs(amp.read_noise_e / readout.rdnoise_e - 1) < 0.03
        tolerance = 3 * _row_rms_error(amp.read.rows, ROW_RHO)
        assert abs(amp.row_noise_e / ROW_NOISE_E - 1) < tolerance
        rho = math.exp(-1 / amp.read.row_corr_rows)  # lag-1 correlation, 3 sigma of an AR(1) estimate
        assert abs(rho - ROW_RHO) < 3 * math.sqrt((1 - ROW_RHO**2) / amp.read.rows)
        assert amp.read.gaussian
    cosmic = model.cosmic
    expected_hits = ccd.COSMIC_RAYS_PER_PX_S * cosmic.area_px * cosmic.exptime_s
    assert abs(cosmic.hits - expected_hits) < 3 * math.sqrt(expected_hits) + 1
    assert len(cosmic.start) - 1 >= 1 and max(np.diff(cosmic.start)) > 1  # tracks, not only single pixels


def test_pooled_cosmic_rate_matches_the_truth(one_amp, four_amps):
    """Both sessions together: the fitted rate within 3 Poisson sigma of the generator's."""
    hits = sum(m.cosmic.hits for _, m in (one_amp, four_amps))
    exposure = sum(m.cosmic.area_px * m.cosmic.exptime_s for _, m in (one_amp, four_amps))
    expected = ccd.COSMIC_RAYS_PER_PX_S * exposure
    assert abs(hits - expected) < 3 * math.sqrt(expected)


def test_model_round_trips_through_json(four_amps):
    import json

    _, model = four_amps
    again = NoiseModel.from_attrs(json.loads(json.dumps(model.to_attrs())))
    assert again == model
    attrs = model.to_attrs()
    for key in ("gain_e_per_adu", "gain_ptc_e_per_adu", "read_noise_e", "row_noise_e", "cosmic_rate_per_px_s"):
        assert np.isfinite(attrs[key])


def test_non_gaussian_read_noise_is_detected_and_reproduced():
    rng = np.random.default_rng(5)
    rows, cols = 2048, 32
    gaussian = np.rint(1000 + 6.0 * rng.standard_normal((rows, cols)))
    assert noise_fit.fit_read_noise(gaussian).gaussian
    heavy = np.rint(1000 + 6.0 / math.sqrt(2) * rng.laplace(size=(rows, cols)))
    read = noise_fit.fit_read_noise(heavy)
    assert not read.gaussian
    assert read.excess_kurtosis == pytest.approx(3.0, abs=0.5)
    assert read.white_adu == pytest.approx(6.0, rel=0.03)
    # drawn through the synthesis: no signal, no row noise, so syn is the white noise, rounded
    from dataclasses import replace

    from pipeline.steps.noise_fit import CosmicFit
    from pipeline.steps.noise_model import AmpModel

    shape = (512, 512)
    quiet = replace(read, row_adu=0.0)
    amp = AmpModel("SCI", (0, 512, 0, 512), 1.8, None, 1000.25, 65535.0, quiet)
    model = NoiseModel(shape, 60.0, 60.0, 1.8, (amp,), CosmicFit(0.0, 0.0, 0, 1, 60.0, (0,), (), (), ()))
    zeros = np.zeros(shape, np.float32)
    patch = Patch(0, 0, zeros, np.ones(shape, np.float32), zeros, zeros, np.full(shape, 1000, np.uint16))
    drawn = synthesize_patch(patch, model, SynthKey(1, "s", (0,)))
    assert stats.kurtosis(drawn.ravel()) == pytest.approx(read.excess_kurtosis, abs=0.5)
    assert drawn.std() == pytest.approx(6.0, rel=0.03)


def test_gain_disagreement_warning():
    assert noise_fit.gain_disagreement(1.8, 1.85) is None
    assert noise_fit.gain_disagreement(1.8, None) is None
    message = noise_fit.gain_disagreement(1.8, 2.1)
    assert message is not None and "+16.7%" in message


def test_row_noise_fit_on_white_overscan_is_zero():
    rng = np.random.default_rng(2)
    read = noise_fit.fit_read_noise(np.rint(1000 + 6.0 * rng.standard_normal((1024, 32))))
    floor_adu2 = 6.0**2 / 32  # white variance of a row mean
    assert read.row_adu**2 < 3 * math.sqrt(2 / 1024) * floor_adu2


def _checks(frame, obs, use, edges, os_stats):
    """The realism figures of ``frame`` (ADU): variance per flux bin about the truth relative to
    os's, row power relative to os's, bias and dark (hot pixel) structure slopes."""
    session = obs.session
    expected = obs.expected_os_adu
    var = realism.binned_variance(frame - expected, expected, use, edges).variance_adu2
    rows = realism.row_power(frame - expected, use).row_var_adu2
    clean = obs.mean_adu * session.flat
    bias = session.bias_e / session.gain_map
    hot = session.hot_pixels & np.isfinite(obs.mean_adu)
    dark = session.dark_e_per_s * session.exptime_s / session.gain_map
    return {
        "variance": float(np.max(np.abs(var / os_stats["var"] - 1))),
        "row_power": rows / os_stats["rows"] - 1,
        "bias_slope": realism.structure_slope(frame - clean, bias, use),
        "dark_slope": realism.structure_slope(frame - clean, dark, hot, per_row=False),
    }


def test_realism_against_os_and_truth_with_baselines(one_amp, capsys):
    obs, model = one_amp
    session = obs.session
    use = obs.background & np.isfinite(obs.mean_adu)
    expected = obs.expected_os_adu
    edges = realism.flux_bin_edges(expected, use, 6)
    os_stats = {
        "var": realism.binned_variance(obs.os_adu - expected, expected, use, edges).variance_adu2,
        "rows": realism.row_power(obs.os_adu - expected, use).row_var_adu2,
    }
    truth_var = realism.binned_variance(np.zeros_like(expected), expected, use, edges, obs.truth_variance_adu2)
    # the session's os itself agrees with the truth (the check can tell)
    assert np.max(np.abs(os_stats["var"] / truth_var.variance_adu2 - 1)) < 0.03
    truth_rows = (ROW_NOISE_E / session.gain_e_per_adu) ** 2
    os_figures = _checks(obs.os_adu, obs, use, edges, os_stats)

    ours = [
        _checks(synthesize_patch(obs.patch(), model, SynthKey(3, "s", (r,))), obs, use, edges, os_stats)
        for r in range(REALIZATIONS)
    ]
    rng = np.random.default_rng(9)
    read = model.amps[0]
    authors = _checks(
        authors_model(obs.mean_adu, session.flat, session.dark_e_per_s, session.bias_e, session.gain_e_per_adu,
                      session.exptime_s, read.read_noise_e, read.row_noise_e, rng),
        obs, use, edges, os_stats,
    )  # fmt: skip
    plain = _checks(
        gaussian_poisson_model(obs.mean_adu, session.gain_e_per_adu, session.rdnoise_e, rng), obs, use, edges, os_stats
    )
    unsubtracted = _checks(
        synthesize_patch(obs.patch(), model, SynthKey(3, "s", (0,)), subtract_base_noise=False),
        obs, use, edges, os_stats,
    )  # fmt: skip
    with capsys.disabled():
        print("\nrealism (|var/os - 1| max over flux bins, row power / os - 1, bias slope, dark slope)")
        print(f"  os     {os_figures}")
        for r, figures in enumerate(ours):
            print(f"  syn[{r}] {figures}")
        print(f"  no base-noise subtraction {unsubtracted}")
        print(f"  authors {authors}")
        print(f"  gaussian+poisson {plain}")

    for figures in ours:
        assert figures["variance"] < 0.05
        for pattern in ("bias_slope", "dark_slope"):  # within 3 sigma of os's
            (ours_slope, ours_err), (os_slope, os_err) = figures[pattern], os_figures[pattern]
            assert abs(ours_slope - os_slope) < 3 * math.hypot(ours_err, os_err)
    mean_rows = np.mean([f["row_power"] for f in ours])
    assert abs(mean_rows) < 0.10  # realizations averaged: within 10% of os's row power
    assert abs((1 + mean_rows) * os_stats["rows"] / truth_rows - 1) < 0.10

    # each baseline fails at least one check, and the failures are the expected ones
    assert unsubtracted["variance"] > 0.05  # the stack's own 1/N variance counted twice
    assert plain["variance"] > 0.05 and abs(plain["row_power"]) > 0.5
    assert abs(plain["dark_slope"][0]) < 3 * plain["dark_slope"][1]  # no hot pixels
    assert authors["variance"] > 0.05


def test_realism_without_truth_uses_the_stacks_own_noise(one_amp):
    """What ``skyprep noise`` can do on real data: about the stack-based expectation, os minus the
    stack's own variance and syn plus it agree within 5% per flux bin."""
    obs, model = one_amp
    s = obs.session
    use = obs.background & np.isfinite(obs.mean_adu) & (obs.count >= 2)
    expected = realism.expected_os_adu(
        obs.mean_adu, s.flat, s.dark_e_per_s, s.bias_e, s.gain_map, s.exptime_s, s.gain_e_per_adu
    )
    base = realism.base_variance_adu2(obs.std_adu, obs.count, s.flat)
    signal = realism.smooth_signal_adu(expected, use)
    edges = realism.flux_bin_edges(signal, use, 6)
    os_var = realism.binned_variance(obs.os_adu - expected, signal, use, edges, -base).variance_adu2
    syn = synthesize_patch(obs.patch(), model, SynthKey(4, "s", (0,)))
    syn_var = realism.binned_variance(syn - expected, signal, use, edges, base).variance_adu2
    assert np.max(np.abs(syn_var / os_var - 1)) < 0.05


def _small_patch(size=192, seed=0):
    rng = np.random.default_rng(seed)
    shape = (size, size)
    return Patch(0, 0, (300 + 50 * rng.random(shape)).astype(np.float32), np.ones(shape, np.float32),
                 np.full(shape, 0.01, np.float32), np.zeros(shape, np.float32), np.full(shape, 8, np.uint16))  # fmt: skip


def test_synthesis_is_deterministic_and_local(one_amp):
    _, model = one_amp
    size = 192
    patch = _small_patch(size)
    small = NoiseModel((size, size), model.exptime_s * 50, model.darktime_s, model.gain_nominal_e_per_adu, tuple(
        type(a)(a.name, (0, size, 0, size), a.gain_e_per_adu, a.gain_ptc, a.overscan_adu, a.saturate_adu, a.read)
        for a in model.amps[:1]), model.cosmic)  # fmt: skip
    key = SynthKey(7, "session-a", (0,))
    whole = synthesize_patch(patch, small, key)
    np.testing.assert_array_equal(whole, synthesize_patch(patch, small, key))
    assert not np.array_equal(whole, synthesize_patch(patch, small, SynthKey(7, "session-a", (1,))))
    assert not np.array_equal(whole, synthesize_patch(patch, small, SynthKey(7, "session-b", (0,))))
    assert not np.array_equal(whole, synthesize_patch(patch, small, SynthKey(8, "session-a", (0,))))
    # strips (and patches), each drawn alone, are the crop of the whole frame
    strips = []
    for y0 in range(0, size, 48):
        rows = slice(y0, y0 + 48)
        strip = Patch(y0, 0, patch.mean_adu[rows], patch.flat[rows], patch.dark_e_per_s[rows], patch.bias_e[rows],
                      patch.count[rows])  # fmt: skip
        strips.append(synthesize_patch(strip, small, key))
    np.testing.assert_array_equal(np.concatenate(strips), whole)
    window = (slice(37, 101), slice(50, 170))
    inner = Patch(37, 50, *(getattr(patch, f)[window] for f in ("mean_adu", "flat", "dark_e_per_s", "bias_e", "count")))
    np.testing.assert_array_equal(synthesize_patch(inner, small, key), whole[window])
    # quantised like the raw frame: integer ADU before the overscan level is removed
    raw = whole + small.amps[0].overscan_adu
    assert np.allclose(raw, np.rint(raw), atol=1e-3)
    # cosmic rays arrived (exposure scaled up 50x so a small frame has several)
    assert (whole - patch.mean_adu > 500).sum() >= 3


@pytest.mark.parametrize("lam", [3.0, 25.0, 400.0, 5000.0])
def test_shot_noise_has_the_poisson_moments(lam):
    """No read noise, gain 1: ``syn`` is the shot noise (exact below 30 e-, Cornish-Fisher above)."""
    from dataclasses import replace

    from pipeline.steps.noise_fit import CosmicFit, fit_read_noise
    from pipeline.steps.noise_model import AmpModel

    read = replace(fit_read_noise(np.random.default_rng(0).normal(1000, 3, (64, 16))), white_adu=0.0, row_adu=0.0)
    shape = (400, 400)
    amp = AmpModel("SCI", (0, 400, 0, 400), 1.0, None, 0.0, 1e9, read)
    model = NoiseModel(shape, 1.0, 1.0, 1.0, (amp,), CosmicFit(0.0, 0.0, 0, 1, 1.0, (0,), (), (), ()))
    zeros = np.zeros(shape, np.float32)
    patch = Patch(0, 0, np.full(shape, lam, np.float32), np.ones(shape, np.float32), zeros, zeros,
                  np.full(shape, 10, np.uint16))  # fmt: skip
    drawn = synthesize_patch(patch, model, SynthKey(2, "s", (0,)), subtract_base_noise=False).ravel().astype(float)
    n = drawn.size
    assert np.all(drawn == np.rint(drawn))
    assert abs(drawn.mean() - lam) < 5 * math.sqrt(lam / n)
    assert abs(drawn.var() / lam - 1) < 5 * math.sqrt(2 / n) + 0.5 / lam
    assert abs(stats.skew(drawn) - 1 / math.sqrt(lam)) < 5 * math.sqrt(6 / n) + 0.05 / math.sqrt(lam)


def test_a_gain_far_from_the_header_is_warned_about(one_amp):
    from dataclasses import replace

    from pipeline.io.provenance import Provenance
    from pipeline.steps.noise_model import assemble

    _, model = one_amp
    amp = model.amps[0]
    off = replace(amp.gain_ptc, gain_e_per_adu=amp.gain_e_per_adu * 1.12)

    class _Amp:  # what assemble reads of a pipeline Amplifier
        gain_e_per_adu, saturate_adu = amp.gain_e_per_adu, amp.saturate_adu
        ref = type("Ref", (), {"name": "SCI", "label": "raw.fits[SCI]"})()

    readout = noise_fit.AmpReadout(amp.read, amp.overscan_adu)
    warned = assemble([_Amp()], [amp.region], [readout], [off], model.cosmic, model.shape, 60.0, 60.0, 1.8)
    assert len(warned.warnings) == 1 and "+12.0%" in warned.warnings[0]
    assert assemble([_Amp()], [amp.region], [readout], [amp.gain_ptc], model.cosmic, model.shape, 60.0, 60.0,
                    1.8).warnings == ()  # fmt: skip
    provenance = Provenance([], [], {}, {}, {}, warned.to_attrs())
    assert provenance.warnings() == list(warned.warnings)
    assert warned.to_attrs()["warnings"] == list(warned.warnings)


def test_skew_and_kurtosis_are_scipys():
    rng = np.random.default_rng(3)
    for values in (rng.normal(0, 1, 5000), rng.exponential(2.0, 5000).astype(np.float32), rng.uniform(-1, 1, 999)):
        skew, kurt = noise_fit._skew_kurtosis(values)
        assert skew == pytest.approx(stats.skew(values.astype(np.float64)), rel=1e-9, abs=1e-12)
        assert kurt == pytest.approx(stats.kurtosis(values.astype(np.float64)), rel=1e-9, abs=1e-12)
