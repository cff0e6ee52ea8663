"""Habits CI enforces beyond ruff: no performance figures in code comments or docstrings.

Measured figures (timings, speed-ups, memory, throughput) go stale in code; they live in
benchmarks/README.md and docs/, with the command that reproduces them. Code says what it does
and may point there ("see benchmarks/README.md, FITS reading").
"""

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("pipeline", "tests", "benchmarks")

_NUMBER = r"(?<![\w.])~?\d+(?:\.\d+)?(?:\s*(?:-|to)\s*~?\d+(?:\.\d+)?)?"
_MORE_OR_LESS = r"(?:faster|slower|quicker|smaller|larger|bigger|wider|cheaper|costlier|more|less|fewer)\b"
_BYTES = r"[kKMGT]i?B\b"
_WORK = rf"(?:{_BYTES}|[kMG]?(?:px|pixels?)|patches|reads|writes|frames|files|sessions|tasks|rows|tiles|chunks|calls)"
# What a figure is compared with: a word of more or less, or another tool's time ("N.Nx one astropy read").
_TOOLS = r"(?:astropy|astroscrappy|ccdproc|cfitsio|fitsio|numpy|zarr)"
_AGAINST = rf"(?:{_MORE_OR_LESS}|the (?:time|cost)|as (?:fast|slow)|one\b|\w+'s\b|{_TOOLS})"
FIGURE = re.compile(
    "|".join(
        [
            # a duration (not a period: "sampled every N ms" is a setting)
            rf"(?<!every )(?<!every ~){_NUMBER}\s*(?:ns|µs|us|ms|s|secs?|seconds?|mins?|minutes?|hours?)\b",
            # memory or disk measured ("~N MB", "peaks below N GB", "N MB more"), not a size chosen ("N MiB blocks")
            rf"(?:~|\b(?:about|around|under|below|up to|at most|peak\w*(?:\s+(?:of|at|below))?)\s+)\d+(?:\.\d+)?\s*{_BYTES}",
            rf"{_NUMBER}\s*{_BYTES}\s+(?:more|less|each|of RAM|of memory|resident|peak|RSS|saved)\b",
            # a ratio of times: "Nx faster", "N times the time", "N.Nx one astropy read", "(N.Nx)", "reach Nx"
            rf"{_NUMBER}\s*[x×](?:\s+{_AGAINST}|\s*[(),.;:]|\s*$)",
            rf"{_NUMBER}\s+times\s+{_AGAINST}",
            rf"{_NUMBER}\s*%\s*{_MORE_OR_LESS}",  # N% smaller
            rf"{_NUMBER}\s*{_WORK}\s*(?:/\s*s\b|per second)",  # a throughput: N patches/s, N MB per second
            r"speed-?ups?\s+(?:of\s+)?~?\d",
        ]
    ),
    re.IGNORECASE,
)


def prose(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every comment and docstring (any statement that is only a string) of ``path``."""
    source = path.read_text()
    found = [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            found += [(node.lineno + i, line) for i, line in enumerate(node.value.value.splitlines())]
    return found


def figures(path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line}: {text.strip()}" for line, text in prose(path) if FIGURE.search(text)]


def _sources() -> list[Path]:
    paths = sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))
    assert len(paths) > 50 and ROOT / "pipeline" / "graph.py" in paths, paths
    return paths


def test_no_performance_figures_in_comments_or_docstrings():
    found = [hit for path in _sources() for hit in figures(path)]
    assert not found, (
        "performance figures belong in benchmarks/README.md or docs/ (with the command that measures them), "
        "not in code; a physical quantity goes in a named constant with its unit in the name:\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    "text",
    [
        "about 0.2 s in a new process",
        "an open costs 0.4-2 ms",
        "writes 1.5-2x faster and is 8% smaller",
        "peaks at ~300 MB more",
        "25 times faster than astroscrappy",
        "at least 2000 patches/s",
        "a speed-up of 3 over ccdproc",
        "peaks below 1.5 GB, ~70 kB each",
        "in 0.65x cfitsio's time",
        "a cutout cannot reach 20x (it decodes whole rows)",
        "float32 sorts 2x wider",
    ],
)
def test_the_scan_finds_figures_in_comments_and_docstrings(tmp_path, text):
    path = tmp_path / "module.py"
    path.write_text(f'"""{text}"""\n\nFIGURE_FREE = "{text}"\n\n\ndef f():\n    # {text}\n    return 1\n')
    assert sorted(line for line, found in prose(path) if FIGURE.search(found)) == [1, 7]  # not the constant


@pytest.mark.parametrize(
    "text",
    [
        "a 2 x 2 box, 3 x 3 median, 7 x 7 grid",
        "1.4826 x median absolute deviation",
        "hot pixels of 0.3-30 e-/s, a dark of 10 electron/s",
        "3 sessions, 128 px frames, 16 strips, 0x1f",
        "see benchmarks/README.md, FITS reading",
        "read in 1 MiB blocks; 256 objects of 64 KiB; 1 GiB per job; the cube is 2.5 GiB",
        "sampled every 50 ms",
        "two frames made 3x noisier, the exposure scaled up 50x so a frame has several",
        "a 2 x 2 subsampled frame; 9 x 9 pixels.",
        "5 times the sky rms; called 3 times, then 4 times",
    ],
)
def test_the_scan_lets_plain_numbers_through(text):
    assert not FIGURE.search(text)
