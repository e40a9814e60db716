"""The public client API on loopback: Dask collections through ``client.get``, the nesting of
``get``'s results, futures, errors, and connection failures.

``dask.compute(x, scheduler=client.get)`` must equal ``x.compute(scheduler="sync")`` for
arrays, dataframes, delayed and bags. Tests that need processes share one 2-worker cluster
per module (``conftest.cluster``) and are marked ``cluster``; the connection-failure tests
start nothing.
"""

from __future__ import annotations

import socket
import threading

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from scheduler import Client, Future, LocalCluster
from scheduler.graph.errors import GraphError
from scheduler.runtime.client import RemoteTraceback

cluster_test = pytest.mark.cluster


# --- task functions (module level: workers import them by reference) -----------------------

def inc(x: int) -> int:
    return x + 1


def add(a: int, b: int = 0) -> int:
    return a + b


def total(parts: list[int]) -> int:
    return sum(parts)


def pick(mapping: dict[str, int], name: str) -> int:
    return mapping[name]


def fail(what: str) -> int:
    raise ValueError(f"stagecost client test: cannot handle {what!r}")


def twice_plus_one(block: np.ndarray) -> np.ndarray:
    return block * 2 + 1


def square(x: int) -> int:
    return x * x


def is_odd(x: int) -> bool:
    return x % 2 == 1


def mod7(x: int) -> int:
    return x % 7


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- Dask collections ----------------------------------------------------------------------

@cluster_test
def test_dask_array_sum(client: Client) -> None:
    x = (da.ones((400, 400), chunks=50) + 1).sum()
    (got,) = dask.compute(x, scheduler=client.get)
    assert got == x.compute(scheduler="sync") == 320_000.0


@cluster_test
def test_dask_array_map_blocks_and_reductions(client: Client) -> None:
    x = da.arange(20_000, chunks=1_000).reshape(100, 200).rechunk((25, 50))
    y = x.map_blocks(twice_plus_one, dtype=x.dtype)
    z = (y - y.mean(axis=0)).std(axis=1)
    got_y, got_z = dask.compute(y, z, scheduler=client.get)
    want_y, want_z = dask.compute(y, z, scheduler="sync")
    np.testing.assert_array_equal(got_y, want_y)
    np.testing.assert_array_equal(got_z, want_z)
    assert got_y.shape == (100, 200)


@cluster_test
def test_dask_array_map_blocks_with_a_lambda(client: Client) -> None:
    x = da.random.default_rng(0).random((300, 300), chunks=(100, 60))
    y = x.map_blocks(lambda b: np.sqrt(b) + b.sum(), dtype=float)
    got = y.compute(scheduler=client.get)
    np.testing.assert_array_equal(got, y.compute(scheduler="sync"))


@cluster_test
def test_dask_dataframe_groupby_sum(client: Client) -> None:
    pdf = pd.DataFrame({"g": np.arange(2_000) % 7, "v": np.arange(2_000, dtype=float),
                        "w": np.arange(2_000) % 3})
    ddf = dd.from_pandas(pdf, npartitions=8)
    by_g = ddf.groupby("g").v.sum()
    by_w = ddf[ddf.v > 100].groupby("w").agg({"v": "sum", "g": "max"})
    got_g, got_w = dask.compute(by_g, by_w, scheduler=client.get)
    want_g, want_w = dask.compute(by_g, by_w, scheduler="sync")
    pd.testing.assert_series_equal(got_g.sort_index(), want_g.sort_index())
    pd.testing.assert_frame_equal(got_w.sort_index(), want_w.sort_index())
    pd.testing.assert_series_equal(got_g.sort_index(), pdf.groupby("g").v.sum().sort_index())


@cluster_test
def test_dask_delayed(client: Client) -> None:
    leaves = [dask.delayed(inc)(i) for i in range(20)]
    pairs = [dask.delayed(add)(a, b=b) for a, b in zip(leaves[::2], leaves[1::2], strict=True)]
    tree = dask.delayed(total)(pairs)
    picked = dask.delayed(pick)({"t": tree, "first": leaves[0]}, "t")
    got = dask.compute(tree, picked, leaves[3], scheduler=client.get)
    assert got == dask.compute(tree, picked, leaves[3], scheduler="sync")
    assert got == (sum(range(1, 21)), sum(range(1, 21)), 4)


@cluster_test
def test_dask_bag(client: Client) -> None:
    b = db.from_sequence(range(1_000), npartitions=10)
    odd_squares = b.map(square).filter(is_odd).sum()
    freq = b.map(mod7).frequencies()
    folded = b.foldby(mod7, add, 0)
    got = dask.compute(odd_squares, freq, folded, b.map(inc), scheduler=client.get)
    want = dask.compute(odd_squares, freq, folded, b.map(inc), scheduler="sync")
    assert got[0] == want[0] == sum(x * x for x in range(1_000) if x % 2)
    assert sorted(got[1]) == sorted(want[1])
    assert sorted(got[2]) == sorted(want[2])
    assert got[3] == want[3] == list(range(1, 1_001))


@cluster_test
def test_dask_task_error_is_raised_with_the_remote_traceback(client: Client) -> None:
    bad = dask.delayed(fail)("dask input")
    with pytest.raises(ValueError, match="cannot handle 'dask input'") as info:
        dask.compute(dask.delayed(inc)(bad), scheduler=client.get)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "fail" in info.value.__cause__.text
    # and the client still works
    assert dask.compute(dask.delayed(inc)(1), scheduler=client.get) == (2,)


# --- client.get: Dask's custom-scheduler protocol ------------------------------------------
# (what get returns for every shape of keys, against Dask: tests/test_dask_keys.py)

GRAPH = {"a": 1, "b": (inc, "a"), ("x", 0): (add, "a", "b"), ("x", 1): (inc, ("x", 0)),
         "unused": (fail, "never run")}


@cluster_test
def test_get_of_an_unknown_key_raises(client: Client) -> None:
    with pytest.raises(GraphError, match="nope"):
        client.get(GRAPH, ["b", "nope"])


# --- futures -------------------------------------------------------------------------------

@cluster_test
def test_submit_result_and_futures_as_arguments(client: Client) -> None:
    f = client.submit(inc, 1)
    assert isinstance(f, Future)
    assert f.result(timeout=60) == 2
    g = client.submit(add, f, 10)
    h = client.submit(total, [f, g, 3])
    k = client.submit(pick, {"h": h, "f": f}, name="h")
    m = client.submit(add, f, b=g)
    n = client.submit(inc, 41, key="answer")
    assert n.key == "answer"
    assert client.gather([f, g, h, k, m, n], timeout=60) == [2, 12, 17, 17, 14, 42]
    assert client.gather([], timeout=60) == []


@cluster_test
def test_future_whose_task_raises_reraises(client: Client) -> None:
    bad = client.submit(fail, "future input")
    for _ in range(2):  # and again on a second call
        with pytest.raises(ValueError, match="cannot handle 'future input'") as info:
            bad.result(timeout=60)
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "fail" in cause.text and "cannot handle 'future input'" in cause.text
    good = client.submit(inc, 1)
    with pytest.raises(ValueError):
        client.gather([good, bad], timeout=60)
    assert good.result(timeout=60) == 2


@cluster_test
def test_future_depending_on_an_erred_future_raises(client: Client) -> None:
    bad = client.submit(fail, "upstream")
    with pytest.raises(ValueError):
        bad.result(timeout=60)  # the error is known to the scheduler from here on
    dependent = client.submit(inc, bad)
    with pytest.raises(ValueError, match="upstream"):
        dependent.result(timeout=5)


@cluster_test
def test_a_released_future_cannot_be_used_as_an_argument(client: Client) -> None:
    f = client.submit(inc, 1)
    assert f.result(timeout=60) == 2
    f.release()
    with pytest.raises(GraphError, match="does not hold"):
        client.submit(inc, f).result(timeout=60)


# --- connecting ----------------------------------------------------------------------------

@cluster_test
def test_client_accepts_a_cluster_or_its_address(cluster: LocalCluster) -> None:
    for target in (cluster, cluster.address):
        with Client(target, timeout=30) as c:
            assert c.address == cluster.address
            assert c.submit(inc, 1).result(timeout=60) == 2
            assert repr(c).endswith("open>")
        assert repr(c).endswith("closed>")


@cluster_test
def test_a_closed_client_says_so(cluster: LocalCluster) -> None:
    c = Client(cluster, timeout=30)
    c.close()
    c.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        c.submit(inc, 1)
    with pytest.raises(RuntimeError, match="closed"):
        c.get(GRAPH, "b")


def _client_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "stagecost-client")


def test_connecting_to_a_closed_port_raises_a_clear_error() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    before = _client_threads()
    with pytest.raises(ConnectionError) as info:
        Client(address, timeout=5)
    message = str(info.value)
    assert address in message
    assert "could not connect" in message
    assert _client_threads() == before  # the client's loop thread was stopped


@pytest.mark.parametrize("address", ["127.0.0.1:8786", "tcp://127.0.0.1", "tcp://:80",
                                     "tcp://127.0.0.1:notaport"])
def test_a_malformed_address_raises_value_error(address: str) -> None:
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        Client(address, timeout=5)
