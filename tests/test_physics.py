"""Physical helpers and the instrument model against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from surveydust.instrument import (
    band_weights,
    check_redshift_coverage,
    fits_psf,
    moffat_psf,
    pixel_noise_njy,
)
from surveydust.physics import (
    ab_to_njy,
    attenuation_curve,
    kpc_per_arcsec,
    mjy_per_sr_to_njy,
    njy_to_ab,
    pixel_area_sr,
)
from surveydust.quantities import r_v

C_AA = 2.99792458e18


def test_ab_magnitudes() -> None:
    assert ab_to_njy(31.4) == pytest.approx(1.0, rel=1e-3)  # 31.4 AB ~ 1 nJy
    assert njy_to_ab(3631e9) == pytest.approx(0.0)
    assert njy_to_ab(ab_to_njy(28.6)) == pytest.approx(28.6)
    assert np.isnan(njy_to_ab(-1.0))


def test_calzetti_values() -> None:
    # A_lambda / A_V of Calzetti (2000) at 0.15 / 0.3 / 0.55 / 1.0 um
    k = attenuation_curve(np.array([1500.0, 3000.0, 5500.0, 10000.0]), "calzetti")
    assert k == pytest.approx([2.55, 1.71, 1.00, 0.46], abs=0.02)
    assert attenuation_curve(np.array([5500.0]), "mw")[0] == pytest.approx(1.0, abs=0.03)
    with pytest.raises(ValueError, match="unknown dust law"):
        attenuation_curve(np.array([5500.0]), "lmc")


def test_r_v_undefined_without_reddening() -> None:
    out = r_v(np.array([0.0, 0.405, 1.0]), np.array([0.0, 0.1, 1e-6]))
    assert np.isnan(out[0]) and np.isnan(out[2])
    assert out[1] == pytest.approx(4.05)


def test_unit_conversions() -> None:
    assert mjy_per_sr_to_njy(np.array(1.0), 1.0) == pytest.approx(1e15)
    # 0.03" pixels: 2.1154e-14 sr
    assert pixel_area_sr(0.03) == pytest.approx(2.1154e-14, rel=1e-4)
    assert 5.0 < kpc_per_arcsec(7.0) < 5.5


@pytest.mark.parametrize(("band", "z"), [("F277W", 7.0), ("F444W", 6.0), ("F115W", 8.0), ("V", 0.0)])
def test_band_weights_flat_fnu(band: str, z: float) -> None:
    """A flat L_nu spectrum gives sum(w L_lambda) = (1 + z) L_nu."""
    wave = np.geomspace(900, 12000, 4000)
    l_nu = 3.0e28
    l_lambda = l_nu * C_AA / wave**2
    assert (band_weights(wave, band, z) * l_lambda).sum() == pytest.approx((1 + z) * l_nu, rel=0.02)


def test_redshift_coverage() -> None:
    check_redshift_coverage(("F115W", "F444W"), (6.0, 8.0))
    with pytest.raises(ValueError, match="blueward of Lyman-alpha"):
        check_redshift_coverage(("F115W",), (6.0, 14.0))
    with pytest.raises(ValueError, match="outside the SED library"):
        check_redshift_coverage(("F444W",), (1.0, 8.0))


def test_moffat_psf() -> None:
    psf = moffat_psf(0.145, 0.03, size=41)
    assert psf.sum() == pytest.approx(1.0)
    assert np.unravel_index(psf.argmax(), psf.shape) == (20, 20)
    row = psf[20] / psf.max()
    fwhm_pix = np.count_nonzero(row >= 0.5)
    assert fwhm_pix == pytest.approx(0.145 / 0.03, abs=1.0)


def test_pixel_noise_gives_depth() -> None:
    sigma = pixel_noise_njy(28.6, 0.03)
    n_ap = np.pi * (0.1 / 0.03) ** 2
    assert 5 * sigma * np.sqrt(n_ap) == pytest.approx(ab_to_njy(28.6))


def test_fits_psf_resampled(tmp_path) -> None:
    """A Gaussian PSF at 0.063"/px keeps its FWHM in arcsec on the 0.03"/px grid."""
    y, x = np.mgrid[-50:51, -50:51]
    sigma_pix = 0.12 / 0.063 / 2.3548
    hdu = fits.ImageHDU(np.exp(-(x**2 + y**2) / (2 * sigma_pix**2)), name="DET_DIST")
    hdu.header["PIXELSCL"] = 0.063
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "psf.fits")
    psf = fits_psf(tmp_path / "psf.fits", 0.03, size=41)
    assert psf.sum() == pytest.approx(1.0)
    row = psf[20] / psf.max()
    assert np.count_nonzero(row >= 0.5) * 0.03 == pytest.approx(0.12, abs=0.03)


@pytest.mark.shared
def test_real_webbpsf(shared_data) -> None:
    psf = fits_psf(shared_data / "nircam_psf" / "f444w_psf.fits", 0.03)
    row = psf[20] / psf.max()
    assert 0.10 < np.count_nonzero(row >= 0.5) * 0.03 < 0.20  # F444W FWHM ~ 0.145"
