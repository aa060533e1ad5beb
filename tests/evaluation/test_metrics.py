"""The one metrics function, the evaluation table and the binned skill built from it."""

from __future__ import annotations

import numpy as np
import pytest

from surveydust.evaluation.baselines import BASELINE, MEURER
from surveydust.evaluation.metrics import METRICS, RESIDUAL_METRICS, residual_metrics
from surveydust.quantities import SCORED
from surveydust.stores.training import open_training_store

Z3, NOZ3 = "CNN F277W+F356W+F444W +z", "CNN F277W+F356W+F444W no z"
CNNS = ("CNN F277W", Z3, NOZ3)
BASELINE_Z = BASELINE + " +z"


def test_residual_metrics_by_hand():
    true = np.array([0.0, 1.0, 2.0, np.nan, 4.0])
    pred = np.array([0.5, 0.5, 2.0, 1.0, np.nan])
    pct = np.array([[-1.0, -0.5, 0.5, 1.0, 2.0],    # truth 0 inside both intervals
                    [0.4, 0.45, 0.5, 0.55, 0.6],    # truth 1 outside both
                    [np.nan] * 5,                   # no posterior: left out of coverage and CRPS
                    [0.0, 0.5, 1.0, 1.5, 2.0],
                    [0.0, 0.5, 1.0, 1.5, 2.0]])
    m = residual_metrics(true, pred, pct, constant=1.0)
    assert list(m) == list(RESIDUAL_METRICS)
    assert m["N"] == 3
    assert m["MAE"] == pytest.approx(1.0 / 3)
    assert m["MSE"] == pytest.approx(0.5 / 3)
    assert m["bias"] == pytest.approx(0.0) and m["median_bias"] == pytest.approx(0.0)
    assert m["variance"] == pytest.approx(np.var([0.5, -0.5, 0.0]))
    assert m["MAE_constant"] == pytest.approx(2.0 / 3) and m["MAE_ratio"] == pytest.approx(0.5)
    assert m["spearman"] == pytest.approx(1.5 / np.sqrt(2 * 1.5))  # ranks (1, 2, 3) vs (1.5, 1.5, 3)
    assert m["slope"] == pytest.approx(0.75)
    assert m["coverage_68"] == pytest.approx(0.5) and m["coverage_95"] == pytest.approx(0.5)
    assert m["CRPS"] == pytest.approx((0.226 + 0.4484) / 2)  # pinball losses worked out by hand
    bare = residual_metrics(true, pred)
    assert np.isnan(bare["coverage_95"]) and np.isnan(bare["CRPS"]) and np.isnan(bare["MAE_constant"])
    assert np.isnan(bare["MAE_ratio"])
    empty = residual_metrics(np.array([np.nan]), np.array([1.0]))
    assert empty["N"] == 0 and np.isnan(empty["median_bias"])
    flat = residual_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0]))
    assert np.isnan(flat["spearman"]) and np.isnan(flat["slope"])  # a constant prediction has no rank order
    assert residual_metrics(np.array([0.0, 0.0, 1.0]), np.array([1.0, 1.0, 1.0]))["median_bias"] == 1.0


def test_compare_pair_metrics_are_residual_metrics():
    """compare's method-against-method numbers: the one function with ``b`` as the truth."""
    from surveydust.compare import pair_metrics

    a, b = np.array([1.0, 2.0, np.nan, 4.0, 3.0]), np.array([0.0, 2.0, 3.0, np.nan, 2.0])
    m = pair_metrics(a, b)
    assert m == pytest.approx({"N": 3, "MAE": 2 / 3, "std": np.std([1, 0, 1]), "variance": np.var([1, 0, 1]),
                               "mean": 2 / 3})
    assert isinstance(m["N"], int)
    empty = pair_metrics(np.array([np.nan]), np.array([1.0]))
    assert empty["N"] == 0 and isinstance(empty["N"], int) and np.isnan(empty["MAE"])


def test_table_layout(evaluation_world):
    table = evaluation_world["result"].table
    names = [*CNNS, BASELINE_Z, MEURER]
    assert list(table["model"].values) == names
    assert list(table["target"].values) == list(SCORED)
    assert set(METRICS) <= set(table.data_vars) and "median_bias" not in table  # the table as published
    assert {"MAE_constant", "MAE_ratio", "spearman", "slope", "CRPS"} <= set(METRICS)
    fitted = table.sel(model=[*CNNS, BASELINE_Z])
    for m in ("N", "MAE", "MSE", "std", "variance", "bias"):
        assert np.isfinite(fitted[m].values).all(), m
    # (the colour baseline's trees, fitted on ~30 samples, may predict one value: no rank order)
    assert np.isfinite(table["spearman"].sel(target="log_ssfr", model=list(CNNS)).values).all()
    predicted = fitted.sel(target=["A_V", "EBV", "log_ssfr"])  # R_V is derived: no constant guess of its own
    for m in ("MAE_constant", "MAE_ratio"):
        assert np.isfinite(predicted[m].values).all(), m
    np.testing.assert_allclose(table["variance"], table["std"] ** 2, rtol=1e-9)
    np.testing.assert_allclose(table["MSE"], table["variance"] + table["bias"] ** 2, rtol=1e-9)
    np.testing.assert_allclose(predicted["MAE_ratio"], predicted["MAE"] / predicted["MAE_constant"], rtol=1e-9)
    assert (table["held_out"].values == 1).all()
    # the same samples for every method, scored on the same constant guess
    assert len(set(table["n_samples"].values.tolist())) == 1
    np.testing.assert_allclose(table["MAE_constant"].sel(model=Z3), table["MAE_constant"].sel(model=NOZ3))


def test_metrics_match_direct_computation(evaluation_world, held_out_samples):
    from scipy.stats import spearmanr

    from surveydust.posterior import crps_from_percentiles

    world = evaluation_world
    table = world["result"].table
    for bundle, name, with_z in zip([*world["bundles"], world["bundles"][1]], CNNS, (False, True, False)):
        idx, p = held_out_samples(world["store"], bundle)
        ds = open_training_store(world["store"]).isel(sample=idx)
        pred = p.predict(ds["image"].sel(band=list(p.bands)).values, ds["redshift"].values if with_z else None)
        col = table.sel(model=name)
        for t in ("A_V", "EBV", "log_ssfr", "R_V"):
            true, guess = ds[t].values.astype(float), pred[t].values.astype(float)
            ok = np.isfinite(true) & np.isfinite(guess)
            r = guess[ok] - true[ok]
            assert col["N"].sel(target=t) == ok.sum()
            np.testing.assert_allclose(col["MAE"].sel(target=t), np.abs(r).mean(), rtol=1e-5)
            np.testing.assert_allclose(col["MSE"].sel(target=t), (r**2).mean(), rtol=1e-5)
            np.testing.assert_allclose(col["bias"].sel(target=t), r.mean(), rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(col["spearman"].sel(target=t), spearmanr(true[ok], guess[ok]).statistic,
                                       rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(col["slope"].sel(target=t), np.polyfit(true[ok], guess[ok], 1)[0],
                                       rtol=1e-3, atol=1e-6)
            if t == "R_V":  # derived: no posterior, no constant guess
                assert np.isnan(col["CRPS"].sel(target=t)) and np.isnan(col["coverage_68"].sel(target=t))
                continue
            const = p.meta["constant_guess"][t]
            np.testing.assert_allclose(col["MAE_constant"].sel(target=t), np.abs(true[ok] - const).mean(), rtol=1e-5)
            pct = np.column_stack([pred[f"{t}_p025"], pred[f"{t}_p16"], pred[t], pred[f"{t}_p84"],
                                   pred[f"{t}_p975"]]).astype(float)[ok]
            inside = (true[ok] >= pct[:, 1]) & (true[ok] <= pct[:, 3])
            np.testing.assert_allclose(col["coverage_68"].sel(target=t), inside.mean(), atol=1e-9)
            np.testing.assert_allclose(col["CRPS"].sel(target=t), crps_from_percentiles(true[ok], pct).mean(),
                                       rtol=1e-4)
        assert col["N"].sel(target="R_V") <= col["N"].sel(target="A_V") == idx.size


def test_cnn_coverage_and_crps(evaluation_world):
    cnn = evaluation_world["result"].table.sel(model=list(CNNS), target=["A_V", "EBV", "log_ssfr"])
    for m in ("coverage_68", "coverage_95", "CRPS"):
        assert np.isfinite(cnn[m].values).all(), m
    assert ((cnn["coverage_68"] >= 0) & (cnn["coverage_95"] <= 1)).all()
    assert (cnn["coverage_95"] >= cnn["coverage_68"]).all()
    assert (cnn["CRPS"] > 0).all()


@pytest.mark.parametrize(("name", "by", "first", "last"), [("bias_by_av", "true_A_V", "0-0.1", "1.5-inf"),
                                                        ("skill_by_snr", "snr", "0-10", "50-inf")])
def test_binned_skill_tables(evaluation_world, name, by, first, last):
    from astropy.table import Table

    out = evaluation_world["tmp"] / "out"
    binned = Table.read(out / f"{name}.ecsv", format="ascii.ecsv")
    assert evaluation_world["result"].paths[name] == out / f"{name}.ecsv"
    table = evaluation_world["result"].table
    assert binned.colnames[0] == f"{by}_bin" and binned[f"{by}_bin"][0] == first and binned[f"{by}_bin"][-1] == last
    for model in table["model"].values:
        n = np.asarray(binned[f"{model}: N"], float)
        assert n.sum() == table["N"].sel(target="A_V", model=model)  # every sample in one bin
        for key in ("bias", "MAE"):  # the bins' N-weighted means are the whole table's
            v = np.asarray(binned[f"{model}: {key}"], float)
            np.testing.assert_allclose(np.nansum(v * n) / n.sum(), table[key].sel(target="A_V", model=model),
                                       rtol=1e-6, atol=1e-9)
        assert f"{model}: spearman" in binned.colnames
