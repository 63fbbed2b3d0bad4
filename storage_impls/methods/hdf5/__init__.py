"""The hdf5 method (its store class in store.py, its file format in format.py)."""

from storage_impls.methods.hdf5.store import Hdf5Store

__all__ = ["Hdf5Store"]
