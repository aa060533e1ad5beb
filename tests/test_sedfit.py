"""SED fits with Bagpipes (the optional ``[sed]`` extra): recovery of a known model, the Dask
path on a tiny catalogue, and the error when Bagpipes is missing."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from surveydust.compare import methods
from surveydust.sedfit import filter_curves, fit_photometry, fit_sed, import_bagpipes, photometry_ujy
from surveydust.stores.catalogue import FLAGS, open_catalogue, write_catalogue

BANDS = ["F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F410M", "F444W"]
# a z = 7 galaxy with a broad, still rising log-normal SFH (tmax, fwhm, t_U(7) = 0.75 Gyr)
TRUTH = {"tmax": 0.6, "fwhm": 1.0, "massformed": 9.0, "metallicity": 0.2, "logU": -2.5}


@pytest.fixture(scope="module")
def bagpipes():
    pytest.importorskip("bagpipes", reason="Bagpipes is not installed: pip install 'surveydust[sed]'")
    pytest.importorskip("nautilus", reason="nautilus is not installed: pip install 'surveydust[sed]'")
    return import_bagpipes()


def model_photometry_njy(bagpipes, tmp_path: Path, a_v: float, redshift: float = 7.0) -> np.ndarray:
    """Noiseless NIRCam photometry [nJy] of the TRUTH model with Calzetti dust A_V."""
    paths = []
    for band, curve in filter_curves(BANDS).items():
        paths.append(str(tmp_path / f"{band}.txt"))
        np.savetxt(paths[-1], curve)
    comps = {"redshift": redshift,
             "lognormal": {k: TRUTH[k] for k in ("tmax", "fwhm", "massformed", "metallicity")},
             "dust": {"type": "Calzetti", "Av": a_v}, "nebular": {"logU": TRUTH["logU"]}}
    with contextlib.redirect_stdout(io.StringIO()):
        model = bagpipes.model_galaxy(comps, filt_list=paths, phot_units="mujy")
    return model.photometry * 1e3


def test_fit_recovers_a_v_of_a_bagpipes_model(bagpipes, tmp_path: Path) -> None:
    flux = model_photometry_njy(bagpipes, tmp_path, a_v=0.5)
    f, e, use = photometry_ujy(flux, np.zeros_like(flux))  # errors: the 5% floor
    assert use.all() and np.allclose(e, 0.05 * f)
    # n_live 100 (the default): over seeds 0-2 the median is 0.45-0.47 and 0.5 lies inside the 16-84%
    # interval; at n_live 50 the interval ends at 0.49-0.52 (the log prior pulls A_V down)
    result = fit_photometry(f, e, list(filter_curves(BANDS).values()), 7.0, n_live=100, seed=0)
    assert result["A_V_sed_lo"] <= 0.5 <= result["A_V_sed_hi"], result
    assert result["A_V_sed_hi"] - result["A_V_sed_lo"] < 0.5
    for t in (10, 100):
        lo, med, hi = (result[f"log_ssfr_sed_{t}{s}"] for s in ("_lo", "", "_hi"))
        assert -10 < lo <= med <= hi < -7
    assert result["nbands_sed"] == 8 and 0 <= result["chi2_sed"] < 8


def tiny_catalogue(bagpipes, tmp_path: Path) -> xr.Dataset:
    """Four sources in the catalogue layout: two to fit (flagged low SNR with a z; no z), one
    flagged edge, one with two usable bands only."""
    flux = np.stack([model_photometry_njy(bagpipes, tmp_path, a_v) for a_v in (0.3, 1.0, 0.3, 0.3)])
    flux_err = np.full_like(flux, 1.0)  # nJy
    flux[3, 2:] = np.nan
    flag = np.array([FLAGS["low_snr"], FLAGS["no_redshift"], FLAGS["edge"], 0], dtype=np.uint16)
    n = len(flux)
    ds = xr.Dataset(coords={"source": np.arange(n), "band": np.array(BANDS, dtype=object),
                            "model": np.array(["F277W+F356W+F444W"], dtype=object)})
    ds["source_id"] = ("source", np.arange(n))
    ds["flux"] = (("source", "band"), flux)
    ds["flux_err"] = (("source", "band"), flux_err)
    ds["A_V"] = (("source", "model"), np.full((n, 1), 0.4))
    ds["log_ssfr"] = (("source", "model"), np.full((n, 1), -8.5))
    ds["z"] = ("source", np.array([7.0, np.nan, 7.0, 7.0]))
    ds["flag"] = ("source", flag)
    return ds


def test_fit_sed_with_nothing_to_fit_adds_empty_columns(bagpipes, tmp_path: Path, client) -> None:
    ds = tiny_catalogue(bagpipes, tmp_path)
    out = fit_sed(ds, sources=[3], client=client, progress=False)  # two bands only
    assert np.isnan(out["A_V_sed"].values).all()
    out = fit_sed(ds.assign(z=("source", np.full(4, 11.0))), client=client, progress=False)  # beyond z = 10
    assert np.isnan(out["A_V_sed"].values).all() and out["log_ssfr_sed_10_hi"].attrs["units"] == "log10(yr^-1)"
    assert "A_V_sed" not in ds  # the input Dataset is left as it was
    assert set(methods(out, "A_V")) == {"CNN F277W+F356W+F444W", "SED"}
    assert list(methods(out, "log_ssfr")) == ["CNN F277W+F356W+F444W", "SED 10 Myr", "SED 100 Myr"]
    with pytest.raises(ValueError, match="row indices"):
        fit_sed(ds, sources=[4], client=client)
    # results kept from a fit with other settings are not mixed with new ones
    kept = out.copy(deep=True)
    kept["A_V_sed"].values[0] = 0.3
    with pytest.raises(ValueError, match="SED results made with other settings \\(av_prior 'log'\\)"):
        fit_sed(kept, av_prior="uniform", client=client)
    assert np.isnan(fit_sed(out, av_prior="uniform", client=client, progress=False)["A_V_sed"]).all()


@pytest.mark.slow  # 60-90 s on the shared 2-core machine (two fits in parallel, Bagpipes imported on workers)
def test_fit_sed_on_dask_writes_a_catalogue(bagpipes, tmp_path: Path, client) -> None:
    cat_path = write_catalogue(tiny_catalogue(bagpipes, tmp_path), tmp_path / "cat.zarr", overwrite=False)
    out = tmp_path / "cat_sed.zarr"
    ds = fit_sed(cat_path, out, n_live=20, client=client, progress=False)
    cat = open_catalogue(out)
    for name in ("A_V_sed", "A_V_sed_lo", "A_V_sed_hi", "log_ssfr_sed_10", "log_ssfr_sed_100",
                 "log_ssfr_sed_100_lo", "log_ssfr_sed_100_hi"):
        assert np.isfinite(cat[name].values[:2]).all(), name
        assert np.isnan(cat[name].values[2:]).all(), name  # flagged edge; too few bands
    assert np.array_equal(cat["z_sed"].values[:2], [7.0, 7.0])  # the second one: default_redshift
    assert cat["A_V_sed"].attrs["units"] == "mag" and cat.attrs["sed_fit"]["n_live"] == 20
    assert np.allclose(ds["A_V_sed"].values, cat["A_V_sed"].values, equal_nan=True)
    assert not list(tmp_path.glob(".*parts"))
    assert set(methods(cat, "A_V")) == {"CNN F277W+F356W+F444W", "SED"}
    assert set(methods(cat, "log_ssfr")) == {"CNN F277W+F356W+F444W", "SED 10 Myr", "SED 100 Myr"}
    with pytest.raises(FileExistsError):
        fit_sed(cat_path, out, n_live=20, client=client, progress=False)
    # in place: sources that have results are kept, not fitted again (no task runs)
    again = fit_sed(out, sources=[0, 1], n_live=20, client=client, progress=False)
    assert np.allclose(again["A_V_sed"].values, cat["A_V_sed"].values, equal_nan=True)
    with pytest.raises(ValueError, match=r"other settings \(n_live 20\)"):  # not mixed with n_live 100 fits
        fit_sed(out, client=client, progress=False)
    from surveydust.cli import main

    result = CliRunner().invoke(main, ["fit-sed", str(out), "--workers", "1", "--n-live", "20", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"2 of 4 sources have SED fits; wrote {out}" in result.output


def test_missing_bagpipes_is_one_clear_line(monkeypatch, tmp_path: Path) -> None:
    from surveydust.cli import main

    monkeypatch.setitem(sys.modules, "bagpipes", None)  # import bagpipes -> ModuleNotFoundError
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'surveydust\[sed\]'"):
        fit_sed(xr.Dataset(), n_live=20)
    result = CliRunner().invoke(main, ["fit-sed", str(tmp_path / "cat.zarr")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: SED fitting needs Bagpipes and nautilus (no module 'bagpipes'): pip install 'surveydust[sed]'"]


def test_av_prior_choices(bagpipes) -> None:
    from surveydust.sedfit import fit_instructions

    assert fit_instructions(7.0)["dust"] == {"type": "Calzetti", "Av": (1e-4, 10.0), "Av_prior": "log_10"}
    assert fit_instructions(7.0, "uniform")["dust"]["Av"] == (0.0, 4.0)
    with pytest.raises(ValueError, match="av_prior must be one of log, uniform, got 'flat'"):
        fit_sed(xr.Dataset(), av_prior="flat")


def test_fit_sed_help_has_units() -> None:
    from surveydust.cli import main

    text = CliRunner().invoke(main, ["fit-sed", "--help"]).output
    assert "--n-live" in text and "--workers" in text and "[mag]" in text and "nJy" in text
    assert "--av-prior [log|uniform]" in text
