"""The job's configuration: one typed, immutable object, loadable from YAML.

Each section is the parameter class of the step that uses it (``pipeline/steps/params.py``), so
a default is documented once. Unknown keys and wrong types are errors, validated strictly
(``yes`` or ``1`` is not a boolean, ``64.0`` not an integer). Import-light: the command
line loads this module before it knows whether any science will run (pydantic and YAML are
imported when a file is read or written).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import SkyprepError
from .steps.params import (
    CalibParams,
    ClipParams,
    CosmicParams,
    OverscanParams,
    RegisterParams,
    SanityParams,
    SourceParams,
    SynthesisParams,
)


@dataclass(frozen=True)
class ChunkParams:
    """How frames are cut into work and storage.

    ``strip_rows``: rows per Dask task when reading and processing a frame (every image of a
    session is cut at the same rows). ``store_chunk_px``: edge of the square Zarr chunks of every image
    variable (one frame deep for cubes); ``strip_rows`` must be a multiple of it. 512 px chunks
    read whole frames faster than 256 px ones, random patches as fast, and are written faster
    (fewer chunks: zarr-python's cost per chunk dominates); figures in docs/store-layout.md.
    """

    strip_rows: int = 512
    store_chunk_px: int = 512

    def __post_init__(self) -> None:
        if self.store_chunk_px < 1 or self.strip_rows < 1 or self.strip_rows % self.store_chunk_px:
            raise ValueError(
                f"chunks.strip_rows ({self.strip_rows}) must be a positive multiple of chunks.store_chunk_px "
                f"({self.store_chunk_px}, itself positive)"
            )


@dataclass(frozen=True)
class RegisterConfig:
    """Registration: ``cutout_px`` is the side of the central square correlated per frame.

    ``method``: ``phase`` (FFT phase correlation against the calibrated frame) or ``wcs``
    (offsets from the celestial WCSs of the raw and e91 headers; when any frame lacks a valid
    one, phase correlation is used for all and the registration records say why).
    ``subpixel``: resample each frame bilinearly by its measured offset (variance and mask
    propagated, ``pipeline/steps/resample.py``) instead of moving it by the rounded offset.
    """

    cutout_px: int = 512
    params: RegisterParams = RegisterParams()
    method: Literal["phase", "wcs"] = "phase"
    subpixel: bool = False


# Option names that look like credentials: refused, since the configuration is recorded in every
# session's provenance (credentials come from the environment: AWS_ACCESS_KEY_ID ...).
SECRET_WORDS = ("secret", "password", "token", "credential", "access_key", "session_key", "sas", "private")


@dataclass(frozen=True)
class StorageConfig:
    """Object storage (``s3://``, ``gs://``, ``az://`` archives and stores): ``options`` are
    obstore's settings for the store (``endpoint``, ``region``, ``allow_http``, ...), on top of
    the standard environment (``AWS_ENDPOINT_URL``, ``AWS_REGION``, ...) of the client and the
    workers. Credentials are not accepted here, only from the environment."""

    options: dict[str, str | bool | int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        secret = [key for key in self.options if any(word in key.lower() for word in SECRET_WORDS)]
        if secret:
            raise ValueError(f"storage.options: {', '.join(secret)}: credentials come from the environment, "
                             "not the configuration (it is recorded in the store)")  # fmt: skip


@dataclass(frozen=True)
class Config:
    """Everything the job can be told. ``instrument`` forces a profile (else detected)."""

    overscan: OverscanParams = OverscanParams()
    calibration: CalibParams = CalibParams()
    sanity: SanityParams = SanityParams()
    cosmics: CosmicParams = CosmicParams()
    register: RegisterConfig = RegisterConfig()
    stack: ClipParams = ClipParams()
    sources: SourceParams = SourceParams()
    chunks: ChunkParams = ChunkParams()
    storage: StorageConfig = StorageConfig()
    synthesis: SynthesisParams = SynthesisParams()
    write_variance: bool = True
    instrument: str | None = None

    def to_dict(self) -> dict:
        """Plain-data form (for provenance and YAML)."""
        return dataclasses.asdict(self)


class ConfigError(SkyprepError, ValueError):
    """A configuration file that cannot be used."""


def load_config(path: Path | str | None) -> Config:
    """Defaults, updated by the YAML file at ``path`` when given."""
    if path is None:
        return Config()
    import pydantic
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read configuration ({err})") from None
    unknown = _unknown_keys(Config, raw)
    if unknown:
        raise ConfigError(f"{path}: unknown configuration key(s): {', '.join(unknown)}")
    try:
        text = json.dumps(raw)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: values must be plain YAML scalars, lists and mappings ({err})") from None
    try:
        return pydantic.TypeAdapter(Config).validate_json(text, strict=True)
    except pydantic.ValidationError as err:
        raise ConfigError(f"{path}: invalid configuration\n{err}") from None


def _unknown_keys(cls, raw, prefix: str = "") -> list[str]:
    """Dotted names in ``raw`` that are not fields of the dataclass ``cls`` (recursively)."""
    if not isinstance(raw, dict):
        return []
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = []
    for key, value in raw.items():
        if key not in fields:
            unknown.append(f"{prefix}{key}")
        elif dataclasses.is_dataclass(fields[key].default):
            unknown += _unknown_keys(type(fields[key].default), value, f"{prefix}{key}.")
    return unknown


def dump_config(config: Config) -> str:
    """The configuration as YAML."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)
