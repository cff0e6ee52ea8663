"""Physical sanity of the calibration inputs: values no working camera produces are refused.

Each check is a pure function returning the problems it found (empty when sane), each naming
the check, the file and the reason. The session refuses any problem unless its check is listed
in ``SanityParams.warn_only``; then it is recorded in the session's attributes as a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .params import Check, SanityParams


@dataclass(frozen=True)
class Problem:
    """One failed check: which, in which file, and why."""

    check: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason} ({self.check} check)"


def positive(check: Check, path: str, name: str, value: float, unit: str) -> list[Problem]:
    """``value`` (a header quantity such as the gain) must be finite and > 0."""
    if np.isfinite(value) and value > 0:
        return []
    return [Problem(check, path, f"{name} = {value} {unit} is not positive")]


def flat_problems(path: str, flat: np.ndarray, low_flat: float, params: SanityParams) -> list[Problem]:
    """A flat (normalised, unitless) whose median is outside ``params.flat_median`` or with too
    many dead pixels (not finite or ``<= low_flat``)."""
    values = np.asarray(flat, np.float64)
    finite = values[np.isfinite(values)]
    problems = []
    dead = 1.0 - np.count_nonzero(finite > low_flat) / max(values.size, 1)
    if dead > params.flat_dead_fraction:
        problems.append(Problem("flat_dead_fraction", path, f"{dead:.1%} of the flat's pixels are dead "
                                f"(<= {low_flat} or not finite; at most {params.flat_dead_fraction:.1%} allowed)"))  # fmt: skip
    low, high = params.flat_median
    median = float(np.median(finite)) if finite.size else float("nan")
    if not low <= median <= high:
        problems.append(Problem("flat_median", path, f"flat median {median:.4g} is outside [{low}, {high}]"))
    return problems


def dark_problems(path: str, dark_e_per_s: np.ndarray, params: SanityParams) -> list[Problem]:
    """A dark (e-/s) whose median lies significantly below zero (``params.dark_negative_sigma``
    standard errors of the median, from the pixels' robust spread)."""
    values = np.asarray(dark_e_per_s, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [Problem("dark_negative", path, "the dark has no finite pixel")]
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    error = 1.2533 * spread / np.sqrt(values.size)  # standard error of the median
    if median < -params.dark_negative_sigma * error:
        return [Problem("dark_negative", path, f"dark median {median:.4g} e-/s is significantly negative "
                        f"({params.dark_negative_sigma} x its standard error {error:.3g})")]  # fmt: skip
    return []


def triage(problems: list[Problem], params: SanityParams) -> list[str]:
    """The warnings to record (problems of ``warn_only`` checks); raise :class:`InputError`
    naming the file of the first refused problem, listing every refused one."""
    refused = [p for p in problems if p.check not in params.warn_only]
    if refused:
        others = "; ".join(str(p) for p in refused[1:])
        raise InputError(refused[0].path, f"{refused[0].reason} ({refused[0].check} check)"
                         + (f"; also {others}" if others else "")
                         + "; to accept it anyway add the check to sanity.warn_only")  # fmt: skip
    return [str(p) for p in problems]


def header_problems(path: str, gains_e_per_adu: list[tuple[str, float]], exptime_s: float,
                    darktime_s: float) -> list[Problem]:  # fmt: skip
    """The raw frame's header quantities: every gain (``(source, e-/ADU)``), exposure and dark time (s)."""
    found = [p for source, gain in gains_e_per_adu for p in positive("gain", source, "GAIN", gain, "e-/ADU")]
    found += positive("exptime", path, "EXPTIME", exptime_s, "s")
    return found + positive("exptime", path, "DARKTIME", darktime_s, "s")


def master_warnings(header_warnings: list[str], flat: np.ndarray, dark_e_per_s: np.ndarray, flat_path: str,
                    dark_path: str, low_flat: float, params: SanityParams) -> list[str]:  # fmt: skip
    """Every sanity warning of a session, the masters' added to ``header_warnings``; raise
    :class:`InputError` when the flat or the dark is refused."""
    found = flat_problems(flat_path, flat, low_flat, params) + dark_problems(dark_path, dark_e_per_s, params)
    return header_warnings + triage(found, params)
