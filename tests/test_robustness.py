"""The shift suite's worlds: every shift is a valid simulator setting that differs from the training
prior where it says it does, and an unknown one is refused in one line; its errors resample galaxies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from surveydust.config import load_simulation_config
from surveydust.robustness import SHIFTS, galaxy_bootstrap, shift_settings
from surveydust.simulate.priors import FIXED_PRIORS


def test_every_shift_is_a_valid_world_that_differs_from_the_prior(tmp_path: Path) -> None:
    default = load_simulation_config()
    for name in SHIFTS:
        cfg = load_simulation_config(**shift_settings(name, psf_dir=tmp_path))
        changed = cfg != default
        assert changed == (name != "in_domain"), name
    # the previous simulator fixes its physics: one dust law, every range it sets of zero width but
    # the Sersic index's (it drew n in 0.8-2)
    previous = load_simulation_config(**shift_settings("previous_simulator")).priors
    for key in FIXED_PRIORS:
        value = getattr(previous, key)
        if key == "dust_laws":
            assert list(value) == ["calzetti"]
        elif isinstance(value, tuple) and key != "sersic_n":
            assert value[0] == value[1], key


def test_unknown_shift_and_missing_psf_folder_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="unknown shift 'nope'; known: in_domain") as info:
        shift_settings("nope")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="needs the WebbPSF folder"):
        shift_settings("webbpsf")


def _galaxies(n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Truth, prediction, percentiles (prediction -/+ 1 and 2 sigma of the residual) of ``n`` galaxies."""
    truth = rng.uniform(0.0, 2.0, n)
    pred = truth + rng.normal(0.0, 0.3, n)
    pct = pred[:, None] + 0.3 * np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    return truth, pred, pct


def test_bootstrap_errors_count_galaxies_not_their_images() -> None:
    rng = np.random.default_rng(3)
    truth, pred, pct = _galaxies(150, rng)
    flagged = np.zeros(150, bool)
    alone = galaxy_bootstrap(truth, pred, pct, flagged, np.arange(150))
    copies = 10  # every galaxy imaged ten times, identically: no new information
    repeated = [np.repeat(a, copies, axis=0) for a in (truth, pred, pct, flagged)]
    by_galaxy = galaxy_bootstrap(*repeated, np.repeat(np.arange(150), copies))
    by_image = galaxy_bootstrap(*repeated, np.arange(150 * copies))  # copies taken as independent
    for name, err in alone.items():
        assert 0.0 < err < 0.1, name
        assert by_galaxy[name] == pytest.approx(err, rel=0.35), name
        assert by_image[name] < 0.6 * by_galaxy[name], name  # ~ 1 / sqrt(10) of it


def test_bootstrap_errors_need_two_galaxies() -> None:
    truth, pred, pct = _galaxies(5, np.random.default_rng(0))
    errors = galaxy_bootstrap(truth, pred, pct, np.zeros(5, bool), np.zeros(5, int))
    assert all(np.isnan(v) for v in errors.values())
