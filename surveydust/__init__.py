"""surveydust: dust and sSFR of z > 6 galaxies from JWST NIRCam images with CNNs, on Dask.

Public API::

    surveydust.simulate(out, n_galaxies=64)         # mock training store (Zarr)
    surveydust.ingest_skirt(cubes, properties, out)  # SKIRT mock cubes -> training store
    surveydust.open_training_store(path)             # -> xarray.Dataset
    surveydust.ingest_mosaic(out, {"F277W": "f277w_i2d.fits"})  # FITS mosaics -> mosaic store (nJy)
    surveydust.open_mosaic(path)                     # -> xarray.Dataset sci/err(band, y, x), lazy
    surveydust.get_client("local", workers=2)        # Dask client from a cluster profile
    surveydust.train("sims.zarr", "model/")          # CNN -> model bundle
    surveydust.tune("sims.zarr", "study/", trials=6) # hyper-parameter search -> trial table
    surveydust.load_model(path=None).predict(images) # None: the shipped bundle -> xarray.Dataset
    surveydust.run_catalogue("field.zarr", "cat.zarr")  # detect + predict per tile -> xarray.Dataset
    surveydust.open_catalogue("cat.zarr")            # -> xarray.Dataset (dim source)
    surveydust.sedfit.fit_sed("cat.zarr")            # Bagpipes fits per source on Dask (extra [sed])
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("surveydust")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from surveydust.bundle import load_model  # noqa: E402
from surveydust.catalogue import open_catalogue  # noqa: E402
from surveydust.cluster import get_client  # noqa: E402
from surveydust.infer import run_catalogue  # noqa: E402
from surveydust.simulate import simulate  # noqa: E402
from surveydust.stores.mosaic import ingest_mosaic, open_mosaic  # noqa: E402
from surveydust.stores.skirt import ingest_skirt  # noqa: E402
from surveydust.stores.training import open_training_store  # noqa: E402
from surveydust.train import train  # noqa: E402
from surveydust.tune import tune  # noqa: E402

__all__ = ["__version__", "get_client", "ingest_mosaic", "ingest_skirt", "load_model", "open_catalogue",
           "open_mosaic", "open_training_store", "run_catalogue", "simulate", "train", "tune"]
