"""The predicted quantities: names, units, axis labels and how output columns are named.

One place for what the network predicts (``PREDICTED``), what is derived from
it (R_V = A_V / E(B-V)), their units and axis labels, the quantities scored
against a truth (``SCORED``), and the column suffixes of uncertainties (``_err``)
and percentiles (``_p16`` ...).
"""

from __future__ import annotations

import re

import numpy as np

#: what the networks predict; R_V = A_V / E(B-V) is derived
PREDICTED = ("A_V", "EBV", "log_ssfr")
#: units of every quantity (uncertainties and percentiles share them)
UNITS = {"A_V": "mag", "EBV": "mag", "R_V": "", "log_ssfr": "log10(yr^-1)"}
#: units of a residual (predicted - true) of each quantity; log sSFR residuals are in dex
RESIDUAL_UNITS = {"A_V": "mag", "EBV": "mag", "R_V": "", "log_ssfr": "dex"}
#: axis label of every quantity a figure or table shows: the name and its unit
LABELS = {"A_V": "A_V [mag]", "EBV": "E(B-V) [mag]", "R_V": "R_V = A_V / E(B-V)",
          "log_ssfr": "log sSFR [yr^-1]", "redshift": "redshift", "log_mstar": "log M* [M_sun]"}
#: the quantities scored against a truth, in the order of the paper's Table 2
SCORED = ("EBV", "A_V", "R_V", "log_ssfr")
#: E(B-V) [mag] at or below which a true R_V is undefined (NaN): no measurable reddening
MIN_EBV_FOR_RV = 1e-4
#: the same for a predicted E(B-V) [mag] (a median this small is not a measured reddening)
MIN_PREDICTED_EBV_FOR_RV = 1e-3


def r_v(a_v: np.ndarray, ebv: np.ndarray, min_ebv: float = MIN_EBV_FOR_RV) -> np.ndarray:
    """R_V = A_V / E(B-V), NaN where E(B-V) <= ``min_ebv`` (no measurable reddening)."""
    a_v, ebv = np.asarray(a_v, float), np.asarray(ebv, float)
    out = np.full(np.broadcast(a_v, ebv).shape, np.nan)
    np.divide(a_v, ebv, out=out, where=ebv > min_ebv)
    return out


def quantity(name: str) -> str:
    """The quantity of a column: ``A_V`` for ``A_V``, ``A_V_err`` and ``A_V_p16``."""
    return re.sub(r"_(err|p\d+)$", "", name)
