"""Several hosts for real: the scheduler, each worker and the client in network namespaces of
their own (``tests/netns.py``), joined by veth pairs, with addresses that exist only inside
those namespaces; and the ``dask-distributed`` backend against a cluster started with Dask's
own ``dask scheduler`` / ``dask worker`` commands.

What is checked across the namespaces: graphs run and give the right values; a dependency
computed on one worker is read by a task on the other (the only way between them is the
network); the client's clock offset estimate (its hosts have different hostnames, so their
clocks count as different ones) is within half a round trip of the truth, which is 0 on one
kernel, and worker spans land inside the run on the client's clock; the auth token keeps out
a client, a worker and a peer without it on a non-loopback address; a scheduler bound there
without a token warns.

Rules: every process is started here, bounded in time, and killed by PID; the namespaces are
deleted at the end. Skipped, saying why, without root, ``ip`` or ``unshare``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cluster_env
from tests.netns import Hosts, unavailable

pytestmark = pytest.mark.cluster

TOKEN = "hosts-test-token-31c9"
PORT = 8786
WHY = unavailable()
needs_netns = pytest.mark.skipif(WHY is not None, reason=WHY or "")


# --- task functions (workers import them by reference) ----------------------------------------

def where(delay: float) -> str:
    """The host this task ran on (each worker process is told its host's name)."""
    time.sleep(delay)
    return os.environ.get("STAGECOST_TEST_HOST", "?")


def pair(x: str, y: str) -> tuple[str, str, str]:
    return x, y, where(0.0)


# --- the cluster across namespaces ------------------------------------------------------------

def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    """Hosts ``sched``, ``w0``, ``w1`` (a scheduler with the token, one worker each),
    ``client`` (clients run there) and ``other`` (for processes meant to be refused)."""
    if WHY is not None:
        pytest.skip(WHY)
    with Hosts(["sched", "w0", "w1", "client", "other"]) as h:
        env = {**os.environ, **cluster_env()}
        env.pop("STAGECOST_AUTH_TOKEN", None)
        sched = h.popen("sched", _python(
            "-m", "scheduler.runtime.scheduler_server", "--host", h.address["sched"],
            "--port", str(PORT), "--auth-token", TOKEN, "--no-record",
            "--parent-pid", str(os.getpid())), stdout=subprocess.PIPE, text=True, env=env)
        assert sched.stdout is not None
        line = sched.stdout.readline()
        assert line.startswith("ADDRESS "), line
        for name in ("w0", "w1"):
            h.popen(name, _python(
                "-m", "scheduler.runtime.worker", scheduler_address(h), "--host",
                h.address[name], "--auth-token", TOKEN, "--name", name,
                "--parent-pid", str(os.getpid())),
                env={**env, "STAGECOST_TEST_HOST": name})
        yield h


def scheduler_address(h: Hosts) -> str:
    return f"tcp://{h.address['sched']}:{PORT}"


def on_client_host(h: Hosts, script: str, *args: str, timeout: float = 240) -> Any:
    """Run ``script`` on host ``client``; return the JSON it prints last."""
    env = {**os.environ, **cluster_env()}
    env.pop("STAGECOST_AUTH_TOKEN", None)
    r = h.run("client", _python("-c", textwrap.dedent(script), *args), timeout, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


_RUN_GRAPHS = """
    import json, sys
    from harness.workloads import build
    from scheduler import Client
    from scheduler.runtime.clocks import now_ns
    from tests.test_hosts import pair, where

    out = {}
    t0 = now_ns()
    client = Client(sys.argv[1], auth_token=sys.argv[2], timeout=60)
    out["connect_ns"] = now_ns() - t0
    out["offset_ns"] = client.offset_ns
    client.wait_for_workers(2, 60)
    # x keeps its worker busy for a second, so y goes to the other one; z reads both
    x = client.submit(where, 1.0, key="x")
    y = client.submit(where, 0.0, key="y")
    out["pair"] = client.submit(pair, x, y, key="z").result(120)
    client.spans(drain=True)
    for name in ("reduction", "shuffle", "elementwise"):
        w = build(name, 3000)
        t_submit = now_ns()
        got = client.compute(w.layers, w.outputs, encoding="layers", timeout=120)
        t_done = now_ns()
        out[name] = got == w.lower().execute(w.outputs)
    rows = [r for r in client.spans(drain=True) if r.role.startswith("worker")]
    out["worker_roles"] = sorted({r.role for r in rows})
    out["last_run"] = [t_submit, t_done]
    last = [r for r in rows if r.end_ns >= t_submit - out["connect_ns"]]
    out["span_range"] = [min(r.start_ns for r in last), max(r.end_ns for r in last)]
    client.close()
    print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def graphs_run(hosts: Hosts) -> dict[str, Any]:
    """What ``_RUN_GRAPHS`` reported, run once from the client host."""
    return on_client_host(hosts, _RUN_GRAPHS, scheduler_address(hosts), TOKEN)  # type: ignore[no-any-return]


@needs_netns
def test_graphs_run_across_hosts_and_move_dependencies_between_workers(
        graphs_run: dict[str, Any]) -> None:
    """From the client host: a task reads two results computed on the two worker hosts (one
    of them crossed between workers), and the reduction, shuffle and elementwise workloads
    (3,000 tasks, as layers) give the values of their in-process evaluation."""
    out = graphs_run
    x_host, y_host, z_host = out["pair"]
    assert {x_host, y_host} == {"w0", "w1"}  # each ran on its own host
    assert z_host in {"w0", "w1"}  # so one of them travelled from the other worker's host
    assert out["reduction"] and out["shuffle"] and out["elementwise"]
    assert out["worker_roles"] == ["worker-0", "worker-1"]


@needs_netns
def test_clock_offsets_are_estimated_between_hosts(graphs_run: dict[str, Any]) -> None:
    """The client's and the scheduler's hosts have different hostnames, so the client
    estimates the offset from its greeting's round trip instead of assuming a shared clock:
    the estimate is not exactly 0 and is at most half that round trip away from the true
    offset, which is 0 (one kernel). Worker spans of the last graph, shifted by the workers'
    own estimates and then the client's, start inside that run on the client's clock, within
    the same error (they may end after it: a worker still tidies up once the client has its
    result)."""
    out = graphs_run
    err = out["connect_ns"]
    assert out["offset_ns"] != 0
    assert abs(out["offset_ns"]) <= err / 2
    (t_submit, t_done), (first, last) = out["last_run"], out["span_range"]
    assert t_submit - err <= first <= t_done + err, (out, err)
    assert first <= last


_REFUSED = """
    import asyncio, json, sys
    import numpy as np
    from scheduler import Client
    from scheduler.runtime.comm import connect

    out = {}
    try:
        Client(sys.argv[1], timeout=30)
        out["client"] = "accepted"
    except ConnectionRefusedError as e:
        out["client"] = str(e)
    with Client(sys.argv[1], auth_token=sys.argv[2], timeout=30) as c:
        out["peers"] = sorted(c.peers.values())

    async def ask(address, hello):
        comm = await connect(address)
        comm.post_msg("hello-peer", hello)
        reply = await comm.request("get-data", {}, {"ids": np.zeros(1, dtype=np.int64)},
                                   timeout=30)
        await comm.close()
        return reply.op, reply.fields.get("reason", "")

    out["peer_without_token"] = asyncio.run(ask(out["peers"][0], {"name": "stranger"}))
    out["peer_with_token"] = asyncio.run(ask(out["peers"][0], {"name": "friend",
                                                               "token": sys.argv[2]}))
    print(json.dumps(out))
"""


@needs_netns
def test_the_auth_token_keeps_strangers_out_on_a_non_loopback_address(hosts: Hosts) -> None:
    """On the namespaces' addresses, with a token set: a client without it is refused, a
    worker without it cannot join, and a worker's peer server answers a ``get-data``
    without the token with an error (with it, with data); the worker addresses the client
    learns are the namespaces' own."""
    out = on_client_host(hosts, _REFUSED, scheduler_address(hosts), TOKEN)
    assert "authentication failed" in out["client"]
    assert out["peer_without_token"] == ["error", "authentication failed"]
    assert out["peer_with_token"][0] == "data"
    assert {p.rsplit(":", 1)[0] for p in out["peers"]} == {
        f"tcp://{hosts.address['w0']}", f"tcp://{hosts.address['w1']}"}
    env = {**os.environ, **cluster_env()}
    env.pop("STAGECOST_AUTH_TOKEN", None)
    r = hosts.run("other", _python("-m", "scheduler.runtime.worker", scheduler_address(hosts),
                                   "--host", hosts.address["other"]), 60, env=env)
    assert r.returncode == 1
    assert "the scheduler refused this worker: authentication failed" in r.stderr


@needs_netns
def test_a_scheduler_bound_beyond_loopback_without_a_token_warns(hosts: Hosts) -> None:
    env = {**os.environ, **cluster_env()}
    env.pop("STAGECOST_AUTH_TOKEN", None)
    r = hosts.run("other", ["timeout", "-s", "INT", "5", *_python(
        "-m", "scheduler.runtime.scheduler_server", "--host", hosts.address["other"],
        "--port", "0", "--no-record")], 60, env=env)
    assert f"the scheduler listens on {hosts.address['other']} without an auth token" \
        in r.stderr
    assert f"ADDRESS tcp://{hosts.address['other']}:" in r.stdout


# --- Dask's own cluster commands ---------------------------------------------------------------

def _dask_command() -> str | None:
    beside = Path(sys.executable).with_name("dask")
    return str(beside) if beside.exists() else shutil.which("dask")


DASK_COMMAND = _dask_command()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_dask_distributed_backend_against_a_cluster_of_dask_commands(tmp_path: Path) -> None:
    """``dask scheduler`` and two ``dask worker`` processes on loopback (Dask's own commands);
    ``stagecost run -b dask-distributed --scheduler-address`` measures the reduction on that
    cluster: the run succeeds, its runs are recorded as on an external cluster, and the
    cluster is still there afterwards (the run attached and detached)."""
    dask = DASK_COMMAND
    if dask is None:
        pytest.skip("Dask's 'dask' command is not installed next to this Python")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, **cluster_env(), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen(
                [dask, "worker", address,
                 "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                env=env, stderr=subprocess.DEVNULL))
        _wait_dask_workers(address, 2, 120)
        out = tmp_path / "run"
        r = subprocess.run(
            [sys.executable, "-m", "harness.cli", "run", "-w", "reduction", "-n", "2000",
             "-b", "dask-distributed", "--scheduler-address", address, "-r", "1",
             "--warmups", "0", "--no-store", "-o", str(out), "--timeout", "240"],
            capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        meta = json.loads((out / "meta.json").read_text())
        assert address in json.dumps(meta)
        runs = (out / "runs.csv").read_text()
        assert "dask-distributed" in runs and "reduction" in runs
        assert _wait_dask_workers(address, 2, 30) == 2  # attached and detached: still there
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


_DASK_WORKERS = """
    import json, sys
    from distributed import Client

    with Client(sys.argv[1], timeout="60s") as c:
        c.wait_for_workers(int(sys.argv[2]), timeout=120)
        print(json.dumps(sorted(c.scheduler_info()["workers"])))
"""


@pytest.mark.slow
@needs_netns
def test_dask_distributed_backend_against_dask_commands_on_hosts_of_their_own(
        tmp_path: Path) -> None:
    """The same across namespaces: ``dask scheduler`` on one host, a ``dask worker`` on each
    of two others, and ``stagecost run -b dask-distributed --scheduler-address`` on a fourth.
    The run succeeds, the workers it saw are at the namespaces' addresses (no loopback), and
    the cluster is still there afterwards."""
    dask = DASK_COMMAND
    if dask is None:
        pytest.skip("Dask's 'dask' command is not installed next to this Python")
    with Hosts(["dsched", "dw0", "dw1", "dclient"], tag="d") as h:
        env = {**os.environ, **cluster_env(), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
        address = f"tcp://{h.address['dsched']}:{PORT}"
        h.popen("dsched", [dask, "scheduler", "--host", h.address["dsched"], "--port",
                           str(PORT), "--no-dashboard"], env=env, stderr=subprocess.DEVNULL)
        for name in ("dw0", "dw1"):
            h.popen(name, [dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                           "--host", h.address[name]], env=env, stderr=subprocess.DEVNULL)
        script = textwrap.dedent(_DASK_WORKERS)
        seen = h.run("dclient", _python("-c", script, address, "2"), 180, env=env)
        assert seen.returncode == 0, seen.stderr[-3000:]
        workers = json.loads(seen.stdout.strip().splitlines()[-1])
        assert sorted(w.rsplit(":", 1)[0] for w in workers) == [
            f"tcp://{h.address['dw0']}", f"tcp://{h.address['dw1']}"]
        r = h.run("dclient", _python(
            "-m", "harness.cli", "run", "-w", "reduction", "-n", "2000", "-b",
            "dask-distributed", "--scheduler-address", address, "-r", "1", "--warmups", "0",
            "--no-store", "-o", str(tmp_path / "run"), "--timeout", "240"), 300, env=env,
            cwd=str(tmp_path))
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        runs = (tmp_path / "run" / "runs.csv").read_text()
        assert "dask-distributed" in runs and "reduction" in runs
        again = h.run("dclient", _python("-c", script, address, "2"), 120, env=env)
        assert again.returncode == 0 and json.loads(
            again.stdout.strip().splitlines()[-1]) == workers  # attached and detached


def _wait_dask_workers(address: str, n: int, timeout: float) -> int:
    from distributed import Client as DaskClient

    with DaskClient(address, timeout=f"{int(timeout)}s") as c:
        c.wait_for_workers(n, timeout=timeout)
        return len(c.scheduler_info()["workers"])
