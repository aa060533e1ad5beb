"""The evaluation's tables and figures."""

from __future__ import annotations

import numpy as np

from surveydust.evaluation.baselines import BASELINE, MEURER
from surveydust.evaluation.metrics import METRICS
from surveydust.evaluation.report import density_levels, metric_unit, slug
from surveydust.quantities import SCORED

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CNNS = ("CNN F277W", "CNN F277W+F356W+F444W +z", "CNN F277W+F356W+F444W no z")


def test_files(evaluation_world):
    from astropy.table import Table

    out = evaluation_world["tmp"] / "out"
    names = ["cnn-f277w.png", "cnn-f277w-f356w-f444w-z.png", "cnn-f277w-f356w-f444w-no-z.png",
             "baseline-colours-z.png", "meurer-uv-slope.png", "calibration.png"]
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 10_000, name
    expected = {out / n for n in names} | {out / f for f in ("table.csv", "table.ecsv", "bias_by_av.ecsv",
                                                           "skill_by_snr.ecsv")}
    assert set(evaluation_world["result"].paths.values()) >= expected
    ecsv = Table.read(out / "table.ecsv", format="ascii.ecsv")
    csv = Table.read(out / "table.csv", format="ascii.csv")
    for t in (ecsv, csv):
        assert t.colnames == ["target", "metric", "unit", *CNNS, BASELINE + " +z", MEURER]
        assert len(t) == len(SCORED) * len(METRICS) + 2
    row = (ecsv["target"] == "A_V") & (ecsv["metric"] == "MAE")
    np.testing.assert_allclose(ecsv["CNN F277W"][row][0],
                               evaluation_world["result"].table["MAE"].sel(target="A_V", model="CNN F277W"))
    assert ecsv["unit"][row][0] == "mag"
    ratio = (ecsv["target"] == "A_V") & (ecsv["metric"] == "MAE_ratio")
    assert ecsv["unit"][ratio][0] in ("", None) or np.ma.is_masked(ecsv["unit"][ratio][0])
    assert ecsv.meta["residual_units"]["log_ssfr"] == "dex"
    assert ecsv.meta["target_units"]["A_V"] == "A_V [mag]" and set(ecsv.meta["metrics"]) == set(METRICS)
    assert ecsv.meta["models"]["CNN F277W"]["samples"].startswith("held-out")


def test_density_levels_slug_and_units():
    density = np.zeros((10, 10))
    density[5, 5], density[2, 2] = 9.0, 1.0
    levels = density_levels(density, (0.95, 0.5))
    assert list(levels) == [1.0, 9.0]
    assert slug("CNN F277W+F356W+F444W") == "cnn-f277w-f356w-f444w" and slug(BASELINE) == "baseline-colours"
    assert (metric_unit("MSE", "mag"), metric_unit("MAE", "dex"), metric_unit("spearman", "mag")) == ("mag2", "dex", "")
