"""A headless Chromium that opens a page and tells what a person would see: a screenshot,
whether every image loaded and decoded, and the console's errors.

It speaks the DevTools protocol over a pipe (``--remote-debugging-pipe``: commands on the
browser's fd 3, answers on its fd 4, JSON messages ended by a NUL byte), so it needs no
network port, no websocket library and no internet. The browser runs in its own session with
a fresh profile folder; ``close`` (also on error) ends it, and every wait has a deadline.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PageCheck", "check_page", "find_chromium"]

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--remote-debugging-pipe")

# Every image of the page: loaded, decoded (``decode()`` rejects a broken one) and its size.
_IMAGES_JS = """
Promise.all(Array.from(document.images).map(img => img.decode().then(
    () => ({src: img.src.slice(0, 60), ok: true, width: img.naturalWidth,
            height: img.naturalHeight, complete: img.complete}),
    err => ({src: img.src.slice(0, 60), ok: false, error: String(err), width: 0,
             height: 0, complete: img.complete}))))
"""


def find_chromium() -> str | None:
    """The Chromium to use: ``$STAGECOST_CHROMIUM``, else the first of chromium,
    chromium-browser, google-chrome on PATH; None if there is none."""
    env = os.environ.get("STAGECOST_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageCheck:
    """What the browser saw."""

    screenshot_png: bytes = b""
    images: list[dict[str, Any]] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    text: str = ""
    title: str = ""


class _Pipe:
    def __init__(self, chromium: str, profile: Path) -> None:
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        # The browser expects the pipe on fds 3 and 4: bash puts them there (dash takes one-digit
        # fds only).
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, chromium, *FLAGS, f"--user-data-dir={profile}",
             "--window-size=1280,1600", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            ev = self._read(deadline)
            if ev.get("method") == method:
                return ev
            self.events.append(ev)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the browser did not answer in time")
            ready, _, _ = select.select([self.from_browser], [], [], left)
            if ready:
                chunk = os.read(self.from_browser, 1 << 20)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace") \
                        if self.proc.stderr else ""
                    raise RuntimeError(f"the browser closed the pipe; its stderr:\n{err}")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return dict(json.loads(raw))

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                    self.send("Browser.close", timeout=5.0)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5.0)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the session started above
                self.proc.wait(5.0)
            for fd in (self.to_browser, self.from_browser):
                with contextlib.suppress(OSError):
                    os.close(fd)
            if self.proc.stderr:
                self.proc.stderr.close()


def _console_errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for ev in events:
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            out.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console." + str(p.get("type")) + ": " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            out.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}".strip())
    return out


def check_page(chromium: str, page: Path, timeout: float = 60.0) -> PageCheck:
    """Open ``page`` (a local HTML file) and report what the browser saw."""
    with tempfile.TemporaryDirectory(prefix="stagecost-chromium-") as profile:
        pipe = _Pipe(chromium, Path(profile))
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"},
                               timeout=timeout)["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target,
                                                          "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": 1280, "height": 1600, "deviceScaleFactor": 1,
                       "mobile": False}, session=session)
            pipe.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
            pipe.wait_event("Page.loadEventFired", timeout)
            images = pipe.send("Runtime.evaluate",
                               {"expression": _IMAGES_JS, "awaitPromise": True,
                                "returnByValue": True}, session=session, timeout=timeout)
            facts = pipe.send("Runtime.evaluate",
                              {"expression": "[document.title, document.body.innerText]",
                               "returnByValue": True}, session=session)
            shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session=session,
                             timeout=timeout)
            title, text = facts["result"]["value"]
            return PageCheck(screenshot_png=base64.b64decode(shot["data"]),
                             images=list(images["result"]["value"]),
                             console_errors=_console_errors(pipe.events),
                             text=str(text), title=str(title))
        finally:
            pipe.close()
