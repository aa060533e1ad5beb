"""Deep ensembles: combine networks trained on one split into one calibrated bundle.

The members are trained on the same split from different initial weights and
batch orders (``fit_seed``).

The bundle's model feeds the same inputs to every member and returns, per target,
one Gaussian with the mean and variance of the equal-weight mixture of the
members' Gaussians (:class:`surveydust.model.MixtureMoments`; Lakshminarayanan
et al. 2017). The percentiles are calibrated again, on the same calibration
galaxies the members were calibrated on (which none of them trained on), so a
:class:`surveydust.bundle.Predictor` uses an ensemble like any other bundle.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from surveydust.stores.base import check_output_path, replace_atomically
from surveydust.train import write_ensemble


def combine_bundles(members: Sequence[Path | str], out: Path | str, store: Path | str | None = None,
                    overwrite: bool = False) -> Path:
    """Combine trained bundles of one split into an ensemble bundle at ``out``; return its path.

    ``store``: the training store the members were trained on, to calibrate the
    ensemble on their calibration galaxies [default: the path recorded in the
    members' metadata]. Raises ValueError for fewer than two members or members
    that differ in bands, targets, loss, target scaling, split or training store.
    """
    out = check_output_path(out, overwrite, "bundle")
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        bundle = write_ensemble([str(m) for m in members], None if store is None else str(store),
                                str(Path(tmp) / "bundle"))
        replace_atomically(Path(bundle), out)
    return out
