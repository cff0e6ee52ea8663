"""IRAF image sections (``[x1:x2,y1:y2]``: 1-based, inclusive, x first) and their numpy slices."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")


@dataclass(frozen=True)
class Section:
    """A rectangular section in IRAF convention; ``x1 > x2`` (or ``y1 > y2``) means flipped."""

    x1: int
    x2: int
    y1: int
    y2: int

    @classmethod
    def parse(cls, text: str) -> Section:
        """Parse ``'[x1:x2,y1:y2]'``; raise ``ValueError`` naming the text when malformed."""
        match = _SECTION.match(str(text).strip())
        if not match:
            raise ValueError(f"not an IRAF section: {text!r} (expected '[x1:x2,y1:y2]')")
        x1, x2, y1, y2 = (int(v) for v in match.groups())
        if min(x1, x2, y1, y2) < 1:
            raise ValueError(f"IRAF sections are 1-based, got {text!r}")
        return cls(x1, x2, y1, y2)

    def __str__(self) -> str:
        return f"[{self.x1}:{self.x2},{self.y1}:{self.y2}]"

    @property
    def flip_x(self) -> bool:
        return self.x1 > self.x2

    @property
    def flip_y(self) -> bool:
        return self.y1 > self.y2

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) in pixels."""
        return abs(self.y2 - self.y1) + 1, abs(self.x2 - self.x1) + 1

    @property
    def slices(self) -> tuple[slice, slice]:
        """numpy ``(y, x)`` slices covering the section, ignoring orientation."""
        y0, y1 = sorted((self.y1, self.y2))
        x0, x1 = sorted((self.x1, self.x2))
        return slice(y0 - 1, y1), slice(x0 - 1, x1)

    def orient(self, array):
        """Flip ``array`` (last two axes y, x) so it reads in this section's orientation."""
        if self.flip_y:
            array = array[..., ::-1, :]
        if self.flip_x:
            array = array[..., :, ::-1]
        return array


def detsec_from_datasec(datasec: Section, ccdsum: str = "1 1") -> Section:
    """Rebuild a missing ``DETSEC`` from ``DATASEC`` and ``CCDSUM`` (binning ``'bx by'``)."""
    bx, by = (int(v) for v in str(ccdsum).split())
    ny, nx = datasec.shape
    x0 = (min(datasec.x1, datasec.x2) - 1) * bx + 1
    y0 = (min(datasec.y1, datasec.y2) - 1) * by + 1
    return Section(x0, x0 + nx * bx - 1, y0, y0 + ny * by - 1)
