"""The command line behaves: ``--version``; output paths checked before any work; an
existing run folder refused unless ``--force``; Ctrl-C (SIGINT to the process group, or to
the parent alone) stops the whole run at once, keeps what finished, writes its report and
exits 130, with every process of the group gone; progress has the overall count."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.exit_codes import ExitCode
from harness.progress import CellPlan, GridProgress
from tests.conftest import cluster_env

QUICK = ["run", "-b", "reference-inproc", "-w", "elementwise", "-n", "200", "-r", "1",
         "--warmups", "0"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("stagecost ")


def test_an_existing_run_folder_is_refused_unless_forced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main([*QUICK, "-o", str(out)]) == 0
    capsys.readouterr()
    before = (out / "runs.csv").read_bytes()
    assert main([*QUICK, "-o", str(out)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--force" in err
    assert "submitting" not in err  # refused before anything ran
    assert (out / "runs.csv").read_bytes() == before
    (out / "figures" / "stacked-old.png").write_bytes(b"stale")
    (out / "mine.txt").write_text("kept")
    assert main([*QUICK, "-o", str(out), "--force"]) == 0
    assert "submitting" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "kept"  # only the run's own files are replaced
    assert not (out / "figures" / "stacked-old.png").exists()
    assert json.loads((out / "meta.json").read_text())["created_utc"]


@pytest.mark.parametrize("where", ["proc", "file", "store"])
def test_unwritable_outputs_fail_before_any_work(where: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    args = {"proc": ["-o", "/proc/stagecost-x"], "file": ["-o", str(a_file)],
            "store": ["-o", str(tmp_path / "r"), "--store", str(a_file / "s.sqlite")]}[where]
    started = time.monotonic()
    assert main([*QUICK, *args]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "usage error" in err and "submitting" not in err
    assert not (tmp_path / "r").exists()
    assert time.monotonic() - started < 30  # no run was attempted (a generous bound)


def test_plain_progress_has_the_overall_count_and_an_eta() -> None:
    import io

    stream = io.StringIO()
    now = [0.0]
    grid = GridProgress([CellPlan("a", 2, 100), CellPlan("b", 2, 300)], stream,
                        terminal=False, clock=lambda: now[0])
    for i, cell in enumerate(("a", "b")):
        grid.cell(i)
        events = grid.events()
        for what in ("warmup", "repeat 1/1"):
            events.started(what, 100 if cell == "a" else 300)
            now[0] += 1.0
            events.done(what, 1.0)
        grid.cell_ended()
    grid.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[run 1/4 · a] warmup: 100 tasks, submitting ..."
    assert "  1/4 runs done · ETA 0:07" in lines  # 100 of 800 tasks took 1 s
    assert "[run 4/4 · b] repeat 1/1: done in 1.00 s" in lines


def test_terminal_progress_is_a_bar_with_counts(tmp_path: Path) -> None:
    class Tty:
        def __init__(self) -> None:
            self.text: list[str] = []

        def write(self, s: str) -> int:
            self.text.append(s)
            return len(s)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return True

    tty = Tty()
    grid = GridProgress([CellPlan("elementwise n=100 reference", 2, 100)], tty)  # type: ignore[arg-type]
    grid.cell(0)
    ev = grid.events()
    ev.started("warmup", 100)
    ev.done("warmup", 0.1)
    ev.started("repeat 1/1", 100)
    ev.tasks(50, 100)
    grid.close()
    shown = "".join(tty.text)
    assert "run 2/2" in shown and "%|" in shown and "elementwise n=100 reference" in shown


def test_a_real_terminal_that_reports_no_size_still_shows_the_bar(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh pseudo-terminal reports 0 columns and 0 rows (as a bare pty or ``script`` may
    give a program); the bar must still be drawn, not silently swallowed."""
    import pty
    import select

    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", encoding="utf-8", closefd=False) as tty:
            assert os.get_terminal_size(follower) == (0, 0)
            monkeypatch.setattr(sys, "stderr", tty)  # tqdm sizes itself from stderr's terminal
            monkeypatch.delenv("COLUMNS", raising=False)
            monkeypatch.delenv("LINES", raising=False)
            grid = GridProgress([CellPlan("elementwise n=100 reference", 1, 100)])
            assert grid.terminal
            grid.cell(0)
            ev = grid.events()
            ev.started("repeat 1/1", 100)
            ev.tasks(50, 100)
            ev.done("repeat 1/1", 0.1)
            grid.cell_ended()
            grid.close()
        shown = b""
        while select.select([leader], [], [], 0.5)[0]:
            shown += os.read(leader, 1 << 16)
    finally:
        os.close(leader)
        os.close(follower)
    text = shown.decode("utf-8", "replace")
    assert "100%|" in text and "run 1/1" in text and "elementwise n=100 reference" in text


# --- Ctrl-C --------------------------------------------------------------------------------


def _start(out: Path, cwd: Path
           ) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    env = {**os.environ, **cluster_env(), "STAGECOST_STORE": str(cwd / "store.sqlite")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", "-b", "reference", "-w", "elementwise",
         "-w", "reduction", "-n", "50000", "-r", "15", "--warmups", "1", "-o", str(out)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    lines: list[str] = []
    stderr = proc.stderr
    assert stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")),
                              daemon=True)
    reader.start()
    return proc, lines, reader


def _group_gone(pgid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        time.sleep(0.1)
    return False


@pytest.mark.cluster
@pytest.mark.parametrize("to", ["group", "parent"])
def test_ctrl_c_stops_the_run_keeps_what_finished_and_exits_130(to: str,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc, lines, reader = _start(out, tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not any(re.search(r"\b3/\d+ runs done", ln) for ln in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines[-20:])
            time.sleep(0.05)
        if to == "group":
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        else:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(10)
        stdout = proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this test started
            proc.wait(10)
    err = "".join(lines)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "Traceback" not in err
    assert _group_gone(proc.pid, 30), "processes of the run outlived it"
    meta = json.loads((out / "meta.json").read_text())
    stop = meta["interrupted"]
    assert stop["cell"] == "elementwise n=50,000 reference"
    assert stop["not_run"] == ["reduction n=50,000 reference"]
    runs = pd.read_csv(out / "runs.csv")
    assert stop["repeats_kept"] == len(runs) >= 2  # the finished repeats, no more
    assert set(runs["workload"]) == {"elementwise"}
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "interrupted (Ctrl-C) during elementwise n=50,000 reference" in md
    assert "first task after" in md
    assert "interrupted during elementwise" in err and "report" in stdout
