"""The lmdb method (its store class in store.py, its file format in format.py)."""

from storage_impls.methods.lmdb.store import LmdbStore

__all__ = ["LmdbStore"]
