"""The shift suite's worlds: every shift is a valid simulator setting that differs from the training
prior where it says it does, and an unknown one is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from surveydust.config import load_simulation_config
from surveydust.robustness import SHIFTS, shift_settings
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
