"""Bulk inference on a mosaic store: the demo field end to end on a real LocalCluster."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.table import Table

from surveydust.bundle import read_meta, richest_bundle
from surveydust.demo import make_demo_field, match_truth
from surveydust.infer import run_catalogue
from surveydust.simulate.priors import FIXED_PRIORS
from surveydust.stores.catalogue import open_catalogue
from surveydust.stores.mosaic import open_mosaic

SIZE = 640
TILE = 256  # 3 x 3 tiles (the demo's), not the default of whole chunks near 2048 px
DEMO_BANDS = ["F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]
# the default model on the six-band demo field: the shipped bundle with the most of its bands
DEFAULT = richest_bundle(DEMO_BANDS)
DEFAULT_NAME = "+".join(read_meta(DEFAULT)["bands"])
DEFAULT_USES_Z = bool(read_meta(DEFAULT).get("uses_redshift"))


@pytest.fixture(scope="module")
def field(tmp_path_factory, client) -> tuple[Path, Path]:
    # the simulator's galaxies before its physics became priors: the committed reference table holds them
    return make_demo_field(tmp_path_factory.mktemp("field"), n_galaxies=30, size=SIZE, seed=3, client=client,
                           progress=False, priors=FIXED_PRIORS)


@pytest.fixture(scope="module")
def reference(field, tmp_path_factory, client) -> xr.Dataset:
    out = tmp_path_factory.mktemp("ref") / "cat.zarr"
    run_catalogue(field[0], out, client=client, progress=False, tile_pix=TILE)
    return open_catalogue(out)


def _same(a: xr.Dataset, b: xr.Dataset) -> None:
    assert a.sizes == b.sizes
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_catalogue_recovers_injected_galaxies_once(field, reference) -> None:
    store, truth = field
    assert list(reference["model"].values) == [DEFAULT_NAME]
    assert Path(reference.attrs["models"][0]["path"]) == DEFAULT  # the richest shipped bundle
    match = match_truth(reference, truth)
    assert set(match) == {"matched", "missed", "spurious", "median_sep_arcsec"}
    assert match["matched"] + match["missed"] == len(Table.read(truth))
    assert match["matched"] >= 15 and match["median_sep_arcsec"] < 0.05, match
    assert match["spurious"] <= 3, match
    positions = np.round(np.stack([reference["x"].values, reference["y"].values], axis=1), 1)
    assert len(np.unique(positions, axis=0)) == reference.sizes["source"]  # no source twice
    assert len(set(reference["tile"].values)) > 3
    # galaxies placed on tile boundaries are found once, by one tile
    on_edge = Table.read(truth)
    on_edge = on_edge[on_edge["on_tile_boundary"]]
    sep = np.hypot(reference["x"].values[:, None] - np.asarray(on_edge["x_centroid"])[None],
                   reference["y"].values[:, None] - np.asarray(on_edge["y_centroid"])[None])
    found = (sep < 3.3).sum(axis=0)
    assert found.max() == 1 and found.sum() >= 2
    # nothing detected where the mosaic has no data
    sci = open_mosaic(store)["sci"].sel(band="F277W").values
    xi, yi = np.rint(reference["x"].values).astype(int), np.rint(reference["y"].values).astype(int)
    assert np.isfinite(sci[yi, xi]).all()
    good = reference["flag"].values == 0
    for name in ("A_V", "A_V_err", "EBV", "EBV_err", "log_ssfr", "log_ssfr_err"):
        assert np.isfinite(reference[name].values[good]).all(), name
    assert (reference["A_V_err"].values[good] > 0).all()
    for q in ("A_V", "EBV", "log_ssfr"):  # calibrated percentiles around the median
        pct = np.stack([reference[f"{q}_{n}"].values[good, 0] if n else reference[q].values[good, 0]
                        for n in ("p025", "p16", "", "p84", "p975")], axis=1)
        assert np.isfinite(pct).all() and (np.diff(pct, axis=1) >= 0).all(), q
        assert reference[f"{q}_p16"].attrs["units"] == reference[q].attrs["units"]
    for q in ("A_V", "EBV"):  # dust is never negative
        assert (reference[q].values[good] >= 0).all() and (reference[f"{q}_p025"].values[good] >= 0).all()
    assert ((reference["flag"].values & 32) > 0).all()  # detected sources have no redshift
    has_beta = np.isfinite(reference["beta"].values)
    assert has_beta.mean() > 0.8 and set(reference["beta_bands"].values[has_beta]) == {"F115W+F150W+F200W"}
    assert (reference["A_V_meurer"].values[has_beta] >= 0).all()
    ood = reference["ood"].values[:, 0]
    # not flagged not_high_z: selected by the photo-z criteria, so predicted (a six-band field sees no Lyman
    # break below z = 7.3, so the criteria keep a minority of these z = 6-8 galaxies)
    selected = (reference["flag"].values & 256) == 0
    assert selected.sum() >= 3 and np.isnan(ood[~selected]).all()
    assert np.isfinite(ood[selected]).all() and np.median(ood[selected]) < 3.0  # looks like the training set


def test_export_opens_in_astropy(reference, tmp_path: Path) -> None:
    from surveydust.stores.catalogue import export

    for suffix in (".fits", ".ecsv"):
        table = Table.read(export(reference, tmp_path / f"cat{suffix}"))
        assert len(table) == reference.sizes["source"]
        assert {"ra", "dec", "A_V", "A_V_err", "flux_F277W", "flag"} <= set(table.colnames)
        assert str(table["ra"].unit) == "deg"
    with pytest.raises(ValueError, match=".fits or .ecsv"):
        export(reference, tmp_path / "cat.txt")


def test_sources_mode_counts_positions_off_the_mosaic(field, tmp_path: Path, client, caplog) -> None:
    store, truth = field
    truth = Table.read(truth)
    rows = Table({"ra": np.r_[truth["ra_centroid"][:5], 150.1, 53.0],
                  "dec": np.r_[truth["dec_centroid"][:5], 2.2, -27.0],
                  "z": np.r_[truth["redshift"][:5], 7.0, 6.5],
                  "beta": [-2.0, np.nan, -1.5, np.nan, np.nan, -2.0, -2.0],  # e.g. from spectra
                  "beta_err": [0.1, np.nan, 0.2, np.nan, np.nan, 0.1, 0.1]})
    sources = tmp_path / "dja.csv"
    rows.write(sources, format="ascii.csv")
    with caplog.at_level(logging.WARNING, logger="surveydust"):
        cat = run_catalogue(store, client=client, sources=sources, progress=False)
    assert "2 of 7 sources fall outside" in caplog.text
    assert cat.sizes["source"] == 5
    order = np.argsort(cat["input_id"].values.astype(int))
    np.testing.assert_allclose(cat["z"].values[order], truth["redshift"][:5])
    np.testing.assert_allclose(cat["ra"].values[order], truth["ra_centroid"][:5], atol=1e-9)
    assert not (cat["flag"].values & 32).any()  # every source has its z
    from surveydust.uvslope import uv_bands

    expected = ["+".join(uv_bands(list(cat["band"].values), z)) for z in cat["z"].values]
    given = np.isin(cat["input_id"].values.astype(int), [0, 2])
    assert list(cat["beta_bands"].values[~given]) == [e for e, g in zip(expected, given) if not g]  # by each z
    # given UV slopes replace the fit: Meurer A_1600 = 4.43 + 1.99 beta, A_V = A_1600 / 2.46
    np.testing.assert_allclose(cat["beta"].values[order][[0, 2]], [-2.0, -1.5])
    np.testing.assert_allclose(cat["A_V_meurer"].values[order][[0, 2]], [(4.43 - 3.98) / 2.46, (4.43 - 2.985) / 2.46],
                               rtol=2e-3)
    np.testing.assert_allclose(cat["A_V_meurer_err"].values[order][[0, 2]], [0.199 / 2.46, 0.398 / 2.46], rtol=2e-3)
    assert set(cat["beta_bands"].values[given]) == {"input"}


def test_redshifts_table_fills_z_by_position(field, reference, tmp_path: Path, client) -> None:
    store, truth = field
    cat = run_catalogue(store, client=client, redshifts=truth, progress=False, tile_pix=TILE)
    _same(cat[["x", "y", "flux"]], reference[["x", "y", "flux"]])  # the same sources
    table = Table.read(truth)
    has_z = np.isfinite(cat["z"].values)
    # a model that takes redshifts predicts with each source's z; without one as before
    a_v, ref = cat["A_V"].values[:, 0], reference["A_V"].values[:, 0]
    np.testing.assert_array_equal(a_v[~has_z], ref[~has_z])
    if DEFAULT_USES_Z:
        assert not np.allclose(a_v[has_z], ref[has_z])
        assert not np.allclose(cat["log_ssfr"].values[has_z, 0], reference["log_ssfr"].values[has_z, 0])
    else:
        np.testing.assert_array_equal(a_v, ref)
    assert has_z.sum() >= 15 and (cat["z_sep"].values[has_z] <= 0.2).all()
    match = match_truth(cat, truth)
    assert has_z.sum() >= match["matched"] - 1
    # each z is the redshift of the nearest injected galaxy
    ra, dec = cat["ra"].values[has_z, None], cat["dec"].values[has_z, None]
    d = np.hypot((ra - np.asarray(table["ra"])[None]) * np.cos(np.deg2rad(dec)), dec - np.asarray(table["dec"])[None])
    np.testing.assert_allclose(cat["z"].values[has_z], np.asarray(table["redshift"])[d.argmin(axis=1)])
    assert not (cat["flag"].values[has_z] & 32).any() and (cat["flag"].values[~has_z] & 32).all()
    from surveydust.uvslope import uv_bands

    expected = ["+".join(uv_bands(list(cat["band"].values), z)) for z in cat["z"].values[has_z]]
    assert list(cat["beta_bands"].values[has_z]) == expected


def test_compare_reports_every_pair_and_truth(reference, field, tmp_path: Path) -> None:
    from surveydust.compare import compare

    cnn = f"CNN {DEFAULT_NAME}"
    table = compare(reference, tmp_path / "cmp", truth=field[1])
    pairs = {(r["quantity"], r["method_a"], r["method_b"]) for r in table}
    assert ("A_V", cnn, "Meurer") in pairs
    assert ("A_V", "Meurer", "truth") in pairs and ("log_ssfr", cnn, "truth") in pairs
    assert ("EBV", cnn, "truth") in pairs and ("EBV", cnn, "Meurer") not in pairs  # Meurer gives A_V only
    row = table[(table["method_a"] == cnn) & (table["method_b"] == "truth") & (table["quantity"] == "A_V")][0]
    assert 5 <= row["N"] and row["variance"] == pytest.approx(row["std"] ** 2)
    for png in ("compare_A_V.png", "compare_EBV.png", "compare_log_ssfr.png"):
        assert (tmp_path / "cmp" / png).read_bytes()[:4] == b"\x89PNG"


def test_bad_input_is_a_clear_error(field, tmp_path: Path, client) -> None:
    store, _ = field
    bad = tmp_path / "bad.csv"
    bad.write_text("alpha,beta\n1,2\n")
    with pytest.raises(ValueError, match="no RA column"):
        run_catalogue(store, client=client, sources=bad, progress=False)
    no_z = tmp_path / "noz.csv"
    no_z.write_text("ra,dec\n1,2\n")
    with pytest.raises(ValueError, match="no redshift column"):
        run_catalogue(store, client=client, redshifts=no_z, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_catalogue(store, client=client, model=tmp_path / "nomodel", progress=False)
    with pytest.raises(ValueError, match=r"no band\(s\) \['F090W'\]"):
        run_catalogue(store, client=client, detection_bands=["F090W"], progress=False)


def test_killed_worker_gives_the_same_catalogue(field, reference, tmp_path: Path, kill_worker) -> None:
    from surveydust.cluster import get_client

    with get_client("local", workers=2) as c:
        killer = kill_worker(c, "catalogue-tile-", delay_s=0.5)
        run_catalogue(field[0], tmp_path / "cat.zarr", client=c, progress=False, tile_pix=TILE)
        assert killer.result(timeout=60)
    _same(open_catalogue(tmp_path / "cat.zarr"), reference)


def test_gpu_workers_predict_in_their_own_tasks_with_the_same_catalogue(field, reference, tmp_path: Path) -> None:
    """Workers advertising the GPU resource (here CPU workers with the label, as on a node
    whose devices Dask counts): detection runs as measure-tile tasks, only the predictions
    ask for a GPU, and the catalogue is the same."""
    from surveydust.cluster import get_client

    with get_client("local", workers=2, resources={"GPU": 1}) as c:
        run_catalogue(field[0], tmp_path / "cat.zarr", client=c, progress=False, tile_pix=TILE)
        keys = {str(t["key"]).rsplit("-", 1)[0].rsplit("-", 1)[0] for t in c.get_task_stream()}
    assert {"measure-tile", "catalogue-tile"} <= keys, keys
    _same(open_catalogue(tmp_path / "cat.zarr"), reference)


def test_interrupted_run_resumes_to_the_same_catalogue(field, reference, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("surveydust")
    out = tmp_path / "cat.zarr"
    args = [str(exe), "run-catalogue", str(field[0]), "--out", str(out), "--workers", "1", "--set", f"tile_pix={TILE}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    parts = tmp_path / ".cat.zarr.parts"
    deadline = time.time() + 180
    while time.time() < deadline and len(list(parts.glob("part-*.npz"))) < 2 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = len(list(parts.glob("part-*.npz")))
    assert 2 <= kept < 9 and not out.exists()
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"({kept} done before)" in again.stderr
    _same(open_catalogue(out), reference)
    assert not parts.exists()


def test_one_and_three_band_models_run_in_one_pass(field, reference, tmp_path: Path, client) -> None:
    from surveydust.simulate import simulate
    from surveydust.stores.catalogue import export
    from surveydust.train import train

    sims = simulate(tmp_path / "s.zarr", client=client, progress=False, n_galaxies=12, views_per_galaxy=1,
                    bands=["F277W"])
    one_band = train(sims, tmp_path / "m1", client=client, progress=False, bands=["F277W"], max_epochs=1,
                     snr_min=0, calibration_fraction=0.3, model={"conv_filters": [8, 16], "dense_units": [16]})
    cat = run_catalogue(field[0], client=client, model=[one_band, reference.attrs["models"][0]["path"]],
                        progress=False, tile_pix=TILE)
    assert list(cat["model"].values) == ["F277W", DEFAULT_NAME]
    assert cat["A_V"].shape == cat["A_V_p975"].shape == (reference.sizes["source"], 2)
    np.testing.assert_array_equal(cat["A_V"].sel(model=DEFAULT_NAME).values,
                                  reference["A_V"].sel(model=DEFAULT_NAME).values)
    assert (cat["A_V"].sel(model="F277W").values[cat["flag"].values == 0] >= 0).all()
    table = Table.read(export(cat, tmp_path / "cat.ecsv"))
    assert {"A_V_F277W", f"A_V_{DEFAULT_NAME.replace('+', '_')}"} <= set(table.colnames)


def test_cli_bad_input(tmp_path: Path, console_script) -> None:
    for args, message in ((["run-catalogue"], "give a mosaic STORE, or --demo"),
                          (["run-catalogue", str(tmp_path / "none.zarr")], "does not exist"),
                          (["run-catalogue", "--demo", "--out", str(tmp_path / "c.zarr"), "--set", "threshold=-1"],
                           "catalogue.threshold")):
        result = console_script(*args, cwd=tmp_path)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert message in result.stderr, result.stderr[-2000:]


REFERENCE_TABLE = Path(__file__).parent / "data" / "demo_field_catalogue.ecsv"
MODEL_FREE = ("x", "y", "ra", "dec", "tile", "flux", "flux_err", "snr")


def test_catalogue_of_the_test_field_is_unchanged(reference) -> None:
    """Refactors do not change what the pipeline measures: the model-independent columns of the
    test field's catalogue (positions, tiles, photometry, geometry flags) equal the committed
    table. A deliberate change regenerates it: SURVEYDUST_UPDATE_REFERENCE=1 pytest -k unchanged."""
    from astropy.table import Table

    flags = reference["flag"].values & (1 | 2 | 16)  # edge, masked, blended: not model flags
    table = Table({"flag": flags})
    for name in MODEL_FREE:
        values = reference[name].values
        if values.ndim == 2:
            for i, band in enumerate(reference["band"].values):
                table[f"{name}_{band}"] = values[:, i]
        else:
            table[name] = values
    if os.environ.get("SURVEYDUST_UPDATE_REFERENCE") == "1":
        table.write(REFERENCE_TABLE, format="ascii.ecsv", overwrite=True)
    expected = Table.read(REFERENCE_TABLE)
    assert table.colnames == expected.colnames and len(table) == len(expected) > 15
    for name in table.colnames:
        np.testing.assert_allclose(table[name], expected[name], rtol=1e-6, atol=1e-9, err_msg=name)
