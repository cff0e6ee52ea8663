"""A session's fitted noise model: typed values and their JSON form (the ``noise_model`` attribute).

Per amplifier: the header gain and the photon-transfer-curve gain (e-/ADU), the read noise
(``ReadNoise``, raw ADU), the overscan level the pipeline subtracted and the raw saturation
level (ADU); per session: the cosmic-ray fit and the exposure and dark times (s). Synthesis uses
the measured gain where the curve measured it to better than ``MAX_GAIN_ERROR``, else the
header's (``AmpModel.synthesis_gain_e_per_adu``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .amplifiers import Amplifier
from .noise_fit import AmpReadout, CosmicFit, GainFit, ReadNoise, gain_disagreement

MODEL_VERSION = 1
MAX_GAIN_ERROR = 0.05  # relative 1-sigma error below which the measured gain is used


@dataclass(frozen=True)
class AmpModel:
    """One amplifier: ``region`` is ``(y0, y1, x0, x1)``, 0-based half-open, on the session grid."""

    name: str
    region: tuple[int, int, int, int]
    gain_e_per_adu: float  # header GAIN
    gain_ptc: GainFit | None
    overscan_adu: float
    saturate_adu: float
    read: ReadNoise

    @property
    def synthesis_gain_e_per_adu(self) -> float:
        ptc = self.gain_ptc
        if ptc is not None and ptc.error_e_per_adu < MAX_GAIN_ERROR * ptc.gain_e_per_adu:
            return ptc.gain_e_per_adu
        return self.gain_e_per_adu

    @property
    def read_noise_e(self) -> float:
        return self.read.white_adu * self.synthesis_gain_e_per_adu

    @property
    def row_noise_e(self) -> float:
        return self.read.row_adu * self.synthesis_gain_e_per_adu


@dataclass(frozen=True)
class NoiseModel:
    """Everything synthesis needs besides the session's images."""

    shape: tuple[int, int]  # (ny, nx) of the session grid
    exptime_s: float
    darktime_s: float
    gain_nominal_e_per_adu: float  # the ADU of the stack (calibrated products)
    amps: tuple[AmpModel, ...]
    cosmic: CosmicFit
    warnings: tuple[str, ...] = ()

    def to_attrs(self) -> dict:
        """JSON-ready form: summary values first (units in the names), then every fitted detail."""
        weights = [a.read.rows * a.read.columns for a in self.amps]
        total = sum(weights)

        def rms(values):
            return math.sqrt(sum(w * v * v for w, v in zip(weights, values)) / total)

        ptc = [a.gain_ptc.gain_e_per_adu for a in self.amps if a.gain_ptc is not None]
        return {
            "version": MODEL_VERSION,
            "gain_e_per_adu": rms([a.gain_e_per_adu for a in self.amps]),
            "gain_ptc_e_per_adu": sum(ptc) / len(ptc) if ptc else None,
            "read_noise_e": rms([a.read_noise_e for a in self.amps]),
            "row_noise_e": rms([a.row_noise_e for a in self.amps]),
            "row_corr_rows": max(a.read.row_corr_rows for a in self.amps),
            "read_noise_gaussian": all(a.read.gaussian for a in self.amps),
            "cosmic_rate_per_px_s": self.cosmic.rate_per_px_s,
            "cosmic_rate_unit": "hits per pixel per second of exposure",
            "warnings": list(self.warnings),
            "shape": list(self.shape),
            "exptime_s": self.exptime_s,
            "darktime_s": self.darktime_s,
            "gain_nominal_e_per_adu": self.gain_nominal_e_per_adu,
            "amps": [dataclasses.asdict(a) for a in self.amps],
            "cosmic": dataclasses.asdict(self.cosmic),
        }

    @classmethod
    def from_attrs(cls, attrs: dict) -> NoiseModel:
        """The model back from ``to_attrs`` (as read from the store)."""
        if attrs.get("version") != MODEL_VERSION:
            raise ValueError(f"noise_model version {attrs.get('version')!r}; this skyprep reads {MODEL_VERSION}")
        amps = tuple(
            AmpModel(
                name=a["name"],
                region=tuple(a["region"]),
                gain_e_per_adu=float(a["gain_e_per_adu"]),
                gain_ptc=None if a["gain_ptc"] is None else _typed(GainFit, a["gain_ptc"]),
                overscan_adu=float(a["overscan_adu"]),
                saturate_adu=float(a["saturate_adu"]),
                read=_typed(ReadNoise, a["read"]),
            )
            for a in attrs["amps"]
        )
        return cls(
            shape=tuple(attrs["shape"]),
            exptime_s=float(attrs["exptime_s"]),
            darktime_s=float(attrs["darktime_s"]),
            gain_nominal_e_per_adu=float(attrs["gain_nominal_e_per_adu"]),
            amps=amps,
            cosmic=_typed(CosmicFit, attrs["cosmic"]),
            warnings=tuple(attrs["warnings"]),
        )


def _typed(cls, values: dict):
    """``cls(**values)`` with lists turned back into tuples."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def assemble(
    amps: Sequence[Amplifier],
    regions: Sequence[tuple[int, int, int, int]],
    readouts: Sequence[AmpReadout],
    ptcs: Sequence[GainFit | None],
    cosmic: CosmicFit,
    shape: tuple[int, int],
    exptime_s: float,
    darktime_s: float,
    gain_nominal_e_per_adu: float,
) -> NoiseModel:
    """The session's model from its amplifiers' fits, with a warning per amplifier whose
    measured gain disagrees with its header's (``noise_fit.gain_disagreement``)."""
    models, warnings = [], []
    for amp, region, readout, ptc in zip(amps, regions, readouts, ptcs, strict=True):
        name = amp.ref.name or amp.ref.label
        models.append(
            AmpModel(name, tuple(region), amp.gain_e_per_adu, ptc, readout.overscan_adu, amp.saturate_adu, readout.read)
        )
        found = gain_disagreement(amp.gain_e_per_adu, None if ptc is None else ptc.gain_e_per_adu)
        if found:
            warnings.append(f"{name}: {found}")
    return NoiseModel(tuple(shape), float(exptime_s), float(darktime_s), float(gain_nominal_e_per_adu), tuple(models),
                      cosmic, tuple(warnings))  # fmt: skip
