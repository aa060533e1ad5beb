"""Tutorial: a simulated JWST field to a dust catalogue and figures, with the Python API.

Run it as ``.venv/bin/python docs/tutorial.py [FOLDER]`` (default ``tutorial/``; about a minute on
2 cores). ``docs/tutorial.md`` shows it piece by piece, and ``tests/test_docs.py`` runs it on the
test session's Dask client, so the code in the documentation is the code that runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def run_tutorial(folder: Path | str, client: Any) -> dict[str, Any]:
    """Simulate a small field in ``folder``, ingest it, catalogue it on ``client``, compare with the truth.

    Returns what the steps made: the field files, the mosaic store, the catalogue, the comparison
    table and the figures' paths.
    """
    folder = Path(folder)
    # [simulate]
    from surveydust.simulate import simulate_field

    # 24 mock z = 6-8 galaxies of known dust on a 512 x 512 px (15" x 15") six-band NIRCam field:
    # one i2d-style FITS file per band (SCI/ERR/WHT, rotated WCS, NaN borders) and a truth table
    files = simulate_field(folder / "fits", n_galaxies=24, shape=(512, 512), seed=1)
    print(sorted(files.bands))          # ['F115W', 'F150W', 'F200W', 'F277W', 'F356W', 'F444W']
    # [/simulate]

    # [ingest]
    from surveydust import ingest_mosaic, open_mosaic

    # FITS (MJy/sr) -> a mosaic store: sci and err (band, y, x) in nJy per pixel, 256 px chunks
    store = ingest_mosaic(folder / "field.zarr", {band: str(path) for band, path in files.bands.items()},
                          chunk=256, client=client, progress=False)
    mosaic = open_mosaic(store)
    print(dict(mosaic.sizes))           # {'band': 6, 'y': 512, 'x': 512}
    # [/ingest]

    # [catalogue]
    from surveydust import run_catalogue

    # detect, measure and predict tile by tile on the Dask workers; the truth table stands in for
    # spectroscopic redshifts (ra, dec, z), as in the demo
    cat = run_catalogue(store, folder / "catalogue.zarr", redshifts=files.truth, client=client, progress=False)
    model = str(cat["model"].values[0])  # the richest shipped bundle the mosaic's bands allow
    print(model)                        # F115W+F150W+F200W+F277W+F356W+F444W
    print(cat.sizes["source"], "sources")
    a_v = cat["A_V"].sel(model=model)   # medians [mag]; percentiles in A_V_p16, A_V_p84, ...
    print(a_v.values[:3], cat["A_V_p16"].sel(model=model).values[:3])
    # [/catalogue]

    # [table]
    from surveydust.stores.catalogue import export, to_table

    table = to_table(cat)               # an astropy Table, one row per source (one model: A_V, not A_V_<bands>)
    print(table["ra", "dec", "z", "A_V", "A_V_p16", "A_V_p84", "flag"][:3])
    export(cat, folder / "catalogue.ecsv")  # or .fits, for TOPCAT
    # [/table]

    # [figures]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from surveydust.compare import compare, good_sources, truth_values

    # every method against every other and against the truth: comparison.ecsv and one figure per quantity
    comparison = compare(cat, folder / "compare", truth=files.truth)
    print(comparison["quantity", "method_a", "method_b", "N", "MAE"])

    # a figure of your own: predicted against true A_V for the sources without quality flags
    truth = truth_values(cat, files.truth)["A_V"]
    good = good_sources(cat) & np.isfinite(truth) & np.isfinite(a_v.values)
    lo, hi = cat["A_V_p16"].sel(model=model).values, cat["A_V_p84"].sel(model=model).values
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.errorbar(truth[good], a_v.values[good], yerr=[(a_v - lo).values[good], (hi - a_v).values[good]], fmt="o")
    ax.plot([0, 2], [0, 2], "k:")
    ax.set(xlabel="true A_V [mag]", ylabel="CNN A_V [mag] (16-84%)")
    fig.savefig(folder / "a_v.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    # [/figures]
    return {"files": files, "store": store, "catalogue": cat, "comparison": comparison,
            "figures": sorted((folder / "compare").glob("*.png")) + [folder / "a_v.png"]}


if __name__ == "__main__":
    # [client]
    from surveydust import get_client

    with get_client("local", workers=2) as client:  # a LocalCluster; the dashboard link is logged
        run_tutorial(sys.argv[1] if len(sys.argv) > 1 else "tutorial", client)
    # [/client]
