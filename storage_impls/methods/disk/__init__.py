"""The disk method (its store class in store.py, its file format in format.py)."""

from storage_impls.methods.disk.store import DiskStore

__all__ = ["DiskStore"]
