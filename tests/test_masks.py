"""The mask table of the documentation is the one the code uses."""

import re
from pathlib import Path

import pytest

from pipeline.steps.masks import Flag, cf_attrs

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (\d+) \| (\d+) \| `(\w+)` \|", re.M)


@pytest.mark.parametrize("doc", ["README.md", "docs/calibration.md"])
def test_documented_mask_table_matches_the_flags(doc):
    rows = [(int(b), int(v), name) for b, v, name in ROW.findall((ROOT / doc).read_text())]
    assert rows == [(f.value.bit_length() - 1, f.value, f.name.lower()) for f in Flag]


def test_cf_attributes_decode_every_flag():
    attrs = cf_attrs()
    assert attrs["flag_masks"] == [1 << k for k in range(len(Flag))]
    assert attrs["flag_meanings"].split() == [f.name.lower() for f in Flag]
