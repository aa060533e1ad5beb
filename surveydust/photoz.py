"""Photometric redshifts from aperture photometry: a template fit, a learned estimator, a dropout cut.

A survey mosaic is mostly galaxies at z < 6; before its dust is measured, a source must be
known to lie at z > 6. From fluxes and errors [nJy] in any NIRCam bands this module gives

- :func:`fit_photoz`: a template fit in the style of eazy-py (Brammer et al. 2008): on a fixed
  redshift grid, at each redshift and for each dust attenuation A_V, the best non-negative linear
  combination of the base spectra (:data:`TEMPLATES`, as eazy-py combines its basis templates;
  here of at most two of them: on simulated sky-mix photometry chi^2 at the best redshift within
  0.1 (median; 0.9 at the 90th percentile) of the full non-negative least squares over all seven,
  the same z > 6 selection) for the sources no single template fits below or above z = 6
  (:data:`COMBINE_CONFIDENCE`), else the best single one; chi^2 with a fractional template error
  added in quadrature; the likelihood is summed over A_V and multiplied by a prior into the
  posterior, whose peak is ``z_phot``; tempered (:data:`PZ_TEMPERATURE`) it is p(z), from which the
  16/84 percentiles and P(z > 6) follow; and the best chi^2 at each redshift (``chi2_z``). Stellar
  templates (:func:`dwarf_sed`: blackbody plus molecular bands, built apart from the simulator's
  brown dwarfs) are fitted on the side (``chi2_star``). Galaxy templates (:func:`template_grid`) are
  built from the package's own stellar-population library, attenuation laws, nebular lines and IGM
  (:mod:`surveydust.simulate.foreground`) through the NIRCam throughputs: nothing is downloaded;
- :func:`select_high_z`: the z > 6 selection of deep-field searches (Finkelstein et al. 2023;
  Hainline et al. 2024): P(z > 6), Delta chi^2 between the best low- and high-z solutions, no
  detection blueward of Lyman-alpha, not a brown dwarf; a reason per rejected source;
- :class:`LearnedPhotoZ`: gradient-boosted trees (scikit-learn) on asinh colours, trained on
  simulated photometry, giving ``z_phot`` and P(z > 6);
- :func:`dropout_selection`: a classic Lyman-break colour cut, the baseline;
- :func:`photoz_metrics` and :func:`selection_metrics` to score them.

Everything is plain numpy (scikit-learn for the learned estimator), one call per batch of sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from surveydust.config import load_catalogue_config
from surveydust.errors import InputError
from surveydust.instrument import pivot_wavelength_aa

#: redshift grid of the fits (:func:`default_z_grid`): 0 to Z_GRID_MAX, evenly spaced in ln(1 + z) by
#: Z_GRID_STEP, i.e. dz = 0.01 (1 + z), eazy-py's default spacing (Brammer et al. 2008): a third of the
#: fit's scatter at z > 6 (NMAD ~0.03) and 278 points, where 0.01 in z took 1,501
Z_GRID_STEP = 0.01
Z_GRID_MAX = 15.0
#: the redshift a z > 6 selection asks about
HIGH_Z = 6.0
#: fractional template error added in quadrature to the flux errors (eazy-py uses ~5%)
SYS_ERR = 0.05
#: V-band attenuations [mag] each template is built with (Calzetti et al. 2000)
TEMPLATE_A_V = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
#: base templates: name -> (relative mass formed in the library's age bins 0-10, 10-30, 30-100,
#: 100-300, 300-500 Myr; metallicity [Z_sun]; factor on the nebular lines)
TEMPLATES: dict[str, tuple[tuple[float, ...], float, float]] = {
    "starburst_10myr": ((1.0, 0.0, 0.0, 0.0, 0.0), 0.1, 1.0),
    "line_emitter_10myr": ((1.0, 0.0, 0.0, 0.0, 0.0), 0.05, 3.0),
    "young_no_lines": ((1.0, 2.0, 0.0, 0.0, 0.0), 0.02, 0.0),
    "constant_100myr": ((10.0, 20.0, 70.0, 0.0, 0.0), 0.2, 1.0),
    "constant_500myr": ((10.0, 20.0, 70.0, 200.0, 200.0), 0.4, 1.0),
    "post_starburst": ((0.002, 0.004, 0.014, 200.0, 200.0), 1.0, 0.5),
    "old_300_500myr": ((0.0, 0.0, 0.0, 0.0, 1.0), 1.0, 0.0),
}
#: brightness temperatures [K] of the stellar templates' continua (:func:`dwarf_sed`): Y and T dwarfs
#: (their flux windows emerge from layers hotter than T_eff) to L/M dwarfs
STAR_TEMPERATURE_K = (700.0, 1000.0, 1400.0, 2000.0, 2800.0)
#: molecular absorption of cool dwarfs as boxes [um] with the absorber each belongs to: H2O
#: 1.33-1.55, 1.75-2.10, 2.45-3.10 um; CH4 1.60-1.80, 2.15-2.50, 3.00-3.90 um; H2 collision-induced
#: absorption over 1.9-2.5 um; CO 4.4-5.0 um (band positions: Kirkpatrick 2005, ARA&A 43, 195;
#: Burgasser et al. 2006; the CH4 fundamental at 3.3 um and the 4-5 um window: Leggett et al. 2017)
STAR_ABSORPTION_UM = (((1.33, 1.55), "h2o"), ((1.75, 2.10), "h2o"), ((2.45, 3.10), "h2o"),
                      ((1.60, 1.80), "ch4"), ((2.15, 2.50), "ch4"), ((3.00, 3.90), "ch4"), ((1.90, 2.50), "cia"),
                      ((4.40, 5.00), "co"))
#: absorbed fraction per absorber in each spectral class of the stellar templates: M/L (water only),
#: early T (methane appears), late T / Y (water and methane near saturation in the band cores,
#: strong H2 CIA: J - H and H - K blue, the 3-4 um region dark, the 4-5 um window bright)
STAR_CLASSES: dict[str, dict[str, float]] = {
    "ML": {"h2o": 0.4, "ch4": 0.0, "cia": 0.1, "co": 0.1},
    "earlyT": {"h2o": 0.85, "ch4": 0.7, "cia": 0.3, "co": 0.2},
    "lateT_Y": {"h2o": 0.97, "ch4": 0.97, "cia": 0.6, "co": 0.3},
}
#: e-folding width [um] of the optical cut-off of cool dwarfs below 1 um (K I / Na I wings; M/L: none)
STAR_OPTICAL_CUTOFF_UM = 0.08
#: sources fitted at once (bounds memory: a few arrays of chunk x templates x redshifts)
FIT_CHUNK = 64
#: floor on 1 - r^2 of a pair of templates (r: their cosine with the source's weights) where their
#: combination is solved: nearly collinear templates (under ~1.8 deg) add next to nothing to either
#: one alone, and the float32 solution would be round-off there; the floor can only lower the
#: pair's gain (its chi^2 stays >= the exact one)
COLLINEAR = np.float32(1e-3)
#: templates are combined for a source whose best single template below or above the threshold
#: redshift (6) is rejected at this confidence: its chi^2 above this quantile of the chi^2
#: distribution with (bands with data - 2) degrees of freedom. Both hypotheses a selection compares
#: then get the combinations; where one template fits under both, they add freedom the data do not
#: ask for (and cost)
COMBINE_CONFIDENCE = 0.95
#: temperature T of p(z): the likelihood enters p(z) as exp(-chi^2 / (2 T)), a common calibration
#: of template photo-z p(z) that are too narrow for the scatter of the estimates. ``chi2``, ``chi2_z``
#: and so :func:`select_high_z`'s Delta chi^2 stay untempered; P(z > 6) is tempered. Chosen on the
#: calibration sky mix of seed 1 (20,000 sources, seven bands, CEERS depth): the value where p(z)
#: restricted to z = 6-8 (what the dust step draws from) puts the true z of the selected z > 6
#: galaxies at SNR >= 5 inside its central 68% for 68% of them: T = 1: 0.685, 1.25: 0.709, 1.5: 0.736.
#: So 1: no tempering. (Until the simulator's IGM followed the same mean forest transmission as the
#: templates, T = 1 gave 0.61 and 1.5 was used.)
PZ_TEMPERATURE = 1.0


@dataclass(frozen=True)
class TemplateGrid:
    """Template fluxes on a redshift grid.

    Attributes
    ----------
    bands : band names.
    z_grid : (n_z,) redshifts.
    names : (n_t,) template names (``<base>_av<A_V>``).
    flux : (n_t, n_z, n_band) band-averaged f_nu, each template scaled to unit mean over bands
        and redshifts (only ratios matter: the normalisation is fitted).
    star_names : (n_s,) brown-dwarf template names.
    star_flux : (n_s, n_band) their band fluxes (z = 0).
    a_v : (n_t,) the V-band attenuation [mag] of each template: :func:`fit_photoz` combines the
        templates of one A_V (the base spectra under one dust screen).
    """

    bands: tuple[str, ...]
    z_grid: np.ndarray
    names: tuple[str, ...]
    flux: np.ndarray
    star_names: tuple[str, ...]
    star_flux: np.ndarray
    a_v: np.ndarray


@dataclass(frozen=True)
class PhotoZResult:
    """Photometric redshifts of a batch of sources (:func:`fit_photoz`).

    Attributes
    ----------
    z_phot : (n,) peak of the untempered posterior (p(z) at temperature 1, :data:`PZ_TEMPERATURE`):
        tempering widens p(z), it does not move the best estimate.
    z16, z84 : (n,) 16th and 84th percentiles of p(z).
    p_high_z : (n,) P(z > ``z_threshold``).
    pz : (n, n_z) p(z) [per unit z], integrating to 1 over ``z_grid`` (trapezoid rule).
    z_grid : (n_z,) redshifts of ``pz``.
    chi2 : (n,) smallest chi^2 of the galaxy templates (of their combinations: :func:`fit_photoz`).
    chi2_star : (n,) smallest chi^2 of the brown-dwarf templates.
    n_bands : (n,) bands with data per source.
    z_threshold : the redshift of ``p_high_z``.
    chi2_z : (n, n_z) float32, the smallest chi^2 of the galaxy templates (combinations) at each redshift of
        ``z_grid`` (the likelihood alone, no prior): the best low- and high-z solutions a selection
        compares (:func:`select_high_z`).
    """

    z_phot: np.ndarray
    z16: np.ndarray
    z84: np.ndarray
    p_high_z: np.ndarray
    pz: np.ndarray
    z_grid: np.ndarray
    chi2: np.ndarray
    chi2_star: np.ndarray
    n_bands: np.ndarray
    z_threshold: float
    chi2_z: np.ndarray


def default_z_grid(step: float = Z_GRID_STEP, z_max: float = Z_GRID_MAX) -> np.ndarray:
    """Redshift grid from 0 to ``z_max``, evenly spaced in ln(1 + z) by ``step`` (nearest to it that
    ends on ``z_max``): dz = ``step`` (1 + z)."""
    if not (z_max > 0 and 0 < step <= np.log1p(z_max)):
        raise InputError(f"need z_max > 0 and 0 < step <= ln(1 + z_max), got step={step}, z_max={z_max}")
    n = max(round(float(np.log1p(z_max)) / step), 1)
    return np.round(np.expm1(np.linspace(0.0, np.log1p(z_max), n + 1)), 6)


def _check_bands(bands: Any) -> tuple[str, ...]:
    from surveydust.instrument import check_bands

    return check_bands(list(bands))


@lru_cache(maxsize=8)
def _template_grid_cached(bands: tuple[str, ...], z_key: tuple[float, ...]) -> TemplateGrid:
    from surveydust.instrument import band_weights
    from surveydust.physics import attenuation_curve
    from surveydust.simulate.foreground import band_fluxes, extended_library, galaxy_sed
    from surveydust.simulate.imaging import igm_forest_transmission, igm_transmission

    z_grid = np.array(z_key)
    wave, _, _ = extended_library()
    k = attenuation_curve(wave, "calzetti")
    names, seds, dust = [], [], []
    for name, (frac, metallicity, lines) in TEMPLATES.items():
        _, sed = galaxy_sed(np.asarray(frac, float), metallicity, line_scale=lines)
        for a_v in TEMPLATE_A_V:
            names.append(f"{name}_av{a_v:g}")
            seds.append(sed * 10.0 ** (-0.4 * a_v * k))
            dust.append(a_v)
    seds_arr = np.array(seds)
    flux = np.empty((len(seds), len(z_grid), len(bands)))
    for j, z in enumerate(z_grid):
        igm = igm_transmission(wave, igm_forest_transmission(z)) if z > 0 else 1.0
        weights = np.array([band_weights(wave, b, z) for b in bands]) * igm
        flux[:, j] = seds_arr @ weights.T
    flux /= flux.mean(axis=(1, 2), keepdims=True)
    star_names, stars = [], []
    for cls in STAR_CLASSES:
        for t in STAR_TEMPERATURE_K:
            star_names.append(f"dwarf_{cls}_{t:g}K")
            stars.append(band_fluxes(*dwarf_sed(t, cls), 0.0, bands, igm=False))
    stars_arr = np.array(stars)
    stars_arr /= stars_arr.mean(axis=1, keepdims=True)
    return TemplateGrid(bands=bands, z_grid=z_grid, names=tuple(names), flux=flux,
                        star_names=tuple(star_names), star_flux=stars_arr, a_v=np.array(dust))


def dwarf_sed(temperature_k: float, spectral_class: str) -> tuple[np.ndarray, np.ndarray]:
    """A stellar template for :func:`fit_photoz`'s brown-dwarf fit: a blackbody at the brightness
    temperature ``temperature_k`` with box-shaped molecular absorption bands
    (:data:`STAR_ABSORPTION_UM`) at the fractions of ``spectral_class`` (:data:`STAR_CLASSES`) and,
    for T and Y dwarfs, an exponential optical cut-off below 1 um.

    This set is built on purpose apart from the simulator's brown dwarfs
    (:func:`surveydust.simulate.foreground.brown_dwarf_sed`: flux windows in Y, J, H, K and at
    4-5 um over a pseudo-continuum, fitted to published T/Y-dwarf NIRCam colours): a coarser grid,
    box bands, depths per class rather than per temperature, a free brightness temperature.
    Fitting the simulator's own generator would flatter the rejection. Neither is an atmosphere
    model (Sonora/ATMO) or an observed spectrum: both template sets fit the simulated dwarfs
    poorly (median chi^2 ~250 at SNR >= 10, seven bands), and the rejection rests on the stellar
    set fitting them less badly than any galaxy; the rejection measured on simulated fields says
    little about real dwarfs.

    Returns
    -------
    wave_aa : (n_wave,) observed wavelength [Angstrom], 0.5-6 um.
    f_lambda : (n_wave,) relative flux density (peak 1).
    """
    if spectral_class not in STAR_CLASSES or not temperature_k > 0:
        raise InputError(f"need a temperature > 0 and a class in {list(STAR_CLASSES)}, got {temperature_k}, "
                         f"{spectral_class!r}")
    wave = np.geomspace(5000.0, 60000.0, 2000)
    um = wave / 1e4
    f = um**-5 / np.expm1(14387.77 / (um * temperature_k))
    depth = STAR_CLASSES[spectral_class]
    for (lo, hi), molecule in STAR_ABSORPTION_UM:
        f = np.where((um >= lo) & (um <= hi), f * (1.0 - depth[molecule]), f)
    if depth["ch4"] > 0:
        f = f * np.where(um < 1.0, np.exp(-(1.0 - um) / STAR_OPTICAL_CUTOFF_UM), 1.0)
    return wave, f / f.max()


def template_grid(bands: tuple[str, ...] | list[str], z_grid: np.ndarray | None = None) -> TemplateGrid:
    """Fluxes of the photo-z templates (:data:`TEMPLATES` x :data:`TEMPLATE_A_V`, plus brown dwarfs)
    in ``bands`` on ``z_grid`` (any increasing grid; default :func:`default_z_grid`). Cached."""
    z = default_z_grid() if z_grid is None else np.asarray(z_grid, float)
    if z.ndim != 1 or len(z) < 2 or not np.all(np.isfinite(z)) or z[0] < 0 or np.any(np.diff(z) <= 0):
        raise InputError("z_grid must be an increasing 1-D grid of redshifts >= 0")
    return _template_grid_cached(_check_bands(bands), tuple(float(x) for x in z))


def _check_photometry(flux_njy: Any, err_njy: Any, n_band: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, n_band) fluxes and inverse variances; missing data (non-finite flux or error) get weight 0."""
    flux = np.atleast_2d(np.asarray(flux_njy, dtype=np.float64))
    err = np.atleast_2d(np.asarray(err_njy, dtype=np.float64))
    if flux.ndim != 2 or flux.shape[1] != n_band:
        raise InputError(f"flux must have shape (n_sources, {n_band}) for {n_band} bands, got {np.shape(flux_njy)}")
    if err.shape != flux.shape:
        raise InputError(f"err must have the shape of flux {flux.shape}, got {np.shape(err_njy)}")
    if np.any(err <= 0):
        raise InputError("flux errors must be > 0 (use NaN or inf for a band without data)")
    good = np.isfinite(flux) & np.isfinite(err)
    return np.where(good, flux, 0.0), np.where(good, 1.0 / np.where(good, err, 1.0) ** 2, 0.0)


def _free_norm_chi2(flux: np.ndarray, weight: np.ndarray, model: np.ndarray) -> np.ndarray:
    """chi^2 of each source against each model row with its best non-negative scale.

    flux, weight : (n, n_band); model : (m, n_band). Returns (n, m).
    """
    s = (weight * flux**2).sum(axis=1, keepdims=True)
    num = (weight * flux) @ model.T
    den = weight @ (model**2).T
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where((num > 0) & (den > 0), num**2 / den, 0.0)
    return np.maximum(s - gain, 0.0)


def _percentile(cdf: np.ndarray, z: np.ndarray, q: float) -> np.ndarray:
    """Redshift where each row of ``cdf`` (n, n_z) reaches ``q``."""
    idx = np.clip((cdf < q).sum(axis=1), 1, len(z) - 1)
    rows = np.arange(len(cdf))
    c0, c1 = cdf[rows, idx - 1], cdf[rows, idx]
    t = np.clip((q - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.0, 1.0)
    return z[idx - 1] + t * (z[idx] - z[idx - 1])


@dataclass(frozen=True)
class _Models:
    """The template fluxes of :func:`fit_photoz` laid out for :func:`_chunk_likelihood`: ``n_g``
    groups of ``n_m`` templates combined with each other (group-major), float32.

    flux, flux_sq : (n_g * n_m * n_z, n_band) template fluxes and their squares.
    cross : (n_g, n_p * n_z, n_band) products of the two templates of each pair combined in a
        group, the pairs (i, j > i) in row-major order.
    """

    flux: np.ndarray
    flux_sq: np.ndarray
    cross: np.ndarray
    n_g: int
    n_m: int
    n_z: int


def _models(grid: TemplateGrid, combine: bool) -> _Models:
    """Templates grouped by A_V (pairs within each combined) with ``combine``, else one per group."""
    n_t, n_z, n_b = grid.flux.shape
    order = np.argsort(grid.a_v, kind="stable")
    sizes = np.unique(grid.a_v, return_counts=True)[1]
    if not combine or len(sizes) == n_t:
        n_g, n_m = n_t, 1
    elif np.all(sizes == sizes[0]):
        n_g, n_m = len(sizes), int(sizes[0])
    else:
        raise InputError(f"templates must come in groups of one size per A_V, got sizes {sizes.tolist()}")
    flux = grid.flux[order].astype(np.float32)
    first, second = (np.array(x, dtype=np.intp) for x in np.triu_indices(n_m, 1))
    grouped = flux.reshape(n_g, n_m, n_z, n_b)
    cross = (grouped[:, first] * grouped[:, second]).reshape(n_g, -1, n_b)
    flat = flux.reshape(-1, n_b)
    return _Models(flux=flat, flux_sq=flat**2, cross=cross, n_g=n_g, n_m=n_m, n_z=n_z)


def _pair_gains(x: np.ndarray, q: np.ndarray, x2: np.ndarray, best: np.ndarray, w: np.ndarray,
                models: _Models) -> np.ndarray:
    """``best`` (n, n_g, n_z), the largest single-template gain per group, raised to that of the best
    pair of the group's templates where a pair gains more (:func:`_chunk_likelihood`); ``x``, ``q``,
    ``x2``: (n, n_g, n_m, n_z) ``b / sqrt(d)``, ``1 / sqrt(d)``, ``max(x, 0)^2``; ``w`` (n, n_band)."""
    n, n_g, n_m, n_z = x.shape
    w_pad = np.zeros((FIT_CHUNK, w.shape[1]), np.float32)  # padded as in _chunk_likelihood
    w_pad[:n] = w
    # buffers for the pairs (i, j > i) of one template i, reused
    u_buf, v_buf = np.empty((2, n, max(n_m - 1, 1), n_z), np.float32)
    ok_buf = np.empty((n, max(n_m - 1, 1), n_z), bool)
    extra = np.empty((n, n_z), np.float32)
    for g in range(n_g):
        cos = (w_pad @ models.cross[g].T)[:n]
        first = 0
        for i in range(n_m - 1):  # the pairs (i, j > i), in models.cross's order
            k = n_m - 1 - i
            r = cos[:, first * n_z:(first + k) * n_z].reshape(n, k, n_z)
            first += k
            r *= q[:, g, i:i + 1]
            r *= q[:, g, i + 1:]
            xi, xj = x[:, g, i:i + 1], x[:, g, i + 1:]
            u, v, ok = u_buf[:, :k], v_buf[:, :k], ok_buf[:, :k]
            np.multiply(r, xi, out=u)
            np.subtract(xj, u, out=u)  # x_j - r x_i: the second coefficient x (1 - r^2) sqrt(d_j)
            np.multiply(r, xj, out=v)
            np.subtract(xi, v, out=v)  # the first
            np.minimum(u, v, out=v)
            np.greater(v, 0.0, out=ok)
            r *= r
            np.subtract(1.0, r, out=r)
            np.maximum(r, COLLINEAR, out=r)
            u *= u
            u /= r  # what the pair gains over template i alone, where both coefficients are > 0
            u *= ok
            np.max(u, axis=1, out=extra)
            extra += x2[:, g, i]
            np.maximum(best[:, g], extra, out=best[:, g])
    return best


def _chunk_likelihood(flux: np.ndarray, weight: np.ndarray, models: _Models, chi2_limit: np.ndarray,
                      split: int, temperature: float = 1.0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Likelihood summed over template groups, ``(c, n_z)``, the smallest chi^2, ``(c,)``, the
    smallest chi^2 at each redshift, ``(c, n_z)``, and the untempered likelihood (``temperature``
    1; the same array where it is 1), ``(c, n_z)``, of a chunk of sources.

    In each group (one A_V) and at each redshift the best non-negative combination of one or two
    of its templates, as a gain ``s - chi^2`` (``s``: the weighted flux squared). With ``b = sum w f t``,
    ``d = sum w t^2`` and ``x = b / sqrt(d)``, a template alone gains ``x^2`` where ``x > 0``; a pair
    (cosine ``r = sum w t_i t_j / sqrt(d_i d_j)`` >= 0) gains ``x_i^2 + (x_j - r x_i)^2 / (1 - r^2)``
    where both coefficients of its 2x2 least squares are > 0, ``x_j > r x_i`` and ``x_i > r x_j``
    (else its best non-negative fit is one of its templates; ``1 - r^2`` floored at :data:`COLLINEAR`).
    Pairs are fitted for the sources whose best single template at redshifts below index ``split``
    of the grid, or at and above it, has chi^2 above ``chi2_limit`` ``(c,)``. A group's likelihood
    is ``exp((gain - max gain) / (2 T))`` = ``exp(-(chi^2 - min chi^2) / (2 T))``, T = ``temperature``.
    float32, in place where large."""
    s = (weight * flux**2).sum(axis=1)
    # BLAS rounds a row differently with the matrix's row count: padded to FIT_CHUNK rows, a source's
    # p(z) does not depend on which or how many sources are fitted with it (batches, tiles)
    n, n_g, n_m, n_z = len(flux), models.n_g, models.n_m, models.n_z
    wf, w = np.zeros((FIT_CHUNK, flux.shape[1]), np.float32), np.zeros((FIT_CHUNK, flux.shape[1]), np.float32)
    wf[:n], w[:n] = weight * flux, weight
    x = (wf @ models.flux.T)[:n].reshape(n, n_g, n_m, n_z)
    q = (w @ models.flux_sq.T)[:n].reshape(n, n_g, n_m, n_z)
    np.maximum(q, np.finfo(np.float32).tiny, out=q)
    np.sqrt(q, out=q)
    np.reciprocal(q, out=q)  # 1 / sqrt(d)
    x *= q
    x2 = np.maximum(x, 0.0)
    x2 *= x2
    best = x2.max(axis=2)  # (n, n_g, n_z)
    top_one = best.max(axis=1)
    poor = np.zeros(n, bool)
    for part in (top_one[:, :split], top_one[:, split:]):
        if part.shape[1] and n_m > 1:
            poor |= s - part.max(axis=1) > chi2_limit
    rows = np.flatnonzero(poor)
    if len(rows):
        best[rows] = _pair_gains(x[rows], q[rows], x2[rows], best[rows], w[rows], models)
    top_z = best.max(axis=1)
    top = top_z.max(axis=1)
    best -= top[:, None, None]
    best *= 0.5
    plain = np.exp(best).sum(axis=1, dtype=np.float64) if temperature != 1.0 else None
    if temperature != 1.0:
        best /= np.float32(temperature)
    np.exp(best, out=best)
    like = best.sum(axis=1, dtype=np.float64)
    return like, np.maximum(s - top, 0.0), np.maximum(s[:, None] - top_z, 0.0), like if plain is None else plain


def fit_photoz(flux_njy: Any, err_njy: Any, bands: tuple[str, ...] | list[str], *,
               z_grid: np.ndarray | None = None, sys_err: float = SYS_ERR,
               prior: str | np.ndarray | None = "luminosity", z_threshold: float = HIGH_Z,
               templates: TemplateGrid | None = None, combine: bool = True) -> PhotoZResult:
    """Template photometric redshifts and P(z > ``z_threshold``) of a batch of sources.

    Parameters
    ----------
    flux_njy : (n, n_band) or (n_band,) aperture fluxes [nJy]; NaN where a band has no data.
    err_njy : errors [nJy] of the same shape, > 0 (NaN or inf where a band has no data).
    bands : the NIRCam band of each column.
    z_grid : increasing redshift grid (default :func:`default_z_grid`: 0-15, dz = 0.01 (1 + z)).
    sys_err : fractional template error added in quadrature to ``err_njy`` (of ``|flux|``).
    prior : ``"luminosity"`` (:func:`luminosity_prior`), ``"flat"`` or None (flat), or p(z) on
        ``z_grid``, shape (n_z,) or (n, n_z), >= 0.
    z_threshold : redshift of ``p_high_z``.
    templates : the :func:`template_grid` of ``bands`` (and of ``z_grid``, which it then replaces),
        e.g. built once by a catalogue run's driver and sent to its workers; None: built (and cached).
    combine : for a source whose best single template at z < ``z_threshold`` or at z >=
        ``z_threshold`` is rejected (chi^2 above the :data:`COMBINE_CONFIDENCE` quantile for its
        bands - 2 degrees of freedom), fit at each
        redshift the best non-negative combination of (up to two of) the base spectra under each
        A_V; the likelihood is summed over A_V of each one's best fit (default); False: one
        template at a time, the likelihood summed over templates (the fit before combinations,
        kept as the comparison of ``benchmarks/photoz.py``).

    Returns
    -------
    PhotoZResult with p(z) integrating to 1 over the grid, prior x sum over A_V of
    exp(-chi^2 / (2 T)) with T = :data:`PZ_TEMPERATURE` (so ``z16``, ``z84`` and ``p_high_z``
    are tempered; ``z_phot``, the peak at T = 1, ``chi2`` and ``chi2_z`` are not). A source without
    any band with data gets a flat p(z).
    """
    if templates is not None:
        if tuple(templates.bands) != _check_bands(bands):
            raise InputError(f"templates are for bands {list(templates.bands)}, not {list(bands)}")
        grid, z_grid = templates, templates.z_grid
    else:
        grid = template_grid(bands, z_grid)
    flux, weight = _check_photometry(flux_njy, err_njy, len(grid.bands))
    if not 0 <= sys_err < 1:
        raise InputError(f"sys_err must lie in [0, 1), got {sys_err}")
    with np.errstate(divide="ignore"):
        weight = np.where(weight > 0, 1.0 / (1.0 / np.where(weight > 0, weight, 1.0) + (sys_err * flux) ** 2), 0.0)
    z = grid.z_grid if z_grid is None else np.asarray(z_grid, dtype=np.float64)
    if isinstance(prior, str) and prior == "luminosity":
        prior = luminosity_prior(np.where(weight > 0, flux, np.nan), grid.bands, z)
    elif isinstance(prior, str) and prior != "flat":
        raise InputError(f"unknown prior {prior!r}; known: luminosity, flat, or an array")
    prior_arr = _check_prior(None if isinstance(prior, str) else prior, len(flux), len(z))
    models = _models(grid, combine)
    n_bands = (weight > 0).sum(axis=1)
    from scipy.stats import chi2 as chi2_dist

    chi2_limit = chi2_dist.ppf(COMBINE_CONFIDENCE, np.maximum(n_bands - 2, 1))
    split = int(np.searchsorted(z, z_threshold))
    pz = np.empty((len(flux), len(z)))
    chi2_min = np.empty(len(flux))
    chi2_z = np.empty((len(flux), len(z)), np.float32)
    peak = np.empty(len(flux), np.intp)
    for start in range(0, len(flux), FIT_CHUNK):
        part = slice(start, start + FIT_CHUNK)
        like, chi2_min[part], chi2_z[part], plain = _chunk_likelihood(flux[part], weight[part], models,
                                                                      chi2_limit[part], split, PZ_TEMPERATURE)
        pz[part] = like * prior_arr[part]
        peak[part] = np.argmax(plain * prior_arr[part], axis=1)
    pz /= np.trapezoid(pz, z, axis=1)[:, None]
    cdf = np.concatenate([np.zeros((len(pz), 1)), np.cumsum(0.5 * (pz[:, 1:] + pz[:, :-1]) * np.diff(z), axis=1)],
                         axis=1)
    cdf /= cdf[:, -1:]
    j = int(np.clip(np.searchsorted(z, z_threshold, side="right") - 1, 0, len(z) - 2))
    frac = float(np.clip((z_threshold - z[j]) / (z[j + 1] - z[j]), 0.0, 1.0))
    p_high = 1.0 - (cdf[:, j] + frac * (cdf[:, j + 1] - cdf[:, j]))
    chi2_star = _free_norm_chi2(flux, weight, grid.star_flux).min(axis=1)
    return PhotoZResult(z_phot=z[peak], z16=_percentile(cdf, z, 0.16), z84=_percentile(cdf, z, 0.84),
                        p_high_z=np.clip(p_high, 0.0, 1.0), pz=pz, z_grid=z, chi2=chi2_min, chi2_star=chi2_star,
                        n_bands=n_bands, z_threshold=float(z_threshold), chi2_z=chi2_z)


def pz_quantiles(pz: Any, z_grid: Any, levels: Any, z_range: tuple[float, float] | None = None) -> np.ndarray:
    """Redshifts at the cumulative ``levels`` of each row of ``pz`` ``(n, n_z)`` on ``z_grid``, with
    p(z) restricted to ``z_range`` (low, high) when given (e.g. a network's training range). A row
    without probability there (or at all) is taken as flat. Returns ``(n, len(levels))``, e.g. the
    stratified draws ``levels = (k + 0.5) / K`` that integrate a prediction over p(z)."""
    p = np.atleast_2d(np.asarray(pz, dtype=np.float64))
    z = np.asarray(z_grid, dtype=np.float64)
    if z_range is not None:
        lo, hi = float(z_range[0]), float(z_range[1])
        if not z[0] <= lo < hi <= z[-1]:
            raise InputError(f"z_range {z_range} must be an increasing pair inside the redshift grid "
                             f"({z[0]:g}-{z[-1]:g})")
        # the range's ends join the grid points inside it, p(z) interpolated there: a coarse grid
        # does not cut the range short
        j = np.clip(np.searchsorted(z, [lo, hi]) - 1, 0, len(z) - 2)
        w = (np.array([lo, hi]) - z[j]) / (z[j + 1] - z[j])
        ends = p[:, j] + w * (p[:, j + 1] - p[:, j])
        inner = (z > lo + 1e-9) & (z < hi - 1e-9)
        p = np.concatenate([ends[:, :1], p[:, inner], ends[:, 1:]], axis=1)
        z = np.concatenate([[lo], z[inner], [hi]])
    cdf = np.concatenate([np.zeros((len(p), 1)), np.cumsum(0.5 * (p[:, 1:] + p[:, :-1]) * np.diff(z), axis=1)],
                         axis=1)
    empty = ~(cdf[:, -1] > 0) | ~np.isfinite(cdf[:, -1])
    cdf[empty] = (z - z[0]) / (z[-1] - z[0])
    cdf /= cdf[:, -1:]
    return np.stack([_percentile(cdf, z, float(q)) for q in np.atleast_1d(levels)], axis=1)


def _check_prior(prior: np.ndarray | None, n: int, n_z: int) -> np.ndarray:
    if prior is None:
        return np.ones((n, n_z))
    p = np.asarray(prior, dtype=np.float64)
    if p.shape not in ((n_z,), (n, n_z)):
        raise InputError(f"prior must have shape ({n_z},) or ({n}, {n_z}), got {p.shape}")
    if np.any(~np.isfinite(p)) or np.any(p < 0) or np.any(p.reshape(-1, n_z).sum(axis=1) <= 0):
        raise InputError("prior must be finite, >= 0 and not all zero")
    return np.broadcast_to(p, (n, n_z))


#: characteristic UV magnitude of the z >= 3 UV luminosity function (Bouwens et al. 2021: M* ~ -21
#: from z ~ 3 to 8) and the rest wavelength it refers to [Angstrom]
UV_M_STAR = -21.0
UV_REST_AA = 1600.0
#: the luminosity prior acts from this redshift up (below it: flat)
LUMINOSITY_PRIOR_Z_MIN = 3.0


def luminosity_prior(flux_njy: Any, bands: tuple[str, ...] | list[str], z_grid: np.ndarray, *,
                     m_star: float = UV_M_STAR) -> np.ndarray:
    """A prior against impossibly luminous high-z solutions: at z >= 3, the exponential cut-off
    of a Schechter UV luminosity function, exp(-10**(-0.4 (M_UV - M*))), with M_UV from the flux
    in the band nearest to rest 1600 A (redward of Lyman-alpha) at each redshift; 1 below z = 3.
    Faint sources (M_UV fainter than M*) are barely touched; a z = 1 galaxy of AB 22 can no longer
    pretend to be a z = 6 dropout of M_UV = -25.

    Parameters
    ----------
    flux_njy : (n, n_band) fluxes [nJy] (non-positive or NaN: no penalty from that band).
    bands : band of each column.
    z_grid : (n_z,) redshifts.
    m_star : characteristic absolute UV magnitude [AB].

    Returns
    -------
    (n, n_z) prior values in (0, 1].
    """
    names = _check_bands(bands)
    flux = np.atleast_2d(np.asarray(flux_njy, dtype=np.float64))
    z = np.asarray(z_grid, dtype=np.float64)
    pivots = np.array([pivot_wavelength_aa(b) for b in names])
    high = z >= LUMINOSITY_PRIOR_Z_MIN
    prior = np.ones((len(flux), len(z)))
    zh = z[high]
    band = np.argmin(np.abs(np.log(pivots[None, :] / (UV_REST_AA * (1 + zh[:, None])))), axis=1)
    d_l = np.interp(zh, *_distance_table())
    dist_mod = 5.0 * np.log10(d_l / 3.0857e19)  # d_L [cm] over 10 pc
    with np.errstate(divide="ignore", invalid="ignore"):
        m_app = -2.5 * np.log10(flux[:, band] / 3631e9)
    m_uv = m_app - dist_mod[None, :] + 2.5 * np.log10(1 + zh)[None, :]
    penalty = np.exp(-np.minimum(10 ** (-0.4 * (m_uv - m_star)), 700.0))
    prior[:, high] = np.where(np.isfinite(m_uv), np.maximum(penalty, 1e-300), 1.0)
    return prior


@lru_cache(maxsize=1)
def _distance_table() -> tuple[np.ndarray, np.ndarray]:
    """Luminosity distance [cm] on a grid of redshifts 0.01-20 (Planck 2018), for interpolation."""
    from surveydust.physics import luminosity_distance_cm

    zt = np.linspace(0.01, 20.0, 400)
    return zt, np.array([luminosity_distance_cm(float(x)) for x in zt])


def _mag(flux: np.ndarray, err: np.ndarray) -> np.ndarray:
    """AB magnitude of ``flux`` floored at its 1-sigma error (a non-detection is a limit)."""
    from surveydust.physics import njy_to_ab

    return njy_to_ab(np.maximum(flux, err))


def dropout_selection(flux_njy: Any, err_njy: Any, bands: tuple[str, ...] | list[str], *,
                      break_mag: float = 1.0, red_mag: float = 1.0, veto_snr: float = 2.0,
                      detect_snr: float = 3.0) -> np.ndarray:
    """A classic Lyman-break (dropout) colour cut for z > 6 galaxies, the baseline of a selection.

    Non-detections are taken at their 1-sigma flux. Where the bands allow it, a source is selected as

    - an F090W dropout (z ~ 6-8.5): F090W - F115W > ``break_mag``, F115W - F277W < ``red_mag``;
    - an F115W dropout (z ~ 8.5-11): F115W - F150W > ``break_mag``, F150W - F277W < ``red_mag``,
      SNR(F090W) < ``veto_snr`` when F090W exists;
    - an F150W dropout (z ~ 11-15): F150W - F200W > ``break_mag``, F200W - F356W < ``red_mag``,
      SNR < ``veto_snr`` in F090W and F115W;

    and in each case SNR > ``detect_snr`` in the band redward of the break and in F277W (the
    style of Bouwens et al. 2015 and Hainline et al. 2024). Without F090W no cut sees a z = 6-8.5
    break.

    Returns
    -------
    (n,) bool.
    """
    names = _check_bands(bands)
    flux, _ = _check_photometry(flux_njy, err_njy, len(names))
    err = np.atleast_2d(np.asarray(err_njy, dtype=np.float64))
    col = {b: i for i, b in enumerate(names)}
    mag = _mag(flux, np.where(np.isfinite(err), err, np.inf))
    snr = np.where(np.isfinite(err), flux / np.where(np.isfinite(err), err, 1.0), 0.0)
    selected = np.zeros(len(flux), bool)

    def has(*b: str) -> bool:
        return all(x in col for x in b)

    def m(b: str) -> np.ndarray:
        return mag[:, col[b]]

    def s(b: str) -> np.ndarray:
        return snr[:, col[b]] if b in col else np.zeros(len(flux))

    if has("F090W", "F115W", "F277W"):
        selected |= (m("F090W") - m("F115W") > break_mag) & (m("F115W") - m("F277W") < red_mag) \
            & (s("F115W") > detect_snr) & (s("F277W") > detect_snr)
    if has("F115W", "F150W", "F277W"):
        selected |= (m("F115W") - m("F150W") > break_mag) & (m("F150W") - m("F277W") < red_mag) \
            & (s("F090W") < veto_snr) & (s("F150W") > detect_snr) & (s("F277W") > detect_snr)
    if has("F150W", "F200W", "F356W", "F277W"):
        selected |= (m("F150W") - m("F200W") > break_mag) & (m("F200W") - m("F356W") < red_mag) \
            & (s("F090W") < veto_snr) & (s("F115W") < veto_snr) & (s("F200W") > detect_snr) \
            & (s("F277W") > detect_snr)
    return selected


#: defaults of :func:`select_high_z`: those of the shipped catalogue config (configs/catalogue.yaml,
#: where each is argued), chosen by measurement on a calibration sky mix of one seed (seed 1) and
#: reported on another (``benchmarks/photoz.py``, seed 0). ``delta_chi2_min``: the smallest
#: Delta chi^2 whose purity at SNR(F277W) >= 10 reaches 0.9 on 20,000 sources of seed 1, seven
#: bands (4: 0.85, 5: 0.89, 6: 0.91; completeness 0.68, 0.66, 0.63); it was 4, chosen on 5,000
#: sources, whose few interlopers had put the purity at 0.92
_SELECTION = load_catalogue_config()
P_HIGH_Z_MIN = _SELECTION.p_high_z_min
DELTA_CHI2_MIN = _SELECTION.delta_chi2_min
Z_LOW_MAX = _SELECTION.z_low_max
VETO_SNR = _SELECTION.blue_veto_snr
STAR_DELTA_CHI2 = _SELECTION.star_delta_chi2
#: a band is "fully blueward" of the Lyman-alpha break when this share of its throughput lies below it
BLUEWARD_SHARE = 0.99
LYMAN_ALPHA_AA = 1215.67
#: why a source is not selected (:func:`select_high_z`), checked in this order; "" where selected
SELECTION_REASONS = {
    "no_data": "no band with data",
    "p_high_z": "P(z>6) below p_high_z_min",
    "delta_chi2": "the best low-z solution (z < z_low_max) fits within delta_chi2_min of the best z > 6 one",
    "blue_detection": "detected (SNR >= veto_snr) in a band fully blueward of Lyman-alpha at the candidate's z",
    "brown_dwarf": "a brown-dwarf template fits better than the best z > 6 solution",
}


@dataclass(frozen=True)
class HighZSelection:
    """The z > 6 selection of a batch of sources (:func:`select_high_z`).

    Attributes
    ----------
    selected : (n,) bool.
    reason : (n,) str, "" where selected, else the first criterion failed (:data:`SELECTION_REASONS`).
    delta_chi2 : (n,) chi^2 of the best solution at z < ``z_low_max`` minus that of the best at
        z >= the fit's threshold (6): large where low-z solutions are excluded.
    z_candidate : (n,) redshift of the best z >= 6 solution.
    blue_snr : (n,) largest SNR among bands fully blueward of Lyman-alpha at ``z_candidate``
        (NaN where no band is).
    star_delta_chi2 : (n,) chi^2 of the best z >= 6 solution minus that of the best stellar
        template (> 0: a brown dwarf fits better).
    """

    selected: np.ndarray
    reason: np.ndarray
    delta_chi2: np.ndarray
    z_candidate: np.ndarray
    blue_snr: np.ndarray
    star_delta_chi2: np.ndarray


@lru_cache(maxsize=64)
def _blueward_edge_aa(band: str) -> float:
    """Wavelength [Angstrom] below which :data:`BLUEWARD_SHARE` of ``band``'s throughput lies."""
    from surveydust.instrument import bandpass

    wave, thr = bandpass(band)
    cum = np.cumsum(thr * np.gradient(wave))
    return float(np.interp(BLUEWARD_SHARE, cum / cum[-1], wave))


def select_high_z(flux_njy: Any, err_njy: Any, bands: tuple[str, ...] | list[str], fit: PhotoZResult, *,
                  p_min: float = P_HIGH_Z_MIN, delta_chi2_min: float = DELTA_CHI2_MIN,
                  z_low_max: float = Z_LOW_MAX, veto_snr: float = VETO_SNR,
                  star_delta_chi2: float = STAR_DELTA_CHI2, compact: Any = None) -> HighZSelection:
    """Select z > 6 galaxies from a template fit the way deep-field searches do.

    A source is selected when all of these hold (the criteria of Finkelstein et al. 2023, ApJL 946,
    L13, CEERS z > 8.5, and Hainline et al. 2024, ApJ 964, 71, JADES z > 8, moved to z > 6):

    1. ``P(z > 6) >= p_min``: the integrated p(z) of the fit, prior included;
    2. ``delta_chi2 >= delta_chi2_min``: the best solution at z < ``z_low_max`` (a gap below 6, as
       their z < 7 against z > 8 or 8.5) has chi^2 at least this much above the best at z >= 6
       (likelihood only; Finkelstein: Delta chi^2 > 4; Hainline: > 4). A z = 2 galaxy whose
       colours also allow z = 9 (flat p(z), P(z > 6) of a few tenths) fails it;
    3. no detection, SNR < ``veto_snr``, in any band fully blueward of Lyman-alpha at the best
       z >= 6 solution (:data:`BLUEWARD_SHARE` of its throughput below 1216 (1 + z) A): a Lyman
       break leaves nothing there (both papers: SNR < 2-3 in the dropout bands). With the NIRCam
       wide bands this bites from z = 7.3 (F090W) and 9.6 (F115W) up; below, criteria 1-2 carry
       the break;
    4. not better fitted by a brown dwarf: the best stellar template (:func:`dwarf_sed`,
       ``fit.chi2_star``) has chi^2 above the best z >= 6 solution minus ``star_delta_chi2``
       (Hainline et al. 2024 reject compact sources with chi^2_BD < chi^2_EAZY). With ``compact``
       (bool per source, e.g. an unresolved size) the test applies to compact sources only.

    Parameters
    ----------
    flux_njy, err_njy : (n, n_band) the photometry the fit saw [nJy] (NaN / inf where no data).
    bands : band of each column (NIRCam names).
    fit : :func:`fit_photoz` of that photometry (its ``chi2_z``, ``p_high_z``, ``chi2_star``).
    p_min, delta_chi2_min, z_low_max, veto_snr, star_delta_chi2 : the thresholds above.
    compact : (n,) bool or None (every source may be a star).

    Returns
    -------
    HighZSelection with the mask, a reason per rejected source and the quantities tested.
    """
    names = _check_bands(bands)
    flux, weight = _check_photometry(flux_njy, err_njy, len(names))
    n = len(flux)
    if fit.chi2_z.shape != (n, len(fit.z_grid)):
        raise InputError(f"fit is of {fit.chi2_z.shape[0]} sources, the photometry of {n}")
    if not fit.z_grid[0] < z_low_max <= fit.z_threshold:
        raise InputError(f"z_low_max must lie in ({fit.z_grid[0]}, {fit.z_threshold}], got {z_low_max}")
    z = fit.z_grid
    low, high = z < z_low_max, z >= fit.z_threshold
    chi2 = fit.chi2_z.astype(np.float64)
    chi2_low = chi2[:, low].min(axis=1)
    k = np.argmin(chi2[:, high], axis=1)
    chi2_high = chi2[np.arange(n), np.flatnonzero(high)[k]]
    z_cand = z[high][k]
    snr = np.where(weight > 0, flux * np.sqrt(weight), np.nan)
    edges = np.array([_blueward_edge_aa(b) for b in names])
    blueward = edges[None, :] < LYMAN_ALPHA_AA * (1.0 + z_cand[:, None])
    with np.errstate(invalid="ignore"):
        blue_snr = np.where(blueward & np.isfinite(snr), snr, -np.inf).max(axis=1)
    blue_snr = np.where(np.isfinite(blue_snr), blue_snr, np.nan)
    star = chi2_high - np.asarray(fit.chi2_star, np.float64)
    may_be_star = np.ones(n, bool) if compact is None else np.asarray(compact, bool)
    if may_be_star.shape != (n,):
        raise InputError(f"compact must have shape ({n},), got {may_be_star.shape}")
    fails = {
        "no_data": fit.n_bands == 0,
        "p_high_z": ~(np.nan_to_num(fit.p_high_z, nan=0.0) >= p_min),
        "delta_chi2": ~(chi2_low - chi2_high >= delta_chi2_min),
        "blue_detection": np.nan_to_num(blue_snr, nan=-np.inf) >= veto_snr,
        "brown_dwarf": may_be_star & (star > star_delta_chi2),
    }
    reason = np.full(n, "", dtype=f"U{max(len(r) for r in SELECTION_REASONS)}")
    for name in reversed(list(fails)):  # the first criterion failed wins
        reason[fails[name]] = name
    return HighZSelection(selected=reason == "", reason=reason, delta_chi2=chi2_low - chi2_high, z_candidate=z_cand,
                          blue_snr=blue_snr, star_delta_chi2=star)


def colour_features(flux_njy: Any, err_njy: Any) -> np.ndarray:
    """Features of a learned estimator: asinh magnitudes (softened at each source's 1-sigma error,
    so non-detections and negative fluxes stay finite) relative to the reddest band, that band's
    asinh magnitude, and the SNR per band (asinh-compressed). Shape (n, 2 n_band)."""
    flux = np.atleast_2d(np.asarray(flux_njy, dtype=np.float64))
    err = np.atleast_2d(np.asarray(err_njy, dtype=np.float64))
    missing = ~(np.isfinite(flux) & np.isfinite(err))
    flux, err = np.where(missing, 0.0, flux), np.where(missing, 1.0, err)
    lupt = -2.5 / np.log(10) * (np.arcsinh(flux / (2 * err)) + np.log(err))
    feats = np.concatenate([lupt[:, :-1] - lupt[:, -1:], lupt[:, -1:], np.arcsinh(flux / err)], axis=1)
    gone = np.concatenate([missing[:, :-1] | missing[:, -1:], missing[:, -1:], missing], axis=1)
    return np.where(gone, np.nan, feats)


class LearnedPhotoZ:
    """Gradient-boosted trees (scikit-learn ``HistGradientBoosting*``) on :func:`colour_features`:
    a regressor of ln(1 + z) and a classifier of z > ``z_threshold``.

    Trained on simulated photometry (:func:`surveydust.simulate.foreground.draw_sky_mix` plus
    noise), its P(z > 6) is calibrated for the training set's mix of kinds: it answers with the
    simulator's assumptions, as the networks do.
    """

    def __init__(self, bands: tuple[str, ...] | list[str], z_threshold: float = HIGH_Z, max_iter: int = 150,
                 seed: int = 0, n_threads: int | None = 1) -> None:
        self.bands = _check_bands(bands)
        # OpenMP threads of the trees: one by default (on busy cores more threads are ~30x slower)
        self.n_threads = n_threads
        self.z_threshold = float(z_threshold)
        self.max_iter = int(max_iter)
        self.seed = int(seed)
        self._reg: Any = None
        self._clf: Any = None

    def fit(self, flux_njy: Any, err_njy: Any, redshift: Any) -> LearnedPhotoZ:
        """Train on fluxes and errors [nJy], shape (n, n_band), and true redshifts (n,)."""
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        _check_photometry(flux_njy, err_njy, len(self.bands))
        z = np.asarray(redshift, dtype=np.float64)
        x = colour_features(flux_njy, err_njy)
        if z.shape != (len(x),) or not np.all(np.isfinite(z)) or np.any(z < 0):
            raise InputError(f"redshift must be ({len(x)},) finite values >= 0")
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.n_threads):
            self._reg = HistGradientBoostingRegressor(max_iter=self.max_iter, learning_rate=0.1,
                                                      random_state=self.seed).fit(x, np.log1p(z))
            self._clf = HistGradientBoostingClassifier(max_iter=self.max_iter, learning_rate=0.1,
                                                       random_state=self.seed).fit(x, z > self.z_threshold)
        return self

    def predict(self, flux_njy: Any, err_njy: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(z_phot, P(z > z_threshold))``, each (n,)."""
        if self._reg is None:
            raise InputError("LearnedPhotoZ is not trained: call fit first")
        _check_photometry(flux_njy, err_njy, len(self.bands))
        from threadpoolctl import threadpool_limits

        x = colour_features(flux_njy, err_njy)
        with threadpool_limits(limits=self.n_threads):
            return np.expm1(self._reg.predict(x)), self._clf.predict_proba(x)[:, 1]


def photoz_metrics(z_true: Any, z_phot: Any, outlier: float = 0.15) -> dict[str, float]:
    """NMAD (1.48 x median |dz - median dz| with dz = (z_phot - z_true) / (1 + z_true)), the
    outlier fraction (|dz| > ``outlier``), the bias (median dz) and the count."""
    zt, zp = np.asarray(z_true, float), np.asarray(z_phot, float)
    if zt.shape != zp.shape:
        raise InputError(f"z_true and z_phot differ in shape: {zt.shape} vs {zp.shape}")
    if zt.size == 0:
        return {"nmad": float("nan"), "outliers": float("nan"), "bias": float("nan"), "n": 0}
    dz = (zp - zt) / (1.0 + zt)
    med = float(np.median(dz))
    return {"nmad": float(1.4826 * np.median(np.abs(dz - med))), "outliers": float(np.mean(np.abs(dz) > outlier)),
            "bias": med, "n": int(zt.size)}


def selection_metrics(is_high_z: Any, selected: Any) -> dict[str, float]:
    """Completeness (selected true z > 6 / all true z > 6), purity (true / selected) and counts."""
    truth, sel = np.asarray(is_high_z, bool), np.asarray(selected, bool)
    if truth.shape != sel.shape:
        raise InputError(f"is_high_z and selected differ in shape: {truth.shape} vs {sel.shape}")
    hit = int((truth & sel).sum())
    return {"completeness": hit / truth.sum() if truth.any() else float("nan"),
            "purity": hit / sel.sum() if sel.any() else float("nan"),
            "n_true": int(truth.sum()), "n_selected": int(sel.sum())}


__all__ = ["DELTA_CHI2_MIN", "HIGH_Z", "PZ_TEMPERATURE", "P_HIGH_Z_MIN", "SELECTION_REASONS", "HighZSelection",
           "LearnedPhotoZ", "PhotoZResult", "TemplateGrid", "colour_features", "default_z_grid", "dropout_selection",
           "dwarf_sed", "fit_photoz", "photoz_metrics", "pz_quantiles", "select_high_z", "selection_metrics",
           "template_grid"]
