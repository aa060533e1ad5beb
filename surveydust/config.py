"""Typed, validated configuration: the one place where settings are checked.

Defaults live in the YAML files of ``configs/`` (installed as
``surveydust.configs``); a user file is merged over them and command-line
overrides over that. Every problem becomes a one-line ``ValueError``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from surveydust.errors import InputError
from surveydust.instrument import DEPTH_PRESETS, KNOWN_BANDS, check_bands
from surveydust.quantities import PREDICTED


class _Config(BaseModel):
    # NaN and infinity are refused for every float setting: a NaN threshold would silently turn its test off
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def to_json(self) -> str:
        """Serialise to JSON (stored in Zarr attrs for provenance)."""
        return self.model_dump_json()


def _check_range(v: tuple[float, float], name: str) -> tuple[float, float]:
    if not v[0] <= v[1]:
        raise InputError(f"{name} must be [low, high] with low <= high, got {list(v)}")
    return v


DustLaw = Literal["calzetti", "smc", "salim", "mw"]


class PriorConfig(_Config):
    """Per-galaxy priors on the simulator's nuisance physics (see configs/simulation.yaml,
    where each range is argued with its reference; drawn by :mod:`surveydust.simulate.priors`).

    Ranges are ``[low, high]``; ``low == high`` fixes a choice.
    """

    dust_laws: tuple[DustLaw, ...] = Field(min_length=1)
    salim_delta: tuple[float, float]
    bump_scatter: float = Field(ge=0)
    dust_opacity: tuple[float, float]
    birth_cloud_tau_v: tuple[float, float]
    screen_fraction: tuple[float, float]
    line_scale: tuple[float, float]
    lya_ew_scale_aa: float = Field(ge=0)
    igm_forest_factor: tuple[float, float]
    quenched_fraction: float = Field(ge=0, le=1)
    burst_sigma: tuple[float, float]
    metallicity_scatter_dex: float = Field(ge=0, le=2)
    sersic_n: tuple[float, float]
    clumps_mean: tuple[float, float]
    psf_fwhm_scale: tuple[float, float]
    noise_correlation_px: tuple[float, float]
    depth_offset_mag: tuple[float, float]

    @field_validator("salim_delta", "dust_opacity", "birth_cloud_tau_v", "screen_fraction", "line_scale",
                     "igm_forest_factor", "burst_sigma", "sersic_n", "clumps_mean", "psf_fwhm_scale",
                     "noise_correlation_px", "depth_offset_mag")
    @classmethod
    def _ordered(cls, v: tuple[float, float], info: Any) -> tuple[float, float]:
        return _check_range(v, f"priors.{info.field_name}")

    @model_validator(mode="after")
    def _physical(self) -> PriorConfig:
        positive = {"dust_opacity": self.dust_opacity, "birth_cloud_tau_v": self.birth_cloud_tau_v,
                    "line_scale": self.line_scale, "sersic_n": self.sersic_n,
                    "psf_fwhm_scale": self.psf_fwhm_scale}
        for name, (lo, _) in positive.items():
            if lo <= 0:
                raise InputError(f"priors.{name} must be > 0, got low = {lo}")
        if self.screen_fraction[0] < 0 or self.screen_fraction[1] > 1:
            raise InputError(f"priors.screen_fraction must lie in [0, 1], got {list(self.screen_fraction)}")
        if self.igm_forest_factor[0] < 0:
            raise InputError(f"priors.igm_forest_factor must be >= 0, got low = {self.igm_forest_factor[0]}")
        if self.clumps_mean[0] < 0 or self.noise_correlation_px[0] < 0 or self.burst_sigma[0] < 0:
            raise InputError("priors.clumps_mean, noise_correlation_px and burst_sigma must be >= 0")
        return self


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
    priors: PriorConfig
    gas_to_stellar_mass: tuple[float, float]
    galaxies_per_task: int = Field(gt=0)

    @field_validator("dtm_values")
    @classmethod
    def _dtm_in_unit_interval(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        bad = [x for x in v if not 0.0 <= x <= 1.0]
        if bad:
            raise InputError(f"dust-to-metal ratios must lie in [0, 1], got {bad}")
        return v

    @field_validator("bands")
    @classmethod
    def _known_bands(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_bands(v)

    @field_validator("redshift_range", "log_mstar_range", "gas_to_stellar_mass")
    @classmethod
    def _ordered(cls, v: tuple[float, float], info: Any) -> tuple[float, float]:
        return _check_range(v, info.field_name)

    @model_validator(mode="after")
    def _cross_checks(self) -> SimulationConfig:
        from surveydust.instrument import check_redshift_coverage

        if isinstance(self.depth, str) and self.depth not in DEPTH_PRESETS:
            raise InputError(f"unknown depth preset {self.depth!r}; known: {', '.join(DEPTH_PRESETS)}")
        if isinstance(self.depth, dict):
            missing = [b for b in self.bands if b not in self.depth]
            if missing:
                raise InputError(f"depth gives no 5-sigma magnitude for band(s) {missing}")
        if self.psf == "fits" and (self.psf_dir is None or not Path(self.psf_dir).is_dir()):
            raise InputError(f"psf: fits needs psf_dir to be an existing folder, got {self.psf_dir}")
        if self.gas_to_stellar_mass[0] < 0:
            raise InputError("gas_to_stellar_mass must be >= 0")
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


class ForegroundKindConfig(_Config):
    """One foreground population of a simulated field (see the ``foreground:`` section of
    configs/simulation.yaml, where each number is argued): its surface density brighter than
    the faint end of ``mag_range``, the slope of its counts and its redshift range."""

    per_arcmin2: float = Field(ge=0)
    count_slope: float = Field(ge=0, le=1)
    redshift_range: tuple[float, float] = (0.0, 0.0)
    a_v_range: tuple[float, float] = (0.0, 0.0)
    teff_range: tuple[float, float] = (0.0, 0.0)

    @field_validator("redshift_range", "a_v_range", "teff_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float], info: Any) -> tuple[float, float]:
        if v[0] < 0:
            raise InputError(f"{info.field_name} must be >= 0, got {list(v)}")
        return _check_range(v, info.field_name)


FOREGROUND_KINDS = ("foreground", "dusty", "balmer_break", "brown_dwarf")


class ForegroundConfig(_Config):
    """The sky's mix added to a simulated field around its z > 6 galaxies (drawn by
    :mod:`surveydust.simulate.foreground`): number counts per kind in ``reference_band``,
    sizes, and a switch. ``enabled: false`` (the default) leaves a field exactly as before."""

    enabled: bool
    reference_band: str
    mag_range: tuple[float, float]
    density_scale: float = Field(ge=0, le=100)
    size_at_25_arcsec: float = Field(gt=0, le=2)
    size_slope: float = Field(ge=0, le=1)
    size_scatter_dex: float = Field(ge=0, le=1)
    sersic_n: tuple[float, float]
    kinds: dict[str, ForegroundKindConfig]

    @field_validator("reference_band")
    @classmethod
    def _known_band(cls, v: str) -> str:
        return check_bands([v])[0]

    @field_validator("mag_range", "sersic_n")
    @classmethod
    def _ordered(cls, v: tuple[float, float], info: Any) -> tuple[float, float]:
        return _check_range(v, info.field_name)

    @model_validator(mode="after")
    def _physical(self) -> ForegroundConfig:
        unknown = sorted(set(self.kinds) - set(FOREGROUND_KINDS))
        if unknown:
            raise InputError(f"unknown kind(s) {unknown} in kinds; known: {', '.join(FOREGROUND_KINDS)}")
        if self.sersic_n[0] <= 0:
            raise InputError(f"sersic_n must be > 0, got {list(self.sersic_n)}")
        for name, kind in self.kinds.items():
            if name != "brown_dwarf" and (kind.redshift_range[0] <= 0 or kind.redshift_range[1] > 15):
                raise InputError(f"kinds.{name}.redshift_range must lie in (0, 15], "
                                 f"got {list(kind.redshift_range)}")
            if name == "brown_dwarf" and not 300 <= kind.teff_range[0] <= kind.teff_range[1] <= 2500:
                raise InputError(f"kinds.brown_dwarf.teff_range must lie in [300, 2500] K, "
                                 f"got {list(kind.teff_range)}")
        return self


TARGETS = PREDICTED  # what a network may be trained for


class AugmentConfig(_Config):
    """Augmentation of the training split (see configs/training.yaml)."""

    per_batch: bool
    rotations: bool
    flips: bool
    noise: float = Field(ge=0)
    hog: bool
    balance: bool
    balance_bins: int = Field(ge=2, le=100)
    max_copies: int = Field(ge=0, le=64)
    samples_per_task: int = Field(gt=0)


class ModelConfig(_Config):
    """CNN architecture: early fusion (bands as channels) or the paper's per-band
    branches of conv blocks, then dense layers."""

    architecture: Literal["fusion", "branches"]
    colour_inputs: bool
    conv_filters: tuple[int, ...] = Field(min_length=1, max_length=4)
    dense_units: tuple[int, ...] = Field(min_length=1, max_length=6)
    dropout: float = Field(ge=0, lt=1)

    @field_validator("conv_filters", "dense_units")
    @classmethod
    def _positive(cls, v: tuple[int, ...], info: Any) -> tuple[int, ...]:
        if any(x < 1 for x in v):
            raise InputError(f"{info.field_name} must be positive, got {list(v)}")
        return v


class TrainingConfig(_Config):
    """Settings of CNN training (see configs/training.yaml)."""

    seed: int = Field(ge=0)
    fit_seed: int | None = Field(default=None, ge=0)
    ensemble: int = Field(ge=1, le=32)
    bands: tuple[str, ...] = Field(min_length=1)
    targets: tuple[str, ...] = Field(min_length=1)
    snr_band: str
    snr_min: float
    crop: int = Field(ge=8, le=256)
    split: Literal["galaxy", "paper"]
    test_fraction: float = Field(gt=0, lt=1)
    validation_fraction: float = Field(gt=0, lt=1)
    calibration_fraction: float = Field(gt=0, lt=1)
    use_redshift: bool
    redshift_dropout: float = Field(ge=0, le=1)
    dust_offset_mag: float = Field(gt=0, le=10)
    augment: AugmentConfig
    model: ModelConfig
    loss: Literal["gaussian_nll", "mape"]
    learning_rate: float = Field(gt=0, le=1)
    weight_decay: float = Field(ge=0, lt=1)
    ema_momentum: float = Field(ge=0, lt=1)
    batch_size: int = Field(ge=1, le=65536)
    shuffle_buffer_mb: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    patience: int = Field(ge=1)

    @property
    def weights_seed(self) -> int:
        """Seed of the initial weights, the batch order and the per-batch draws (``fit_seed``,
        else ``seed``)."""
        return self.seed if self.fit_seed is None else self.fit_seed

    @field_validator("bands")
    @classmethod
    def _known_bands(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_bands(v)

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [t for t in v if t not in TARGETS]
        if unknown:
            raise InputError(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
        return v

    @field_validator("snr_band")
    @classmethod
    def _upper(cls, v: str) -> str:
        if v.upper() not in KNOWN_BANDS:
            raise InputError(f"unknown band {v!r}; known: {', '.join(KNOWN_BANDS)}")
        return v.upper()

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if self.split == "galaxy" and self.augment.per_batch and (self.augment.hog or self.augment.balance):
            raise InputError("augment.hog and augment.balance make stored copies: set augment.per_batch=false "
                             "to use them")
        if self.ensemble > 1 and self.loss != "gaussian_nll":
            raise InputError("an ensemble (ensemble > 1) combines Gaussian posteriors: use loss gaussian_nll")
        if self.validation_fraction + self.calibration_fraction >= 1:
            raise InputError("validation_fraction + calibration_fraction must be < 1")
        pools = len(self.model.conv_filters) - (self.model.architecture == "fusion")
        if self.crop % 2 ** pools:
            raise InputError(f"crop {self.crop} must be divisible by 2**{pools} "
                             "(one 2x2 max-pool per conv block)")
        return self


SEARCH_PARAMETERS = {  # name -> (type, smallest allowed low, largest allowed high)
    "conv_layers": (int, 1, 4), "conv_filters": (int, 1, 1024),
    "dense_layers": (int, 1, 6), "dense_units": (int, 1, 4096),
    "learning_rate": (float, 1e-7, 1.0), "batch_size": (int, 1, 65536), "dropout": (float, 0.0, 0.99),
}


class SearchRange(_Config):
    """One searched hyper-parameter: values in [low, high], sampled in log space with ``log``."""

    low: float
    high: float
    log: bool = False


class TuningConfig(_Config):
    """Settings of the hyper-parameter search (see configs/tuning.yaml)."""

    trials: int = Field(gt=0)
    max_epochs: int = Field(ge=1)
    sampler: Literal["tpe", "random"]
    startup_trials: int = Field(ge=0)
    pruner: Literal["median", "hyperband", "none"]
    pruner_startup_trials: int = Field(ge=0)
    warmup_epochs: int = Field(ge=0)
    search_space: dict[str, SearchRange] = Field(min_length=1)

    @field_validator("search_space")
    @classmethod
    def _check_space(cls, v: dict[str, SearchRange]) -> dict[str, SearchRange]:
        unknown = sorted(set(v) - set(SEARCH_PARAMETERS))
        if unknown:
            raise InputError(f"unknown parameter(s) {unknown}; known: {', '.join(SEARCH_PARAMETERS)}")
        for name, r in v.items():
            kind, lowest, highest = SEARCH_PARAMETERS[name]
            if not r.low < r.high:
                raise InputError(f"{name}: empty or inverted range [{r.low:g}, {r.high:g}] (need low < high)")
            if r.low < lowest or r.high > highest:
                raise InputError(f"{name}: range [{r.low:g}, {r.high:g}] outside [{lowest:g}, {highest:g}]")
            if r.log and r.low <= 0:
                raise InputError(f"{name}: a log range needs low > 0")
            if kind is int and (r.low != int(r.low) or r.high != int(r.high)):
                raise InputError(f"{name}: integer parameter needs integer bounds")
        return v


class CatalogueConfig(_Config):
    """Settings of detection and bulk inference (see configs/catalogue.yaml)."""

    detection_bands: tuple[str, ...] = Field(min_length=1)
    threshold: float = Field(gt=0)
    npixels: int = Field(ge=1)
    smooth_fwhm_pix: float = Field(ge=0)
    deblend: bool
    deblend_contrast: float = Field(gt=0, lt=1)
    halo_pix: int = Field(ge=0)
    tile_pix: int | None = Field(default=None, ge=64)
    aperture_arcsec: float = Field(gt=0)
    ood_threshold: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    sources_per_batch: int = Field(ge=1)
    default_redshift: float = Field(gt=0, le=30)
    redshift_match_arcsec: float = Field(gt=0, le=10)
    photoz: bool
    p_high_z_min: float = Field(ge=0, le=1)
    delta_chi2_min: float = Field(ge=0)
    z_low_max: float = Field(gt=0, le=6)
    blue_veto_snr: float = Field(gt=0)
    star_delta_chi2: float
    photoz_draws: int = Field(ge=1, le=64)
    all_sources: bool

    @field_validator("detection_bands")
    @classmethod
    def _known_bands(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_bands(v)


_C = TypeVar("_C", bound=_Config)


def _default_yaml(name: str) -> dict[str, Any]:
    text = (resources.files("surveydust.configs") / f"{name}.yaml").read_text()
    return yaml.safe_load(text)


def _read_user_yaml(path: Path | str, section: str) -> dict[str, Any]:
    data = _read_yaml_mapping(path)
    return data.get(section, data)


def _read_yaml_mapping(path: Path | str) -> dict[str, Any]:
    """A user's YAML file, which must exist and hold a mapping (one-line errors otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a mapping")
    return data


def _format_error(exc: ValidationError, section: str) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown setting"
    return f"{section}.{where}: {msg}" if where else f"{section}: {msg}"


def _load(cls: type[_C], section: str, source: _C | Path | str | None, overrides: dict[str, Any],
          deep: bool = True) -> _C:
    """Defaults of ``configs/<section>.yaml``, then ``source``, then ``overrides`` (None ignored).

    With ``deep``, nested mappings are merged key by key; otherwise a given
    top-level setting replaces the default whole.
    """
    merged = _default_yaml(section)[section]
    update = _deep_update if deep else dict.update
    if isinstance(source, cls):
        update(merged, source.model_dump(mode="json"))
    elif source is not None:
        update(merged, _read_user_yaml(source, section))
    update(merged, {k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(merged)
    except ValidationError as exc:
        raise InputError(_format_error(exc, section)) from None


def load_simulation_config(source: SimulationConfig | Path | str | None = None,
                           **overrides: Any) -> SimulationConfig:
    """Build a validated :class:`SimulationConfig`.

    Parameters
    ----------
    source : None (the shipped defaults), a YAML file whose ``simulation:``
        mapping (or top-level mapping) is merged over the defaults, or an
        existing config to start from.
    **overrides : individual settings; ``None`` values are ignored. Mappings
        (``priors``, a ``depth`` table) are merged key by key, e.g.
        ``priors={"line_scale": [1, 1]}`` fixes one prior and keeps the others.
    """
    return _load(SimulationConfig, "simulation", source, overrides)


def load_foreground_config(source: ForegroundConfig | Path | str | None = None,
                           **overrides: Any) -> ForegroundConfig:
    """Build a validated :class:`ForegroundConfig`: the ``foreground:`` section of the shipped
    configs/simulation.yaml, then ``source`` (a config, or a YAML file whose top-level
    ``foreground:`` mapping is merged; a file without one changes nothing), then ``overrides``
    (``None`` values ignored; ``kinds`` merged kind by kind and key by key)."""
    merged = _default_yaml("simulation")["foreground"]
    if isinstance(source, ForegroundConfig):
        _deep_update(merged, source.model_dump(mode="json"))
    elif source is not None:
        section = _read_yaml_mapping(source).get("foreground")
        if section is not None and not isinstance(section, dict):
            raise InputError(f"config file {source}: foreground must be a mapping")
        _deep_update(merged, section or {})
    _deep_update(merged, {k: v for k, v in overrides.items() if v is not None})
    try:
        return ForegroundConfig.model_validate(merged)
    except ValidationError as exc:
        raise InputError(_format_error(exc, "foreground")) from None


def simulation_config_from_json(text: str) -> SimulationConfig:
    """Rebuild a config stored in a store's attrs (for exact regeneration). A config this version
    cannot rebuild (e.g. one written before a setting was renamed) is a one-line InputError."""
    try:
        return SimulationConfig.model_validate(json.loads(text))
    except ValidationError as exc:
        raise InputError(f"stored {_format_error(exc, 'simulation')} (written by another surveydust "
                         "version; it cannot be regenerated exactly by this one)") from None


def load_training_config(source: TrainingConfig | Path | str | None = None,
                         **overrides: Any) -> TrainingConfig:
    """Build a validated :class:`TrainingConfig` (defaults, then ``source``, then overrides).

    Nested sections (``augment``, ``model``) are merged key by key.
    """
    return _load(TrainingConfig, "training", source, overrides)


def load_tuning_config(source: TuningConfig | Path | str | None = None,
                       **overrides: Any) -> TuningConfig:
    """Build a validated :class:`TuningConfig` (defaults, then ``source``, then overrides).

    A user ``search_space`` replaces the default one as a whole (a parameter
    left out is not searched: its value comes from the training config).
    """
    return _load(TuningConfig, "tuning", source, overrides, deep=False)


def load_catalogue_config(source: CatalogueConfig | Path | str | None = None,
                          **overrides: Any) -> CatalogueConfig:
    """Build a validated :class:`CatalogueConfig` (defaults, then ``source``, then overrides)."""
    return _load(CatalogueConfig, "catalogue", source, overrides, deep=False)


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
