"""Intrinsic (pre-dust, pre-PSF) maps of a galaxy seen from one orientation.

A galaxy is a thick disc: a smooth Sersic component of older stars, clumpy
young star-forming regions plus a faint young diffuse disc, and gas that
follows the young component (clumps broadened) and an extended exponential
disc. A view is an inclination and position angle; inclining the disc
shortens its projected minor axis, concentrates the gas column, and moves
the clumps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from surveydust.simulate.population import Galaxy

CLUMPY_YOUNG_FRACTION = 0.7
GAS_IN_CLUMPS = 0.7
PC2_PER_KPC2 = 1e6


@dataclass(frozen=True)
class View:
    """Orientation of one image of a galaxy."""

    inclination: float   # radians, 0 = face-on
    position_angle: float  # radians
    offset_pix: tuple[float, float]  # centre offset (dy, dx) in output pixels


@dataclass(frozen=True)
class Maps:
    """Maps on the oversampled grid; light profiles sum to 1."""

    old: np.ndarray
    young: np.ndarray
    gas_column: np.ndarray  # line-of-sight gas surface density [M_sun / pc^2]


def draw_view(rng: np.random.Generator) -> View:
    """An isotropic random orientation and a sub-pixel centring offset."""
    return View(
        inclination=float(np.arccos(rng.uniform(0.0, 1.0))),
        position_angle=float(rng.uniform(0.0, np.pi)),
        offset_pix=(float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.5, 0.5))),
    )


def sersic_b(n: float) -> float:
    """The Sersic ``b_n`` that makes ``r_e`` the half-light radius (Ciotti & Bertin 1999 expansion)."""
    return 2.0 * n - 1.0 / 3.0 + 0.009876 / n


def _normalised(a: np.ndarray) -> np.ndarray:
    total = a.sum()
    return a / total if total > 0 else a


def render_maps(gal: Galaxy, view: View, n_pix: int, pix_kpc: float, oversample: int) -> Maps:
    """Render the view on an ``n_pix * oversample`` square grid.

    ``pix_kpc`` is the proper size of one output pixel in kpc.
    """
    n = n_pix * oversample
    sub = pix_kpc / oversample
    coord = (np.arange(n) + 0.5 - n / 2.0) * sub
    y = coord[:, None] - view.offset_pix[0] * pix_kpc
    x = coord[None, :] - view.offset_pix[1] * pix_kpc
    cos_pa, sin_pa = np.cos(view.position_angle), np.sin(view.position_angle)
    u = x * cos_pa + y * sin_pa          # along the projected major axis
    w = -x * sin_pa + y * cos_pa         # along the projected minor axis
    cos_i, sin_i = np.cos(view.inclination), np.sin(view.inclination)

    def elliptical_radius(thickness: float) -> np.ndarray:
        q = np.sqrt(cos_i**2 + (thickness * sin_i) ** 2)
        return np.sqrt(u**2 + (w / q) ** 2)

    r_star = elliptical_radius(gal.thickness)
    old = np.exp(-sersic_b(gal.sersic_n) * ((r_star / gal.r_eff_kpc) ** (1.0 / gal.sersic_n) - 1.0))
    young_disc = np.exp(-r_star / (0.6 * gal.r_eff_kpc))

    # clump centres: incline the disc plane, then rotate into the image
    cx, cy = gal.clump_xy_kpc[:, 0], gal.clump_xy_kpc[:, 1] * cos_i
    ux = cx * cos_pa - cy * sin_pa
    uy = cx * sin_pa + cy * cos_pa

    def clumps(scale: float) -> np.ndarray:
        out = np.zeros((n, n))
        for px, py, sig, wgt in zip(ux, uy, gal.clump_sigma_kpc * scale, gal.clump_weight):
            out += wgt * np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sig**2)) / sig**2
        return out

    young = (CLUMPY_YOUNG_FRACTION * _normalised(clumps(1.0))
             + (1 - CLUMPY_YOUNG_FRACTION) * _normalised(young_disc))
    gas_disc = np.exp(-elliptical_radius(0.7 * gal.thickness) / (1.2 * gal.r_eff_kpc))
    gas = GAS_IN_CLUMPS * _normalised(clumps(1.5)) + (1 - GAS_IN_CLUMPS) * _normalised(gas_disc)
    column = gal.gas_mass * gas / (sub**2 * PC2_PER_KPC2)
    return Maps(old=_normalised(old), young=_normalised(young), gas_column=column)
