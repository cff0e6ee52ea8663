"""Physical sanity of calibration inputs: impossible values are refused with the reason."""

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.errors import InputError
from pipeline.steps.params import CHECKS, SanityParams
from pipeline.steps.sanity import dark_problems, flat_problems, positive, triage

PARAMS = SanityParams()


@pytest.mark.parametrize("value", [0.0, -1.5, float("nan"), float("inf")])
def test_a_gain_that_is_not_positive_is_a_problem(value):
    (problem,) = positive("gain", "raw.fits[im1]", "GAIN", value, "e-/ADU")
    assert problem.check == "gain" and f"GAIN = {value} e-/ADU is not positive" in str(problem)
    assert positive("gain", "raw.fits[im1]", "GAIN", 1.8, "e-/ADU") == []


def test_a_sane_flat_passes_and_an_all_zero_or_mostly_dead_flat_does_not():
    rng = np.random.default_rng(0)
    flat = rng.normal(1.0, 0.02, (64, 64))
    assert flat_problems("f.fits", flat, 0.2, PARAMS) == []
    checks = {p.check for p in flat_problems("f.fits", np.zeros((64, 64)), 0.2, PARAMS)}
    assert checks == {"flat_median", "flat_dead_fraction"}
    flat[:, :10] = np.nan  # 15.6 % dead: median still fine
    (problem,) = flat_problems("f.fits", flat, 0.2, PARAMS)
    assert problem.check == "flat_dead_fraction" and "15.6% of the flat's pixels are dead" in problem.reason
    assert [p.check for p in flat_problems("f.fits", np.full((8, 8), 40000.0), 0.2, PARAMS)] == ["flat_median"]


def test_a_dark_is_refused_only_when_significantly_negative():
    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, 0.5, (64, 64))  # e-/s, median within noise of zero
    assert dark_problems("d.fits", noise, PARAMS) == []
    assert dark_problems("d.fits", noise + 0.01, PARAMS) == []
    (problem,) = dark_problems("d.fits", noise - 0.2, PARAMS)  # about 25 standard errors below zero
    assert problem.check == "dark_negative" and "significantly negative" in problem.reason
    assert dark_problems("d.fits", np.zeros((8, 8)), PARAMS) == []
    assert [p.check for p in dark_problems("d.fits", np.full((8, 8), -3.0), PARAMS)] == ["dark_negative"]


def test_triage_refuses_naming_the_file_unless_the_check_is_downgraded():
    problems = [*positive("gain", "raw.fits[im1]", "GAIN", 0.0, "e-/ADU"),
                *flat_problems("flat.fits", np.zeros((4, 4)), 0.2, PARAMS)]  # fmt: skip
    with pytest.raises(
        InputError, match=r"^raw.fits\[im1\]: GAIN = 0.0 e-/ADU is not positive \(gain check\); also flat"
    ):
        triage(problems, PARAMS)
    relaxed = SanityParams(warn_only=("gain", "flat_median", "flat_dead_fraction"))
    warnings = triage(problems, relaxed)
    assert len(warnings) == 3 and warnings[0].startswith("raw.fits[im1]: GAIN = 0.0")
    assert triage([], PARAMS) == []


def test_the_switch_is_a_configuration_setting_of_known_checks(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sanity: {warn_only: [flat_dead_fraction, dark_negative]}\n")
    assert load_config(path).sanity.warn_only == ("flat_dead_fraction", "dark_negative")
    path.write_text("sanity: {warn_only: [gian]}\n")
    with pytest.raises(ConfigError, match="warn_only"):
        load_config(path)
    assert set(CHECKS) == {"gain", "exptime", "flat_median", "flat_dead_fraction", "dark_negative"}
