"""Make the tiny synthetic SKIRT-format cubes used by tests/test_skirt.py.

Run from the repository root: ``python tests/data/skirt/make_fixture.py``.
Two views of a fake TNG50 galaxy (TARGET 900001, z = 7), each with a
NIRCam_long cube (5 LW filters, 21x21 at 0.063"/px) and a NIRCam_short cube
(3 SW filters, 41x41 at 0.031"/px), in the format of the Costantin et al.
(2023) release: primary HDU float32 (filter, y, x) in MJy/sr, EXTn/MAGn
keywords, CRPIX at the cube centre. Each band holds a pixel-integrated 2-D
Gaussian whose total flux is exactly the AB magnitude written to MAGn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy.special import erf

HERE = Path(__file__).parent
TARGET, REDSHIFT = 900001, 7.0
LONG = {"F277W": 26.0, "F300M": 25.95, "F356W": 25.9, "F410M": 25.85, "F444W": 25.8}
SHORT = {"F115W": 27.0, "F150W": 26.6, "F200W": 26.3}
#: (inclination, azimuth) -> (sigma_x, sigma_y [arcsec], magnitude offset)
VIEWS = {(0, 0): (0.10, 0.10, 0.0), (45, 90): (0.12, 0.06, 0.2)}
PROPERTIES = """target,inclination,azimuth,A_V,EBV,log_ssfr,dtm,log_mstar
900001,0,0,0.5,0.1,-8.2,0.3,9.1
900001,45,90,0.8,0.16,-8.2,0.3,9.1
"""


def gaussian_fraction(n: int, scale: float, sx: float, sy: float) -> np.ndarray:
    """(n, n) fraction of a unit-flux Gaussian in each pixel, centred on the middle pixel."""
    edges = (np.arange(n + 1) - n / 2) * scale
    fx = np.diff(0.5 * erf(edges / (np.sqrt(2) * sx)))
    fy = np.diff(0.5 * erf(edges / (np.sqrt(2) * sy)))
    frac = np.outer(fy, fx)
    return frac / frac.sum()


def write_cube(kind: str, mags: dict[str, float], n: int, scale: float, view: tuple[int, int]) -> None:
    sx, sy, dmag = VIEWS[view]
    area_sr = np.deg2rad(scale / 3600.0) ** 2
    frac = gaussian_fraction(n, scale, sx, sy)
    header = fits.Header()
    planes = []
    for k, (band, mag) in enumerate(mags.items(), start=1):
        flux_njy = 3631e9 * 10 ** (-0.4 * (mag + dmag))
        planes.append(frac * flux_njy / (1e15 * area_sr))  # MJy/sr
        header[f"EXT{k}"] = (band, f"Filter of extension {k}")
        header[f"MAG{k}"] = (mag + dmag, f"AB magnitude {band}")
    header.update(TARGET=TARGET, REDSHIFT=REDSHIFT, INCLIN=view[0], AZIMUTH=view[1], BUNIT="MJy / sr")
    for axis, sign in ((1, -1), (2, 1)):
        header[f"CRPIX{axis}"] = (n + 1) / 2
        header[f"CDELT{axis}"] = sign * scale / 3600.0
        header[f"CTYPE{axis}"] = "RA---TAN" if axis == 1 else "DEC--TAN"
        header[f"CUNIT{axis}"] = "deg"
    hdu = fits.PrimaryHDU(np.array(planes, np.float32), header=header)
    hdu.writeto(HERE / f"{TARGET}_i{view[0]}_a{view[1]}_z{REDSHIFT:g}_NIRCam_{kind}.fits", overwrite=True)


def main() -> None:
    for view in VIEWS:
        write_cube("long", LONG, 21, 0.063, view)
        write_cube("short", SHORT, 41, 0.031, view)
    (HERE / "properties.csv").write_text(PROPERTIES)


if __name__ == "__main__":
    main()
