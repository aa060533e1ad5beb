"""Physical inputs checked where they enter: impossible redshifts, coordinates, empty stamps and
bands, repeated ids, several models of the same bands, and bounded memory per tile.

The catalogue cases run the real ``surveydust run-catalogue`` (a subprocess) on a small
simulated field, connected (``--cluster address``) to the test session's LocalCluster, whose
workers have the models loaded already; the Predictor cases use the Python API.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from surveydust.bundle import default_bundle_path, load_model, read_meta
from surveydust.demo import make_demo_field
from surveydust.detect import FLAGS
from surveydust.infer import model_labels
from surveydust.stores.catalogue import open_catalogue, to_table

SIX = ("F115W", "F150W", "F200W", "F277W", "F356W", "F444W")
THREE = ("F277W", "F356W", "F444W")
TILE = "tile_pix=256"
DUST = ("A_V", "A_V_p025", "A_V_p16", "A_V_p84", "A_V_p975", "EBV")


def _sha(path: Path) -> str:
    """SHA-256 of a file, or of every file under a folder."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def _dust_is_sane(cat) -> None:
    """No dust value above 10 mag or below 0 anywhere (NaN where a model could not predict)."""
    for name in DUST:
        values = cat[name].values
        finite = values[np.isfinite(values)]
        assert finite.size and (finite >= 0).all() and (finite <= 10).all(), (name, finite.min(), finite.max())


def run(client, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``surveydust run-catalogue ARGS --cluster address`` on the scheduler of ``client``."""
    exe = Path(sys.executable).with_name("surveydust")
    env = {**os.environ, "DASK_SURVEYDUST__CLUSTER__PROFILES__ADDRESS__ADDRESS": client.scheduler.address}
    return subprocess.run([str(exe), "run-catalogue", *args, "--cluster", "address", "--quiet", "--set", TILE],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False)


def _catalogue(client, *args: str, cwd: Path) -> tuple[str, object]:
    """Run ``surveydust run-catalogue``; its stderr and the catalogue it wrote."""
    out = cwd / "cat.zarr"
    result = run(client, *args, "--out", str(out), cwd=cwd)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr, open_catalogue(out)


@pytest.fixture(scope="module")
def field(tmp_path_factory, client) -> tuple[Path, Table]:
    """A 512 x 512 px six-band demo field (2 x 2 tiles of 256 px) and its truth table."""
    store, truth = make_demo_field(tmp_path_factory.mktemp("field"), n_galaxies=16, size=512, seed=5, client=client,
                                   progress=False)
    return store, Table.read(truth)


# --------------------------------------------------------------------------- the Python API


@pytest.fixture(scope="module")
def three_band():
    return load_model(bands=THREE)


def _stamps(n: int, bands: int = 3) -> np.ndarray:
    rng = np.random.default_rng(2)
    img = rng.normal(0, 2, size=(n, bands, 32, 32)).astype(np.float32)
    img[:, :, 13:19, 13:19] += rng.uniform(20, 80, size=(n, bands, 1, 1))
    return img


def test_predict_refuses_impossible_redshifts(three_band) -> None:
    images = _stamps(4)
    for bad in (-99.0, [7.0, -1.0, 7.0, 7.0], [7.0, 0.0, np.inf, 7.0], 99.0):
        with pytest.raises(ValueError, match=r"redshift must be NaN \(unknown\) or in \(0, 30\]; got"):
            three_band.predict(images, bad)
    with pytest.raises(ValueError, match="got -99, -1 \\(2 of 4 values\\)"):
        three_band.predict(images, [7.0, -99.0, -1.0, np.nan])


def test_predict_gives_nan_and_a_flag_for_empty_stamps_and_z_out_of_range(three_band) -> None:
    images = _stamps(6)
    images[1] = np.nan  # no valid pixel at all
    images[2, 1] = np.nan  # one band empty
    images[3, :, :4] = np.nan  # a few masked rows: still predicted (NaN pixels count as no flux)
    assert three_band.redshift_range == (6.0, 8.0)  # the simulator's range the shipped bundles saw
    ds = three_band.predict(images, [7.0, 7.0, 7.0, 7.0, 20.0, 3.0])
    np.testing.assert_array_equal(ds["flag"].values, [0, FLAGS["no_data"], FLAGS["no_data"], 0,
                                                      FLAGS["z_out_of_range"], FLAGS["z_out_of_range"]])
    for name in ds.data_vars:
        values = ds[name].values
        assert np.isnan(values[[1, 2, 4, 5]]).all(), name
        if name in DUST:
            assert np.isfinite(values[[0, 3]]).all() and (0 <= values[[0, 3]]).all() and (values[[0, 3]] <= 10).all()
    assert "no_data" in ds["flag"].attrs["flag_meanings"]
    # a known z in range, or none, is predicted as before; the all-NaN stamps say why not
    all_nan = three_band.predict(np.full((3, 3, 32, 32), np.nan, np.float32))
    assert np.isnan(all_nan["A_V"].values).all() and (all_nan["flag"].values == FLAGS["no_data"]).all()


def test_model_labels_are_distinct_as_coordinates_and_columns(tmp_path: Path) -> None:
    meta = read_meta(default_bundle_path(THREE))
    one = {**meta, "bands": ["F277W"]}
    paths = [Path("a/three-band"), Path("b/three_band"), Path("c/three-band"), Path("one")]
    labels = model_labels(paths, [meta, meta, meta, one])
    assert labels[3] == "F277W" and labels[0] == "F277W+F356W+F444W_three_band"
    assert len(set(labels)) == 4
    import xarray as xr

    ds = xr.Dataset({"A_V": (("source", "model"), np.zeros((1, 4)))}, coords={"model": labels})
    names = to_table(ds).colnames
    assert len(names) == len(set(names)) == 4 and all(n.replace("_", "").isalnum() for n in names)


# --------------------------------------------------------------------------- run-catalogue


def test_sources_table_bad_rows_are_counted_and_flagged(field, tmp_path: Path, client) -> None:
    """--sources with the sentinels of real catalogues: z = -99, -1, 0 read as missing (flag
    no_redshift), z = 20 outside the training range (NaN, flag z_out_of_range), invalid
    coordinates left out and counted apart from positions off the mosaic, a repeated id warned."""
    store, truth = field
    n = 8
    z = np.r_[-99.0, -1.0, 0.0, 20.0, np.asarray(truth["redshift"][4:n])]
    rows = Table({"id": [f"g{i}" for i in range(n)] + ["g4", "nan", "dec", "ra", "off"],  # g4 twice
                  "ra": np.r_[truth["ra_centroid"][:n], truth["ra_centroid"][4], np.nan, 53.16, -5.0, 53.0],
                  "dec": np.r_[truth["dec_centroid"][:n], truth["dec_centroid"][4], -27.78, 95.0, -27.78, -27.0],
                  "z": np.r_[z, z[4], 7.0, 7.0, 7.0, 7.0]})
    sources = tmp_path / "mysrc.fits"
    rows.write(sources)
    before = _sha(sources)
    stderr, cat = _catalogue(client, str(store), "--sources", str(sources), "--format", "ecsv", cwd=tmp_path)
    assert _sha(sources) == before
    for line in ("1 of 13 sources have no RA or no Dec", "1 of 13 sources have a Dec outside [-90, 90] deg",
                 "1 of 13 sources have an RA outside [0, 360) deg", "3 of 13 sources have an impossible redshift",
                 "1 of 13 sources repeat the id of an earlier row", "1 of 13 sources fall outside the mosaic's data",
                 ("sources table: missing coordinates 1, bad dec 1, bad ra 1, impossible redshift 3, repeated id 1, "
                  "off data 1")):
        assert line in stderr, stderr[-3000:]
    assert "z_out_of_range 1" in stderr and "outside the training range" in stderr
    assert cat.sizes["source"] == n + 1  # the good rows and the repeated one
    by_id = {i: k for k, i in enumerate(cat["input_id"].values)}
    flag = cat["flag"].values
    for i in ("g0", "g1", "g2"):  # sentinels: no redshift; dust where P(z>6) selects them (else flag not_high_z)
        assert np.isnan(cat["z"].values[by_id[i]]) and flag[by_id[i]] & FLAGS["no_redshift"]
        assert np.isfinite(cat["A_V"].values[by_id[i], 0]) == (not flag[by_id[i]] & FLAGS["not_high_z"])
    g3 = by_id["g3"]
    assert cat["z"].values[g3] == 20.0 and flag[g3] & FLAGS["z_out_of_range"]
    assert np.isnan(cat["A_V"].values[g3]).all() and np.isnan(cat["ood"].values[g3]).all()
    assert not (flag[[by_id[f"g{i}"] for i in range(4, n)]] & (FLAGS["no_redshift"] | FLAGS["z_out_of_range"])).any()
    _dust_is_sane(cat)
    assert cat.attrs["input_checks"]["sources"]["impossible_redshift"] == 3
    table = Table.read(tmp_path / "cat.ecsv")
    assert len(table) == n + 1 and np.nanmax(table["A_V"]) <= 10


def test_redshifts_table_sentinels_and_two_models_of_the_same_bands(field, tmp_path: Path, client) -> None:
    """--redshifts with z = -99 on half the rows and -z on others: never given to a network
    (read as missing, counted); two bundles of the same bands whose folders share a name run
    side by side with distinct labels, and the export keeps both sets of columns."""
    store, truth = field
    z = np.array(truth["redshift"], dtype=float)  # a copy: the truth table is the module's
    z[::2] = -99.0
    z[1::4] = -z[1::4]
    specz = tmp_path / "specz.csv"
    Table({"ra": truth["ra_centroid"], "dec": truth["dec_centroid"], "z": z}).write(specz, format="ascii.csv")
    shipped = default_bundle_path(THREE)
    other = tmp_path / "mine" / shipped.name  # the same folder name as the shipped bundle
    shutil.copytree(shipped, other)
    inputs = {p: _sha(p) for p in (specz, shipped, other)}
    stderr, cat = _catalogue(client, str(store), "--redshifts", str(specz), "--model", str(shipped), "--model",
                             str(other), "--format", "ecsv", cwd=tmp_path)
    assert {p: _sha(p) for p in inputs} == inputs
    n_bad = int((z <= 0).sum())
    assert f"{n_bad} of {len(z)} redshifts-table rows have an impossible redshift" in stderr, stderr[-3000:]
    labels = list(cat["model"].values)
    assert len(labels) == 2 and len(set(labels)) == 2 and all(label.startswith("F277W+F356W+F444W") for label in labels)
    has_z = np.isfinite(cat["z"].values)
    assert has_z.any() and (cat["z"].values[has_z] > 0).all()
    assert ((cat["flag"].values[~has_z] & FLAGS["no_redshift"]) > 0).all()
    _dust_is_sane(cat)
    table = Table.read(tmp_path / "cat.ecsv")
    for label in labels:  # both models' columns, e.g. A_V_F277W_F356W_F444W_three_band and ..._three_band_2
        name = "A_V_" + label.replace("+", "_").replace("-", "_")
        assert name in table.colnames, (name, table.colnames)
        np.testing.assert_array_equal(np.asarray(table[name]), cat["A_V"].sel(model=label).values)


@pytest.fixture(scope="module")
def empty_f115w(field, tmp_path_factory, client) -> Path:
    """The demo field's mosaic store made again with F115W all NaN (every other band as it was)."""
    from surveydust.stores.mosaic import ingest_mosaic

    fits_dir = Path(field[0]).parent / "fits"
    out = tmp_path_factory.mktemp("empty")
    bands = {}
    for band in SIX:
        src = next(fits_dir.glob(f"*{band.lower()}*i2d.fits"), None) or next(fits_dir.glob(f"*{band}*.fits"))
        if band == "F115W":
            with fits.open(src) as hdul:
                hdul["SCI"].data = np.full_like(hdul["SCI"].data, np.nan)
                hdul.writeto(out / src.name)
            src = out / src.name
        bands[band] = str(src)
    return ingest_mosaic(out / "empty.zarr", bands, client=client, progress=False)


def test_an_empty_band_picks_a_bundle_whose_bands_hold_data(empty_f115w, tmp_path: Path, client) -> None:
    # F150W-F444W cannot see the Lyman break of z = 6-8 galaxies: dust for every source only when asked
    stderr, cat = _catalogue(client, str(empty_f115w), "--all-sources", cwd=tmp_path)
    assert "cannot see the Lyman break" in stderr, stderr[-2000:]
    assert list(cat["model"].values) == ["+".join(THREE)], stderr[-2000:]
    assert cat.sizes["source"] >= 5
    _dust_is_sane(cat)
    result = run(client, str(empty_f115w), "--out", str(tmp_path / "six.zarr"), "--model",
                 str(default_bundle_path(SIX)), cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Error: band(s) ['F115W'] of the mosaic store hold no data" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "six.zarr").exists()


# --------------------------------------------------------------------------- batches and memory per tile


def _same(a, b) -> None:
    assert a.sizes == b.sizes
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


@pytest.fixture(scope="module")
def positions(field, tmp_path_factory) -> Path:
    """The field's injected galaxies as a --sources table."""
    truth = field[1]
    path = tmp_path_factory.mktemp("positions") / "positions.csv"
    Table({"ra": truth["ra_centroid"], "dec": truth["dec_centroid"], "z": truth["redshift"]}).write(
        path, format="ascii.csv")
    return path


def test_sources_in_batches_give_the_same_catalogue(field, positions, client) -> None:
    from surveydust.infer import run_catalogue

    whole = run_catalogue(field[0], client=client, sources=positions, progress=False, tile_pix=256)
    batched = run_catalogue(field[0], client=client, sources=positions, progress=False, tile_pix=256,
                            sources_per_batch=3)
    assert whole.sizes["source"] >= 10
    _same(whole, batched)


def test_gpu_workers_take_given_positions_in_batches(field, positions, client) -> None:
    """Workers with the GPU resource: measure-tile and catalogue-tile tasks per batch of given
    positions, their columns joined per tile; the catalogue is the CPU workers'."""
    from surveydust.cluster import get_client
    from surveydust.infer import run_catalogue

    cpu = run_catalogue(field[0], client=client, sources=positions, progress=False, tile_pix=256)
    with get_client("local", workers=1, resources={"GPU": 1}) as c:
        gpu = run_catalogue(field[0], client=c, sources=positions, progress=False, tile_pix=256,
                            sources_per_batch=3)
        keys = {str(t["key"]) for t in c.get_task_stream()}
    assert any(k.startswith("measure-tile-") and k.endswith(".1") for k in keys), keys
    _same(cpu, gpu)


# --------------------------------------------------------------------------- memory per tile


@pytest.mark.slow  # 200,000 six-band predictions on CPU: 6 minutes on 2 busy cores
def test_memory_per_tile_is_bounded_however_many_positions(tmp_path: Path) -> None:
    """200,000 --sources positions on one 1280 x 1280 px tile: the worker's peak RSS (TensorFlow
    and the model take about 1 GB of it) stays under 2 GB, as the positions go in batches."""
    import resource
    import time

    from surveydust.cluster import get_client
    from surveydust.infer import run_catalogue
    from surveydust.stores.mosaic import mosaic_wcs, open_mosaic

    n = 200_000
    with get_client("local", workers=1) as c:
        store, _ = make_demo_field(tmp_path / "field", n_galaxies=20, size=1280, seed=1, client=c, progress=False)
        mosaic = open_mosaic(store)
        yy, xx = np.nonzero(np.isfinite(mosaic["sci"].sel(band="F277W").values))
        pick = np.random.default_rng(0).integers(0, yy.size, n)
        ra, dec = mosaic_wcs(mosaic).all_pix2world(xx[pick], yy[pick], 0)
        sources = tmp_path / "many.fits"
        Table({"ra": ra, "dec": dec}).write(sources)
        c.restart()  # a fresh worker: its peak RSS is the tile task's
        start = time.perf_counter()
        cat = run_catalogue(store, client=c, sources=sources, progress=False, tile_pix=1280)
        seconds = time.perf_counter() - start
        peak_kib = max(c.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).values())
    assert cat.sizes["source"] == n
    _dust_is_sane(cat)
    assert peak_kib * 1024 < 2e9, f"peak worker RSS {peak_kib * 1024 / 1e9:.2f} GB ({seconds:.0f} s)"
