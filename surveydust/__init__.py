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
    surveydust.evaluate(["model/"], "sims.zarr", "eval/")  # held-out skill: tables and figures
    surveydust.load_model(bands=None).predict(images, redshift=z)  # shipped bundle by band set -> xarray.Dataset
    surveydust.run_catalogue("field.zarr", "cat.zarr")  # detect + predict per tile -> xarray.Dataset
    surveydust.open_catalogue("cat.zarr")            # -> xarray.Dataset (dim source)
    surveydust.sedfit.fit_sed("cat.zarr")            # Bagpipes fits per source on Dask (extra [sed])
    surveydust.run_demo("demo/")                     # the built-in demo field, end to end
"""

import os
import sys
from importlib import import_module
from types import ModuleType
from typing import Any

if "__mp_main__" in sys.modules and sys.argv and os.path.basename(sys.argv[0]) == "surveydust":
    # a worker process of the ``surveydust`` command, starting: multiprocessing re-runs the console
    # script (this import) before it loads Dask; from here on Ctrl-C is the command's to handle
    from surveydust.backend import ignore_interrupts_in_worker_process

    ignore_interrupts_in_worker_process()

from surveydust.provenance import VERSION as __version__  # after the check above: it is slow

#: public name -> module that defines it (imported on first use, so ``import surveydust``
#: and ``surveydust --help`` stay fast)
_API = {
    "load_model": "surveydust.bundle", "open_catalogue": "surveydust.stores.catalogue",
    "get_client": "surveydust.cluster", "run_catalogue": "surveydust.infer",
    "simulate": "surveydust.simulate", "ingest_mosaic": "surveydust.stores.mosaic",
    "open_mosaic": "surveydust.stores.mosaic", "ingest_skirt": "surveydust.stores.skirt",
    "open_training_store": "surveydust.stores.training", "train": "surveydust.train",
    "tune": "surveydust.tune", "run_demo": "surveydust.demo", "evaluate": "surveydust.evaluation",
}


#: public functions named like the submodule that defines them (``surveydust.train`` is the function
#: ``train`` of the module ``surveydust.train``)
_SHADOWED = frozenset(name for name, module in _API.items() if module == f"{__name__}.{name}")


class _Package(ModuleType):
    """The ``surveydust`` package, whose public functions are never hidden by their submodules.

    Python's import system sets a submodule as an attribute of its package once it has loaded
    (``import surveydust.train`` sets ``surveydust.train``), which would replace the function
    ``surveydust.train`` of the API with the module of the same name. Those assignments are
    dropped: the submodule is still imported and in :data:`sys.modules`, so ``from
    surveydust.train import ...`` works as usual, and ``surveydust.train`` stays the function.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        """Set an attribute, except a submodule over the public function of the same name."""
        if name in _SHADOWED and isinstance(value, ModuleType):
            return
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    """Import a public function (or a submodule, e.g. ``surveydust.sedfit``) on first use.

    Parameters
    ----------
    name
        Attribute looked up on the package and not found in it.

    Returns
    -------
    Any
        The function named in ``_API`` (kept in the package, so the next lookup is a plain
        attribute), else the submodule ``surveydust.<name>``.

    Raises
    ------
    AttributeError
        When ``name`` is neither.
    """
    if name in _API:
        value = getattr(import_module(_API[name]), name)
        globals()[name] = value
        return value
    if name.isidentifier() and not name.startswith("_"):
        from importlib.util import find_spec

        if find_spec(f"{__name__}.{name}") is not None:
            return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'surveydust' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


#: the names of :data:`_API`, written out for static tools (tests/test_runs_api.py checks they agree)
__all__ = ["__version__", "evaluate", "get_client", "ingest_mosaic", "ingest_skirt", "load_model", "open_catalogue",
           "open_mosaic", "open_training_store", "run_catalogue", "run_demo", "simulate", "train", "tune"]

sys.modules[__name__].__class__ = _Package
