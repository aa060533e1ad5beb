"""Mosaic store: FITS mosaics (real files written with astropy) -> Zarr, on the session Dask cluster
(FITS reading itself: tests/stores/test_fits.py)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from click.testing import CliRunner

import surveydust
from surveydust.cli import main
from surveydust.provenance import sha256
from surveydust.stores.fits import resolve_bands
from surveydust.stores.mosaic import _build_dataset, ingest_mosaic, mosaic_wcs, open_mosaic

SHAPE = (300, 500)  # larger than one 128-pixel chunk in both axes, not a multiple of it
PIXAR_SR = 2.0e-14  # 2 MJy/sr x 1e6 Jy/MJy x 2e-14 sr = 4e-8 Jy = 40 nJy


def rotated_wcs(shift_pix: float = 0.0) -> WCS:
    """TAN WCS at 0.03"/px rotated by 30 degrees with a PC matrix (JWST i2d style)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.15, -27.79]
    w.wcs.crpix = [120.5 + shift_pix, 80.5]
    w.wcs.cdelt = [-0.03 / 3600, 0.03 / 3600]
    theta = np.deg2rad(30.0)
    w.wcs.pc = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    w.wcs.radesys = "ICRS"
    return w


def header(bunit: str | None = "MJy/sr", pixar_sr: float | None = PIXAR_SR, shift_pix: float = 0.0) -> fits.Header:
    h = rotated_wcs(shift_pix).to_header()
    if bunit is not None:
        h["BUNIT"] = bunit
    if pixar_sr is not None:
        h["PIXAR_SR"] = pixar_sr
    return h


def write_i2d(path: Path, sci: np.ndarray, err: np.ndarray | None = None, wht: np.ndarray | None = None,
              **kw) -> Path:
    """A JWST-pipeline-like multi-extension file: empty primary, SCI, ERR, WHT (big-endian)."""
    h = header(**kw)
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(sci.astype(">f4"), h, name="SCI")]
    if err is not None:
        hdus.append(fits.ImageHDU(err.astype(">f4"), h, name="ERR"))
    if wht is not None:
        hdus.append(fits.ImageHDU(wht.astype(">f4"), h, name="WHT"))
    fits.HDUList(hdus).writeto(path)
    return path


def write_image(path: Path, data: np.ndarray, **kw) -> Path:
    fits.PrimaryHDU(data, header(**kw)).writeto(path)
    return path


@pytest.fixture
def images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    sci = rng.normal(1.0, 0.5, SHAPE).astype(np.float32)
    err = rng.uniform(0.05, 0.2, SHAPE).astype(np.float32)
    wht = (1.0 / err.astype(np.float64) ** 2).astype(np.float32)
    sci[10, 20] = np.nan
    wht[30, 40] = 0.0
    wht[290:, 480:] = 0.0  # uncovered corner, as at a mosaic edge
    sci[0, 0] = 2.0
    return {"sci": sci, "err": err, "wht": wht}


def test_i2d_mjy_per_sr_to_njy_with_rotated_wcs(tmp_path, images, client) -> None:
    src = write_i2d(tmp_path / "f277w_i2d.fits", images["sci"], images["err"], images["wht"])
    out = ingest_mosaic(tmp_path / "goods.zarr", {"f277w": src}, chunk=128, client=client, progress=False)
    ds = open_mosaic(out)
    assert ds["sci"].dims == ("band", "y", "x") and ds["sci"].dtype == np.float32
    assert [str(b) for b in ds["band"].values] == ["F277W"]
    sci, err = ds["sci"].values[0], ds["err"].values[0]
    assert sci[0, 0] == pytest.approx(40.0, rel=1e-6)  # hand-computed: 2 MJy/sr x 2e-14 sr = 40 nJy
    factor = 1e15 * PIXAR_SR
    nodata = ~np.isfinite(images["sci"]) | (images["wht"] == 0)
    assert np.isnan(sci[10, 20]) and np.isnan(sci[30, 40]) and np.isnan(sci[290:, 480:]).all()
    np.testing.assert_array_equal(np.isnan(sci), nodata)
    np.testing.assert_array_equal(np.isnan(err), nodata)
    np.testing.assert_allclose(sci[~nodata], images["sci"][~nodata] * factor, rtol=1e-6)
    np.testing.assert_allclose(err[~nodata], images["err"][~nodata] * factor, rtol=1e-6)

    attrs = ds.attrs
    assert attrs["store_kind"] == "mosaic" and attrs["complete"] is True and attrs["units"] == "nJy"
    assert attrs["field"] == "goods" and attrs["shape"] == list(SHAPE) and len(attrs["store_id"]) == 32
    assert attrs["surveydust_version"] == surveydust.__version__
    assert attrs["pixel_scale_arcsec"] == pytest.approx(0.03, rel=1e-9)
    record = attrs["input"]["F277W"]
    assert record["sci"] == record["err"] == record["wht"] == str(src.resolve())
    assert record["bunit"] == "MJy/sr" and record["pixar_sr"] == PIXAR_SR
    assert record["sha256"] == {str(src.resolve()): sha256(src)}
    assert ds["sci"].encoding["chunks"] == (1, 128, 128) and ds["sci"].chunks[1][0] == 128

    # the store's WCS maps every pixel to the same sky position as the input's
    w_in, w_out = rotated_wcs(), mosaic_wcs(ds)
    ys, xs = np.mgrid[0:SHAPE[0]:37, 0:SHAPE[1]:53]
    np.testing.assert_allclose(w_out.pixel_to_world_values(xs, ys), w_in.pixel_to_world_values(xs, ys),
                               rtol=0, atol=1e-10)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_separate_files_njy_chunked_exact(tmp_path, images, client) -> None:
    """Separate SCI/ERR/WHT files in nJy on a 300x500 grid with 128-pixel chunks: exact copies."""
    clean = {k: np.where(np.isfinite(images["sci"]), v, 1.0).astype(np.float32) for k, v in images.items()}
    files = {name: write_image(tmp_path / f"{name}.fits", clean[name], bunit="nJy", pixar_sr=None)
             for name in ("sci", "err")}
    wht = write_image(tmp_path / "wht.fits", np.ones(SHAPE, np.float32) * 4.0, bunit=None, pixar_sr=None)
    bands = {"F277W": {"sci": files["sci"], "err": files["err"], "wht": None},
             "F444W": {"sci": files["err"], "wht": wht}}  # error from the weights: 1/sqrt(4) = 0.5 nJy
    out = ingest_mosaic(tmp_path / "sep.zarr", bands, field="test", chunk=128, client=client, progress=False)
    ds = open_mosaic(out)
    assert [str(b) for b in ds["band"].values] == ["F277W", "F444W"] and ds.attrs["field"] == "test"
    np.testing.assert_array_equal(ds["sci"].values[0], clean["sci"])
    np.testing.assert_array_equal(ds["err"].values[0], clean["err"])
    np.testing.assert_array_equal(ds["sci"].values[1], clean["err"])
    assert np.all(ds["err"].values[1] == 0.5)
    rec = ds.attrs["input"]["F444W"]
    assert rec["err"] is None and rec["wht"] == str(wht.resolve()) and set(rec["sha256"]) == {rec["sci"], rec["wht"]}

    # replacing the store keeps the contract; the old one goes only after the new one is complete
    with pytest.warns(UserWarning, match="no ERR or WHT for F277W: err is NaN"):
        again = ingest_mosaic(out, {"F277W": files["sci"]}, client=client, overwrite=True, progress=False)
    assert open_mosaic(again).attrs["store_id"] != ds.attrs["store_id"]


def test_pixel_area_from_wcs_when_no_pixar_sr(tmp_path, client) -> None:
    src = write_i2d(tmp_path / "i2d.fits", np.ones((64, 64), np.float32), pixar_sr=None)
    with pytest.warns(UserWarning, match="no ERR or WHT"):
        ds = open_mosaic(ingest_mosaic(tmp_path / "m.zarr", {"F356W": src}, client=client, progress=False))
    area_sr = np.deg2rad(0.03 / 3600) ** 2
    assert float(ds["sci"][0, 5, 5]) == pytest.approx(1e15 * area_sr, rel=1e-6)
    assert ds.attrs["input"]["F356W"]["pixar_sr"] is None


def test_lazy_dataset_blocks_of_scaled_and_compressed_inputs(tmp_path) -> None:
    """The lazy Dataset over scaled and tile-compressed inputs (no client: dask sync): whole bands
    and a block of one variable alone (dask fuses the slice into the reader) give the same numbers."""
    raw = (np.arange(SHAPE[0] * SHAPE[1]).reshape(SHAPE) % 1000).astype(np.int16)
    h = header(bunit="nJy", pixar_sr=None)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(raw, h, name="SCI")]).writeto(tmp_path / "comp.fits")
    scaled = fits.PrimaryHDU(raw, h)
    scaled.header.update(BSCALE=0.5, BZERO=10.0)
    scaled.writeto(tmp_path / "scaled.fits")
    sources = resolve_bands({"F277W": tmp_path / "comp.fits", "F444W": {"sci": tmp_path / "scaled.fits"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no ERR/WHT
        ds = _build_dataset(sources, 128)
    np.testing.assert_array_equal(ds["sci"].values[0], raw.astype(np.float32))
    np.testing.assert_array_equal(ds["sci"].values[1], raw * np.float32(0.5) + np.float32(10.0))
    np.testing.assert_array_equal(ds["sci"][1, 100:200, 300:420].values, ds["sci"].values[1, 100:200, 300:420])


def test_real_jades_headers(tmp_path, shared_data, client) -> None:
    """JADES GOODS-S cut-outs: rotated WCS with both PC and CD cards, MJy/sr, PIXAR_SR, float64."""
    jades = shared_data / "jades_noise"
    bands, expected = {}, {}
    rng = np.random.default_rng(0)
    for band in ("F090W", "F200W", "F444W"):
        err_file = jades / f"{band}_rms_err.fits"
        with fits.open(err_file) as hdul:
            err, hdr = hdul["ERR"].data.astype(np.float64), hdul["ERR"].header.copy()
        hdr["EXTNAME"] = "SCI"
        sci_file = tmp_path / f"{band}_sci.fits"
        sci = err * rng.normal(size=err.shape)
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci, hdr)]).writeto(sci_file)
        wht = jades / f"{band}_wht.fits"
        bands[band] = {"sci": sci_file, "err": err_file, "wht": wht if wht.exists() else None}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            expected[band] = (sci * 1e15 * hdr["PIXAR_SR"], err * 1e15 * hdr["PIXAR_SR"], WCS(hdr))
    ds = open_mosaic(ingest_mosaic(tmp_path / "jades.zarr", bands, chunk=256, client=client, progress=False))
    assert ds.sizes == {"band": 3, "y": 500, "x": 500}
    assert ds.attrs["pixel_scale_arcsec"] == pytest.approx(0.03, rel=1e-6)
    for i, band in enumerate(("F090W", "F200W", "F444W")):
        sci, err, _ = expected[band]
        np.testing.assert_allclose(ds["sci"].values[i], sci, rtol=1e-6)
        np.testing.assert_allclose(ds["err"].values[i], err, rtol=1e-6)
        assert 0.01 < np.median(ds["err"].values[i]) < 0.1  # ~2e-3 MJy/sr x 2.1e-14 sr ~ 0.04 nJy/pixel
    ys, xs = np.mgrid[0:500:99, 0:500:99]
    np.testing.assert_allclose(mosaic_wcs(ds).pixel_to_world_values(xs, ys),
                               expected["F090W"][2].pixel_to_world_values(xs, ys), rtol=0, atol=1e-10)


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_bad_inputs_are_one_line_errors(tmp_path, images) -> None:
    good = write_i2d(tmp_path / "good.fits", images["sci"], images["err"])
    out = tmp_path / "x.zarr"
    cases = [
        (FileNotFoundError, {"F277W": tmp_path / "none.fits"}, "F277W: mosaic file"),
        (FileNotFoundError, {"F277W": {"sci": good, "err": tmp_path / "e.fits"}}, "err file"),
        (ValueError, {"F999W": good}, "unknown band(s) ['F999W']"),
        (ValueError, {"F277W": write_i2d(tmp_path / "dn.fits", images["sci"], bunit="DN/s")},
         "BUNIT 'DN/s'"),
        (ValueError, {"F277W": write_i2d(tmp_path / "nounit.fits", images["sci"], bunit=None)}, "no BUNIT"),
        (ValueError, {"F277W": good, "F444W": write_i2d(tmp_path / "small.fits", images["sci"][:200])},
         "bands F277W and F444W are not on one pixel grid: shapes 300 x 500 and 200 x 500"),
        (ValueError, {"F277W": good, "F356W": write_i2d(tmp_path / "shift.fits", images["sci"], shift_pix=0.01)},
         "bands F277W and F356W are not on one pixel grid: their WCS differ by 0.01 pixels"),
        (ValueError, {"F277W": {"sci": good, "err": write_image(tmp_path / "e2.fits", images["err"][:, :400])}},
         "err image e2.fits has shape 300 x 400"),
    ]
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(good.read_bytes()[:-5 * 2880])
    cases.append((ValueError, {"F277W": truncated}, "truncated.fits (HDU 2) is truncated"))
    only_err = tmp_path / "only_err.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(images["err"], header(), name="ERR")]).writeto(only_err)
    cases.append((ValueError, {"F277W": only_err}, "only_err.fits has no SCI extension (extensions: 0, ERR)"))
    (tmp_path / "text.fits").write_text("not FITS")
    cases.append((ValueError, {"F277W": tmp_path / "text.fits"}, "not a readable FITS file"))
    for error, bands, message in cases:
        with pytest.raises(error) as exc_info:
            ingest_mosaic(out, bands, progress=False)
        assert message in _one_line(exc_info), bands
    assert not out.exists()
    with pytest.raises(ValueError, match="chunk must be an integer >= 16"):
        ingest_mosaic(out, {"F277W": good}, chunk=8)
    out.mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        ingest_mosaic(out, {"F277W": good})


def test_open_mosaic_refuses_other_stores(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        open_mosaic(tmp_path / "none.zarr")
    group = zarr.open_group(tmp_path / "other.zarr", mode="w")
    group.attrs.update(store_kind="training", complete=True)
    with pytest.raises(ValueError, match="not a surveydust mosaic store"):
        open_mosaic(tmp_path / "other.zarr")
    group.attrs.update(store_kind="mosaic", complete=False)
    with pytest.raises(ValueError, match="incomplete"):
        open_mosaic(tmp_path / "other.zarr")


def test_cli_ingest_mosaic(tmp_path, images, client, monkeypatch) -> None:
    sci = write_image(tmp_path / "sci.fits", images["sci"])
    err = write_image(tmp_path / "err.fits", images["err"])
    out = tmp_path / "cli.zarr"
    # in process (the console script is exercised below), on the session's warm cluster
    monkeypatch.setattr(logging.getLogger("surveydust"), "handlers", [])  # main() adds one per call
    with dask.config.set({"surveydust.cluster.profiles.address.address": client.scheduler.address}):
        result = CliRunner().invoke(main, ["ingest-mosaic", str(out), "--band", f"F277W={sci}", "--err",
                                           f"f277w={err}", "--chunk", "256", "--cluster", "address", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "F277W, 300 x 500 pixels at 0.03 arcsec/pixel, nJy" in result.output
    ds = open_mosaic(out)
    assert ds["sci"].encoding["chunks"] == (1, 256, 256)
    assert float(ds["sci"][0, 0, 0]) == pytest.approx(40.0, rel=1e-6)
    assert ds.attrs["input"]["F277W"]["err"] == str(err.resolve())
    help_text = CliRunner().invoke(main, ["ingest-mosaic", "--help"]).output
    assert "nJy" in help_text and "MJy/sr" in help_text


def test_console_script_bad_input_is_one_line_error(tmp_path, images, console_script) -> None:
    sci = write_image(tmp_path / "sci.fits", images["sci"])
    bad = write_image(tmp_path / "bad.fits", images["sci"], bunit="DN/s")
    result = console_script("ingest-mosaic", str(tmp_path / "bad.zarr"), "--band", f"F277W={sci}",
                            "--band", f"F444W={bad}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error:") and "F444W: BUNIT 'DN/s' of bad.fits is not supported" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad.zarr").exists()


def _njy_header(ctype1: str, ctype2: str) -> fits.Header:
    """A 64 x 64 px, 0.03"/px TAN header with the given axis types, BUNIT nJy."""
    w = WCS(naxis=2)
    w.wcs.ctype = [ctype1, ctype2]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [10.0, 20.0], [32.0, 32.0], [-0.03 / 3600, 0.03 / 3600]
    h = w.to_header()
    h["BUNIT"] = "nJy"
    return h


def test_an_all_nan_band_is_ingested_with_a_warning(tmp_path: Path, client, caplog) -> None:
    h = _njy_header("RA---TAN", "DEC--TAN")
    fits.writeto(tmp_path / "good.fits", np.ones((64, 64), np.float32), h)
    fits.writeto(tmp_path / "empty.fits", np.full((64, 64), np.nan, np.float32), h)
    with caplog.at_level(logging.WARNING, logger="surveydust"):
        out = ingest_mosaic(tmp_path / "m.zarr", {"F277W": str(tmp_path / "good.fits"),
                                                  "F356W": str(tmp_path / "empty.fits")},
                            client=client, progress=False)
    warned = [r.getMessage() for r in caplog.records if "no valid pixel" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("band F356W")
    assert open_mosaic(out).sizes["band"] == 2
