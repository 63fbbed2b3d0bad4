"""The rocksdb method (its store class in store.py, its file format in format.py)."""

from storage_impls.methods.rocksdb.store import RocksdbStore

__all__ = ["RocksdbStore"]
