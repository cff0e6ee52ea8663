"""What to simulate: the archive specification, each session's identity and its random streams."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

#: amplifiers -> (rows, columns) of the amplifier grid on the detector.
AMP_GRIDS = {1: (1, 1), 2: (1, 2), 4: (2, 2), 8: (2, 4)}
BANDS = ("g", "r", "i")
NIGHT = "20240315"

#: instrument -> (LCO site code used in e91 file names, TELESCOP).
SITES = {
    "muscat3": ("ogg", "2m0-01"),
    "muscat4": ("coj", "2m0-02"),
    "mosaic": ("kpno", "kp4m"),
}

MIN_SIZE = 64


class Stream(enum.IntEnum):
    """Independent random streams; adding frames or sessions never changes the others."""

    CAMERA = 0  # the camera's fixed-pattern bias, shared by every archive
    PARAMS = 1  # scalar session parameters (exposure, gains, sky, PSF, drift)
    STARS = 2
    DARK = 3
    FLAT = 4
    BAD_COLUMNS = 5
    RAW = 6  # photon, read noise and cosmic rays of the raw exposure
    E91 = 7  # the same for e91 frame k
    BIAS_ERROR = 8


def rng(*keys: int) -> np.random.Generator:
    """A generator determined by ``keys`` alone (``numpy.random.SeedSequence`` entropy)."""
    return np.random.default_rng([int(k) for k in keys])


@dataclass(frozen=True)
class SynthSpec:
    """Shape of a synthetic archive; every byte written follows from these fields."""

    sessions: int = 3
    size: int = 512  # trimmed detector side, pixels
    frames: int = 8  # e91 frames per session
    amps: int = 1  # 1, 2, 4 or 8 amplifiers
    seed: int = 0
    overscan: int = 32  # overscan columns per amplifier
    max_drift: float = 4.0  # pixels, drift between e91 exposures is uniform in +-max_drift
    row_noise_e: float = 0.0  # RMS of the per-row readout offset (banding), e-; 0 = none
    row_noise_rho: float = 0.5  # correlation of consecutive rows' offsets (AR(1)), in [0, 1)

    def __post_init__(self) -> None:
        for name in ("sessions", "size", "frames", "amps", "seed", "overscan"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"SynthSpec.{name} must be an integer, got {value!r}")
        if self.sessions < 1:
            raise ValueError(f"SynthSpec.sessions must be >= 1, got {self.sessions}")
        if self.frames < 1:
            raise ValueError(f"SynthSpec.frames must be >= 1, got {self.frames}")
        if self.seed < 0:
            raise ValueError(f"SynthSpec.seed must be >= 0, got {self.seed}")
        if self.overscan < 4:
            raise ValueError(f"SynthSpec.overscan must be >= 4 columns, got {self.overscan}")
        if self.amps not in AMP_GRIDS:
            raise ValueError(f"SynthSpec.amps must be one of {sorted(AMP_GRIDS)}, got {self.amps}")
        if self.size < MIN_SIZE:
            raise ValueError(f"SynthSpec.size must be >= {MIN_SIZE} pixels, got {self.size}")
        rows, cols = self.grid
        if self.size % rows or self.size % cols:
            raise ValueError(
                f"SynthSpec.size={self.size} is not divisible by the {cols} x {rows} amplifier grid of amps={self.amps}"
            )
        if not float(self.row_noise_e) >= 0.0:
            raise ValueError(f"SynthSpec.row_noise_e must be >= 0 e-, got {self.row_noise_e}")
        if not 0.0 <= float(self.row_noise_rho) < 1.0:
            raise ValueError(f"SynthSpec.row_noise_rho must be in [0, 1), got {self.row_noise_rho}")
        drift = float(self.max_drift)
        if not 0.0 <= drift <= self.size / 8:
            raise ValueError(
                f"SynthSpec.max_drift must be in [0, size/8 = {self.size / 8}] pixels, got {self.max_drift}"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the amplifier grid."""
        return AMP_GRIDS[self.amps]


@dataclass(frozen=True)
class SessionId:
    """Who and where one session is: names that appear in paths and headers."""

    index: int
    instrument: str
    band: str
    obs_id: str

    @property
    def site(self) -> str:
        return SITES[self.instrument][0]

    @property
    def telescope(self) -> str:
        return SITES[self.instrument][1]

    @property
    def relpath(self) -> str:
        """``<instrument>_<band>/<obs_id>`` below the archive root."""
        return f"{self.instrument}_{self.band}/{self.obs_id}"


def session_id(spec: SynthSpec, index: int) -> SessionId:
    """Session ``index``: MuSCAT3/MuSCAT4 alternate for one amplifier, else ``mosaic``."""
    if spec.amps > 1:
        instrument = "mosaic"
    else:
        instrument = "muscat3" if index % 2 == 0 else "muscat4"
    return SessionId(
        index=index,
        instrument=instrument,
        band=BANDS[index % len(BANDS)],
        obs_id=f"{NIGHT}_{spec.seed:03d}_{index:03d}",
    )
