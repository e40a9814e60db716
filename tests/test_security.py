"""Untrusted bytes and access: the scheduler never unpickles what a client sends, and an auth
token keeps strangers out.

The rule under test (DESIGN.md, "Security rule"): functions, arguments and errors travel as
opaque bytes; only workers (which run the client's code anyway) and the client (which trusts
its workers) open them. The tests poison every bytes field a client controls with a pickle
whose loading would create a file (``Touch``: ``__reduce__`` -> ``Path.touch``), in all three
graph encodings, and check that no such file appears when only the scheduler reads them:

- in this process, a ``SchedulerServer`` on real loopback sockets with ``pickle`` and
  ``cloudpickle``'s loaders patched to raise (and an audit hook on ``pickle.find_class``):
  the poisoned graphs are *accepted*, a hand-driven fake worker receives the client's bytes
  untouched, and a poisoned error blob it reports reaches the client untouched;
- on a real ``LocalCluster``: poisoned graphs that the scheduler rejects (a cycle), so no
  worker ever receives them; and a task error whose pickle records the process that opens it
  is opened by the client only.

Access: with ``auth_token`` set, clients and workers without the right token are refused at
connect, before the scheduler processes anything they send; workers' data ports ask for the
token too; binding a non-loopback address without a token prints a warning.
"""

from __future__ import annotations

import _pickle
import contextlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import cloudpickle
import msgpack
import numpy as np
import pytest

from scheduler import Client, LocalCluster
from scheduler.graph.keys import ExplicitKeys, Key, RegularKeys
from scheduler.graph.layers import LayerGraph, Materialized, blockwise
from scheduler.graph.lowgraph import TaskGraph, TaskGroup
from scheduler.graph.task import DepSlot, IndexSlot, Ref, Task
from scheduler.runtime.comm import TOKEN_ENV
from scheduler.runtime.messages import pack
from scheduler.wire.encodings import ENCODINGS, encode_graph
from tests.test_bad_input import InProcessScheduler, RawPeer

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120.0  # a hang guard for one graph, never a speed check
TOKEN = "stagecost-test-token-7f3a"


def cluster_env() -> dict[str, str]:
    """Workers must import this module's task functions."""
    current = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(REPO), current] if current else [str(REPO)])}


def env_without_token() -> dict[str, str]:
    env = {**os.environ, **cluster_env()}
    env.pop(TOKEN_ENV, None)
    return env


# --- poison --------------------------------------------------------------------------------

class Touch:
    """Unpickling this creates the file ``path``: the evidence that someone opened it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return Path.touch, (self.path,)


def poison(path: Path) -> bytes:
    return pickle.dumps(Touch(path))


def record_opener(path: str) -> RuntimeError:
    """Called when a poisoned error is unpickled: appends the opening process's pid."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return RuntimeError(f"a poisoned error was opened by process {os.getpid()}")


class PoisonedError(Exception):
    """A task error whose pickle, when loaded, records which process loaded it."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return record_opener, (self.path,)


def raise_poisoned(path: str) -> None:
    raise PoisonedError(path)


def inc(x: int) -> int:
    return x + 1


def sample_graph(prefix: str, cycle: bool) -> TaskGraph:
    """An explicit group (``a``, ``b``; ``a <-> b`` when ``cycle``) and a regular group of 3,
    built without validation (a hostile client skips the checks)."""
    keys = ExplicitKeys([f"{prefix}-a", f"{prefix}-b"])
    if cycle:
        explicit = TaskGroup(keys, specs=[Task(inc, DepSlot(0)), Task(inc, DepSlot(0))],
                             indptr=np.asarray([0, 1, 2]), indices=np.asarray([1, 0]))
    else:
        explicit = TaskGroup(keys, specs=[Task(inc, 1), Task(inc, DepSlot(0))],
                             indptr=np.asarray([0, 0, 1]), indices=np.asarray([0]))
    regular = TaskGroup(RegularKeys(f"{prefix}-r", (3,)), template=Task(inc, IndexSlot(0)),
                        indptr=np.zeros(4, dtype=np.int64), indices=np.zeros(0, np.int64))
    return TaskGraph([explicit, regular], validate=False)


def sample_layers(prefix: str, cycle: bool) -> LayerGraph:
    a, b = f"{prefix}-a", f"{prefix}-b"
    tasks: dict[Key, Any] = {a: Task(inc, Ref(b)) if cycle else Task(inc, 1),
                             b: Task(inc, Ref(a))}
    return LayerGraph([Materialized(f"{prefix}-m", tasks),
                       blockwise(f"{prefix}-r", (3,), inc, IndexSlot(0))])


def poisoned_frames(encoding: str, evidence: Path, cycle: bool
                    ) -> tuple[list[bytes], list[int], list[bytes]]:
    """(frames of a graph message, output ids, every poison put in) for ``encoding``, with
    every bytes value of the header and the function table frame replaced by a poison that
    would create its own file under ``evidence``."""
    prefix = f"{encoding}-{'cyc' if cycle else 'ok'}-{uuid.uuid4().hex[:6]}"
    if encoding == "layers":
        frames = [bytes(f) for f in encode_graph(sample_layers(prefix, cycle), "layers",
                                                 outputs=[f"{prefix}-m", f"{prefix}-r"])]
    else:
        frames = [bytes(f) for f in encode_graph(sample_graph(prefix, cycle), encoding)]
    planted: list[bytes] = []

    def plant(where: str) -> bytes:
        blob = poison(evidence / f"{encoding}-{where}-{len(planted)}")
        planted.append(blob)
        return blob

    def walk(value: Any, where: str) -> Any:
        if isinstance(value, bytes):
            return plant(where)
        if isinstance(value, list):
            return [walk(v, where) for v in value]
        if isinstance(value, dict):
            return {k: walk(v, str(k)) for k, v in value.items()}
        return value

    header = walk(msgpack.unpackb(frames[0], raw=False), "header")
    out = [msgpack.packb(header, use_bin_type=True)]
    if encoding in ("compact", "layers"):
        out.append(plant("function-table"))
        out.extend(frames[2:])
    assert len(planted) >= 2, "nothing was poisoned"
    return out, [0, 1], planted


FORBIDDEN = [(pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (_pickle, "loads"),
             (_pickle, "load"), (_pickle, "Unpickler"), (cloudpickle, "loads"),
             (cloudpickle, "load")]


class UnpicklingWatch:
    """While active: every call of a patched loader is recorded (and refused), and so is
    every class lookup an unpickler makes (audit event ``pickle.find_class``, which also
    catches unpicklers created before the patch)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.active = False

    def refuse(self, name: str) -> Any:
        def refused(*args: Any, **kwargs: Any) -> Any:
            if self.active:
                self.seen.append(f"{name} called")
            raise AssertionError(f"{name} was called while the scheduler held client bytes")

        return refused

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if self.active and event == "pickle.find_class":
            self.seen.append(f"find_class{args!r}")


_WATCH = UnpicklingWatch()
sys.addaudithook(_WATCH.audit)  # audit hooks cannot be removed; this one is off by default


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> Iterator[UnpicklingWatch]:
    for module, name in FORBIDDEN:
        monkeypatch.setattr(module, name, _WATCH.refuse(f"{module.__name__}.{name}"))
    _WATCH.seen.clear()
    _WATCH.active = True
    try:
        yield _WATCH
    finally:
        _WATCH.active = False


# --- the scheduler never unpickles: in process -------------------------------------------------

def collect_as_fake_worker(worker: RawPeer, erring: set[int], error_blob: bytes
                           ) -> tuple[list[bytes], set[int]]:
    """Act as a worker until the scheduler has nothing more to send: report every task
    received as finished (so that dependents are sent too), except ids in ``erring``, which
    are reported as failed with ``error_blob``. Returns every blob received and every task
    id received."""
    blobs: list[bytes] = []
    ids: set[int] = set()
    worker.sock.settimeout(1.5)
    while True:
        try:
            msg = worker.recv()
        except TimeoutError:
            return blobs, ids
        if msg is None:
            return blobs, ids
        blobs.extend(bytes(b) for b in msg.blobs)
        if msg.op == "compute":
            got = msg.array("ids").tolist()
            ids.update(got)
            done = [i for i in got if i not in erring]
            for i in got:
                if i in erring:
                    worker.send("erred", {"id": i, "text": "Traceback: poisoned"},
                                blobs=[error_blob])
            if done:
                worker.send("finished", {}, {"ids": np.asarray(done, dtype=np.int64)})


def test_scheduler_accepts_and_forwards_poisoned_graphs_without_unpickling(
        tmp_path: Path, no_unpickling: UnpicklingWatch) -> None:
    """A scheduler in this process, with every unpickler patched to refuse: a client sends
    one graph per encoding in which every bytes field (function tables, templates, per-task
    specs) is a file-creating pickle. All are decoded and accepted. A fake worker then joins:
    it receives every one of those blobs byte for byte, and reports one task as failed with
    a poisoned error blob, which reaches the client byte for byte. Nothing was unpickled and
    no evidence file exists."""
    planted: list[bytes] = []
    error_blob = poison(tmp_path / "error-blob")
    with InProcessScheduler() as sched, RawPeer(sched.address) as client:
        client.hello_client("poisoner")
        for encoding in ENCODINGS:
            frames, outputs, blobs = poisoned_frames(encoding, tmp_path, cycle=False)
            planted += blobs
            reply = client.send_graph(frames, outputs, encoding=encoding)
            assert reply is not None and reply.op == "graph-accepted", (encoding, reply)
        assert sched.info()["graphs"] == len(ENCODINGS)

        with RawPeer(sched.address) as worker:
            worker.send("hello-worker", {"nthreads": 1, "address": "tcp://127.0.0.1:9",
                                         "name": "fake-worker"})
            welcome = worker.recv()
            assert welcome is not None and welcome.op == "welcome", welcome
            # a task nothing depends on fails (the first regular task of the first graph),
            # so that every other task is still sent
            erring = {2}
            received, ids = collect_as_fake_worker(worker, erring, error_blob)
        assert 2 in ids
        missing = [b for b in planted if b not in received]
        assert not missing, f"{len(missing)} of {len(planted)} client blobs did not reach " \
                            f"the worker unchanged"
        erred = client.recv_op("erred")
        assert erred is not None and [bytes(b) for b in erred.blobs] == [error_blob]
        assert not sched.unhandled, sched.unhandled
    assert no_unpickling.seen == []
    assert list(tmp_path.iterdir()) == []


# --- the scheduler never unpickles: a real cluster ------------------------------------------

@pytest.fixture(scope="module")
def plain_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=2, env=cluster_env()) as c:
        yield c


@pytest.mark.cluster
def test_poisoned_graphs_rejected_by_the_scheduler_open_nothing(tmp_path: Path,
                                                                plain_cluster: LocalCluster
                                                                ) -> None:
    """On a real cluster, one poisoned graph per encoding whose tasks form a cycle: the
    scheduler decodes each, rejects it naming the cycle, and no worker ever receives it. No
    evidence file appears (so the scheduler process opened none of the poisons), and the
    cluster runs a normal graph afterwards."""
    with RawPeer(plain_cluster.address) as client:
        client.hello_client("poisoner")
        for encoding in ENCODINGS:
            frames, outputs, _ = poisoned_frames(encoding, tmp_path, cycle=True)
            reply = client.send_graph(frames, outputs, encoding=encoding)
            assert reply is not None and reply.op == "graph-rejected", (encoding, reply)
            assert "cycle" in reply["reason"]
    with Client(plain_cluster, name="after", timeout=60) as c:
        graph = TaskGraph.from_dict({"sec-ok": Task(inc, 41)})
        assert c.compute(graph, ["sec-ok"], timeout=TIMEOUT) == {"sec-ok": 42}
        assert c.info()["graphs"] in (0, 1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.cluster
def test_a_poisoned_task_error_is_opened_by_the_client_only(tmp_path: Path,
                                                            plain_cluster: LocalCluster
                                                            ) -> None:
    """A task raises an error whose pickle, when loaded, appends the loading process's pid
    to a file. The worker pickles it, the scheduler forwards the blob, the client opens it
    (it trusts its workers): the file names this test process, once, and never the
    scheduler."""
    evidence = tmp_path / "opened-by"
    graph = TaskGraph.from_dict({"poisoned-error": Task(raise_poisoned, str(evidence))})
    with Client(plain_cluster, name="trusting", timeout=60) as c, \
            pytest.raises(RuntimeError, match="poisoned error was opened by process"):
        c.compute(graph, ["poisoned-error"], timeout=TIMEOUT)
    openers = evidence.read_text().split()
    assert openers == [str(os.getpid())]
    assert str(plain_cluster.pids["scheduler"]) not in openers


# --- access: the auth token ----------------------------------------------------------------

@pytest.fixture(scope="module")
def token_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=2, auth_token=TOKEN, env=cluster_env()) as c:
        yield c


@pytest.fixture
def no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def state_of(cluster: LocalCluster) -> dict[str, Any]:
    with Client(cluster, name="auditor", auth_token=TOKEN, timeout=30) as c:
        info = c.info()
    return {k: info[k] for k in ("workers", "tasks", "graphs", "threads")}


@pytest.mark.cluster
@pytest.mark.parametrize("token", [None, "", "wrong-token", TOKEN + "x", TOKEN[:-1]],
                         ids=["none", "empty", "wrong", "longer", "shorter"])
def test_client_without_the_right_token_is_refused_at_connect(
        token_cluster: LocalCluster, no_token_in_env: None, token: str | None) -> None:
    """A client with no, an empty or a wrong token gets ConnectionRefusedError with a clear
    message, and the scheduler's state is what it was."""
    before = state_of(token_cluster)
    with pytest.raises(ConnectionRefusedError,
                       match="refused this client: authentication failed: wrong or missing"):
        Client(token_cluster, auth_token=token, timeout=30)
    assert state_of(token_cluster) == before


@pytest.mark.cluster
def test_client_with_the_token_works_and_the_environment_variable_is_read(
        token_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = TaskGraph.from_dict({"tok-a": Task(inc, 1), "tok-b": Task(inc, Ref("tok-a"))})
    with Client(token_cluster, auth_token=TOKEN, timeout=30) as c:
        assert c.compute(graph, ["tok-b"], timeout=TIMEOUT) == {"tok-b": 3}
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with Client(token_cluster, timeout=30) as c:
        assert c.compute(graph, ["tok-b"], timeout=TIMEOUT) == {"tok-b": 3}


@pytest.mark.cluster
def test_messages_pipelined_after_a_refused_greeting_are_never_processed(
        token_cluster: LocalCluster, tmp_path: Path) -> None:
    """A stranger writes a greeting with a wrong token and, in the same write, a (poisoned)
    graph and an ``info`` request. The only answer is the refusal; the connection is then
    closed, the graph never reached the scheduler's state, and nothing was opened."""
    frames, outputs, _ = poisoned_frames("compact", tmp_path, cycle=False)
    before = state_of(token_cluster)
    with RawPeer(token_cluster.address) as stranger:
        stranger.send_many(
            pack("hello-client", {"name": "stranger", "token": "guess"}),
            pack("graph", {"graph_id": "sneaky"}, {"outputs": np.asarray(outputs)}, frames),
            pack("info"))
        replies = []
        while (msg := stranger.recv()) is not None:
            replies.append(msg)
    assert [m.op for m in replies] == ["error"]
    assert "authentication failed" in replies[0]["reason"]
    assert state_of(token_cluster) == before
    assert list(tmp_path.iterdir()) == []


def _run_worker(address: str, extra: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-m", "scheduler.runtime.worker", address,
                             "--name", "intruder", "--parent-pid", str(os.getpid()), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    return proc.returncode, err


@pytest.mark.cluster
@pytest.mark.parametrize("extra", [[], ["--auth-token", "wrong-token"]],
                         ids=["no-token", "wrong-token"])
def test_worker_without_the_token_cannot_join(token_cluster: LocalCluster,
                                              extra: list[str]) -> None:
    """A worker process started without the token (or with a wrong one) is refused: it
    exits with status 1 saying why, and the scheduler still counts its two workers."""
    before = state_of(token_cluster)
    code, err = _run_worker(token_cluster.address, extra, env_without_token())
    assert code == 1, err
    assert "the scheduler refused this worker: authentication failed" in err
    assert state_of(token_cluster) == before


@pytest.mark.cluster
def test_workers_data_ports_ask_for_the_token_too(token_cluster: LocalCluster) -> None:
    """A stranger connecting to a worker's own port (where results are served) without the
    token is refused before any ``get-data``; with the token the same request is served."""
    with Client(token_cluster, auth_token=TOKEN, timeout=30) as c:
        addresses = list(c.peers.values())
    assert len(addresses) == 2
    for address in addresses:
        with RawPeer(address) as stranger:
            stranger.send_many(pack("hello-peer", {"name": "stranger"}),
                               pack("get-data", {}, {"ids": np.arange(3, dtype=np.int64)}))
            reply = stranger.recv()
            assert reply is not None and reply.op == "error", reply
            assert "authentication failed" in reply["reason"]
            assert stranger.closed_by_peer()
        with RawPeer(address) as friend:
            friend.send_many(pack("hello-peer", {"name": "friend", "token": TOKEN}),
                             pack("get-data", {}, {"ids": np.arange(3, dtype=np.int64)}))
            reply = friend.recv()
            assert reply is not None and reply.op == "data", reply


@pytest.mark.parametrize(("server_token", "client_token", "expected"), [
    ("s3cret", "pässwort", "error"),
    ("pässwort", "pässwort", "welcome"),
], ids=["non-ascii-guess", "non-ascii-token"])
def test_non_ascii_tokens_are_compared_not_crashed_on(server_token: str, client_token: str,
                                                      expected: str) -> None:
    with InProcessScheduler(auth_token=server_token) as sched:
        with RawPeer(sched.address) as peer:
            peer.send("hello-client", {"name": "unicode", "token": client_token})
            reply = peer.recv()
        assert reply is not None, f"no answer; the server logged {sched.unhandled}"
        assert reply.op == expected, reply
        assert not sched.unhandled, sched.unhandled


# --- binding beyond loopback ---------------------------------------------------------------

def _first_line(stream: IO[str], timeout: float) -> str:
    box: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: box.put(stream.readline()), daemon=True).start()
    try:
        return box.get(timeout=timeout)
    except queue.Empty:
        return ""


@pytest.mark.cluster
@pytest.mark.parametrize(("host", "token", "warns"), [
    ("0.0.0.0", None, True),
    ("0.0.0.0", TOKEN, False),
    ("127.0.0.1", None, False),
], ids=["all-interfaces-no-token", "all-interfaces-token", "loopback-no-token"])
def test_binding_beyond_loopback_without_a_token_warns(host: str, token: str | None,
                                                       warns: bool) -> None:
    """``stagecost scheduler --host 0.0.0.0`` without a token prints a warning that anyone who
    can reach it can run code on its workers; with a token (here from the environment), or
    on loopback, it does not. The process is started here and terminated by PID."""
    env = env_without_token()
    if token:
        env[TOKEN_ENV] = token
    proc = subprocess.Popen([sys.executable, "-m", "scheduler.runtime.scheduler_server",
                             "--host", host, "--port", "0", "--parent-pid", str(os.getpid())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        line = _first_line(proc.stdout, 60)
        assert line.startswith("ADDRESS tcp://"), line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=10)
    warning = f"warning: the scheduler listens on {host} without an auth token"
    assert (warning in err) is warns, err
    if warns:
        assert "anyone who can reach it can run code on its workers" in err
        assert TOKEN_ENV in err
