"""Draw the physical properties of mock z = 6-8 galaxies.

Stellar mass, metallicity (a mass-metallicity relation), star-formation history
in the SED library's age bins (a main sequence with scatter in sSFR and bursty
recent history), gas mass, and the structure used by :mod:`morphology`.
All sizes are proper kpc.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from surveydust.config import SimulationConfig
from surveydust.simulate.priors import Nuisance, draw_nuisance, uniform
from surveydust.simulate.sed_library import SEDLibrary

#: SED-library age bins that sit in the clumpy young component (< 30 Myr)
YOUNG_BINS = slice(0, 2)
#: age bins that make the 100 Myr SFR
RECENT_BINS = slice(0, 3)
MAX_RECENT_FRACTION = 0.9
#: mass formed in the young bins of a quenched galaxy, relative to a constant SFH's
QUENCHED_RESIDUAL = 1e-3
SUN_METAL_FRACTION = 0.0142


@dataclass(frozen=True)
class Galaxy:
    """One mock galaxy (view-independent properties)."""

    redshift: float
    log_mstar: float            # surviving stellar mass [log10 M_sun]
    log_sfr: float              # SFR averaged over 100 Myr [log10 M_sun/yr]
    metallicity: float          # Z / Z_sun
    mass_formed: np.ndarray     # (n_age,) M_sun formed per age bin
    gas_mass: float             # M_sun
    r_eff_kpc: float            # half-light radius of the smooth component
    sersic_n: float
    thickness: float            # intrinsic axis ratio of the disc
    clump_xy_kpc: np.ndarray    # (n_clump, 2) positions in the disc plane
    clump_sigma_kpc: np.ndarray  # (n_clump,)
    clump_weight: np.ndarray    # (n_clump,) share of the clumpy light, sums to 1
    nuisance: Nuisance          # the draw of the nuisance physics (dust law, lines, instrument, ...)

    @property
    def log_ssfr(self) -> float:
        """log10 sSFR [yr^-1] (100 Myr SFR over surviving mass)."""
        return self.log_sfr - self.log_mstar


def _draw_log_mass(rng: np.random.Generator, bounds: tuple[float, float], slope: float) -> float:
    """Inverse-CDF draw from dN/dlogM ~ 10**(slope * logM) between ``bounds``."""
    lo, hi = bounds
    if abs(slope) < 1e-6 or hi == lo:
        return float(rng.uniform(lo, hi))
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return float(np.log10(a + rng.uniform() * (b - a)) / slope)


def draw_galaxy(rng: np.random.Generator, cfg: SimulationConfig, lib: SEDLibrary) -> Galaxy:
    """Draw one galaxy from the population model and its nuisance physics from ``cfg.priors``."""
    priors = cfg.priors
    # the nuisance physics from a stream of its own (spawned: ``rng``'s draws are untouched), so that
    # fixed priors give exactly the galaxies of the simulator before they were priors
    nuisance = draw_nuisance(np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0]), priors)
    z = rng.uniform(*cfg.redshift_range)
    log_m = _draw_log_mass(rng, cfg.log_mstar_range, cfg.mass_function_slope)
    log_z = -0.75 + 0.3 * (log_m - 9.0) + rng.normal(0, priors.metallicity_scatter_dex)
    metal = 10 ** np.clip(log_z, np.log10(0.02), 0.0)
    # main sequence at z ~ 7: sSFR ~ 5e-9 /yr, falling slowly with mass, 0.35 dex scatter
    log_ssfr_formed = -8.3 - 0.15 * (log_m - 9.0) + rng.normal(0, 0.35)
    recent = min(10 ** (log_ssfr_formed + 8.0), MAX_RECENT_FRACTION)
    widths = np.diff(lib.age_bins_myr, axis=1)[:, 0]
    burst = widths * rng.lognormal(0.0, nuisance.burst_sigma, size=len(widths))
    if nuisance.quenched:  # nothing formed in the last 30 Myr: a Balmer break without lines
        burst[YOUNG_BINS] = widths[YOUNG_BINS] * QUENCHED_RESIDUAL
    frac = np.empty_like(burst)
    frac[RECENT_BINS] = recent * burst[RECENT_BINS] / burst[RECENT_BINS].sum()
    frac[3:] = (1 - recent) * burst[3:] / burst[3:].sum()
    _, surv = lib.at_metallicity(metal)
    mass_formed_total = 10**log_m / float(frac @ surv)
    mass_formed = frac * mass_formed_total
    log_sfr = np.log10(mass_formed[RECENT_BINS].sum() / 1e8)

    r_eff = float(np.clip(0.6 * (10 ** (log_m - 9.0)) ** 0.22 * 10 ** rng.normal(0, 0.15), 0.15, 1.5))
    n_clump = int(np.clip(1 + rng.poisson(uniform(rng, priors.clumps_mean)), 1, 8))
    radius = r_eff * rng.gamma(2.0, 0.5, size=n_clump)
    angle = rng.uniform(0, 2 * np.pi, size=n_clump)
    return Galaxy(
        redshift=float(z), log_mstar=float(log_m), log_sfr=float(log_sfr), metallicity=float(metal),
        mass_formed=mass_formed,
        gas_mass=float(10**log_m * np.exp(rng.uniform(*np.log(np.maximum(cfg.gas_to_stellar_mass, 1e-3))))),
        r_eff_kpc=r_eff, sersic_n=uniform(rng, priors.sersic_n), thickness=float(rng.uniform(0.2, 0.4)),
        clump_xy_kpc=np.column_stack([radius * np.cos(angle), radius * np.sin(angle)]),
        clump_sigma_kpc=rng.uniform(0.05, 0.15, size=n_clump),
        clump_weight=rng.dirichlet(np.ones(n_clump)),
        nuisance=nuisance,
    )
