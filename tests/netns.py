"""Hosts made of Linux network namespaces, for tests of the reference system across a network.

``Hosts(["sched", "w0", "w1", "client"])`` makes one network namespace per name, each with
its own address (``10.213.0.1``, ``.2``, ...; on ``eth0``, nowhere else: the test process's
namespace has none of them), all joined by veth pairs to a bridge that lives in one more
namespace of its own. ``popen(name, argv)`` starts a process inside a host, under the host's
own hostname (a UTS namespace of its own), so that processes on different hosts have
different clock identities and estimate their clock offsets as across real machines.
``close()`` kills the processes it started (by PID) and deletes every namespace (which
deletes the veth pairs with them). Needs root and ``ip`` / ``unshare``: ``unavailable()``
says why not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from typing import Any

__all__ = ["Hosts", "unavailable"]

SUBNET = "10.213.0"


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"network namespaces need the {tool!r} command, which is not installed"
    probe = f"sc{os.getpid()}-probe"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                       timeout=10)
    if r.returncode:
        return f"'ip netns add' failed here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if r.returncode:
        raise RuntimeError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")


class Hosts:
    def __init__(self, names: list[str], tag: str = "") -> None:
        self.prefix = f"sc{os.getpid()}{tag}"  # ``tag`` tells apart sets that live at once
        self.bridge = f"{self.prefix}-br"
        self.names = list(names)
        self.address = {n: f"{SUBNET}.{i + 1}" for i, n in enumerate(self.names)}
        self.procs: list[subprocess.Popen[Any]] = []
        self._made: list[str] = []
        try:
            self._make()
        except BaseException:
            self.close()
            raise

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def _make(self) -> None:
        _ip("netns", "add", self.bridge)
        self._made.append(self.bridge)
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for i, name in enumerate(self.names):
            ns = self.ns(name)
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}",
                "netns", self.bridge)
            _ip("-n", ns, "addr", "add", f"{self.address[name]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.bridge, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", self.bridge, "link", "set", f"p{i}", "up")

    def popen(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` on host ``name`` with hostname ``stagecost-<name>``; the process
        keeps the PID of the ``Popen`` (each wrapper execs the next)."""
        cmd = ["ip", "netns", "exec", self.ns(name), "unshare", "--uts", "sh", "-c",
               'hostname "$0" && exec "$@"', f"stagecost-{name}", *argv]
        p = subprocess.Popen(cmd, **kwargs)
        self.procs.append(p)
        return p

    def run(self, name: str, argv: list[str], timeout: float, **kwargs: Any
            ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on host ``name`` to its end (killed after ``timeout`` seconds)."""
        p = self.popen(name, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       **kwargs)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate(timeout=10)
            raise AssertionError(f"{argv[:3]} on {name} did not end within {timeout} s; "
                                 f"stderr: {err[-2000:]}") from None
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self._made.clear()

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
