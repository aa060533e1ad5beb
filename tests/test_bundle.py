"""Model bundles: save, checks on load, prediction output (medians, calibrated percentiles,
redshifts), the shipped bundles by band set, and a second Keras backend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from surveydust.bundle import (
    FORMAT_VERSION,
    META_FILE,
    MODEL_FILE,
    default_bundle_path,
    load_model,
    meta_checksum,
    read_meta,
    richest_bundle,
    save_bundle,
    shipped_bundles,
)
from surveydust.config import load_training_config
from surveydust.model import build_model
from surveydust.posterior import LEVEL_NAMES, NOMINAL_Z, from_network, percentiles, to_network
from surveydust.quantities import MIN_PREDICTED_EBV_FOR_RV

BANDS = ("F277W", "F356W", "F444W")
TARGETS = ["A_V", "EBV", "log_ssfr"]
# network-space (ln(x + c) for A_V and E(B-V)) mean and standard deviation per target
SCALING = {"A_V": [float(to_network("A_V", np.array(0.3))), 0.8],
           "EBV": [float(to_network("EBV", np.array(0.07))), 0.8], "log_ssfr": [-8.2, 0.3]}
WIDE = [-3.1, -1.64, 0.0, 1.64, 3.1]  # calibrated offsets [sigma] of a network that was too sure of itself
SIX = ("F115W", "F150W", "F200W", "F277W", "F356W", "F444W")
SHIPPED_SETS = {"six-band": SIX, "three-band": BANDS, "one-band": ("F277W",)}


def _save(path: Path, *, uses_redshift: bool = False, loss: str = "gaussian_nll", **extra) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    cfg = load_training_config(bands=list(BANDS))
    model = build_model(cfg.bands, 32, 3, cfg.model, loss)
    meta = {"bands": list(BANDS), "targets": TARGETS, "crop": 32, "loss": loss, "target_scaling": SCALING,
            "uses_redshift": uses_redshift, **extra}
    return save_bundle(model, path, meta)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("b") / "bundle")


@pytest.fixture(scope="module")
def z_bundle(tmp_path_factory) -> Path:
    """Same weights, takes redshifts; calibrated wide without z, nominal with z."""
    cal = {"n_samples": 100, "without_redshift": {t: WIDE for t in TARGETS},
           "with_redshift": {t: list(NOMINAL_Z) for t in TARGETS}}
    return _save(tmp_path_factory.mktemp("b") / "zbundle", uses_redshift=True, calibration=cal)


def _check_posterior(ds, targets=TARGETS) -> None:
    """Medians inside ordered percentiles, err = half the 68% width, dust never negative."""
    for t in targets:
        cols = [ds[f"{t}_{n}"].values if n != "p50" else ds[t].values for n in LEVEL_NAMES]
        pct = np.column_stack(cols)
        assert np.isfinite(pct).all(), t
        assert (np.diff(pct, axis=1) >= 0).all(), t  # p025 <= p16 <= median <= p84 <= p975
        np.testing.assert_allclose(ds[f"{t}_err"], 0.5 * (ds[f"{t}_p84"] - ds[f"{t}_p16"]), rtol=1e-5, atol=1e-7)
    for t in ("A_V", "EBV"):
        if t in targets:
            for n in ("", "_p025", "_p16", "_p84", "_p975"):
                assert (ds[f"{t}{n}"].values >= 0).all(), t + n


def test_predict_dataset(bundle: Path, stamps) -> None:
    predictor = load_model(bundle)
    assert predictor.bands == BANDS and not predictor.uses_redshift
    assert predictor.name == "F277W+F356W+F444W"
    ds = predictor.predict(stamps(), batch_size=16)  # batched internally
    expected = {f"{t}{s}" for t in TARGETS for s in ("", "_err", "_p025", "_p16", "_p84", "_p975")}
    assert set(ds.data_vars) == expected | {"R_V", "R_V_err", "ood"}
    for name in ds.data_vars:
        assert ds[name].shape == (50,), name
    _check_posterior(ds)
    for name in ("A_V", "EBV", "log_ssfr"):
        assert (ds[f"{name}_err"] > 0).all()
    assert ds["A_V"].attrs["units"] == ds["EBV_p975"].attrs["units"] == "mag"
    assert ds["log_ssfr_p16"].attrs["units"] == "log10(yr^-1)" and ds["R_V"].attrs["units"] == ""
    ok = ds["EBV"].values > MIN_PREDICTED_EBV_FOR_RV
    np.testing.assert_allclose(ds["R_V"].values[ok], (ds["A_V"] / ds["EBV"]).values[ok], rtol=1e-5)
    assert np.isnan(ds["R_V"].values[~ok]).all()
    assert ds.attrs["bands"] == list(BANDS) and ds.attrs["uses_redshift"] == 0
    assert ds.attrs["model_id"] == predictor.model_id == read_meta(bundle)["checksums"][MODEL_FILE][:12]
    np.testing.assert_allclose(predictor.predict(stamps(), batch_size=1024)["A_V"], ds["A_V"], rtol=1e-5)
    assert predictor.predict(stamps()[:0]).sizes["sample"] == 0
    with pytest.raises(ValueError, match="expected images"):
        predictor.predict(stamps()[:, :2])


def test_predictions_follow_the_network_outputs(z_bundle: Path, stamps) -> None:
    """Independent of Predictor: medians and percentiles from the raw outputs, the scaling and
    the calibrated offsets (with-z offsets for sources with a redshift, without-z for the rest)."""
    import keras

    from surveydust.model import sigma_from_raw
    from surveydust.preprocess import network_inputs

    p = load_model(z_bundle)
    img = stamps(20)
    z = np.where(np.arange(20) % 2 == 0, 7.3, np.nan)
    ds = p.predict(img, z)
    raw = np.asarray(p.model.predict_on_batch(network_inputs(img, 32, z, p.colour_inputs)), np.float64)
    for i, t in enumerate(TARGETS):
        mean = raw[:, i] * SCALING[t][1] + SCALING[t][0]
        sigma = np.asarray(keras.ops.convert_to_numpy(sigma_from_raw(raw[:, 3 + i]))) * SCALING[t][1]
        np.testing.assert_allclose(ds[t], from_network(t, mean), rtol=1e-4, atol=1e-6)
        has = np.isfinite(z)
        for offsets, rows in ((NOMINAL_Z, has), (WIDE, ~has)):
            want = percentiles(t, mean[rows], sigma[rows], offsets)
            np.testing.assert_allclose(ds[f"{t}_p16"].values[rows], want[:, 1], rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(ds[f"{t}_p975"].values[rows], want[:, 4], rtol=1e-4, atol=1e-6)


def test_to_dataset_rebuilds_a_prediction_from_its_parts(z_bundle: Path, stamps) -> None:
    """The public constructor of predict's output (what a mixture of predictions uses)."""
    import xarray as xr

    p = load_model(z_bundle)
    ds = p.predict(stamps(12), np.where(np.arange(12) < 6, 7.0, np.nan))
    pct = {t: np.column_stack([ds[t if n == "p50" else f"{t}_{n}"].values.astype(np.float64) for n in LEVEL_NAMES])
           for t in TARGETS}
    rebuilt = p.to_dataset({t: pct[t][:, LEVEL_NAMES.index("p50")] for t in TARGETS}, pct, ds["flag"].values,
                           ds["ood"].values)
    assert list(rebuilt.data_vars) == list(ds.data_vars) and rebuilt.attrs == ds.attrs
    xr.testing.assert_allclose(rebuilt, ds, rtol=1e-5)  # from float32 percentiles
    assert all(rebuilt[v].attrs == ds[v].attrs for v in ds.variables)


def test_calibration_widens_the_intervals_not_the_median(bundle: Path, z_bundle: Path, stamps) -> None:
    plain, calibrated = load_model(bundle).predict(stamps()), load_model(z_bundle).predict(stamps())
    for t in TARGETS:
        np.testing.assert_allclose(calibrated[t], plain[t], rtol=1e-5, atol=1e-7)  # no z: same network input
        assert (calibrated[f"{t}_p84"] - calibrated[f"{t}_p16"] > plain[f"{t}_p84"] - plain[f"{t}_p16"]).all()
        assert (calibrated[f"{t}_p975"] >= plain[f"{t}_p975"]).all()
    _check_posterior(calibrated)


def test_redshift_is_used_only_by_models_that_take_it(bundle: Path, z_bundle: Path, stamps) -> None:
    img = stamps(10)
    plain = load_model(bundle)
    np.testing.assert_array_equal(plain.predict(img, 7.0)["A_V"], plain.predict(img)["A_V"])
    zp = load_model(z_bundle)
    assert zp.uses_redshift and zp.name == "F277W+F356W+F444W+z"
    with_z, without = zp.predict(img, 7.0), zp.predict(img)
    assert with_z.attrs["uses_redshift"] == 1
    assert not np.allclose(with_z["log_ssfr"], without["log_ssfr"])  # z reaches the network
    np.testing.assert_allclose(zp.predict(img, np.full(10, 7.0))["A_V"], with_z["A_V"], rtol=1e-6)  # broadcast
    np.testing.assert_allclose(zp.predict(img, np.full(10, np.nan))["A_V"], without["A_V"], rtol=1e-6)
    _check_posterior(with_z)


def test_mape_bundle_gives_non_negative_means_without_percentiles(tmp_path: Path, stamps) -> None:
    p = load_model(_save(tmp_path / "mape", loss="mape", target_scaling={t: [0.0, 1.0] for t in TARGETS}))
    ds = p.predict(stamps(10))
    assert (ds["A_V"] >= 0).all() and (ds["EBV"] >= 0).all() and np.isfinite(ds["log_ssfr"]).all()
    assert np.isnan(ds["A_V_p16"]).all() and np.isnan(ds["log_ssfr_err"]).all()


def _copy_with_meta(bundle: Path, dest: Path, edit) -> Path:
    shutil.copytree(bundle, dest)
    meta = json.loads((dest / META_FILE).read_text())
    (dest / META_FILE).write_text(json.dumps(edit(meta)))
    return dest


def test_a_format_2_bundle_is_read_with_its_levels_as_offsets(z_bundle: Path, tmp_path: Path, stamps) -> None:
    """Format 2 stored calibrated Gaussian levels in (0, 1): read, they give the same percentiles."""
    from scipy.special import ndtr

    def as_format_2(meta):
        cal = {k: {t: [float(ndtr(z)) for z in v] for t, v in part.items()} if k != "n_samples" else part
               for k, part in meta["calibration"].items()}
        old = {**meta, "calibration": cal, "format_version": 2}
        return {**old, "checksums": {**meta["checksums"], META_FILE: meta_checksum(old)}}

    old = _copy_with_meta(z_bundle, tmp_path / "v2", as_format_2)
    assert json.loads((old / META_FILE).read_text())["calibration"]["without_redshift"]["A_V"][0] < 0.01
    assert read_meta(old)["format_version"] == FORMAT_VERSION
    np.testing.assert_allclose(read_meta(old)["calibration"]["without_redshift"]["A_V"], WIDE, atol=1e-9)
    img, z = stamps(10), np.where(np.arange(10) % 2 == 0, 7.3, np.nan)
    new, was = load_model(z_bundle).predict(img, z), load_model(old).predict(img, z)
    for name in ("A_V_p025", "EBV_p975", "log_ssfr_p16"):
        np.testing.assert_allclose(was[name], new[name], rtol=1e-6)


def _one_line_error(path: Path, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_bundle_checks(bundle: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / MODEL_FILE).unlink()
    _one_line_error(broken, "model.keras is missing")
    _one_line_error(_copy_with_meta(bundle, tmp_path / "old", lambda m: {**m, "format_version": 1}),
                    "format version 1")
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    with open(tampered / MODEL_FILE, "ab") as f:
        f.write(b"x")
    _one_line_error(tampered, "model.keras does not match its checksum")
    not_json = tmp_path / "notjson"
    shutil.copytree(bundle, not_json)
    (not_json / META_FILE).write_text("{not json")
    _one_line_error(not_json, "not valid JSON")
    listed = tmp_path / "list"
    shutil.copytree(bundle, listed)
    (listed / META_FILE).write_text("[1, 2]")
    _one_line_error(listed, "format version None")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nothing")
    with pytest.raises(ValueError, match="not both"):
        load_model(bundle, bands=list(BANDS))


def test_saved_metadata_carries_version_and_both_checksums(bundle: Path) -> None:
    meta = read_meta(bundle)
    assert meta["format_version"] == FORMAT_VERSION == 3
    assert set(meta["checksums"]) == {MODEL_FILE, META_FILE}
    assert meta["checksums"][META_FILE] == meta_checksum(meta)
    assert meta["target_scaling"] == SCALING


def test_reformatted_metadata_still_loads(bundle: Path, tmp_path: Path, stamps) -> None:
    """The metadata checksum is over the content, not the layout of bundle.json."""
    same = _copy_with_meta(bundle, tmp_path / "same", lambda m: dict(reversed(list(m.items()))))
    np.testing.assert_allclose(load_model(same).predict(stamps(5))["A_V"],
                               load_model(bundle).predict(stamps(5))["A_V"], rtol=1e-6)


@pytest.mark.parametrize("edit", [
    lambda m: {**m, "target_scaling": {**m["target_scaling"], "A_V": [0.0, 1.0]}},
    lambda m: {**m, "bands": ["F277W", "F444W", "F356W"]},
    lambda m: {**m, "uses_redshift": True},
    lambda m: {**m, "calibration": {"without_redshift": {t: WIDE for t in TARGETS}}},
], ids=["target_scaling", "bands", "uses_redshift", "added-calibration"])
def test_edited_metadata_is_refused(bundle: Path, tmp_path: Path, edit) -> None:
    _one_line_error(_copy_with_meta(bundle, tmp_path / "edited", edit),
                    r"bundle.json does not match its checksum \(edited or corrupt\)")


@pytest.mark.parametrize("key", ["checksums", "target_scaling", "bands", "loss"])
def test_missing_key_is_a_one_line_value_error(bundle: Path, tmp_path: Path, key: str) -> None:
    def drop(m):
        return {k: v for k, v in m.items() if k != key}

    _one_line_error(_copy_with_meta(bundle, tmp_path / "incomplete", drop), f"lacks {key}: not a complete bundle")


def test_checksums_of_the_wrong_type_are_a_value_error(bundle: Path, tmp_path: Path) -> None:
    _one_line_error(_copy_with_meta(bundle, tmp_path / "sums", lambda m: {**m, "checksums": "abc"}), "checksum")
    _one_line_error(_copy_with_meta(bundle, tmp_path / "sums2", lambda m: {**m, "checksums": {}}), "checksum")


@pytest.mark.parametrize("shipped", [False, True], ids=["new-bundle", "shipped-bundle"])
def test_loads_on_jax_backend(z_bundle: Path, tmp_path: Path, shipped: bool, backend_predictions) -> None:
    pytest.importorskip("jax")
    want, got = backend_predictions(None if shipped else z_bundle, "jax", tmp_path)
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- shipped bundles


def _shipped(bands: tuple[str, ...]) -> Path:
    found = shipped_bundles()
    if bands not in found:
        pytest.skip(f"no shipped bundle for {'+'.join(bands)} yet (shipped: "
                    f"{'; '.join('+'.join(b) for b in found) or 'none'})")
    return found[bands]


@pytest.mark.parametrize("name", list(SHIPPED_SETS))
def test_shipped_bundle(name: str, stamps) -> None:
    bands = SHIPPED_SETS[name]
    path = _shipped(bands)
    assert path.name == name
    predictor = load_model(bands=list(bands))
    assert predictor.path == path and predictor.bands == bands
    assert predictor.meta["loss"] == "gaussian_nll" and "calibration" in predictor.meta
    assert sum(f.stat().st_size for f in predictor.path.iterdir()) < 5 * 2**20
    img = stamps(bands=len(bands))
    for z in (None, 7.0):
        ds = predictor.predict(img, z)
        # 0 where the whole 16-84% interval is clipped at A_V = 0 (a confidently dust-free stamp)
        assert (ds["A_V_err"] >= 0).all() and (ds["log_ssfr_err"] > 0).all() and np.isfinite(ds["log_ssfr"]).all()
        _check_posterior(ds)


def test_shipped_bundles_are_found_by_band_set() -> None:
    found = shipped_bundles()
    assert found, "no shipped bundle at all"
    for bands, path in found.items():
        assert tuple(read_meta(path)["bands"]) == bands
        assert default_bundle_path(bands) == path
        assert default_bundle_path([b.lower() for b in reversed(bands)]) == path  # any order, any case
        assert richest_bundle(bands) == path  # a bundle's own bands: no other one has more of them
    widest = max(found, key=len)
    assert default_bundle_path() == found[widest] and load_model().bands == widest
    with pytest.raises(ValueError, match=r"no shipped bundle for bands \['F090W'\]"):
        default_bundle_path(["F090W"])
    with pytest.raises(ValueError, match=r"no shipped bundle can run on bands \['F090W'\]"):
        richest_bundle(["F090W"])


def test_richest_bundle_takes_the_most_bands_the_data_have() -> None:
    found = shipped_bundles()
    assert richest_bundle([*SIX, "F090W", "F410M"]) == found[max(found, key=len)]
    if BANDS in found:
        assert richest_bundle([*BANDS, "F115W"]) == found[BANDS]  # six-band needs F150W, F200W too
    if ("F277W",) in found:
        assert richest_bundle(["F277W", "F150W"]) == found[("F277W",)]
