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
    surveydust.load_model(bands=None).predict(images, redshift=z)  # shipped bundle by band set -> xarray.Dataset
    surveydust.run_catalogue("field.zarr", "cat.zarr")  # detect + predict per tile -> xarray.Dataset
    surveydust.open_catalogue("cat.zarr")            # -> xarray.Dataset (dim source)
    surveydust.sedfit.fit_sed("cat.zarr")            # Bagpipes fits per source on Dask (extra [sed])
    surveydust.run_demo("demo/")                     # the built-in demo field, end to end
"""

from importlib import import_module
from typing import Any

from surveydust.provenance import VERSION as __version__

#: public name -> module that defines it (imported on first use, so ``import surveydust``
#: and ``surveydust --help`` stay fast)
_API = {
    "load_model": "surveydust.bundle", "open_catalogue": "surveydust.stores.catalogue",
    "get_client": "surveydust.cluster", "run_catalogue": "surveydust.infer",
    "simulate": "surveydust.simulate", "ingest_mosaic": "surveydust.stores.mosaic",
    "open_mosaic": "surveydust.stores.mosaic", "ingest_skirt": "surveydust.stores.skirt",
    "open_training_store": "surveydust.stores.training", "train": "surveydust.train",
    "tune": "surveydust.tune", "run_demo": "surveydust.demo",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'surveydust' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *sorted(_API)]
