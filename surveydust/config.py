"""Typed, validated configuration: the one place where settings are checked.

Defaults live in the YAML files of ``configs/`` (installed as
``surveydust.configs``); a user file is merged over them and command-line
overrides over that. Every problem becomes a one-line ``ValueError``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from surveydust.instrument import DEPTH_PRESETS, KNOWN_BANDS


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> str:
        """Serialise to JSON (stored in Zarr attrs for provenance)."""
        return self.model_dump_json()


def _check_range(v: tuple[float, float], name: str) -> tuple[float, float]:
    if not v[0] <= v[1]:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {list(v)}")
    return v


class SimulationConfig(_Config):
    """Settings of the built-in mock-galaxy simulator (see configs/simulation.yaml)."""

    seed: int = Field(ge=0)
    n_galaxies: int = Field(gt=0)
    views_per_galaxy: int = Field(ge=1, le=64)
    dtm_values: tuple[float, ...] = Field(min_length=1)
    redshift_range: tuple[float, float]
    log_mstar_range: tuple[float, float]
    mass_function_slope: float = Field(ge=-3, le=3)
    bands: tuple[str, ...] = Field(min_length=1)
    stamp_size: int = Field(ge=8, le=256)
    pixel_scale_arcsec: float = Field(gt=0, le=1)
    oversample: int = Field(ge=1, le=8)
    depth: str | dict[str, float]
    psf: Literal["moffat", "fits"]
    psf_dir: Path | None = None
    dust_law: Literal["calzetti", "mw"]
    dust_opacity: float = Field(ge=0)
    birth_cloud_tau_v: float = Field(ge=0)
    gas_to_stellar_mass: tuple[float, float]
    galaxies_per_task: int = Field(gt=0)

    @field_validator("dtm_values")
    @classmethod
    def _dtm_in_unit_interval(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        bad = [x for x in v if not 0.0 <= x <= 1.0]
        if bad:
            raise ValueError(f"dust-to-metal ratios must lie in [0, 1], got {bad}")
        return v

    @field_validator("bands")
    @classmethod
    def _known_bands(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        v = tuple(b.upper() for b in v)
        unknown = [b for b in v if b not in KNOWN_BANDS]
        if unknown:
            raise ValueError(f"unknown band(s) {unknown}; known: {', '.join(KNOWN_BANDS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"bands listed twice: {list(v)}")
        return v

    @field_validator("redshift_range", "log_mstar_range", "gas_to_stellar_mass")
    @classmethod
    def _ordered(cls, v: tuple[float, float], info: Any) -> tuple[float, float]:
        return _check_range(v, info.field_name)

    @model_validator(mode="after")
    def _cross_checks(self) -> SimulationConfig:
        from surveydust.instrument import check_redshift_coverage

        if isinstance(self.depth, str) and self.depth not in DEPTH_PRESETS:
            raise ValueError(f"unknown depth preset {self.depth!r}; known: {', '.join(DEPTH_PRESETS)}")
        if isinstance(self.depth, dict):
            missing = [b for b in self.bands if b not in self.depth]
            if missing:
                raise ValueError(f"depth gives no 5-sigma magnitude for band(s) {missing}")
        if self.psf == "fits" and (self.psf_dir is None or not Path(self.psf_dir).is_dir()):
            raise ValueError(f"psf: fits needs psf_dir to be an existing folder, got {self.psf_dir}")
        if self.gas_to_stellar_mass[0] < 0:
            raise ValueError("gas_to_stellar_mass must be >= 0")
        check_redshift_coverage(self.bands, self.redshift_range)
        return self

    def depth_mag(self) -> dict[str, float]:
        """5-sigma AB depth per band (0.1 arcsec radius aperture)."""
        table = DEPTH_PRESETS[self.depth] if isinstance(self.depth, str) else self.depth
        return {b: float(table[b]) for b in self.bands}

    @property
    def n_samples(self) -> int:
        """Images in the store: galaxies x views x dust-to-metal ratios."""
        return self.n_galaxies * self.views_per_galaxy * len(self.dtm_values)


def _default_yaml(name: str) -> dict[str, Any]:
    text = (resources.files("surveydust.configs") / f"{name}.yaml").read_text()
    return yaml.safe_load(text)


def _read_user_yaml(path: Path | str, section: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping")
    return data.get(section, data)


def _format_error(exc: ValidationError, section: str) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown setting"
    return f"{section}.{where}: {msg}" if where else f"{section}: {msg}"


def load_simulation_config(source: SimulationConfig | Path | str | None = None,
                           **overrides: Any) -> SimulationConfig:
    """Build a validated :class:`SimulationConfig`.

    Parameters
    ----------
    source : None (the shipped defaults), a YAML file whose ``simulation:``
        mapping (or top-level mapping) is merged over the defaults, or an
        existing config to start from.
    **overrides : individual settings; ``None`` values are ignored.
    """
    merged = _default_yaml("simulation")["simulation"]
    if isinstance(source, SimulationConfig):
        merged.update(source.model_dump(mode="json"))
    elif source is not None:
        merged.update(_read_user_yaml(source, "simulation"))
    merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return SimulationConfig.model_validate(merged)
    except ValidationError as exc:
        raise ValueError(_format_error(exc, "simulation")) from None


def simulation_config_from_json(text: str) -> SimulationConfig:
    """Rebuild a config stored in a store's attrs (for exact regeneration)."""
    return SimulationConfig.model_validate(json.loads(text))
