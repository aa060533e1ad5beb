"""Nuisance physics of the simulator as priors: per-galaxy draws of what it would otherwise fix.

A network trained on simulations answers with the simulator's assumptions. Every
physical choice that is not a label is therefore drawn per galaxy from a stated,
literature-motivated range (``priors`` in ``configs/simulation.yaml``, where each
range is argued) and stored per sample in the training store, so that a user can
read what the network has seen. Labels stay exact: A_V and E(B-V) are still measured
from the integrated attenuated and intrinsic light whatever law or geometry is drawn.

A fixed choice is a range of zero width (``[x, x]``) or a one-element list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from surveydust.config import PriorConfig

#: attenuation-law families, in the order of their integer code in stores (``dust_law``)
DUST_LAWS = ("calzetti", "smc", "salim", "mw")


@dataclass(frozen=True)
class Nuisance:
    """One galaxy's draw of the nuisance physics (see :class:`surveydust.config.PriorConfig`)."""

    dust_law: int                 # index into DUST_LAWS
    salim_delta: float            # power-law slope times Calzetti (Salim et al. 2018); 0 unless salim
    bump_amplitude: float         # 2175 A Drude bump E_b (Noll et al. 2009); 0 unless salim
    dust_opacity: float           # tau_V per (M_sun / pc^2 of metals locked in dust)
    birth_cloud_tau_v: float      # median birth-cloud tau_V at DTM = 1, Z = 0.2 Z_sun
    screen_fraction: float        # share of the old stars' diffuse dust in a foreground screen (rest mixed)
    line_scale: float             # factor on the nebular lines of the SED library (log U = -2)
    lya_ew_aa: float              # Lyman-alpha rest equivalent width that escapes [A]
    igm_forest_factor: float      # the sightline's Lyman-alpha forest transmission over the mean at its z
    quenched: bool                # recently quenched: no stars formed in the last 30 Myr
    burst_sigma: float            # ln-scatter of the mass formed per age bin (burstiness)
    psf_fwhm_scale: float         # PSF width relative to the band's nominal one (training stores)
    noise_correlation_px: float   # Gaussian sigma [px] correlating the pixel noise (drizzle-like)
    depth_offset_mag: float       # depth relative to the configured one [mag], > 0 deeper

    def as_record(self) -> dict[str, float]:
        """The draw as numbers (booleans as 0/1) for the store's per-sample variables."""
        return {k: float(v) for k, v in asdict(self).items()}


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)


def uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """A uniform draw from ``bounds``; a fixed value (``low == high``) without drawing."""
    lo, hi = bounds
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def draw_nuisance(rng: np.random.Generator, priors: PriorConfig) -> Nuisance:
    """Draw one galaxy's nuisance physics from ``priors``."""
    law = DUST_LAWS.index(priors.dust_laws[int(rng.integers(len(priors.dust_laws)))])
    delta = bump = 0.0
    if DUST_LAWS[law] == "salim":
        delta = uniform(rng, priors.salim_delta)
        # bump strength tracks the slope (Kriek & Conroy 2013: E_b = 0.85 - 1.9 delta), with scatter
        bump = float(np.clip(0.85 - 1.9 * delta + rng.normal(0.0, priors.bump_scatter), 0.0, 4.0))
    lya_scale = priors.lya_ew_scale_aa
    return Nuisance(
        dust_law=law, salim_delta=delta, bump_amplitude=bump,
        dust_opacity=_log_uniform(rng, priors.dust_opacity),
        birth_cloud_tau_v=_log_uniform(rng, priors.birth_cloud_tau_v),
        screen_fraction=uniform(rng, priors.screen_fraction),
        line_scale=_log_uniform(rng, priors.line_scale),
        lya_ew_aa=float(rng.exponential(lya_scale)) if lya_scale > 0 else 0.0,
        igm_forest_factor=uniform(rng, priors.igm_forest_factor),
        quenched=bool(rng.uniform() < priors.quenched_fraction),
        burst_sigma=uniform(rng, priors.burst_sigma),
        psf_fwhm_scale=uniform(rng, priors.psf_fwhm_scale),
        noise_correlation_px=uniform(rng, priors.noise_correlation_px),
        depth_offset_mag=uniform(rng, priors.depth_offset_mag),
    )


#: the simulator before its nuisance physics became priors (one law, geometry, line strength, SFH
#: scatter, PSF and depth): with these priors it makes exactly the galaxies and images it made then
FIXED_PRIORS: dict[str, object] = {
    "dust_laws": ["calzetti"], "dust_opacity": [0.2, 0.2], "birth_cloud_tau_v": [3.0, 3.0],
    "screen_fraction": [0.0, 0.0], "line_scale": [1.0, 1.0], "lya_ew_scale_aa": 0.0,
    "igm_forest_factor": [0.0, 0.0], "quenched_fraction": 0.0, "burst_sigma": [0.6, 0.6],
    "metallicity_scatter_dex": 0.15, "sersic_n": [0.8, 2.0], "clumps_mean": [2.5, 2.5],
    "psf_fwhm_scale": [1.0, 1.0], "noise_correlation_px": [0.0, 0.0], "depth_offset_mag": [0.0, 0.0]}

#: per-sample store variables that record the draw (name -> description)
RECORDED = {
    "dust_law": f"attenuation-law family: index into {list(DUST_LAWS)}",
    "salim_delta": "slope delta of the Salim et al. (2018) law (0 for other laws)",
    "bump_amplitude": "2175 A bump amplitude E_b (0 for other laws)",
    "dust_opacity": "tau_V per M_sun/pc^2 of metals in dust",
    "birth_cloud_tau_v": "median birth-cloud tau_V at DTM = 1, Z = 0.2 Z_sun",
    "screen_fraction": "share of the old stars' diffuse dust in a foreground screen",
    "line_scale": "factor on the nebular lines (log U = -2 library)",
    "lya_ew_aa": "escaping Lyman-alpha rest EW [Angstrom]",
    "igm_forest_factor": "Lyman-alpha forest transmission of the sightline over the mean at its redshift",
    "quenched": "1 when no stars formed in the last 30 Myr",
    "burst_sigma": "ln-scatter of mass formed per age bin",
    "psf_fwhm_scale": "PSF FWHM relative to nominal",
    "noise_correlation_px": "Gaussian sigma [px] of the noise correlation",
    "depth_offset_mag": "depth relative to the configured one [mag], > 0 deeper",
}


def store_priors(attrs: dict) -> dict | None:
    """The nuisance priors a training store was simulated with (from its ``simulation_config``
    attribute), or None for stores from elsewhere (SKIRT cubes) or from before priors existed."""
    import json

    config = attrs.get("simulation_config")
    return json.loads(config).get("priors") if config else None
