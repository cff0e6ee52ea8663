"""Amplifier geometry, overscan, trim and mosaic by DETSEC against a hand-built detector."""

import numpy as np
import pytest
from astropy.io import fits

from pipeline.errors import InputError
from pipeline.io.fits_headers import ImageRef
from pipeline.io.keywords import MissingKeyword, profiles
from pipeline.steps.amplifiers import Amplifier, amp_value_map, detector_shape, mosaic, reduce_amp
from pipeline.steps.masks import Flag
from pipeline.steps.overscan import OverscanParams

GENERIC = profiles()["generic"]


def _amp(detsec, shape=(4, 6), nover=2, name="im", **extra):
    ny, nx = shape
    header = fits.Header(
        {
            "GAIN": 2.0,
            "RDNOISE": 5.0,
            "SATURATE": 60000,
            "BIASSEC": f"[{nx + 1}:{nx + nover},1:{ny}]",
            "DATASEC": f"[1:{nx},1:{ny}]",
            "DETSEC": detsec,
            **extra,
        }
    )
    for key in [k for k, v in extra.items() if v is None]:
        del header[key]
    return Amplifier.from_header(ImageRef("x.fits", 1, name, (ny, nx + nover), np.dtype(np.uint16), 1, header), GENERIC)


def test_four_flipped_amplifiers_assemble_into_the_detector():
    detector = np.arange(8 * 12, dtype=np.float64).reshape(8, 12)
    detsecs = ["[1:6,1:4]", "[12:7,1:4]", "[1:6,8:5]", "[12:7,8:5]"]
    amps = [_amp(d) for d in detsecs]
    pieces = []
    for amp in amps:
        ty, tx = amp.target
        data = amp.detsec.orient(detector[ty, tx])  # what the amplifier read out, in readout order
        raw = np.concatenate([data + 100.0, np.full((4, 2), 100.0)], axis=1)
        reduced, flags = reduce_amp(raw, amp, OverscanParams())
        pieces.append(reduced)
        assert not flags.any()
    np.testing.assert_array_equal(mosaic(pieces, amps), detector)
    gain = amp_value_map(amps, [1.0, 2.0, 3.0, 4.0], 2, 6)
    np.testing.assert_array_equal(gain[:, [0, 11]], [[1, 2], [1, 2], [3, 4], [3, 4]])


def test_saturation_flagged_on_raw_values_before_overscan():
    amp = _amp("[1:6,1:4]", MAXLIN=50000)
    raw = np.full((4, 8), 1000.0)
    raw[1, 2], raw[2, 3] = 60000, 55000
    _, flags = reduce_amp(raw, amp, OverscanParams())
    assert flags[1, 2] == Flag.SATURATED | Flag.NONLINEAR
    assert flags[2, 3] == Flag.NONLINEAR
    assert flags.sum() == flags[1, 2] + flags[2, 3]


def test_missing_detsec_is_rebuilt_and_missing_gain_is_a_clear_error():
    assert _amp(None).target == (slice(0, 4), slice(0, 6))
    with pytest.raises(MissingKeyword, match=r"x.fits\[im\].*Detector.Amp.gain.*GAIN"):
        _amp("[1:6,1:4]", GAIN=None)


def test_sections_outside_the_array_are_refused():
    with pytest.raises(ValueError, match="BIASSEC"):
        _amp("[1:6,1:4]", BIASSEC="[7:9,1:4]")
    with pytest.raises(ValueError, match="DETSEC"):
        _amp("[1:5,1:4]")


def test_two_amplifiers_with_the_same_detsec_are_refused_by_name():
    amps = [_amp("[1:6,1:4]", name="AMP1"), _amp("[1:6,1:4]", name="AMP2")]
    with pytest.raises(InputError, match=r"overlap.*x.fits\[AMP1\] DETSEC \[1:6,1:4\] and x.fits\[AMP2\]"):
        detector_shape(amps)


def test_a_missing_detsec_rebuilt_onto_another_amplifier_is_refused():
    # the second amplifier's DATASEC starts at column 1 of its own array, so the rebuilt DETSEC
    # lands on the first amplifier: one quadrant would hold two amplifiers, one would be empty
    amps = [_amp("[1:6,1:4]", name="AMP1"), _amp(None, name="AMP2")]
    with pytest.raises(InputError, match=r"AMP2\] DETSEC \[1:6,1:4\] \(rebuilt from DATASEC\)"):
        detector_shape(amps)


def test_amplifiers_leaving_a_gap_are_refused_naming_the_empty_part():
    amps = [_amp(d, name=f"AMP{i}") for i, d in enumerate(["[1:6,1:4]", "[7:12,1:4]", "[1:6,5:8]"], 1)]
    with pytest.raises(InputError, match=r"24 detector px empty \(within \[7:12,5:8\].*AMP3"):
        detector_shape(amps)


def test_amplifiers_tiling_the_detector_give_its_box():
    amps = [_amp(d) for d in ["[12:7,8:5]", "[1:6,1:4]", "[7:12,1:4]", "[1:6,5:8]"]]
    assert detector_shape(amps) == (slice(0, 8), slice(0, 12))
