"""SKIRT mock-cube reader: real FITS in, real Zarr training store out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.table import Table

from surveydust.physics import ab_to_njy, njy_to_ab
from surveydust.stores.skirt import ingest_skirt, rebin_matrix
from surveydust.stores.training import open_training_store

FIXTURE = Path(__file__).parents[1] / "data" / "skirt"
CUBES = sorted(FIXTURE.glob("*.fits"))
PROPS = FIXTURE / "properties.csv"
REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "tng50_skirt_mock"
REAL_LONG = REAL / "188916_i0_a0_z3_NIRCam_long.fits"


def header_mags(path: Path) -> dict[str, float]:
    h = fits.getheader(path)
    return {h[f"EXT{k}"].strip(): h[f"MAG{k}"] for k in range(1, h["NAXIS3"] + 1)}


def injected_njy(view: str) -> dict[str, float]:
    mags = {}
    for kind in ("long", "short"):
        mags |= header_mags(FIXTURE / f"900001_{view}_z7_NIRCam_{kind}.fits")
    return {b: float(ab_to_njy(m)) for b, m in mags.items()}


@pytest.fixture(scope="module")
def store(client, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("skirt") / "train.zarr"
    return ingest_skirt(CUBES, PROPS, out, client=client, progress=False)


def test_fixture_is_small() -> None:
    assert len(CUBES) == 4
    assert sum(p.stat().st_size for p in FIXTURE.iterdir() if p.is_file()) < 100_000


def test_store_layout(store: Path) -> None:
    ds = open_training_store(store)
    raw = xr.open_zarr(store)
    assert raw.attrs["complete"] is True
    assert ds.image.dims == ("sample", "band", "y", "x")
    assert ds.image.dtype == np.float32
    assert ds.sizes == {"sample": 2, "band": 7, "y": 32, "x": 32}
    # SW + LW cubes of a view merged; default = known bands present everywhere (F300M is not known)
    assert list(ds.band.values) == ["F115W", "F150W", "F200W", "F277W", "F356W", "F410M", "F444W"]
    assert ds.galaxy_id.values.tolist() == [900001, 900001]
    assert ds.view.values.tolist() == [0, 1]
    assert ds.inclination.values.tolist() == [0, 45] and ds.azimuth.values.tolist() == [0, 90]
    assert ds.attrs["pixel_scale_arcsec"] == pytest.approx(0.03)
    assert ds.attrs["stamp_size"] == 32 and ds.attrs["generator"] == "skirt"
    assert ds.image.attrs["units"] == "nJy"
    assert set(ds.attrs["source_files"]) == {p.name for p in CUBES} | {"properties.csv"}
    assert all(len(h) == 64 for h in ds.attrs["source_files"].values())


def test_labels(store: Path) -> None:
    ds = open_training_store(store).load()
    np.testing.assert_allclose(ds.A_V, [0.5, 0.8], rtol=1e-6)
    np.testing.assert_allclose(ds.EBV, [0.1, 0.16], rtol=1e-6)
    np.testing.assert_allclose(ds.R_V, [5.0, 5.0], rtol=1e-5)
    np.testing.assert_allclose(ds.log_ssfr, [-8.2, -8.2], rtol=1e-6)
    np.testing.assert_allclose(ds.dtm, [0.3, 0.3], rtol=1e-6)
    np.testing.assert_allclose(ds.redshift, [7.0, 7.0])  # from the REDSHIFT header
    assert np.isnan(ds.log_sfr).all()  # column absent -> NaN
    assert np.isnan(ds.snr).all()  # noiseless mocks


def test_total_flux_conserved(store: Path) -> None:
    ds = open_training_store(store)
    totals = ds.image.sum(("y", "x")).values
    for sample, view in enumerate(("i0_a0", "i45_a90")):
        expected = injected_njy(view)
        for k, band in enumerate(ds.band.values):
            assert totals[sample, k] == pytest.approx(expected[str(band)], rel=0.02)


def test_image_centred(store: Path) -> None:
    img = open_training_store(store).image.isel(sample=0, band=3).values
    y, x = np.indices(img.shape)
    cy, cx = (img * y).sum() / img.sum(), (img * x).sum() / img.sum()
    assert cy == pytest.approx(15.5, abs=0.05) and cx == pytest.approx(15.5, abs=0.05)


def test_rebin_matrix_conserves_flux() -> None:
    w = rebin_matrix(21, 0.063, 10.0, 64, 0.03)  # output grid covers the input
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    w = rebin_matrix(10, 0.03, 4.5, 10, 0.03)  # same grid: identity
    np.testing.assert_allclose(w, np.eye(10), atol=1e-12)


def test_band_selection_and_pad(client, tmp_path: Path) -> None:
    longs = [p for p in CUBES if "long" in p.name]
    out = ingest_skirt(longs, PROPS, tmp_path / "s.zarr", bands=["F444W", "F277W"], stamp_size=64, client=client,
                       progress=False)
    ds = open_training_store(out)
    assert list(ds.band.values) == ["F444W", "F277W"] and ds.sizes["x"] == 64
    # 21 px * 0.063" = 1.32" < 64 * 0.03": zero-padded border, flux fully kept
    img = ds.image.values
    assert (img[:, :, :8, :] == 0).all()
    assert img[0, 1].sum() == pytest.approx(injected_njy("i0_a0")["F277W"], rel=1e-4)


def test_file_column_and_redshift_column(client, tmp_path: Path) -> None:
    props = tmp_path / "p.ecsv"
    Table({"file": ["900001_i0_a0_z7_NIRCam_long.fits"], "A_V": [1.0], "EBV": [0.0],
           "log_ssfr": [-9.0], "redshift": [6.5]}).write(props, format="ascii.ecsv")
    out = ingest_skirt([CUBES[0]], props, tmp_path / "s.zarr", client=client, progress=False)
    ds = open_training_store(out).load()
    assert ds.redshift.item() == pytest.approx(6.5) and np.isnan(ds.R_V).all()  # E(B-V)=0 -> NaN
    assert list(ds.band.values) == ["F277W", "F356W", "F410M", "F444W"]


def test_overwrite(client, tmp_path: Path) -> None:
    out = ingest_skirt(CUBES[:1], PROPS, tmp_path / "s.zarr", client=client, progress=False)
    with pytest.raises(FileExistsError, match="already exists"):
        ingest_skirt(CUBES[:1], PROPS, out, client=client, progress=False)
    ingest_skirt(CUBES[:1], PROPS, out, overwrite=True, client=client, progress=False)


# ----------------------------------------------------------------------------- bad input


def edited_cube(tmp_path: Path, edit) -> Path:
    """Copy of the first long cube after ``edit(hdu)``."""
    with fits.open(CUBES[0]) as hdul:
        hdu = fits.PrimaryHDU(hdul[0].data.copy(), hdul[0].header.copy())
    edit(hdu)
    path = tmp_path / CUBES[0].name
    hdu.writeto(path)
    return path


def drop_ext(hdu) -> None:
    for k in range(1, 6):
        del hdu.header[f"EXT{k}"]


def add_nans(hdu) -> None:
    hdu.data[1, :3, 0] = np.nan


def drop_scale(hdu) -> None:
    del hdu.header["CDELT1"], hdu.header["CDELT2"]


def set_unit(hdu) -> None:
    hdu.header["BUNIT"] = "erg / (s cm2 Angstrom)"


def extra_plane(hdu) -> None:
    hdu.data = np.concatenate([hdu.data, hdu.data[:1]])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (drop_ext, "no EXTn filter keywords"),
        (add_nans, "3 NaN"),
        (drop_scale, "no pixel scale"),
        (set_unit, "neither a surface brightness"),
        (extra_plane, "6 planes but 5 EXTn"),
    ],
)
def test_bad_cube(client, tmp_path: Path, edit, message: str) -> None:
    cube = edited_cube(tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        ingest_skirt([cube], PROPS, tmp_path / "s.zarr", client=client, progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_not_fits(client, tmp_path: Path) -> None:
    bad = tmp_path / "x_NIRCam_long.fits"
    bad.write_text("not a FITS file\n")
    with pytest.raises(ValueError, match="not a readable FITS file"):
        ingest_skirt([bad], PROPS, tmp_path / "s.zarr", client=client, progress=False)


def test_truncated(client, tmp_path: Path) -> None:
    bad = tmp_path / CUBES[0].name
    bad.write_bytes(CUBES[0].read_bytes()[:6000])
    with pytest.raises(ValueError, match="truncated"):
        ingest_skirt([bad], PROPS, tmp_path / "s.zarr", client=client, progress=False)


def test_missing_property_row(client, tmp_path: Path) -> None:
    props = tmp_path / "p.csv"
    props.write_text(PROPS.read_text().splitlines()[0] + "\n" + PROPS.read_text().splitlines()[1] + "\n")
    with pytest.raises(ValueError, match=r"900001_i45_a90_z7_NIRCam_long.fits.*no row.*inclination=45"):
        ingest_skirt(CUBES, props, tmp_path / "s.zarr", client=client, progress=False)


def test_missing_property_column(client, tmp_path: Path) -> None:
    props = tmp_path / "p.csv"
    props.write_text("target,inclination,azimuth,A_V\n900001,0,0,0.5\n")
    with pytest.raises(ValueError, match="lacks column.*EBV, log_ssfr"):
        ingest_skirt(CUBES, props, tmp_path / "s.zarr", client=client, progress=False)


@pytest.mark.parametrize(("bands", "message"), [(["F999W"], "unknown band"), (["F150W"], "absent from")])
def test_bad_band(client, tmp_path: Path, bands: list[str], message: str) -> None:
    longs = [p for p in CUBES if "long" in p.name]
    with pytest.raises(ValueError, match=message):
        ingest_skirt(longs, PROPS, tmp_path / "s.zarr", bands=bands, client=client, progress=False)


# ----------------------------------------------------------------------------- real SKIRT cube


@pytest.mark.shared
@pytest.mark.skipif(not REAL_LONG.exists(), reason=f"real TNG50 SKIRT mock not found at {REAL_LONG} (../shared absent)")
def test_real_tng50_cube(client, tmp_path: Path) -> None:
    props = tmp_path / "props.csv"
    props.write_text("target,inclination,azimuth,A_V,EBV,log_ssfr,dtm\n188916,0,0,0.42,0.09,-8.9,0.4\n")
    # 63 px * 0.063" = 3.97" fits in 136 * 0.03" = 4.08": the whole image is kept
    out = ingest_skirt([REAL_LONG], props, tmp_path / "real.zarr", stamp_size=136, client=client, progress=False)
    ds = open_training_store(out).load()
    assert list(ds.band.values) == ["F277W", "F356W", "F410M", "F444W"]
    assert ds.galaxy_id.values.tolist() == [188916] and ds.view.values.tolist() == [0]
    assert ds.redshift.item() == 3.0
    assert ds.R_V.item() == pytest.approx(0.42 / 0.09, rel=1e-5)
    mags = header_mags(REAL_LONG)
    for band in ds.band.values:
        total = float(ds.image.sel(band=band).sum())
        # the image sum is ~0.015-0.02 mag fainter than MAGn (flux outside the 4" field, presumably)
        assert float(njy_to_ab(total)) == pytest.approx(mags[str(band)], abs=0.05), band
    # default 32x32 stamp keeps the bright core
    out32 = ingest_skirt([REAL_LONG], props, tmp_path / "real32.zarr", bands=["F277W"], client=client, progress=False)
    ds32 = open_training_store(out32).load()
    assert ds32.sizes["x"] == 32
    assert 0.3 < float(ds32.image.sum()) / float(ds.image.sel(band="F277W").sum()) <= 1.0

