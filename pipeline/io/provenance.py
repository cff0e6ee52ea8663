"""What a session's computation found, as it is recorded when the session is marked complete:
input files with their SHA-256, registration records, agreement with the archive's products,
the arrays' checksums and the configuration."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..steps.noise_model import NoiseModel
from ..steps.params import SynthesisParams
from ..steps.register import Offset
from ..steps.synthesize import DRAW_VERSION
from .objects import ObjectPath, location


@dataclass(frozen=True)
class InputFile:
    """An input file: its path, size (bytes) and SHA-256 (hex)."""

    path: str
    bytes: int
    sha256: str


def input_file(path: Path | ObjectPath | str) -> InputFile:
    """Hash ``path``, a file or an object (read in 1 MiB blocks; an object by 8 MiB ranged GETs)."""
    where = location(path)
    digest = hashlib.sha256()
    with where.open(8 << 20) if isinstance(where, ObjectPath) else open(where, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    size = where.size() if isinstance(where, ObjectPath) else where.stat().st_size
    return InputFile(str(where), size, digest.hexdigest())


def input_files(paths: list[Path | ObjectPath | str]) -> list[InputFile]:
    """:func:`input_file` of every path, in order."""
    return [input_file(path) for path in paths]


@dataclass(frozen=True)
class Registration:
    """One e91 frame's registration record: measured offset (pixels) and the decision."""

    file: str
    dy: float
    dx: float
    quality: float
    ok: bool
    reason: str
    method: str
    note: str


NOISE_SUMMARY = ("gain_e_per_adu", "gain_ptc_e_per_adu", "read_noise_e", "row_noise_e", "cosmic_rate_per_px_s")


@dataclass(frozen=True)
class Provenance:
    """A session's provenance: the session attributes added when it is marked complete.

    ``reference_check``: per product (``os``, ``calib``), ``{median, robust_std, n}`` of the
    difference from the archive's product (ADU); ``array_sha256``: per array, the SHA-256 of its
    files; ``config``: the configuration as a dict; ``noise_model``: the fitted noise model
    (``NoiseModel.to_attrs``) and ``syn`` how ``syn`` was drawn (sessions with e91 frames)."""

    registration: list[Registration]
    inputs: list[InputFile]
    array_sha256: dict[str, str]
    reference_check: dict[str, dict[str, Any]]
    config: dict[str, Any]
    noise_model: dict[str, Any] | None = None
    syn: dict[str, Any] | None = None
    sanity_warnings: list[str] = dataclasses.field(default_factory=list)

    def attrs(self) -> dict[str, Any]:
        """The session attributes, ending with ``complete = true``."""
        return {
            "registration": [dataclasses.asdict(r) for r in self.registration],
            "inputs": [dataclasses.asdict(f) for f in self.inputs],
            "array_sha256": self.array_sha256,
            "reference_check": self.reference_check,
            **({"noise_model": self.noise_model} if self.noise_model is not None else {}),
            **({"syn": self.syn} if self.syn is not None else {}),
            "config": self.config,
            "sanity_warnings": self.sanity_warnings,
            "complete": True,
        }

    def warnings(self) -> list[str]:
        """What the user should know about a session that completed (the noise model's warnings)."""
        return list((self.noise_model or {}).get("warnings", []))

    def index_fields(self) -> dict[str, Any]:
        """What the root index records of it, besides the session's identity."""
        found = {
            "registration_failures": sum(not r.ok for r in self.registration),
            "reference_check": self.reference_check,
        }
        if self.noise_model is not None:
            found["noise"] = {key: self.noise_model[key] for key in NOISE_SUMMARY}
        return found


@dataclass(frozen=True)
class SessionSummary:
    """The small results computed with a session's arrays: the e91 frames' offsets, the input
    files, the agreement with the archive's products (per product, ``robust_difference``) and,
    with e91 frames, the noise model and the synthesis parameters ``syn`` was drawn with."""

    offsets: list[Offset]
    inputs: list[InputFile]
    reference_check: dict[str, dict[str, Any]]
    noise_model: NoiseModel | None = None
    synthesis: SynthesisParams | None = None
    sanity_warnings: list[str] = dataclasses.field(default_factory=list)  # checks downgraded by sanity.warn_only

    def provenance(self, files: list[str], array_sha256: dict[str, str], config: dict[str, Any]) -> Provenance:
        """The provenance, with the e91 ``files`` (names, in frame order), the written arrays'
        SHA-256 and the configuration."""
        registration = [Registration(name, **dataclasses.asdict(o)) for name, o in zip(files, self.offsets)]
        model = None if self.noise_model is None else self.noise_model.to_attrs()
        syn = None
        if model is not None and self.synthesis is not None and self.synthesis.realizations:
            syn = syn_record(self.synthesis)
        return Provenance(
            registration,
            self.inputs,
            array_sha256,
            self.reference_check,
            config,
            model,
            syn,
            self.sanity_warnings,
        )


def syn_record(params: SynthesisParams) -> dict[str, Any]:
    """The ``syn`` session attribute: how the stored realizations were drawn, with the draw's
    version (a record of another version, or of none, the first generator's, is stale)."""
    return {
        "realizations": params.realizations,
        "seed": params.seed,
        "subtract_base_noise": params.subtract_base_noise,
        "draw_version": DRAW_VERSION,
    }
