"""The store contract is defined once (``pipeline.io.contract``); the README's table and
attribute list say the same."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from pipeline.io.contract import CONTRACT, STORE_VERSION, VARIABLES, Presence, markdown_table
from pipeline.io.metadata import SessionAttrs

README = Path(__file__).resolve().parents[1] / "README.md"
HEADER = "| variable | dims | dtype | units | sessions | FITS export | meaning |"


def _section() -> str:
    text = README.read_text()
    match = re.search(r"^## The store contract \(v(\d+)\)\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README has no '## The store contract (vN)' section"
    assert int(match[1]) == STORE_VERSION
    return match[2]


def _readme_rows() -> list[list[str]]:
    lines = _section().splitlines()
    start = lines.index(HEADER)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    assert rows, "the contract table has no rows"
    return rows


def test_readme_table_agrees_with_the_contract_module():
    rows = _readme_rows()
    assert [row[0].strip("`") for row in rows] == [v.name for v in VARIABLES]
    for (name, dims, dtype, units, sessions, fits, meaning), variable in zip(rows, VARIABLES):
        assert tuple(dims.split(", ")) == variable.dims, name
        assert np.dtype(dtype) == np.dtype(variable.dtype), name
        assert units == variable.units, name
        assert Presence(sessions) is variable.presence, name
        found = re.fullmatch(r"`(\w+)` \((\w+)\)", fits)
        if variable.fits is None:
            assert fits == "", name
        else:
            assert found and (found[1], found[2]) == (variable.fits.extname, variable.fits.compression), name
        assert meaning == variable.meaning(), name


def test_markdown_table_is_the_readme_table():
    assert markdown_table() in _section()


def test_readme_lists_every_session_attribute():
    text = _section()
    listed = text[text.index("Session attributes:") :]
    missing = [f.name for f in dataclasses.fields(SessionAttrs) if f"`{f.name}`" not in listed]
    assert not missing


def test_rows_are_consistent():
    assert len(CONTRACT) == len(VARIABLES)
    for variable in VARIABLES:
        assert variable.dims[-2:] == ("y", "x") or variable.presence is Presence.E91, variable.name
        if variable.flags:
            assert np.issubdtype(variable.dtype, np.unsignedinteger) and variable.units == "", variable.name
        if variable.fits:
            assert variable.fits.bunit == variable.units or (variable.flags or variable.units == "1"), variable.name
