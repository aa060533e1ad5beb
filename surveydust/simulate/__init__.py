"""Built-in mock-galaxy simulator (stand-in for TNG50 + SKIRT).

The pure rendering kernels (:mod:`~surveydust.simulate.render` and what it uses) import
without Dask; :func:`simulate` and :func:`simulate_field`, the drivers that write stores and
fields, are loaded on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {"simulate": "surveydust.simulate.run", "simulate_field": "surveydust.simulate.field",
         "FieldFiles": "surveydust.simulate.field"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FieldFiles", "simulate", "simulate_field"]
