"""Stellar-population SED library used by the built-in simulator.

The shipped file ``surveydust/data/sed_library.npz`` holds rest-frame spectra
of constant star formation in five age bins (0-10, 10-30, 30-100, 100-300 and
300-500 Myr) at six metallicities (0.02-1 Z_sun), each per solar mass formed,
computed with Bagpipes (Bruzual & Charlot 2003 stellar models, Kroupa IMF,
Cloudy nebular continuum and lines at log U = -2 for stars younger than
10 Myr). A galaxy's spectrum is a mass-weighted sum over age bins, so its
star-formation history (and its 100 Myr SFR) is exact by construction.

Rebuild the file (needs the ``[sed]`` extra) with::

    python surveydust/simulate/sed_library.py surveydust/data/sed_library.npz
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

AGE_BINS_MYR = ((0.0, 10.0), (10.0, 30.0), (30.0, 100.0), (100.0, 300.0), (300.0, 500.0))
METALLICITIES_ZSUN = (0.02, 0.05, 0.1, 0.2, 0.4, 1.0)
LOG_U = -2.0
WAVE_MIN_AA, WAVE_MAX_AA, N_WAVE = 900.0, 12000.0, 1400
L_SUN_ERG_S = 3.826e33
#: running-median window [library pixels, ~5.7% in wavelength] that separates the nebular lines
#: (narrower) from the stellar and nebular continuum
LINE_FILTER_PIXELS = 31


@dataclass(frozen=True)
class SEDLibrary:
    """Rest-frame spectra per solar mass formed.

    Attributes
    ----------
    wave_aa : (n_wave,) rest-frame wavelength in Angstrom.
    lum : (n_age, n_z, n_wave) L_lambda in erg s^-1 A^-1 per M_sun formed.
    age_bins_myr : (n_age, 2) lower and upper edge of each age bin in Myr.
    metallicity_zsun : (n_z,) metallicity grid in units of Z_sun.
    surviving_fraction : (n_age, n_z) stellar mass still in stars (and remnants)
        per unit mass formed.
    """

    wave_aa: np.ndarray
    lum: np.ndarray
    age_bins_myr: np.ndarray
    metallicity_zsun: np.ndarray
    surviving_fraction: np.ndarray

    def at_metallicity(self, z_zsun: float, lines_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Spectra and surviving fractions interpolated linearly in log Z.

        Returns ``(lum (n_age, n_wave), surviving_fraction (n_age,))``; with
        ``lines_only`` the spectra are their emission-line part (:attr:`lines`).
        """
        logz = np.log10(self.metallicity_zsun)
        x = np.clip(np.log10(z_zsun), logz[0], logz[-1])
        j = int(np.clip(np.searchsorted(logz, x) - 1, 0, len(logz) - 2))
        w = (x - logz[j]) / (logz[j + 1] - logz[j])
        spectra = self.lines if lines_only else self.lum
        lum = (1 - w) * spectra[:, j] + w * spectra[:, j + 1]
        surv = (1 - w) * self.surviving_fraction[:, j] + w * self.surviving_fraction[:, j + 1]
        return lum, surv

    @cached_property
    def lines(self) -> np.ndarray:
        """The nebular emission-line part of :attr:`lum` (spectrum minus its running-median
        continuum over ``LINE_FILTER_PIXELS``): scaling it changes line equivalent widths and
        leaves the stellar and nebular continuum as they are."""
        from scipy.ndimage import median_filter

        continuum = median_filter(self.lum, size=(1, 1, LINE_FILTER_PIXELS), mode="nearest")
        return np.clip(self.lum - continuum, 0.0, None)


@lru_cache(maxsize=1)
def load_sed_library() -> SEDLibrary:
    """Load the SED library shipped with the package."""
    ref = resources.files("surveydust") / "data" / "sed_library.npz"
    with resources.as_file(ref) as path, np.load(path) as f:
        return SEDLibrary(**{k: f[k] for k in SEDLibrary.__dataclass_fields__})


def build_sed_library(path: Path) -> None:
    """Compute the library with Bagpipes and write it to ``path`` (.npz)."""
    import bagpipes  # optional dependency: the [sed] extra

    wave = np.geomspace(WAVE_MIN_AA, WAVE_MAX_AA, N_WAVE)
    lum = np.zeros((len(AGE_BINS_MYR), len(METALLICITIES_ZSUN), N_WAVE))
    surv = np.zeros(lum.shape[:2])
    for i, (a0, a1) in enumerate(AGE_BINS_MYR):
        for j, zmet in enumerate(METALLICITIES_ZSUN):
            comp = {
                "redshift": 0.0,
                "constant": {"age_min": a0 / 1e3, "age_max": a1 / 1e3,
                             "massformed": 0.0, "metallicity": zmet},
                "nebular": {"logU": LOG_U},
            }
            model = bagpipes.model_galaxy(comp, spec_wavs=wave)
            lum[i, j] = model.spectrum[:, 1]  # erg/s/A at redshift 0
            surv[i, j] = 10 ** model.sfh.stellar_mass
    np.savez_compressed(
        path, wave_aa=wave.astype(np.float32), lum=lum.astype(np.float32),
        age_bins_myr=np.array(AGE_BINS_MYR), metallicity_zsun=np.array(METALLICITIES_ZSUN),
        surviving_fraction=surv,
    )


if __name__ == "__main__":
    build_sed_library(Path(sys.argv[1]))
