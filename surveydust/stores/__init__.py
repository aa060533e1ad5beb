"""Zarr stores and their readers/writers."""

from surveydust.stores.training import open_training_store, write_training_store

__all__ = ["open_training_store", "write_training_store"]
