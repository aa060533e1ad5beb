"""The built-in demo: a small simulated JWST field with known truth, run end to end offline.

``surveydust run-catalogue --demo`` calls :func:`make_demo_field` (FITS files
in the JWST ``i2d`` layout, ingested into a mosaic store) and, once the
catalogue is made, :func:`match_truth` to show how well it recovers the
injected galaxies.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from surveydust.sources import TRUTH_MATCH_ARCSEC, nearest

logger = logging.getLogger(__name__)

DEMO_TILE_PIX = 256  # small tiles, so the demo has several tiles and sources on their boundaries


def make_demo_field(directory: Path | str, *, n_galaxies: int = 40, size: int = 768, seed: int = 0,
                    client: Any = None, overwrite: bool = False, progress: bool = True) -> tuple[Path, Path]:
    """Simulate the demo field into ``directory``; return (mosaic store, truth table) paths.

    ``n_galaxies`` galaxies from the built-in simulator on a ``size`` x
    ``size`` pixel (0.03"/px) six-band field with a rotated WCS, CEERS-like
    noise and NaN borders, written as FITS and ingested in 256-pixel chunks.
    """
    from surveydust.simulate import simulate_field
    from surveydust.stores.mosaic import ingest_mosaic

    directory = Path(directory)
    store = directory / "field.zarr"
    if store.exists() and not overwrite:
        raise FileExistsError(f"{store} exists; pass --overwrite to make the demo field again")
    files = simulate_field(directory / "fits", n_galaxies=n_galaxies, shape=(size, size), seed=seed,
                           overwrite=overwrite)
    logger.info("simulated %d galaxies on a %d x %d field: %s", n_galaxies, size, size, directory / "fits")
    ingest_mosaic(store, {b: str(p) for b, p in files.bands.items()}, field="demo", chunk=DEMO_TILE_PIX,
                  client=client, overwrite=overwrite, progress=progress)
    return store, files.truth


def match_truth(catalogue: Any, truth: Path | str, radius_arcsec: float = TRUTH_MATCH_ARCSEC) -> dict[str, Any]:
    """Match catalogue sources to the injected galaxies' light-weighted centroids
    (nearest within ``radius_arcsec``).

    Returns the numbers of matches, missed galaxies (mostly those below the
    detection limit) and spurious sources, the median separation [arcsec], and
    the A_V / E(B-V) / log sSFR MAE against the truth for each model (and the
    Meurer A_V when the catalogue has it).
    """
    from astropy.table import Table

    truth = Table.read(truth)
    n_cat = catalogue.sizes["source"]
    idx, sep, ok = nearest(np.asarray(truth["ra_centroid"]), np.asarray(truth["dec_centroid"]),
                           catalogue["ra"].values, catalogue["dec"].values, radius_arcsec)
    result: dict[str, Any] = {"matched": int(ok.sum()), "missed": int((~ok).sum()),
                              "spurious": int(n_cat - np.unique(idx[ok]).size),
                              "median_sep_arcsec": float(np.median(sep[ok])) if ok.any() else np.nan}
    def mae(pred: np.ndarray, target: str) -> float:
        diff = np.abs(pred[idx[ok]] - np.asarray(truth[target])[ok])
        return float(np.mean(diff[np.isfinite(diff)])) if np.isfinite(diff).any() else np.nan

    for model in catalogue["model"].values:
        for target in ("A_V", "EBV", "log_ssfr"):
            result[f"{target} MAE (CNN {model})"] = mae(catalogue[target].sel(model=model).values, target)
    if "A_V_meurer" in catalogue:
        result["A_V MAE (Meurer, UV slope)"] = mae(catalogue["A_V_meurer"].values, "A_V")
    return result


__all__ = ["make_demo_field", "match_truth"]
