"""Running ``py-spy record``: its argv from an options object, and a session that never hangs.

Rules of this module:

- ``PySpyOptions`` is the one frozen config; ``build_argv`` turns it into argv and nothing else
  does. Options are checked when built (a rate of 0 makes py-spy 0.4 spin forever, and a
  fractional duration makes it panic), so a mistake fails here, in the caller's words.
- ``py-spy`` is found next to ``sys.executable`` first (the one installed with this
  environment), then on ``PATH``; ``PySpyNotFound`` says how to install it.
- A ``ProfileSession`` starts py-spy in its own session (a Ctrl-C on the terminal reaches us,
  and we stop py-spy in order) with stdout/stderr going to files, so a chatty profiled command
  can never block it on a full pipe. Every wait has a timeout. Stopping sends SIGINT to the py-spy
  process we started (py-spy then writes its file, and kills a command it launched itself),
  then SIGTERM, then SIGKILL, each after a bounded wait, always by that process's PID.
- If the profiled process exits first, py-spy writes the file itself and exits; ``stop()`` then
  just collects the result.
- py-spy 0.4 prints its status on stdout, ``py-spy> ``-prefixed, e.g.::

      py-spy> Sampling process 100 times a second. Press Control-C to exit.
      py-spy> Stopped sampling because process exited
      py-spy> Wrote speedscope file to 'out.json'. Samples: 153 Errors: 0

  ("because Control-C pressed" after SIGINT; no "Stopped" line when ``--duration`` ends it).
  Failures go to stderr as ``Error: ...``. ``parse_pyspy_messages`` reads both streams.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

__all__ = [
    "FORMATS",
    "PySpyError",
    "PySpyMessages",
    "PySpyNotFound",
    "PySpyOptions",
    "ProfileResult",
    "ProfileSession",
    "build_argv",
    "find_pyspy",
    "parse_pyspy_messages",
    "pyspy_version",
]

FORMATS = ("speedscope", "raw", "flamegraph", "chrometrace")


class PySpyError(RuntimeError):
    """py-spy failed or could not be controlled; the message carries what it said."""


class PySpyNotFound(PySpyError, FileNotFoundError):
    """No ``py-spy`` executable: an environment problem, fixed by installing it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PySpyOptions:
    """Everything ``py-spy record`` is told, except what to profile (a PID or a command).

    ``duration`` is whole seconds (None: until stopped or the process exits). ``executable``
    overrides the search for ``py-spy``. ``extra_args`` go before the target, verbatim.
    """

    output: str | os.PathLike[str]
    format: str = "speedscope"
    rate: int = 100
    native: bool = False
    subprocesses: bool = False
    gil_only: bool = False
    idle: bool = False
    nonblocking: bool = False
    threads: bool = False
    full_filenames: bool = False
    duration: int | None = None
    extra_args: tuple[str, ...] = ()
    executable: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"PySpyOptions.format must be one of {FORMATS}, got {self.format!r}")
        if not isinstance(self.rate, int) or isinstance(self.rate, bool) or self.rate < 1:
            raise ValueError(f"PySpyOptions.rate must be a positive integer (samples per second), "
                             f"got {self.rate!r}")
        if self.duration is not None and (not isinstance(self.duration, int)
                                          or isinstance(self.duration, bool) or self.duration < 1):
            raise ValueError(f"PySpyOptions.duration must be None or whole seconds >= 1 (py-spy "
                             f"does not take fractions), got {self.duration!r}")
        if not os.fspath(self.output):
            raise ValueError("PySpyOptions.output must be a file path, got an empty one")
        object.__setattr__(self, "extra_args", tuple(self.extra_args))
        for a in self.extra_args:
            if not isinstance(a, str):
                raise TypeError(f"PySpyOptions.extra_args must be strings, got {a!r}")


def find_pyspy(executable: str | None = None) -> str:
    """The path of ``py-spy``: ``executable`` if given (a path or a name on PATH), else next
    to ``sys.executable``, else on ``PATH``. Raises ``PySpyNotFound``."""
    if executable is not None:
        found = shutil.which(executable)
        if found is None:
            raise PySpyNotFound(f"py-spy executable {executable!r} not found or not executable; "
                                "fix PySpyOptions.executable")
        return found
    name = "py-spy.exe" if os.name == "nt" else "py-spy"
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise PySpyNotFound("py-spy is not installed in this environment (looked next to "
                            f"{sys.executable} and on PATH); install it with "
                            "`python -m pip install py-spy`")
    return found


def pyspy_version(executable: str | None = None, timeout: float = 10.0) -> str | None:
    """``py-spy --version`` (e.g. ``"py-spy 0.4.3"``) for a run's metadata; None if it cannot
    be run or does not answer within ``timeout`` seconds."""
    try:
        done = subprocess.run([find_pyspy(executable), "--version"], capture_output=True,
                              text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired, PySpyNotFound):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def build_argv(options: PySpyOptions, pid: int | None = None,
               command: Sequence[str] | None = None) -> list[str]:
    """``py-spy record`` argv for ``options``, attached to ``pid`` or running ``command``
    (exactly one of them). Locates the executable (``PySpyNotFound`` if missing)."""
    if (pid is None) == (command is None):
        raise ValueError("build_argv needs exactly one of pid= (attach) or command= (run)")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0):
        raise ValueError(f"pid must be a positive integer, got {pid!r}")
    if command is not None:
        command = list(command)
        if not command or not all(isinstance(c, str) for c in command):
            raise ValueError(f"command must be a non-empty list of strings, got {command!r}")
    o = options
    argv = [find_pyspy(o.executable), "record", "--output", os.fspath(o.output),
            "--format", o.format, "--rate", str(o.rate)]
    if o.duration is not None:
        argv += ["--duration", str(o.duration)]
    for flag, on in (("--native", o.native), ("--subprocesses", o.subprocesses),
                     ("--gil", o.gil_only), ("--idle", o.idle), ("--nonblocking", o.nonblocking),
                     ("--threads", o.threads), ("--full-filenames", o.full_filenames)):
        if on:
            argv.append(flag)
    argv += o.extra_args
    if pid is not None:
        argv += ["--pid", str(pid)]
    else:
        assert command is not None
        argv += ["--", *command]
    return argv


# --- what py-spy says ----------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SAMPLES = re.compile(r"Samples: (\d+) Errors: (\d+)")
_STOPPED = re.compile(r"Stopped sampling because (.+?)\s*$", re.MULTILINE)
_READY = "Sampling process"


@dataclass(frozen=True, slots=True)
class PySpyMessages:
    """What py-spy printed about the run. Fields are None when the line was absent."""

    samples: int | None
    errors: int | None
    stop_reason: str | None
    error: str | None
    lines: tuple[str, ...]


def parse_pyspy_messages(stdout: str, stderr: str = "") -> PySpyMessages:
    """Read py-spy's ``Samples: N Errors: M``, ``Stopped sampling because ...`` and
    ``Error: ...`` lines (ANSI colours removed); the last occurrence wins. ``lines`` keeps
    py-spy's own (``py-spy>``/``Error``) lines, not the profiled program's output."""
    out = _ANSI.sub("", stdout)
    err = _ANSI.sub("", stderr)
    both = f"{out}\n{err}"
    samples = errors = None
    for m in _SAMPLES.finditer(both):
        samples, errors = int(m.group(1)), int(m.group(2))
    stops = _STOPPED.findall(both)
    error_lines = [ln for ln in err.splitlines() if ln.startswith("Error")]
    lines = tuple(ln for ln in both.splitlines()
                  if ln.startswith(("py-spy>", "Error")) or ln.startswith("thread 'main'"))
    return PySpyMessages(samples, errors, stops[-1] if stops else None,
                         error_lines[-1] if error_lines else None, lines)


# --- a running py-spy ----------------------------------------------------------------------

EndedBy = Literal["itself", "sigint", "sigterm", "sigkill", "unkillable", "not-started"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileResult:
    """The outcome of one py-spy run. ``ok`` means exit status 0 and a non-empty output file."""

    argv: tuple[str, ...]
    output: Path
    format: str
    role: str
    target_pid: int | None
    pyspy_pid: int | None
    returncode: int | None
    ended_by: EndedBy
    samples: int | None
    errors: int | None
    stop_reason: str | None
    seconds: float
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)
    messages: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return (self.returncode == 0 and self.output.is_file()
                and self.output.stat().st_size > 0)

    def check(self) -> ProfileResult:
        """Return self if ``ok``, else raise ``PySpyError`` with what py-spy said."""
        if self.ok:
            return self
        said = "\n".join(self.messages[-8:]) or self.stderr.strip()[-2000:] or "(nothing)"
        why = {"sigterm": "it did not stop on SIGINT in time and was terminated",
               "sigkill": "it did not stop on SIGINT/SIGTERM in time and was killed",
               "unkillable": "it could not be stopped at all"}.get(self.ended_by, "")
        raise PySpyError(
            f"py-spy {'failed' if not why else 'was stopped'} (exit status {self.returncode}"
            f"{'; ' + why if why else ''}); no usable {self.format} file at {self.output}. "
            f"It said:\n{said}\nIf it cannot attach (permission/ptrace), run as the process's "
            "owner with ptrace allowed (root, CAP_SYS_PTRACE, or kernel.yama.ptrace_scope=0).")

    def metadata(self) -> dict[str, Any]:
        """JSON-ready facts for a run's ``meta.json``."""
        return {
            "tool": "py-spy",
            "argv": list(self.argv),
            "output": self.output.name,
            "format": self.format,
            "role": self.role,
            "target_pid": self.target_pid,
            "returncode": self.returncode,
            "ended_by": self.ended_by,
            "samples": self.samples,
            "errors": self.errors,
            "stop_reason": self.stop_reason,
            "seconds": round(self.seconds, 3),
            "messages": list(self.messages),
        }


class ProfileSession:
    """``py-spy record`` attached to ``pid`` or running ``command``, as a context manager::

        with ProfileSession(PySpyOptions(output=path), pid=scheduler_pid, role="scheduler") as s:
            run_workload()
        s.result.samples

    ``start()`` waits (up to ``start_timeout``) until py-spy says it is sampling, so that a
    quick ``stop()`` does not kill it before it can write its file. ``stop()`` is idempotent;
    leaving the ``with`` block stops it and, unless an exception is already on its way, raises
    ``PySpyError`` when py-spy failed.
    """

    def __init__(self, options: PySpyOptions, *, pid: int | None = None,
                 command: Sequence[str] | None = None, role: str = "",
                 start_timeout: float = 10.0, stop_timeout: float = 15.0,
                 kill_timeout: float = 3.0) -> None:
        for name, value in (("start_timeout", start_timeout), ("stop_timeout", stop_timeout),
                            ("kill_timeout", kill_timeout)):
            if not value > 0:
                raise ValueError(f"ProfileSession {name} must be > 0 seconds, got {value!r}")
        self.options = options
        self.argv = build_argv(options, pid=pid, command=command)
        self.role = role
        self.target_pid = pid
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.kill_timeout = kill_timeout
        self.result: ProfileResult | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._started = 0.0

    # -- lifecycle

    def start(self) -> ProfileSession:
        if self._proc is not None or self.result is not None:
            raise RuntimeError("this ProfileSession was already started; make a new one")
        Path(self.options.output).parent.mkdir(parents=True, exist_ok=True)
        self._tmp = tempfile.TemporaryDirectory(prefix="stagecost-pyspy-")
        out_path, err_path = self._log_paths()
        self._started = time.monotonic()
        with open(out_path, "ab") as out, open(err_path, "ab") as err:
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=err, start_new_session=True)
        deadline = self._started + self.start_timeout
        while self._proc.poll() is None and _READY not in self._read_logs()[0]:
            if time.monotonic() >= deadline:
                self.stop(check=False)
                raise PySpyError(f"py-spy did not start sampling within {self.start_timeout} s "
                                 f"(argv: {' '.join(self.argv)}); it said:\n"
                                 + "\n".join(self.result.messages if self.result else ()))
            time.sleep(0.01)
        if self._proc.poll() not in (None, 0):
            self.stop(check=True)  # failed at once (cannot attach, bad argument): raise now
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pyspy_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for py-spy to end by itself (the process exited, or
        ``duration`` ran out). True if it has ended; it is not stopped either way."""
        if self._proc is None:
            return self.result is not None
        try:
            self._proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, check: bool = True) -> ProfileResult:
        """Stop py-spy if it still runs (SIGINT, then SIGTERM, then SIGKILL, each waited for
        a bounded time) and collect the result. With ``check``, raise ``PySpyError`` if py-spy
        failed (``result`` is set either way)."""
        if self.result is not None:
            return self.result.check() if check else self.result
        proc = self._proc
        if proc is None:
            self.result = self._collect(None, "not-started")
            return self.result.check() if check else self.result
        ended_by: EndedBy = "itself"
        if proc.poll() is None:
            ended_by = "unkillable"
            steps: tuple[tuple[signal.Signals, EndedBy, float], ...] = (
                (signal.SIGINT, "sigint", self.stop_timeout),
                (signal.SIGTERM, "sigterm", self.kill_timeout),
                (signal.SIGKILL, "sigkill", self.kill_timeout))
            for sig, name, wait in steps:
                if proc.poll() is not None:
                    break
                proc.send_signal(sig)  # Popen only signals its own, still unreaped, PID
                try:
                    proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    continue
                ended_by = name
                break
        self.result = self._collect(proc.poll(), ended_by)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return self.result.check() if check else self.result

    def __enter__(self) -> ProfileSession:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(check=exc_type is None)

    # -- helpers

    def _log_paths(self) -> tuple[Path, Path]:
        assert self._tmp is not None
        base = Path(self._tmp.name)
        return base / "stdout.txt", base / "stderr.txt"

    def _read_logs(self) -> tuple[str, str]:
        if self._tmp is None:
            return "", ""
        texts = []
        for p in self._log_paths():
            try:
                texts.append(p.read_text(encoding="utf-8", errors="replace"))
            except FileNotFoundError:
                texts.append("")
        return texts[0], texts[1]

    def _collect(self, returncode: int | None, ended_by: EndedBy) -> ProfileResult:
        stdout, stderr = self._read_logs()
        msgs = parse_pyspy_messages(stdout, stderr)
        return ProfileResult(
            argv=tuple(self.argv), output=Path(self.options.output), format=self.options.format,
            role=self.role, target_pid=self.target_pid, pyspy_pid=self.pyspy_pid,
            returncode=returncode, ended_by=ended_by, samples=msgs.samples, errors=msgs.errors,
            stop_reason=msgs.stop_reason,
            seconds=time.monotonic() - self._started if self._started else 0.0,
            stdout=stdout, stderr=stderr, messages=msgs.lines)

    def __repr__(self) -> str:
        state = ("done" if self.result is not None else "running" if self.running
                 else "not started" if self._proc is None else "ended")
        return f"ProfileSession({self.role or 'profile'}, {state}, pid={self.pyspy_pid})"
