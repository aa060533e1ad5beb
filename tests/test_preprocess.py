"""Selection, galaxy-level splits and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from surveydust.config import load_training_config
from surveydust.preprocess import crop_centre, network_inputs, select_samples, split_by_galaxy


def fake_store(n_gal: int = 40, per_gal: int = 8, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    n = n_gal * per_gal
    ds = xr.Dataset(
        {"image": (("sample", "band", "y", "x"), rng.normal(size=(n, 3, 40, 40)).astype(np.float32)),
         "snr": (("sample", "band"), rng.uniform(0, 20, size=(n, 3))),
         **{t: ("sample", rng.normal(size=n)) for t in ("A_V", "EBV", "log_ssfr")}},
        coords={"band": ["F277W", "F356W", "F444W"], "galaxy_id": ("sample", np.repeat(np.arange(n_gal), per_gal))},
    )
    return ds


def test_split_never_shares_a_galaxy() -> None:
    ds = fake_store()
    cfg = load_training_config()
    split = split_by_galaxy(ds["galaxy_id"].values, select_samples(ds, cfg), cfg)
    gid = ds["galaxy_id"].values
    parts = [set(gid[s]) for s in (split.train, split.validation, split.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert parts[2] == set(split.test_galaxies.tolist()) and parts[1] == set(split.validation_galaxies.tolist())
    n_gal = len(set().union(*parts))
    assert len(parts[2]) == round(0.15 * n_gal)
    again = split_by_galaxy(gid, select_samples(ds, cfg), cfg)
    np.testing.assert_array_equal(again.test, split.test)  # deterministic from the seed
    other = split_by_galaxy(gid, select_samples(ds, cfg), load_training_config(seed=5))
    assert set(other.test_galaxies.tolist()) != set(split.test_galaxies.tolist())


def test_selection_snr_nan_and_labels() -> None:
    ds = fake_store()
    ds["image"][0, 1, 5, 5] = np.nan
    ds["A_V"][1] = np.nan
    cfg = load_training_config(snr_min=10.0)
    keep = select_samples(ds, cfg)
    assert 0 not in keep and 1 not in keep
    assert (ds["snr"].sel(band="F277W").values[keep] >= 10).all()
    with pytest.raises(ValueError, match=r"no band\(s\) \['F444W'\]"):
        select_samples(ds.sel(band=["F277W", "F356W"]), cfg)
    with pytest.raises(ValueError, match="no label"):
        select_samples(ds.drop_vars("EBV"), cfg)


def test_too_few_galaxies() -> None:
    ds = fake_store(n_gal=5)
    cfg = load_training_config(snr_min=0.0)
    with pytest.raises(ValueError, match="only 5 galaxies pass the selection"):
        split_by_galaxy(ds["galaxy_id"].values, select_samples(ds, cfg), cfg)


def test_normalisation_keeps_colours() -> None:
    images = np.zeros((2, 3, 40, 40), np.float32)
    images[:, :, 20, 20] = [[10.0, 20.0, 30.0], [100.0, 200.0, 300.0]]
    out = network_inputs(images, ("F277W", "F356W", "F444W"), 32)
    assert out["band_F277W"].shape == (2, 32, 32, 1)
    np.testing.assert_allclose(out["log_flux"][:, 0], [np.log10(60), np.log10(600)], rtol=1e-6)
    n_ap = 208  # pixels within 8 px of the centre of a 32 x 32 crop
    for b, frac in zip(("F277W", "F356W", "F444W"), (1 / 6, 2 / 6, 3 / 6)):
        np.testing.assert_allclose(out[f"band_{b}"].sum(axis=(1, 2, 3)), frac * n_ap, rtol=1e-6)
    with pytest.raises(ValueError, match="larger than"):
        crop_centre(images, 64)


def test_ood_score_is_small_for_training_like_stamps_and_large_for_others() -> None:
    from surveydust.preprocess import feature_stats, ood_score

    rng = np.random.default_rng(0)
    base = rng.lognormal(0.0, 0.5, size=(400, 3, 1, 1)) * np.ones((1, 1, 32, 32))
    images = base * (1.0 + 0.1 * rng.normal(size=(400, 3, 1, 1)))
    stats = feature_stats(images, 32)
    typical = ood_score(images[:100], 32, stats)
    assert np.median(typical) < 2.5
    odd = images[:5].copy()
    odd[:, 0] *= 1000.0  # one band far brighter than anything seen: a colour never trained on
    assert (ood_score(odd, 32, stats) > 10).all()
