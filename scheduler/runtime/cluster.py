"""A scheduler and N worker processes on this host, on loopback.

Rules: every process is started by us, watched by PID, and told who its parent is, so it
exits by itself if we die. ``close()`` asks the scheduler to shut down, then waits a bounded
time, then terminates and finally kills the processes we started (and only those).
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from typing import IO, Any

from .comm import LOOPBACK

__all__ = ["LocalCluster"]


def _read_address(stream: IO[str], timeout: float) -> str:
    box: queue.Queue[str] = queue.Queue()

    def reader() -> None:
        for line in stream:
            if line.startswith("ADDRESS "):
                box.put(line.split(None, 1)[1].strip())
                return
        box.put("")

    threading.Thread(target=reader, daemon=True).start()
    try:
        address = box.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"the scheduler did not report its address within {timeout} s"
                           ) from None
    if not address:
        raise RuntimeError("the scheduler exited before reporting its address")
    return address


class LocalCluster:
    """``with LocalCluster(n_workers=2) as cluster, Client(cluster.address) as c: ...``"""

    def __init__(self, n_workers: int = 2, nthreads: int = 1, *, host: str = LOOPBACK,
                 record: bool = True, auth_token: str | None = None,
                 heartbeat_timeout: float = 30.0, start_timeout: float = 60.0,
                 env: dict[str, str] | None = None) -> None:
        if n_workers < 1:
            raise ValueError(f"a cluster needs at least one worker, got n_workers={n_workers}")
        if nthreads < 1:
            raise ValueError(f"workers need at least one thread, got nthreads={nthreads}")
        self.n_workers = n_workers
        self.nthreads = nthreads
        self.record = record
        self.auth_token = auth_token
        self.scheduler: subprocess.Popen[str] | None = None
        self.workers: list[subprocess.Popen[str]] = []
        self.address = ""
        self._env = {**os.environ, **(env or {})}
        if auth_token:
            self._env["STAGECOST_AUTH_TOKEN"] = auth_token
        try:
            self._start(host, heartbeat_timeout, start_timeout)
        except BaseException:
            self.close()
            raise

    def _start(self, host: str, heartbeat_timeout: float, start_timeout: float) -> None:
        me = str(os.getpid())
        common = ["--parent-pid", me] + ([] if self.record else ["--no-record"])
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "scheduler.runtime.scheduler_server", "--host", host,
             "--port", "0", "--heartbeat-timeout", str(heartbeat_timeout), *common],
            stdout=subprocess.PIPE, text=True, env=self._env)
        assert self.scheduler.stdout is not None
        self.address = _read_address(self.scheduler.stdout, start_timeout)
        for i in range(self.n_workers):
            self.add_worker(name=f"worker-{i}")
        self.wait_for_workers(self.n_workers, start_timeout)

    def add_worker(self, name: str | None = None) -> subprocess.Popen[str]:
        """Start one more worker process (also used to replace a killed one)."""
        me = str(os.getpid())
        proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler.runtime.worker", self.address,
             "--nthreads", str(self.nthreads), "--parent-pid", me,
             "--name", name or f"worker-{len(self.workers)}",
             *([] if self.record else ["--no-record"])],
            text=True, env=self._env)
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, n: int, timeout: float = 60.0) -> None:
        from .client import Client

        with Client(self.address, name="cluster-probe", record=False,
                    auth_token=self.auth_token) as c:
            c.wait_for_workers(n, timeout)

    @property
    def pids(self) -> dict[str, int]:
        out = {"scheduler": self.scheduler.pid} if self.scheduler else {}
        out.update({f"worker-{i}": p.pid for i, p in enumerate(self.workers)})
        return out

    def close(self, timeout: float = 10.0) -> None:
        procs: list[subprocess.Popen[Any]] = [p for p in [self.scheduler, *self.workers] if p]
        if self.scheduler is not None and self.scheduler.poll() is None and self.address:
            with contextlib.suppress(Exception):
                from .client import Client

                Client(self.address, name="cluster-close", record=False, timeout=5,
                       auth_token=self.auth_token).shutdown()
        deadline = time.monotonic() + timeout
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(3)
        if self.scheduler is not None and self.scheduler.stdout is not None:
            self.scheduler.stdout.close()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalCluster({self.address!r}, workers={self.n_workers})"
