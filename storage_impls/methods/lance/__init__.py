"""The lance method (its store class in store.py, its file format in format.py)."""

from storage_impls.methods.lance.store import LanceStore

__all__ = ["LanceStore"]
