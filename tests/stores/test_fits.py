"""FITS image reading: the one BUNIT parser and its nJy factor, pixel scales from header
keywords, HDU choice and WCS checks, and pixel blocks (memmap, scaled and tile-compressed
data, the no-data mask). Real files written with astropy; no Dask."""

from __future__ import annotations

from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from surveydust.stores.fits import (
    flux_to_njy_factor,
    header_pixel_scales_arcsec,
    parse_flux_unit,
    read_block,
    resolve_bands,
)

SHAPE = (300, 500)


def tan_header(bunit: str = "nJy", ctype: tuple[str, str] = ("RA---TAN", "DEC--TAN")) -> fits.Header:
    """A 0.03"/px TAN header with the given axis types and BUNIT."""
    w = WCS(naxis=2)
    w.wcs.ctype = list(ctype)
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [10.0, 20.0], [32.0, 32.0], [-0.03 / 3600, 0.03 / 3600]
    h = w.to_header()
    h["BUNIT"] = bunit
    return h


@pytest.mark.parametrize(("text", "unit"), [
    ("MJy/sr", u.MJy / u.sr), ("MJy / sr", u.MJy / u.sr), ("MJY/SR", u.MJy / u.sr), ("MJy sr-1", u.MJy / u.sr),
    ("nJy", u.nJy), ("NJY", u.nJy), ("10*nJy", 10 * u.nJy), ("uJy", u.uJy),
])
def test_parse_flux_unit_reads_astropy_and_fits_spellings(text: str, unit: u.UnitBase) -> None:
    assert parse_flux_unit(text).is_equivalent(unit)
    assert parse_flux_unit(text).to(unit) == pytest.approx(1.0)


def test_parse_flux_unit_unreadable_is_none() -> None:
    assert parse_flux_unit("counts per fortnight((") is None


def test_flux_to_njy_factor() -> None:
    area = 2.0e-14  # sr
    assert flux_to_njy_factor("MJy/sr", area, file="a.fits") == pytest.approx(1e15 * area)
    assert flux_to_njy_factor(" MJY/SR ", area, file="a.fits") == pytest.approx(1e15 * area)
    assert flux_to_njy_factor("uJy", area, file="a.fits") == pytest.approx(1e3)
    assert flux_to_njy_factor("Jy/sr", area, file="a.fits") == pytest.approx(1e9 * area)
    with pytest.raises(ValueError, match=r"^F277W: a.fits \(HDU 1\) has no BUNIT; expected MJy/sr"):
        flux_to_njy_factor(None, area, file="a.fits", hdu=1, band="F277W")
    with pytest.raises(ValueError, match=r"^a.fits has no BUNIT"):
        flux_to_njy_factor("  ", area, file="a.fits")
    for bad in ("DN/s", "erg / (s cm2 Angstrom)", "nonsense(("):
        with pytest.raises(ValueError, match="is not supported: it is neither a surface brightness") as info:
            flux_to_njy_factor(bad, area, file="a.fits", band="F444W")
        assert str(info.value).startswith(f"F444W: BUNIT {bad!r} of a.fits is not supported")


def test_header_pixel_scales_arcsec() -> None:
    h = fits.Header({"CDELT1": -0.063 / 3600, "CDELT2": 0.031 / 3600})
    assert header_pixel_scales_arcsec(h, "c.fits") == pytest.approx((0.063, 0.031))
    theta = np.deg2rad(30)
    cd = 0.03 / 3600 * np.array([[-np.cos(theta), np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    h = fits.Header({f"CD{i + 1}_{j + 1}": cd[i, j] for i in range(2) for j in range(2)})
    assert header_pixel_scales_arcsec(h, "c.fits") == pytest.approx((0.03, 0.03))
    h = fits.Header({"CDELT1": 0.05, "CDELT2": 0.05, "CUNIT1": "arcsec", "CUNIT2": "arcsec"})
    assert header_pixel_scales_arcsec(h, "c.fits") == pytest.approx((0.05, 0.05))
    assert header_pixel_scales_arcsec(fits.Header({"PIXELSCL": 0.063}), "c.fits") == pytest.approx((0.063, 0.063))
    with pytest.raises(ValueError, match="c.fits: no pixel scale in the header"):
        header_pixel_scales_arcsec(fits.Header(), "c.fits")
    with pytest.raises(ValueError, match="is not an angle"):
        header_pixel_scales_arcsec(fits.Header({"CDELT1": 1.0, "CDELT2": 1.0, "CUNIT1": "m"}), "c.fits")
    with pytest.raises(ValueError, match="invalid pixel scale"):
        header_pixel_scales_arcsec(fits.Header({"PIXELSCL": 0.0}), "c.fits")


def test_scaled_and_tile_compressed_inputs(tmp_path) -> None:
    """BSCALE/BZERO integers and tile-compressed SCI are read through astropy, not a memmap."""
    raw = (np.arange(SHAPE[0] * SHAPE[1]).reshape(SHAPE) % 1000).astype(np.int16)
    h = tan_header("nJy")
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(raw, h, name="SCI")]).writeto(tmp_path / "comp.fits")
    scaled = fits.PrimaryHDU(raw, h)
    scaled.header.update(BSCALE=0.5, BZERO=10.0)
    scaled.writeto(tmp_path / "scaled.fits")
    sources = resolve_bands({"F277W": tmp_path / "comp.fits", "F444W": {"sci": tmp_path / "scaled.fits"}})
    assert [s.band for s in sources] == ["F277W", "F444W"]
    assert [s.sci.offset for s in sources] == [None, None]
    whole = slice(None)
    np.testing.assert_array_equal(read_block(sources[0].planes, whole, whole)[0], raw.astype(np.float32))
    block = read_block(sources[1].planes, slice(100, 200), slice(300, 420))
    np.testing.assert_array_equal(block[0], raw[100:200, 300:420] * np.float32(0.5) + np.float32(10.0))
    assert np.isnan(block[1]).all()  # no ERR, no WHT


def test_memmapped_block_with_weight_map(tmp_path) -> None:
    """A float32 i2d file is memmapped; err = 1/sqrt(WHT) in SCI units; no data where WHT = 0."""
    rng = np.random.default_rng(1)
    sci = rng.normal(1.0, 0.5, (64, 64)).astype(np.float32)
    wht = rng.uniform(10, 100, (64, 64)).astype(np.float32)
    wht[5, 7] = 0.0
    sci[9, 3] = np.nan
    h = tan_header("uJy")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci.astype(">f4"), h, name="SCI"),
                  fits.ImageHDU(wht.astype(">f4"), h, name="WHT")]).writeto(tmp_path / "i2d.fits")
    (source,) = resolve_bands({"f200w": tmp_path / "i2d.fits"})
    assert source.band == "F200W" and source.sci.offset is not None and source.err is None
    assert source.sci.to_njy == pytest.approx(1e3) and source.bunit == "uJy"
    out = read_block(source.planes, slice(0, 64), slice(0, 64))
    assert out.dtype == np.float32 and out.shape == (2, 64, 64)
    good = np.ones((64, 64), bool)
    good[5, 7] = good[9, 3] = False
    np.testing.assert_allclose(out[0][good], 1e3 * sci[good], rtol=1e-6)
    np.testing.assert_allclose(out[1][good], 1e3 / np.sqrt(wht[good]), rtol=1e-6)
    assert np.isnan(out[:, ~good]).all()


def test_a_galactic_wcs_is_refused(tmp_path: Path) -> None:
    """GLON/GLAT axes would land in the catalogue's ra/dec columns: refused in one line."""
    fits.writeto(tmp_path / "gal.fits", np.ones((64, 64), np.float32), tan_header("nJy", ("GLON-TAN", "GLAT-TAN")))
    with pytest.raises(ValueError, match="has a GLON/GLAT WCS; catalogues give ICRS ra/dec"):
        resolve_bands({"F277W": str(tmp_path / "gal.fits")})


def test_a_file_for_two_bands_is_refused(tmp_path: Path) -> None:
    fits.writeto(tmp_path / "one.fits", np.ones((64, 64), np.float32), tan_header())
    with pytest.raises(ValueError, match="bands F356W and F444W are given the same file one.fits"):
        resolve_bands({"F444W": tmp_path / "one.fits", "F356W": tmp_path / "one.fits"})
