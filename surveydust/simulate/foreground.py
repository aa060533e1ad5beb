"""The sky's mix around the z > 6 galaxies of a simulated field: what a detection step finds.

A real NIRCam mosaic is mostly galaxies at z ~ 0.2-6; the z > 6 galaxies the networks
measure are a few per cent of its detections. This module draws that foreground and the
classic contaminants of high-z selections, with number counts per arcmin^2 from the
``foreground:`` section of ``configs/simulation.yaml`` (where each number is argued):

- ``foreground``: ordinary star-forming galaxies at z ~ 0.2-6, modest dust;
- ``dusty``: dusty star-forming galaxies at z ~ 2-4 (A_V ~ 1.5-4);
- ``balmer_break``: quiescent / post-starburst galaxies at z ~ 1-2.5 whose Balmer break
  mimics a Lyman break;
- ``brown_dwarf``: T/Y dwarfs, point sources with a parametric spectrum whose NIRCam colours
  follow those of real T/Y dwarfs with T_eff (:func:`brown_dwarf_sed`).

Galaxy spectra come from the package's own stellar-population library
(:func:`surveydust.simulate.sed_library.load_sed_library`), its attenuation laws
(:func:`surveydust.physics.attenuation_curve`), the simulator's IGM
(:func:`surveydust.simulate.imaging.igm_transmission` with the mean Lyman-alpha forest
transmission of :func:`surveydust.simulate.imaging.igm_forest_transmission`) and the NIRCam throughputs of
:mod:`surveydust.instrument`; nothing is downloaded. Two approximations are stated:
the library stops at 1.2 um rest frame, so spectra are extended to 6 um by a power law
fitted to their 0.95-1.2 um continuum (no 1.6 um bump, no Paschen lines); and its oldest
stars are 300-500 Myr old, so Balmer-break galaxies are post-starburst-like (strong Balmer
break, weaker 4000 A break than a Gyr-old population).

:func:`draw_sky_mix` gives noiseless photometry of the whole mix, z > 6 galaxies included
(those from the simulator's own population and dust model), for photometric-redshift
training and benchmarks; :func:`render_source` gives a source's light profile for a field.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from surveydust.config import FOREGROUND_KINDS, ForegroundConfig, SimulationConfig
from surveydust.errors import InputError
from surveydust.instrument import band_weights
from surveydust.physics import ab_to_njy, attenuation_curve
from surveydust.simulate.imaging import igm_forest_transmission, igm_transmission
from surveydust.simulate.morphology import sersic_b
from surveydust.simulate.sed_library import SEDLibrary, load_sed_library

#: every source kind a field's truth table may hold
KINDS = ("high_z", *FOREGROUND_KINDS)
#: rest wavelengths the library is extended to by power laws [Angstrom]
EXTENDED_WAVE_MAX_AA = 60000.0
#: rest-frame continuum window the power-law extension is fitted to [Angstrom]
EXTENSION_FIT_AA = (9500.0, 12000.0)
#: power-law slopes d ln L_lambda / d ln lambda allowed for the extension (Rayleigh-Jeans is -4)
EXTENSION_SLOPE_RANGE = (-4.0, -1.0)
#: brown-dwarf spectra are modelled on observed wavelengths [Angstrom]
BROWN_DWARF_WAVE_AA = (5000.0, 60000.0)
#: flux windows of T/Y dwarfs between their H2O, CH4 and H2-CIA bands (peaks at 1.07, 1.27, 1.58,
#: 2.09 and ~4.2 um; Burgasser et al. 2024, UNCOVER, arXiv:2308.12107): centre [um], Gaussian sigma blueward and
#: redward [um] (each at 1300 K, 500 K), brightness temperature / T_eff (at 1300 K, 500 K). The
#: 4-5 um window's blue side closes as the CH4 3.3 um band deepens; its red side is cut by CO at
#: 4.6 um. Numbers set by least squares against the colour table of :func:`brown_dwarf_sed`.
BROWN_DWARF_WINDOWS = (
    (1.070, (0.045, 0.045), (0.030, 0.030), (2.55, 2.60)),   # Y
    (1.265, (0.045, 0.045), (0.050, 0.050), (2.55, 2.60)),   # J
    (1.585, (0.060, 0.060), (0.050, 0.050), (2.60, 2.02)),   # H (CH4 1.6 um, CIA)
    (2.090, (0.090, 0.090), (0.080, 0.080), (2.17, 1.57)),   # K (CH4 2.2 um, CIA)
    (4.200, (0.580, 0.080), (0.450, 0.450), (2.11, 1.47)),   # 4-5 um
)
#: pseudo-continuum between the windows: a Planck function at T_eff times this factor (at 1300 K,
#: 500 K; interpolated in log); it sets the troughs (F277W, F356W) and F090W
BROWN_DWARF_FLOOR = (1.25, 4.17)
#: T_eff [K] at which the window parameters take their first and second values (linear in between,
#: held outside)
BROWN_DWARF_TEFF_ENDS = (1300.0, 500.0)
HC_OVER_K_UM_K = 14387.77  # h c / k_B [um K]
#: mean 100 Myr sSFR of ordinary foreground galaxies [log10 yr^-1] and its scatter [dex]
FOREGROUND_LOG_SSFR = (-9.3, 0.5)


@dataclass(frozen=True)
class SourceDraw:
    """One foreground source: what it is, where in redshift, how bright and how big.

    Attributes
    ----------
    kind : one of :data:`KINDS`.
    redshift : 0 for brown dwarfs.
    flux_njy : (n_band,) noiseless total flux per band [nJy].
    mag_ref : AB magnitude in the reference band.
    r_eff_arcsec : half-light radius [arcsec]; 0 for point sources.
    sersic_n, axis_ratio, position_angle : shape (radians for the angle).
    a_v, ebv : screen attenuation [mag] (NaN for brown dwarfs).
    log_mstar, log_sfr : stellar mass [log10 M_sun] and 100 Myr SFR [log10 M_sun/yr], NaN unless a galaxy.
    teff_k : effective temperature of a brown dwarf [K], NaN otherwise.
    """

    kind: str
    redshift: float
    flux_njy: np.ndarray
    mag_ref: float
    r_eff_arcsec: float
    sersic_n: float
    axis_ratio: float
    position_angle: float
    a_v: float
    ebv: float
    log_mstar: float
    log_sfr: float
    teff_k: float


@lru_cache(maxsize=1)
def extended_library() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The SED library on rest wavelengths out to :data:`EXTENDED_WAVE_MAX_AA`.

    Returns
    -------
    wave_aa : (n_wave,) rest wavelength [Angstrom], the library's log grid continued.
    lum : (n_age, n_z, n_wave) L_lambda per M_sun formed [erg/s/A].
    lines : (n_age, n_z, n_wave) its nebular-line part (zero beyond 1.2 um).
    """
    lib = load_sed_library()
    wave = lib.wave_aa.astype(np.float64)
    step = np.log(wave[-1] / wave[0]) / (len(wave) - 1)
    n_ext = int(np.ceil(np.log(EXTENDED_WAVE_MAX_AA / wave[-1]) / step))
    extra = wave[-1] * np.exp(step * np.arange(1, n_ext + 1))
    continuum = np.clip(lib.lum - lib.lines, 1e-30, None).astype(np.float64)
    fit = (wave >= EXTENSION_FIT_AA[0]) & (wave <= EXTENSION_FIT_AA[1])
    x = np.log(wave[fit] / wave[-1])
    y = np.log(continuum[..., fit])
    slope = ((x - x.mean()) * (y - y.mean(axis=-1, keepdims=True))).sum(axis=-1) / ((x - x.mean()) ** 2).sum()
    slope = np.clip(slope, *EXTENSION_SLOPE_RANGE)
    anchor = np.exp(y.mean(axis=-1) - slope * x.mean())  # continuum at wave[-1] from the fit
    tail = anchor[..., None] * (extra / wave[-1]) ** slope[..., None]
    lum = np.concatenate([lib.lum.astype(np.float64), tail], axis=-1)
    lines = np.concatenate([lib.lines.astype(np.float64), np.zeros_like(tail)], axis=-1)
    return np.concatenate([wave, extra]), lum, lines


def _lum_at_metallicity(lum: np.ndarray, metallicity: float, lib: SEDLibrary) -> np.ndarray:
    """(n_age, n_wave) spectra interpolated linearly in log Z (as :meth:`SEDLibrary.at_metallicity`)."""
    logz = np.log10(lib.metallicity_zsun)
    x = np.clip(np.log10(metallicity), logz[0], logz[-1])
    j = int(np.clip(np.searchsorted(logz, x) - 1, 0, len(logz) - 2))
    w = (x - logz[j]) / (logz[j + 1] - logz[j])
    return (1 - w) * lum[:, j] + w * lum[:, j + 1]


def galaxy_sed(mass_formed: np.ndarray, metallicity: float, *, line_scale: float = 1.0,
               a_v: float = 0.0, dust_law: str = "calzetti") -> tuple[np.ndarray, np.ndarray]:
    """Rest-frame spectrum of a galaxy from the SED library, attenuated by a dust screen.

    Parameters
    ----------
    mass_formed : (n_age,) mass formed in each age bin of the library [M_sun].
    metallicity : Z / Z_sun (clipped to the library's 0.02-1).
    line_scale : factor on the nebular emission lines.
    a_v : V-band attenuation of the screen [mag].
    dust_law : one of :data:`surveydust.physics.LAW_R_V`.

    Returns
    -------
    wave_aa : (n_wave,) rest wavelength [Angstrom], out to :data:`EXTENDED_WAVE_MAX_AA`.
    lum : (n_wave,) L_lambda [erg/s/A].
    """
    wave, lum, lines = extended_library()
    lib = load_sed_library()
    spectra = _lum_at_metallicity(lum, metallicity, lib) \
        + (line_scale - 1.0) * _lum_at_metallicity(lines, metallicity, lib)
    sed = np.asarray(mass_formed, float) @ spectra
    if a_v > 0:
        sed = sed * 10.0 ** (-0.4 * a_v * attenuation_curve(wave, dust_law))
    return wave, sed


def brown_dwarf_sed(teff_k: float) -> tuple[np.ndarray, np.ndarray]:
    """A parametric T/Y-dwarf spectrum with the NIRCam colours of real T/Y dwarfs at ``teff_k``.

    The flux of a T dwarf leaves through opacity windows between its H2O, CH4 and H2-CIA bands, from
    layers hotter than T_eff. Each window of :data:`BROWN_DWARF_WINDOWS` is a (two-sided) Gaussian in
    wavelength times a Planck function at its brightness temperature beta T_eff; between windows a
    pseudo-continuum (Planck at T_eff times :data:`BROWN_DWARF_FLOOR`). Every parameter goes
    linearly (the floor: in log) in T_eff between its 1300 K and 500 K values
    (:data:`BROWN_DWARF_TEFF_ENDS`): cooler dwarfs see deeper in J than in H and K (CH4 and CIA
    close H and K), and the CH4 3.3 um band eats the blue side of the 4-5 um peak. No optical
    cut-off beyond the Y window's blue edge is needed: F090W is a 3-4 mag dropout.

    It is a rough model, not an atmosphere. Its parameters were set by least squares
    (the model is within 0.4 mag of each entry, F090W excepted: 0.5-1 mag fainter) against these AB colours:

    ======  ===========  ===========  ===========  ===========  ===========  ===========
    T_eff   F090-F115    F115-F150    F150-F200    F277-F444    F356-F444    F150-F444
    ======  ===========  ===========  ===========  ===========  ===========  ===========
    1300    2.0          +0.1         -0.3         1.3          0.1          -0.7
    1000    2.5          -0.3         -0.6         1.8          0.6          +0.3
    700     3.0          -0.5         -0.8         2.5          1.4          +1.4
    500     3.3          -0.5         -0.8         3.0          2.0          +2.3
    ======  ===========  ===========  ===========  ===========  ===========  ===========

    Sources: the NIRCam selection of 500-1300 K dwarfs from model spectra, F115W - F277W < -0.8 and
    F277W - F444W > 1.1 (Wang et al. 2023, MNRAS, arXiv:2306.02663) and the blue 1-2.5 um,
    red 3-4.5 um colours of the JADES/CEERS candidates (Hainline et al. 2024, ApJ 975, 31);
    J - H and H - K (MKO) of T dwarfs turning from ~+0.3 / ~+0.1 at T0-T2 to ~-0.4 / ~-0.4 (Vega) at
    T7-T9 (Leggett et al. 2010, 2017), taken to AB (J, H, K: +0.94, +1.38, +1.85) and narrowed for
    F115W, F150W and F200W, which hold the Y peak and the 1.4 and 1.8 um water troughs;
    [3.6] - [4.5] ~0.5, ~1.0, ~2.0, ~2.5 (Vega) at T0, T5, T8, Y0 and H - [4.5] rising from ~1 to
    ~4.5 (Kirkpatrick et al. 2011, 2021; Leggett et al. 2017), to AB for F356W - F444W and
    F150W - F444W; z - J of T dwarfs ~3-4.5 (AB z, Vega J; Knapp et al. 2004) for F090W - F115W.
    Those literature numbers are read off figures and tables (the conversions are ours), so the
    targets are good to ~0.3 mag; metallicity and gravity move real dwarfs by as much.

    Returns
    -------
    wave_aa : (n_wave,) observed wavelength [Angstrom].
    f_lambda : (n_wave,) relative flux density per unit wavelength (peak 1).
    """
    wave = np.geomspace(*BROWN_DWARF_WAVE_AA, 3000)
    um = wave / 1e4
    hot, cold = BROWN_DWARF_TEFF_ENDS
    m = float(np.clip((hot - teff_k) / (hot - cold), 0.0, 1.0))

    def at(pair: tuple[float, float]) -> float:
        return pair[0] + (pair[1] - pair[0]) * m

    f = BROWN_DWARF_FLOOR[0] ** (1.0 - m) * BROWN_DWARF_FLOOR[1] ** m \
        * um**-5 / np.expm1(HC_OVER_K_UM_K / (um * teff_k))
    for centre, sigma_blue, sigma_red, beta in BROWN_DWARF_WINDOWS:
        sigma = np.where(um < centre, at(sigma_blue), at(sigma_red))
        planck = um**-5 / np.expm1(HC_OVER_K_UM_K / (um * at(beta) * teff_k))
        f = f + planck * np.exp(-0.5 * ((um - centre) / sigma) ** 2)
    return wave, f / f.max()


def band_fluxes(wave_rest_aa: np.ndarray, lum: np.ndarray, redshift: float,
                bands: tuple[str, ...] | list[str], igm: bool = True) -> np.ndarray:
    """Band-averaged flux densities (photon-counting <f_nu>) of a rest-frame spectrum seen at
    ``redshift``, in arbitrary but common units (ratios between bands are colours).

    Parameters
    ----------
    wave_rest_aa, lum : rest wavelength [Angstrom] and L_lambda (any scale).
    redshift : source redshift (0: an observed-frame spectrum, e.g. a star).
    bands : NIRCam band names.
    igm : apply the IGM (the mean Lyman forest, :func:`surveydust.simulate.imaging.igm_forest_transmission`,
        nothing below 912 A).

    Returns
    -------
    (n_band,) relative f_nu per band.
    """
    wave = np.asarray(wave_rest_aa, float)
    spec = np.asarray(lum, float)
    if igm and redshift > 0:
        spec = spec * igm_transmission(wave, igm_forest_transmission(redshift))
    return np.array([band_weights(wave, b, redshift) @ spec for b in bands])


def _draw_mag(rng: np.random.Generator, bounds: tuple[float, float], slope: float, n: int) -> np.ndarray:
    """``n`` AB magnitudes from dN/dm ~ 10**(slope m) between ``bounds`` (inverse CDF)."""
    lo, hi = bounds
    if slope < 1e-6 or hi == lo:
        return rng.uniform(lo, hi, n)
    a, b = 10 ** (slope * (lo - hi)), 1.0
    return hi + np.log10(a + rng.uniform(size=n) * (b - a)) / slope


def _draw_redshift(rng: np.random.Generator, kind: str, bounds: tuple[float, float]) -> float:
    """Ordinary foreground: p(z) ~ z^2 exp(-z / 0.8) (mode 1.6, mean 2.4: the photometric-redshift
    distribution of faint deep-field galaxies, e.g. Hainline et al. 2024) within ``bounds``;
    other kinds: uniform in ``bounds``."""
    lo, hi = bounds
    if kind != "foreground" or hi <= lo:
        return float(rng.uniform(lo, hi))
    while True:
        z = float(rng.gamma(3.0, 0.8))
        if lo <= z <= hi:
            return z


def _star_formation(rng: np.random.Generator, kind: str, lib: SEDLibrary) -> np.ndarray:
    """Relative mass formed per library age bin (sums to 1) of a foreground galaxy."""
    widths = np.diff(lib.age_bins_myr, axis=1)[:, 0]
    burst = widths * rng.lognormal(0.0, 0.6, size=len(widths))
    if kind == "balmer_break":  # formed 100-500 Myr ago, a trace since: post-starburst / quiescent
        burst[:3] = widths[:3] * 10 ** rng.uniform(-4.0, -2.0)
        burst[3:] *= rng.uniform(0.0, 1.0, size=2) ** 2 + 0.05
    elif kind == "foreground":
        # the last 100 Myr's share follows a main-sequence sSFR with scatter
        recent = float(np.clip(10 ** (rng.normal(*FOREGROUND_LOG_SSFR) + 8.0), 0.01, 0.9))
        burst[:3] *= recent / burst[:3].sum()
        burst[3:] *= (1 - recent) / burst[3:].sum()
    return burst / burst.sum()


def _draw_a_v(rng: np.random.Generator, kind: str, bounds: tuple[float, float]) -> float:
    """Dusty galaxies: uniform in ``bounds``; others: low + (high - low) u^2 (mostly lightly attenuated)."""
    lo, hi = bounds
    u = rng.uniform()
    return float(lo + (hi - lo) * (u if kind == "dusty" else u**2))


def _ebv(a_v: float, law: str) -> float:
    """E(B-V) [mag] of a screen of ``a_v`` (rest 4400 and 5500 A)."""
    k = attenuation_curve(np.array([4400.0, 5500.0]), law)
    return float(a_v * (k[0] - k[1]))


def _mass_and_sfr(frac: np.ndarray, metallicity: float, lum_ref: float, flux_ref_njy: float,
                  redshift: float) -> tuple[float, float]:
    """Surviving stellar mass and 100 Myr SFR [log10] of a spectrum that is ``lum_ref`` per
    M_sun formed in the reference band and is observed at ``flux_ref_njy``."""
    from surveydust.physics import luminosity_distance_cm

    lib = load_sed_library()
    _, surv = lib.at_metallicity(metallicity)
    d_l = luminosity_distance_cm(round(redshift, 3))
    formed = flux_ref_njy / (lum_ref * 1e32 / (4 * np.pi * d_l**2))
    mstar = formed * float(frac @ surv)
    sfr = formed * float(frac[:3].sum()) / 1e8
    return float(np.log10(mstar)), float(np.log10(max(sfr, 1e-30)))


def draw_source(rng: np.random.Generator, kind: str, cfg: ForegroundConfig, bands: tuple[str, ...],
                mag_ref: float, with_mass: bool = True) -> SourceDraw:
    """Draw one foreground source of ``kind`` with AB magnitude ``mag_ref`` in ``cfg.reference_band``.

    Parameters
    ----------
    rng : the source's random stream.
    kind : one of the config's foreground kinds.
    cfg : foreground config (redshift, A_V and temperature ranges; sizes).
    bands : bands whose fluxes are returned [nJy].
    mag_ref : magnitude in the reference band [AB].
    with_mass : also derive stellar mass and SFR (needs the luminosity distance; slower).
    """
    kcfg = cfg.kinds[kind]
    all_bands = tuple(dict.fromkeys((*bands, cfg.reference_band)))
    nan = float("nan")
    if kind == "brown_dwarf":
        teff = float(rng.uniform(*kcfg.teff_range))
        wave, f_lambda = brown_dwarf_sed(teff)
        rel = band_fluxes(wave, f_lambda, 0.0, all_bands, igm=False)
        z, a_v, ebv, log_m, log_sfr = 0.0, nan, nan, nan, nan
        r_eff, n_s, q = 0.0, 1.0, 1.0
    else:
        lib = load_sed_library()
        teff = nan
        z = _draw_redshift(rng, kind, kcfg.redshift_range)
        metallicity = float(10 ** rng.uniform(np.log10(0.2), 0.0) if kind != "foreground"
                            else 10 ** rng.uniform(np.log10(0.05), 0.0))
        frac = _star_formation(rng, kind, lib)
        law = ("calzetti", "smc", "calzetti")[int(rng.integers(3))]
        a_v = _draw_a_v(rng, kind, kcfg.a_v_range)
        line_scale = float(10 ** rng.uniform(np.log10(0.3), np.log10(2.0)))
        wave, sed = galaxy_sed(frac, metallicity, line_scale=line_scale, a_v=a_v, dust_law=law)
        rel = band_fluxes(wave, sed, z, all_bands)
        ebv = _ebv(a_v, law)
        log_r = np.log10(cfg.size_at_25_arcsec) - cfg.size_slope * (mag_ref - 25.0) \
            + rng.normal(0.0, cfg.size_scatter_dex)
        r_eff = float(np.clip(10**log_r, 0.03, 0.8))
        n_s = float(rng.uniform(*cfg.sersic_n))
        q = float(rng.uniform(0.3, 1.0))
        log_m = log_sfr = nan
    ref = all_bands.index(cfg.reference_band)
    flux_ref = float(ab_to_njy(mag_ref))
    flux = rel[:len(bands)] / rel[ref] * flux_ref
    if with_mass and kind != "brown_dwarf":
        log_m, log_sfr = _mass_and_sfr(frac, metallicity, rel[ref], flux_ref, z)
    return SourceDraw(kind=kind, redshift=float(z), flux_njy=flux, mag_ref=float(mag_ref), r_eff_arcsec=r_eff,
                      sersic_n=n_s, axis_ratio=q, position_angle=float(rng.uniform(0.0, np.pi)),
                      a_v=float(a_v), ebv=float(ebv), log_mstar=log_m, log_sfr=log_sfr, teff_k=teff)


def expected_counts(cfg: ForegroundConfig, area_arcmin2: float) -> dict[str, float]:
    """Mean number of sources of each kind on ``area_arcmin2`` [arcmin^2] (``density_scale`` applied)."""
    return {k: c.per_arcmin2 * cfg.density_scale * area_arcmin2 for k, c in cfg.kinds.items()}


def draw_foreground(rng: np.random.Generator, cfg: ForegroundConfig, bands: tuple[str, ...],
                    area_arcmin2: float, with_mass: bool = True) -> list[SourceDraw]:
    """The foreground of a field of ``area_arcmin2``: Poisson numbers of each kind (in the
    config's order), magnitudes from their counts, then each source's properties.

    Parameters
    ----------
    rng : the field's foreground stream (counts and magnitudes); each source then draws from
        a stream spawned from it.
    cfg : the foreground config.
    bands : bands whose fluxes each source carries.
    area_arcmin2 : sky area with data [arcmin^2].
    with_mass : derive stellar masses and SFRs (see :func:`draw_source`).
    """
    if area_arcmin2 < 0:
        raise InputError(f"area_arcmin2 must be >= 0, got {area_arcmin2}")
    sources: list[SourceDraw] = []
    for kind, mean in expected_counts(cfg, area_arcmin2).items():
        kcfg = cfg.kinds[kind]
        n = int(rng.poisson(mean))
        mags = _draw_mag(rng, cfg.mag_range, kcfg.count_slope, n)
        for mag, seq in zip(mags, rng.bit_generator.seed_seq.spawn(n)):
            sources.append(draw_source(np.random.default_rng(seq), kind, cfg, bands, float(mag), with_mass))
    return sources


def stamp_size_for(src: SourceDraw, pixel_scale_arcsec: float, minimum: int = 64, maximum: int = 192) -> int:
    """Stamp side [pixels] that holds a source out to ~8 half-light radii (even, within bounds)."""
    need = int(np.ceil(16.0 * src.r_eff_arcsec / pixel_scale_arcsec))
    return int(np.clip(need + need % 2, minimum, maximum))


def render_source(src: SourceDraw, n_pix: int, pixel_scale_arcsec: float, oversample: int,
                  offset_pix: tuple[float, float]) -> np.ndarray:
    """A source's intrinsic (pre-PSF) light profile on an ``n_pix`` stamp, summing to 1.

    Galaxies are elliptical Sersic profiles evaluated on ``oversample`` sub-pixels and binned;
    point sources (``r_eff_arcsec == 0``) put all light in the sub-pixel holding the centre.
    ``offset_pix`` (dy, dx) moves the centre from the stamp centre ``(n_pix - 1) / 2`` [pixels].
    """
    m = n_pix * oversample
    c = (np.arange(m) + 0.5) / oversample - 0.5 - (n_pix - 1) / 2.0
    dy, dx = offset_pix
    if src.r_eff_arcsec <= 0:
        img = np.zeros((m, m))
        iy, ix = (int(np.clip(np.searchsorted(c, o), 0, m - 1)) for o in (dy, dx))
        img[iy, ix] = 1.0
    else:
        y, x = c[:, None] - dy, c[None, :] - dx
        cos, sin = np.cos(src.position_angle), np.sin(src.position_angle)
        u, v = x * cos + y * sin, -x * sin + y * cos
        r_e = src.r_eff_arcsec / pixel_scale_arcsec
        r = np.sqrt(u**2 + (v / src.axis_ratio) ** 2) / r_e
        img = np.exp(-sersic_b(src.sersic_n) * (r ** (1.0 / src.sersic_n) - 1.0))
    img = img.reshape(n_pix, oversample, n_pix, oversample).sum(axis=(1, 3))
    return img / img.sum()


def high_z_photometry(rng: np.random.Generator, sim: SimulationConfig, bands: tuple[str, ...],
                      dtm_values: np.ndarray | None = None) -> tuple[float, np.ndarray, float]:
    """Noiseless integrated photometry of one z > 6 galaxy of the simulator's own population.

    The galaxy (star-formation history, metallicity, lines, dust law, IGM) is drawn by
    :func:`surveydust.simulate.population.draw_galaxy`; its dust is the simulator's model
    (:mod:`surveydust.simulate.imaging`) at the galaxy's mean gas column within the half-light
    radius and a dust-to-metal ratio drawn from ``dtm_values`` (default: ``sim.dtm_values``).
    No image is made.

    Returns
    -------
    redshift, flux_njy (n_band,) [nJy], A_V [mag].
    """
    from surveydust.simulate.imaging import BIRTH_CLOUD_REFERENCE_Z, _transmission_tables, galaxy_photometry
    from surveydust.simulate.population import SUN_METAL_FRACTION, draw_galaxy

    lib = load_sed_library()
    cfg = sim.model_copy(update={"bands": tuple(bands)})  # bands the simulator would refuse as inputs
    gal = draw_galaxy(rng, cfg, lib)
    phot = galaxy_photometry(gal, cfg, lib)
    dtm = float(rng.choice(np.asarray(dtm_values if dtm_values is not None else sim.dtm_values)))
    column = 0.5 * gal.gas_mass / (np.pi * (gal.r_eff_kpc * 1e3) ** 2)  # M_sun / pc^2
    tau = gal.nuisance.dust_opacity * dtm * SUN_METAL_FRACTION * gal.metallicity * column
    tau_bc = gal.nuisance.birth_cloud_tau_v * dtm * gal.metallicity / BIRTH_CLOUD_REFERENCE_Z
    table = _transmission_tables(phot, np.array([tau]), tau_bc)[..., 0]     # (2, n_band + 2)
    lnu = phot.weights @ phot.lum.T                                         # (n_band + 2, 2)
    att = (lnu * table.T).sum(axis=1)
    a_v = float(-2.5 * np.log10(att[-1] / lnu[-1].sum()))
    return gal.redshift, att[:len(bands)] * phot.njy_per_lnu, max(a_v, 0.0)


@dataclass(frozen=True)
class SkyMix:
    """Noiseless photometry of a sample of the sky's mix (:func:`draw_sky_mix`).

    Attributes
    ----------
    bands : band names.
    kind : (n,) source kinds (:data:`KINDS`).
    redshift : (n,) true redshifts (0 for brown dwarfs).
    flux_njy : (n, n_band) noiseless total fluxes [nJy].
    a_v : (n,) V-band attenuation [mag] (NaN for brown dwarfs).
    """

    bands: tuple[str, ...]
    kind: np.ndarray
    redshift: np.ndarray
    flux_njy: np.ndarray
    a_v: np.ndarray


def draw_sky_mix(n: int, bands: tuple[str, ...] | list[str], *, seed: int = 0,
                 high_z_fraction: float = 0.03, config: ForegroundConfig | None = None,
                 simulation: SimulationConfig | None = None, **sim_overrides: Any) -> SkyMix:
    """Noiseless photometry of ``n`` sources of the sky's mix, for photo-z training and benchmarks.

    A share ``high_z_fraction`` are z > 6 galaxies of the simulator's population
    (:func:`high_z_photometry`, magnitudes as they come from its mass function); the rest are
    the foreground kinds in the proportions of their configured counts, with magnitudes from
    those counts. Each source draws from its own stream ``default_rng([seed, i + 1])``.

    Parameters
    ----------
    n : number of sources.
    bands : NIRCam bands.
    seed : random seed.
    high_z_fraction : share of z > 6 galaxies (a few per cent in real mosaics).
    config : foreground config (default: the shipped one).
    simulation : simulator config of the high-z galaxies (default: the shipped one, with
        ``sim_overrides`` on top).
    """
    from surveydust.config import load_foreground_config, load_simulation_config

    if n < 1 or not 0 <= high_z_fraction <= 1:
        raise InputError("n must be >= 1 and high_z_fraction in [0, 1]")
    cfg = config if config is not None else load_foreground_config()
    sim = simulation if simulation is not None else load_simulation_config(**sim_overrides)
    bands = tuple(bands)
    rng = np.random.default_rng([seed, 0])
    counts = {k: c.per_arcmin2 for k, c in cfg.kinds.items() if c.per_arcmin2 > 0}
    names = list(counts)
    p = np.array([counts[k] for k in names]) / sum(counts.values())
    is_high = rng.uniform(size=n) < high_z_fraction
    kind = np.where(is_high, "high_z", np.array(names)[rng.choice(len(names), size=n, p=p)]).astype("<U12")
    z, a_v = np.zeros(n), np.full(n, np.nan)
    flux = np.zeros((n, len(bands)))
    for i in range(n):
        srng = np.random.default_rng([seed, i + 1])
        if kind[i] == "high_z":
            z[i], flux[i], a_v[i] = high_z_photometry(srng, sim, bands)
            continue
        mag = float(_draw_mag(srng, cfg.mag_range, cfg.kinds[kind[i]].count_slope, 1)[0])
        src = draw_source(srng, str(kind[i]), cfg, bands, mag, with_mass=False)
        z[i], flux[i], a_v[i] = src.redshift, src.flux_njy, src.a_v
    return SkyMix(bands=bands, kind=kind, redshift=z, flux_njy=flux, a_v=a_v)


__all__ = ["KINDS", "SkyMix", "SourceDraw", "band_fluxes", "brown_dwarf_sed", "draw_foreground",
           "draw_sky_mix", "draw_source", "expected_counts", "extended_library", "galaxy_sed",
           "high_z_photometry", "render_source", "stamp_size_for"]
