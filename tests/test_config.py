"""Simulation settings: defaults, merging, and one-line errors."""

from __future__ import annotations

import json

import pytest

from surveydust.config import load_simulation_config, simulation_config_from_json


def test_defaults_from_yaml() -> None:
    cfg = load_simulation_config()
    assert cfg.bands == ("F115W", "F150W", "F200W", "F277W", "F356W", "F444W")
    assert cfg.dtm_values == pytest.approx(tuple(i / 10 for i in range(11)))
    assert cfg.n_samples == cfg.n_galaxies * cfg.views_per_galaxy * 11
    assert cfg.depth_mag()["F444W"] == pytest.approx(28.6)


def test_user_file_and_overrides(tmp_path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text("simulation:\n  n_galaxies: 5\n  depth: jades\n")
    cfg = load_simulation_config(path, seed=3, bands=["f277w", "F444W"], views_per_galaxy=None)
    assert (cfg.n_galaxies, cfg.seed, cfg.depth, cfg.views_per_galaxy) == (5, 3, "jades", 4)
    assert cfg.bands == ("F277W", "F444W")
    assert simulation_config_from_json(cfg.to_json()) == cfg
    # a stored config of a version whose setting was renamed (the forest prior) is a one-line error
    old = json.loads(cfg.to_json())
    old["priors"]["igm_transmission"] = old["priors"].pop("igm_forest_factor")
    with pytest.raises(ValueError, match="stored simulation.priors.igm_forest_factor: Field required") as info:
        simulation_config_from_json(json.dumps(old))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_galaxies": -1}, "n_galaxies: Input should be greater than 0"),
        ({"dtm_values": [0.0, 1.2]}, r"dust-to-metal ratios must lie in \[0, 1\]"),
        ({"bands": ["F277W", "F999W"]}, r"unknown band\(s\) \['F999W'\]"),
        ({"bands": ["F277W", "F277W"]}, "listed twice"),
        ({"redshift_range": [8.0, 6.0]}, "low <= high"),
        ({"redshift_range": [6.0, 14.0]}, "blueward of Lyman-alpha"),
        ({"depth": "hudf"}, "unknown depth preset"),
        ({"depth": {"F277W": 29.0}}, "no 5-sigma magnitude"),
        ({"psf": "fits"}, "psf_dir"),
        ({"dust_law": "smc"}, "dust_law: unknown setting"),
        ({"colour": "red"}, "colour: unknown setting"),
    ],
)
def test_bad_settings(overrides, message) -> None:
    with pytest.raises(ValueError, match=message) as info:
        load_simulation_config(**overrides)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_simulation_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("simulation: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_simulation_config(bad)


@pytest.mark.parametrize(("key", "value"), [("star_delta_chi2", float("nan")), ("blue_veto_snr", float("inf")),
                                            ("delta_chi2_min", float("inf"))])
def test_catalogue_thresholds_must_be_finite(key: str, value: float) -> None:
    from surveydust.config import load_catalogue_config

    with pytest.raises(ValueError, match=f"{key}: Input should be a finite number"):
        load_catalogue_config(**{key: value})


def test_nested_simulation_floats_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite number"):
        load_simulation_config(redshift_range=[6.0, float("nan")])
