"""The results store: every run, also kept in one sqlite file, so that history outlives run
folders.

Modules: ``configs`` (what makes two measurements comparable: the configuration key),
``db`` (the sqlite file: add, load, list, previous run of a configuration), ``refs`` (how a
command line names a stored run: ``@ID``, ``@last``, ``@last~K``, ``@NAME``), ``trend``
(stage costs of a configuration over commits, with ``compare``'s marks), ``asv`` (export to
and import from asv's results format).
"""

from harness.store.db import DEFAULT_STORE, STORE_ENV, ResultsStore, StoreError, default_store_path

__all__ = ["DEFAULT_STORE", "STORE_ENV", "ResultsStore", "StoreError", "default_store_path"]
