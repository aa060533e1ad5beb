"""Out-of-distribution scores (surveydust.ood): the threshold flags the stated share of in-domain
stamps, shifts in either space are flagged, brightness alone is not, and the score is in units of
the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from surveydust.ood import FLAG_SHARE, colours, fit_ood, ood_scores
from surveydust.robustness import auroc


MIXING = np.random.default_rng(0).normal(size=(16, 16)) * 0.1


def _spaces(rng: np.random.Generator, n: int, colour_shift: float = 0.0) -> dict[str, np.ndarray]:
    """Stand-ins for a network's ReLU features (correlated, partly zero) and colours [mag]."""
    return {"features": np.maximum(rng.normal(size=(n, 16)) @ MIXING + 0.1, 0.0),
            "colours": rng.normal(colour_shift, 0.2, size=(n, 3))}


def test_threshold_flags_the_stated_share_of_fresh_in_domain_stamps() -> None:
    reference, calibration, fresh = (_spaces(np.random.default_rng(s), 4000) for s in (1, 2, 3))
    stats = fit_ood(reference, calibration)
    assert stats["kind"] == "features+colours" and stats["flag_share"] == FLAG_SHARE
    assert np.mean(ood_scores(calibration, stats) > 1.0) == pytest.approx(FLAG_SHARE, abs=0.002)
    assert np.mean(ood_scores(fresh, stats) > 1.0) == pytest.approx(FLAG_SHARE, abs=0.015)


def test_a_colour_shift_is_flagged_and_separated() -> None:
    reference, calibration, in_domain = (_spaces(np.random.default_rng(s), 3000) for s in (4, 5, 6))
    shifted = _spaces(np.random.default_rng(7), 3000, colour_shift=0.5)  # 2.5 sigma redder in every colour
    stats = fit_ood(reference, calibration)
    assert np.mean(ood_scores(shifted, stats) > 1.0) > 0.5
    assert auroc(ood_scores(in_domain, stats), ood_scores(shifted, stats)) > 0.9
    assert np.isnan(auroc(np.r_[0.1, 0.2], np.r_[np.nan]))


def test_colours_ignore_brightness() -> None:
    rng = np.random.default_rng(6)
    images = rng.uniform(1.0, 2.0, size=(5, 3, 32, 32))
    assert colours(images, 32).shape == (5, 3)
    np.testing.assert_allclose(colours(images * 100.0, 32), colours(images, 32), atol=1e-9)
    assert colours(images[:, :1], 32).shape == (5, 0)
