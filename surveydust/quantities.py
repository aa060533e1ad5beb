"""The predicted quantities: names, units and how output columns are named.

One place for what the network predicts (``PREDICTED``), what is derived from
it (R_V = A_V / E(B-V)), their units, and the column suffixes of uncertainties
(``_err``) and percentiles (``_p16`` ...).
"""

from __future__ import annotations

import re

#: what the networks predict; R_V = A_V / E(B-V) is derived
PREDICTED = ("A_V", "EBV", "log_ssfr")
#: units of every quantity (uncertainties and percentiles share them)
UNITS = {"A_V": "mag", "EBV": "mag", "R_V": "", "log_ssfr": "log10(yr^-1)"}


def quantity(name: str) -> str:
    """The quantity of a column: ``A_V`` for ``A_V``, ``A_V_err`` and ``A_V_p16``."""
    return re.sub(r"_(err|p\d+)$", "", name)
