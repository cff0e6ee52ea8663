"""The job's configuration: one typed, immutable object, loadable from YAML.

Each section is the parameter class of the module that uses it, so a default is documented
once, next to the code it steers. Unknown keys and wrong types are errors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pydantic
import yaml

from .calibrate import CalibParams
from .overscan import OverscanParams
from .register import RegisterParams
from .sources import SourceParams
from .stack import ClipParams

_STRICT = pydantic.ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ChunkParams:
    """How frames are cut into work and storage.

    ``strip_rows``: rows per Dask task when reading and processing a frame (rounded to whole
    compression tiles). ``store_chunk_px``: edge of the square Zarr chunks of every image
    variable (one frame deep for cubes), sized for random patch reads.
    """

    strip_rows: int = 512
    store_chunk_px: int = 256
    __pydantic_config__ = _STRICT


@dataclass(frozen=True)
class RegisterConfig:
    """Registration: ``cutout_px`` is the side of the central square correlated per frame."""

    cutout_px: int = 512
    params: RegisterParams = RegisterParams()
    __pydantic_config__ = _STRICT


@dataclass(frozen=True)
class Config:
    """Everything the job can be told. ``instrument`` forces a profile (else detected)."""

    overscan: OverscanParams = OverscanParams()
    calibration: CalibParams = CalibParams()
    register: RegisterConfig = RegisterConfig()
    stack: ClipParams = ClipParams()
    sources: SourceParams = SourceParams()
    chunks: ChunkParams = ChunkParams()
    write_variance: bool = True
    instrument: str | None = None
    __pydantic_config__ = _STRICT

    def to_dict(self) -> dict:
        """Plain-data form (for provenance and YAML)."""
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A configuration file that cannot be used."""


def load_config(path: Path | str | None) -> Config:
    """Defaults, updated by the YAML file at ``path`` when given."""
    if path is None:
        return Config()
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read configuration ({err})") from None
    try:
        return pydantic.TypeAdapter(Config).validate_python(raw)
    except pydantic.ValidationError as err:
        raise ConfigError(f"{path}: invalid configuration\n{err}") from None


def dump_config(config: Config) -> str:
    """The configuration as YAML."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
