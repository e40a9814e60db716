"""Shared fixtures of the integration tests.

Rules of this module (slow tests are left out by ``-m 'not slow'`` in pyproject's addopts;
``pytest -m slow`` runs them):

- A cluster fixture starts its processes once per test module and always closes them: the
  fixture is a context manager, and ``LocalCluster`` passes ``--parent-pid`` so that its
  processes also end when the test process dies. Everything binds to loopback.
- Task functions defined in test modules travel to workers by reference
  (``tests.test_cluster.some_function``); ``cluster_env`` puts the repository on the workers'
  ``PYTHONPATH`` so that they can import them wherever pytest was started from.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler import Client, LocalCluster

REPO = Path(__file__).resolve().parents[1]
"""The repository root (the folder holding ``scheduler/``, ``harness/`` and ``tests/``)."""


def cluster_env() -> dict[str, str]:
    """Environment additions for processes that must import this repository's modules."""
    current = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(REPO), current] if current else [str(REPO)])}


@pytest.fixture(scope="session", autouse=True)
def results_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test's runs go to a results store of this test session, never to the default
    ``reports/stagecost.sqlite`` of wherever the tests were started."""
    path = tmp_path_factory.mktemp("store") / "stagecost.sqlite"
    before = os.environ.get("STAGECOST_STORE")
    os.environ["STAGECOST_STORE"] = str(path)
    yield path
    if before is None:
        os.environ.pop("STAGECOST_STORE", None)
    else:
        os.environ["STAGECOST_STORE"] = before


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A ``LocalCluster`` of 2 single-threaded workers on loopback, shared by a module."""
    with LocalCluster(n_workers=2, env=cluster_env()) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    """A ``Client`` of the module's cluster (closed after the module's tests)."""
    with Client(cluster, timeout=60) as c:
        yield c
