"""The demo-field generator: real i2d-style FITS mosaics and an ECSV truth table, read
back with astropy and checked for units, WCS, blanking, photometry and determinism."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy.ndimage import distance_transform_edt

from surveydust.config import load_simulation_config
from surveydust.physics import mjy_per_sr_to_njy, pixel_area_sr
from surveydust.simulate import FieldFiles, simulate_field
from surveydust.simulate.priors import FIXED_PRIORS

BANDS = ["F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]
BORDER = 40
TILE = 256


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> FieldFiles:
    return simulate_field(tmp_path_factory.mktemp("field") / "demo", seed=3, priors=FIXED_PRIORS)


@pytest.fixture(scope="module")
def truth(demo: FieldFiles) -> Table:
    return Table.read(demo.truth)


def _open(path: Path) -> dict[str, fits.ImageHDU]:
    with fits.open(path) as hdul:
        return {h.name: h.copy() for h in hdul}


def test_files_are_jwst_i2d_style(demo: FieldFiles) -> None:
    assert list(demo.bands) == BANDS
    for band, path in demo.bands.items():
        assert path.name == f"demo_{band}_i2d.fits" and path.is_file()
        with fits.open(path) as hdul:
            assert [h.name for h in hdul] == ["PRIMARY", "SCI", "ERR", "WHT"]
            assert hdul[0].data is None
            for name in ("SCI", "ERR", "WHT"):
                assert hdul[name].data.dtype == np.dtype(">f4") and hdul[name].data.shape == (1024, 1024)
            for name in ("SCI", "ERR"):
                assert hdul[name].header["BUNIT"] == "MJy/sr"
                assert hdul[name].header["PIXAR_SR"] == pytest.approx(pixel_area_sr(0.03), rel=1e-9)
            assert hdul[0].header["FILTER"] == band and hdul[0].header["TELESCOP"] == "JWST"


def test_wcs_is_rotated_common_and_round_trips(demo: FieldFiles, truth: Table) -> None:
    headers = {b: fits.getheader(p, "SCI") for b, p in demo.bands.items()}
    wcs = WCS(headers["F277W"])
    assert wcs.wcs.ctype[0] == "RA---TAN" and headers["F277W"]["CDELT1"] < 0
    assert np.allclose(proj_plane_pixel_scales(wcs) * 3600, 0.03)
    pc = wcs.wcs.get_pc()
    assert abs(pc[0, 1]) == pytest.approx(0.5) and abs(pc[1, 0]) == pytest.approx(0.5)  # 30 deg
    # north is 30 deg away from +y, east is to the left (not mirrored)
    x0, y0 = wcs.world_to_pixel_values(53.16, -27.78)
    assert (x0, y0) == pytest.approx((511.5, 511.5), abs=1e-6)
    xn, yn = wcs.world_to_pixel_values(53.16, -27.78 + 1 / 3600)
    assert abs(np.degrees(np.arctan2(xn - x0, yn - y0))) == pytest.approx(30.0, abs=1e-6)
    assert np.linalg.det(wcs.wcs.get_pc() * wcs.wcs.cdelt[:, None]) < 0
    for band, header in headers.items():
        assert WCS(header).wcs.compare(wcs.wcs), band
        assert WCS(fits.getheader(demo.bands[band], "ERR")).wcs.compare(wcs.wcs)
    # truth x, y <-> ra, dec
    sky = SkyCoord(truth["ra"], truth["dec"], unit="deg")
    back = wcs.pixel_to_world(truth["x"], truth["y"])
    assert sky.separation(back).arcsec.max() < 0.01
    x, y = wcs.world_to_pixel(sky)
    assert np.hypot(x - truth["x"], y - truth["y"]).max() * 0.03 < 0.01
    centroid = SkyCoord(truth["ra_centroid"], truth["dec_centroid"], unit="deg")
    back = wcs.pixel_to_world(truth["x_centroid"], truth["y_centroid"])
    assert centroid.separation(back).arcsec.max() < 0.01


def test_border_is_nan_and_zero_weight(demo: FieldFiles, truth: Table) -> None:
    hdus = _open(demo.bands["F444W"])
    sci, err, wht = hdus["SCI"].data, hdus["ERR"].data, hdus["WHT"].data
    edge = np.zeros(sci.shape, bool)
    edge[:BORDER], edge[-BORDER:], edge[:, :BORDER], edge[:, -BORDER:] = True, True, True, True
    assert np.isnan(sci[edge]).all() and np.isnan(err[edge]).all() and (wht[edge] == 0).all()
    no_data = np.isnan(sci)
    assert (np.isnan(err) == no_data).all() and ((wht == 0) == no_data).all()
    assert no_data.sum() > edge.sum()  # plus the corner cut like a rotated mosaic edge
    assert not no_data[BORDER:-BORDER, BORDER:BORDER + 200].any()
    good = ~no_data
    np.testing.assert_allclose(wht[good], 1.0 / err[good].astype(np.float64) ** 2, rtol=1e-5)
    # every galaxy sits well inside the data
    dist = distance_transform_edt(np.pad(good, 1))[1:-1, 1:-1]
    assert dist[np.round(truth["y"]).astype(int), np.round(truth["x"]).astype(int)].min() >= 19


def test_noise_matches_err(demo: FieldFiles, truth: Table) -> None:
    hdus = _open(demo.bands["F200W"])
    sci, err = hdus["SCI"].data, hdus["ERR"].data
    yy, xx = np.mgrid[:1024, :1024]
    far = np.ones(sci.shape, bool)
    for x, y in zip(truth["x"], truth["y"]):
        far &= (xx - x) ** 2 + (yy - y) ** 2 > 40**2
    z = (sci / err)[far & np.isfinite(sci)]
    assert np.std(z) == pytest.approx(1.0, abs=0.03) and abs(np.mean(z)) < 0.02
    good = err[np.isfinite(err)]
    assert 1.2 < good.max() / good.min() < 1.6  # a smooth +-20% depth variation


def test_aperture_flux_matches_truth(demo: FieldFiles, truth: Table) -> None:
    pixar = fits.getheader(demo.bands["F277W"], "SCI")["PIXAR_SR"]
    yy, xx = np.mgrid[:1024, :1024]
    for band in ("F277W", "F444W"):
        hdus = _open(demo.bands[band])
        sci_njy = mjy_per_sr_to_njy(hdus["SCI"].data.astype(np.float64), pixar)
        err_njy = mjy_per_sr_to_njy(hdus["ERR"].data.astype(np.float64), pixar)
        checked = 0
        for row in truth[np.argsort(truth[f"flux_{band}"])[::-1]]:
            ap = (xx - row["x_centroid"]) ** 2 + (yy - row["y_centroid"]) ** 2 <= 25**2  # 0.75"
            if not np.isfinite(sci_njy[ap]).all():
                continue  # the aperture reaches the no-data border
            flux, noise = sci_njy[ap].sum(), np.sqrt((err_njy[ap] ** 2).sum())
            true = row[f"flux_{band}"]
            assert true > 8 * noise
            assert abs(flux - true) < 0.25 * true + 3 * noise, (band, row["id"], flux, true)
            assert flux < true + 3 * noise  # an aperture can only lose light
            checked += 1
            if checked == 3:
                break
        assert checked == 3


def test_truth_table(demo: FieldFiles, truth: Table) -> None:
    assert demo.truth.name == "demo_truth.ecsv" and len(truth) == 40
    for name in ("id", "ra", "dec", "x", "y", "redshift", "A_V", "EBV", "R_V", "log_ssfr", "dtm",
                 "log_mstar", *(f"flux_{b}" for b in BANDS)):
        assert name in truth.colnames, name
    assert truth["ra"].unit == "deg" and truth["flux_F277W"].unit == "nJy" and truth["A_V"].unit == "mag"
    assert list(truth["id"]) == list(range(40))
    assert ((truth["redshift"] >= 6) & (truth["redshift"] <= 8)).all()
    cfg = load_simulation_config()
    assert set(truth["dtm"]) <= set(cfg.dtm_values) and len(set(truth["dtm"])) > 3
    assert np.ptp(truth["A_V"]) > 0.3 and (truth["A_V"][truth["dtm"] == 0] == 0).all()
    for b in BANDS:
        assert (truth[f"flux_{b}"] > 0).all()
    x, y = np.asarray(truth["x"]), np.asarray(truth["y"])
    sep = np.hypot(x[:, None] - x, y[:, None] - y) + np.eye(len(x)) * 1e9
    assert sep.min() >= 24
    assert truth.meta["seed"] == 3 and truth.meta["bands"] == BANDS


def test_galaxies_straddle_tile_boundaries(demo: FieldFiles, truth: Table) -> None:
    def near_boundary(c: np.ndarray) -> np.ndarray:
        return np.abs((np.asarray(c) + 0.5 + TILE / 2) % TILE - TILE / 2) < 3

    straddling = near_boundary(truth["x"]) | near_boundary(truth["y"])
    assert straddling.sum() >= 3
    assert (straddling[truth["on_tile_boundary"]]).all()
    # their light really is on both sides of the boundary
    sci = fits.getdata(demo.bands["F277W"], "SCI")
    row = truth[truth["on_tile_boundary"]][0]
    x, y = round(float(row["x"])), round(float(row["y"]))
    assert np.isfinite(sci[y - 5:y + 6, x - 5:x + 6]).all()


def test_same_seed_same_files(demo: FieldFiles, tmp_path: Path) -> None:
    again = simulate_field(tmp_path / "again", seed=3, priors=FIXED_PRIORS)
    for band in BANDS:
        assert filecmp.cmp(demo.bands[band], again.bands[band], shallow=False), band
    assert filecmp.cmp(demo.truth, again.truth, shallow=False)
    other = simulate_field(tmp_path / "other", seed=4, n_galaxies=5, shape=(512, 512), bands=["F277W"])
    assert list(other.bands) == ["F277W"] and len(Table.read(other.truth)) == 5
    assert not np.array_equal(fits.getdata(other.bands["F277W"], "SCI")[:100, :100],
                              fits.getdata(demo.bands["F277W"], "SCI")[:100, :100], equal_nan=True)
    with pytest.raises(FileExistsError):
        simulate_field(tmp_path / "other", seed=4, n_galaxies=5, shape=(512, 512), bands=["F277W"])
    simulate_field(tmp_path / "other", seed=4, n_galaxies=5, shape=(512, 512), bands=["F277W"],
                   overwrite=True)
    with pytest.raises(ValueError, match="cannot place"):
        simulate_field(tmp_path / "crowded", n_galaxies=500, shape=(256, 256))
