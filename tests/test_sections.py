import numpy as np
import pytest

from pipeline.io.sections import Section, detsec_from_datasec


def test_parse_and_slices_follow_iraf_convention():
    sec = Section.parse("[3:10, 5:6]")
    assert (sec.x1, sec.x2, sec.y1, sec.y2) == (3, 10, 5, 6)
    assert sec.slices == (slice(4, 6), slice(2, 10))
    assert sec.shape == (2, 8)
    assert str(sec) == "[3:10,5:6]"


def test_reversed_section_flips_orientation():
    sec = Section.parse("[10:1,1:2]")
    assert sec.flip_x and not sec.flip_y
    assert sec.slices == (slice(0, 2), slice(0, 10))
    a = np.arange(20).reshape(2, 10)
    np.testing.assert_array_equal(sec.orient(a), a[:, ::-1])
    both = Section.parse("[10:1,2:1]")
    np.testing.assert_array_equal(both.orient(a), a[::-1, ::-1])


@pytest.mark.parametrize("text", ["", "[1:2]", "1:2,3:4", "[0:5,1:2]", "[a:b,1:2]"])
def test_malformed_sections_are_refused(text):
    with pytest.raises(ValueError):
        Section.parse(text)


def test_detsec_rebuilt_from_datasec_and_binning():
    assert detsec_from_datasec(Section.parse("[1:1024,1:2048]")) == Section(1, 1024, 1, 2048)
    assert detsec_from_datasec(Section.parse("[1:512,1:1024]"), "2 2") == Section(1, 1024, 1, 2048)
