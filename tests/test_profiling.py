"""harness.profiling: py-spy argv and sessions, profile parsing, stage attribution, flame graphs.

Every process a test starts ends by itself (bounded loops); sessions stop py-spy by its PID.
Tests that need a working py-spy skip, saying why, when it is missing or cannot sample here.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from harness.profiling import (
    CATEGORIES,
    DASK_MAP,
    IDLE,
    IDLE_PATTERNS,
    IMPORT,
    IMPORT_PATTERNS,
    REFERENCE_MAP,
    UNATTRIBUTED,
    Frame,
    ProfileFormatError,
    ProfileSession,
    PySpyError,
    PySpyNotFound,
    PySpyOptions,
    Rule,
    StackTable,
    StageMap,
    attribute,
    build_argv,
    find_pyspy,
    function_samples,
    get_stage_map,
    load_profile,
    merge_tables,
    parse_pyspy_messages,
    parse_raw,
    parse_speedscope,
    render_flamegraph,
    self_samples,
    stage_table,
    stage_totals,
    total_samples,
    write_profile_outputs,
)
from harness.profiling.dask_map import MERGED
from harness.profiling.rules import FunctionGlobs, ModuleGlob, split_path
from scheduler.stages import Stage

S = Stage
SVG_NS = "{http://www.w3.org/2000/svg}"


# --- helpers ---------------------------------------------------------------------------------


def table_of(*stacks: tuple[list[tuple[str, str]], int]) -> StackTable:
    """A StackTable from ``([(name, file), ...root first], count)`` pairs."""
    frames: list[Frame] = []
    ids: dict[Frame, int] = {}
    out = []
    for stack, n in stacks:
        fids = []
        for name, file in stack:
            f = Frame(name, file, 1)
            if f not in ids:
                ids[f] = len(frames)
                frames.append(f)
            fids.append(ids[f])
        out.append((tuple(fids), n))
    return StackTable(tuple(frames), tuple(out))


def category_of(stack: list[tuple[str, str]], stage_map: StageMap, role: str = "") -> str:
    return attribute(table_of((stack, 1)), stage_map, role).stack_categories[0]


def fake_executable(tmp_path: Path, name: str, body: str) -> str:
    """An executable Python script standing in for py-spy (no py-spy needed)."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


SPEEDSCOPE_DOC = {
    "$schema": "https://www.speedscope.app/file-format-schema.json",
    "shared": {"frames": [
        {"name": "<module>", "file": "/x/app.py", "line": 1, "col": None},
        {"name": "generate_graph", "file": "/x/app.py", "line": 5, "col": None},
        {"name": "spin", "file": "/x/app.py", "line": 9, "col": None},
        {"name": "schedule_tasks", "file": "/x/app.py", "line": 7, "col": None},
        {"name": "generate_graph", "file": "/x/app.py", "line": 5},  # duplicate: interned
    ]},
    "profiles": [
        {"type": "sampled", "name": "Thread 1 \"\"", "unit": "seconds", "startValue": 0,
         "endValue": 0.05, "samples": [[0, 1, 2], [0, 1, 2], [0, 3], [0, 4, 2]],
         "weights": [0.01, 0.01, 0.01, 0.01]},
        {"type": "sampled", "name": "Thread 2 \"w\"", "unit": "none",
         "samples": [[0, 3, 2], []], "weights": [3, 2]},
    ],
}


# --- argv ------------------------------------------------------------------------------------


def test_build_argv_attach_and_flags(tmp_path: Path) -> None:
    exe = fake_executable(tmp_path, "py-spy", "pass\n")
    opts = PySpyOptions(output=tmp_path / "p.json", rate=250, native=True, subprocesses=True,
                        gil_only=True, idle=True, nonblocking=True, threads=True,
                        full_filenames=True, duration=3, extra_args=("--nolineno",),
                        executable=exe)
    argv = build_argv(opts, pid=1234)
    assert argv == [exe, "record", "--output", str(tmp_path / "p.json"), "--format",
                    "speedscope", "--rate", "250", "--duration", "3", "--native",
                    "--subprocesses", "--gil", "--idle", "--nonblocking", "--threads",
                    "--full-filenames", "--nolineno", "--pid", "1234"]


def test_build_argv_command_defaults(tmp_path: Path) -> None:
    exe = fake_executable(tmp_path, "py-spy", "pass\n")
    opts = PySpyOptions(output="out.txt", format="raw", executable=exe)
    argv = build_argv(opts, command=[sys.executable, "-c", "print('a b')"])
    assert argv == [exe, "record", "--output", "out.txt", "--format", "raw", "--rate", "100",
                    "--", sys.executable, "-c", "print('a b')"]


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"rate": 1.5}, {"format": "svg"},
                                    {"duration": 1.5}, {"duration": 0}, {"output": ""},
                                    {"rate": True}])
def test_options_reject_bad_values(kwargs: dict) -> None:
    args = {"output": "p.json", **kwargs}
    with pytest.raises(ValueError):
        PySpyOptions(**args)


def test_build_argv_needs_exactly_one_target(tmp_path: Path) -> None:
    opts = PySpyOptions(output="p.json", executable=fake_executable(tmp_path, "py-spy", ""))
    with pytest.raises(ValueError, match="exactly one"):
        build_argv(opts)
    with pytest.raises(ValueError, match="exactly one"):
        build_argv(opts, pid=1, command=["x"])
    with pytest.raises(ValueError, match="positive"):
        build_argv(opts, pid=0)
    with pytest.raises(ValueError, match="non-empty"):
        build_argv(opts, command=[])


def test_missing_executable_says_how_to_fix(tmp_path: Path) -> None:
    opts = PySpyOptions(output="p.json", executable=str(tmp_path / "no-such-py-spy"))
    with pytest.raises(PySpyNotFound, match="PySpyOptions.executable"):
        build_argv(opts, pid=1)


def test_parse_pyspy_messages() -> None:
    out = ("py-spy> Sampling process 100 times a second. Press Control-C to exit.\n\n"
           "program output\n"
           "\x1b[33mpy-spy> \x1b[0mStopped sampling because process exited\n"
           "py-spy> Wrote speedscope file to 'out.json'. Samples: 153 Errors: 2\n"
           "py-spy> Visit https://www.speedscope.app/ to view\n")
    m = parse_pyspy_messages(out, "")
    assert (m.samples, m.errors, m.stop_reason, m.error) == (153, 2, "process exited", None)
    assert "program output" not in m.lines and len(m.lines) == 4
    err = "Error: Failed to find python version from target process\n\nStack backtrace:\n"
    m = parse_pyspy_messages("", err)
    assert m.samples is None and m.error == "Error: Failed to find python version from target process"


# --- sessions with a stand-in py-spy (no real py-spy needed) -------------------------------

FAKE_OK = """
import pathlib, signal, sys, time
args = sys.argv[1:]
out = args[args.index("--output") + 1]
def stop(*_):
    pathlib.Path(out).write_text('{"shared": {"frames": []}, "profiles": []}')
    print("py-spy> Stopped sampling because Control-C pressed", flush=True)
    print(f"py-spy> Wrote speedscope file to '{out}'. Samples: 7 Errors: 1", flush=True)
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
print("py-spy> Sampling process 100 times a second. Press Control-C to exit.", flush=True)
end = time.monotonic() + 30
while time.monotonic() < end:
    time.sleep(0.02)
"""

FAKE_STUBBORN = """
import signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("py-spy> Sampling process 100 times a second. Press Control-C to exit.", flush=True)
end = time.monotonic() + 30
while time.monotonic() < end:
    time.sleep(0.02)
"""

FAKE_FAILS = """
import sys
print("Error: Failed to get process executable name. Check that the process is running.",
      file=sys.stderr)
sys.exit(1)
"""


@pytest.mark.timeout(60)
def test_session_stops_with_sigint_and_reads_counts(tmp_path: Path) -> None:
    exe = fake_executable(tmp_path, "fake-py-spy", FAKE_OK)
    opts = PySpyOptions(output=tmp_path / "out" / "p.json", executable=exe)
    with ProfileSession(opts, pid=4321, role="scheduler") as s:
        assert s.running
    r = s.result
    assert r is not None and r.ok
    assert (r.ended_by, r.samples, r.errors, r.stop_reason) == ("sigint", 7, 1,
                                                                "Control-C pressed")
    meta = r.metadata()
    assert meta["samples"] == 7 and meta["role"] == "scheduler" and meta["output"] == "p.json"
    json.dumps(meta)
    assert s.stop() is r  # idempotent


@pytest.mark.timeout(60)
def test_session_escalates_to_sigterm_and_reports(tmp_path: Path) -> None:
    exe = fake_executable(tmp_path, "fake-py-spy", FAKE_STUBBORN)
    opts = PySpyOptions(output=tmp_path / "p.json", executable=exe)
    s = ProfileSession(opts, pid=4321, stop_timeout=0.3, kill_timeout=10).start()
    r = s.stop(check=False)
    assert r.ended_by == "sigterm" and r.returncode == -signal.SIGTERM and not r.ok
    with pytest.raises(PySpyError, match="terminated"):
        r.check()


@pytest.mark.timeout(60)
def test_session_raises_when_pyspy_fails_at_once(tmp_path: Path) -> None:
    exe = fake_executable(tmp_path, "fake-py-spy", FAKE_FAILS)
    s = ProfileSession(PySpyOptions(output=tmp_path / "p.json", executable=exe), pid=4321)
    with pytest.raises(PySpyError, match="Failed to get process executable name"):
        s.start()
    assert s.result is not None and s.result.returncode == 1 and not s.running


@pytest.mark.timeout(60)
def test_session_exit_does_not_mask_an_exception(tmp_path: Path) -> None:
    exe = fake_executable(tmp_path, "fake-py-spy", FAKE_STUBBORN)
    opts = PySpyOptions(output=tmp_path / "p.json", executable=exe)
    with pytest.raises(KeyError), ProfileSession(opts, pid=1, stop_timeout=0.2) as s:
        raise KeyError("the workload failed")
    assert s.result is not None and s.result.ended_by == "sigterm"


# --- speedscope ------------------------------------------------------------------------------


def test_parse_speedscope_merges_threads_and_stacks() -> None:
    t = parse_speedscope(SPEEDSCOPE_DOC)
    assert t.threads == ('Thread 1 ""', 'Thread 2 "w"')
    assert len(t.frames) == 4  # the duplicate frame is interned
    names = {i: f.name for i, f in enumerate(t.frames)}
    stacks = {tuple(names[i] for i in s): n for s, n in t.stacks}
    assert stacks == {("<module>", "generate_graph", "spin"): 3,
                      ("<module>", "schedule_tasks"): 1,
                      ("<module>", "schedule_tasks", "spin"): 3,
                      (): 2}
    assert t.total == 9  # one per py-spy sample; weights are counts for unit "none"


def test_self_and_total_samples() -> None:
    t = table_of(([("main", "a.py"), ("f", "a.py"), ("f", "a.py")], 2),
                 ([("main", "a.py"), ("g", "a.py")], 3))
    assert self_samples(t) == {("f", "a.py"): 2, ("g", "a.py"): 3}
    assert total_samples(t) == {("main", "a.py"): 5, ("f", "a.py"): 2, ("g", "a.py"): 3}
    rows = function_samples(t)
    assert rows[0].name == "main" and rows[0].total_samples == 5 and rows[0].self_samples == 0
    assert merge_tables([t, t]).total == 10


BAD_DOCS = [
    ([], "top level"),
    ({"profiles": []}, "shared"),
    ({"shared": {"frames": {}}, "profiles": []}, "shared.frames"),
    ({"shared": {"frames": [{"file": "a.py"}]}, "profiles": []}, r"shared.frames\[0\].name"),
    ({"shared": {"frames": [{"name": "f", "line": "x"}]}, "profiles": []}, "line"),
    ({"shared": {"frames": []}, "profiles": {}}, "profiles"),
    ({"shared": {"frames": []}, "profiles": [{"type": "evented", "events": []}]}, "sampled"),
    ({"shared": {"frames": [{"name": "f"}]},
      "profiles": [{"type": "sampled", "samples": [[0, 3]], "weights": [1]}]}, "frame index 3"),
    ({"shared": {"frames": [{"name": "f"}]},
      "profiles": [{"type": "sampled", "samples": [[-1]], "weights": [1]}]}, "non-negative"),
    ({"shared": {"frames": [{"name": "f"}]},
      "profiles": [{"type": "sampled", "samples": [[0]], "weights": []}]}, "weights"),
    ({"shared": {"frames": [{"name": "f"}]},
      "profiles": [{"type": "sampled", "samples": [[0]], "weights": [-1]}]}, "non-negative"),
    ({"shared": {"frames": [{"name": "f"}]},
      "profiles": [{"type": "sampled", "samples": [0], "weights": [1]}]}, "list of frame"),
    ({"shared": {"frames": [{"name": "f"}]},
      "profiles": [{"type": "sampled", "unit": "none", "samples": [[0]], "weights": [0.5]}]},
     "whole counts"),
]


@pytest.mark.parametrize(("doc", "where"), BAD_DOCS)
def test_parse_speedscope_rejects_malformed(doc: object, where: str) -> None:
    with pytest.raises(ProfileFormatError, match=where) as e:
        parse_speedscope(doc)  # type: ignore[arg-type]
    assert "record it again" in str(e.value)


def test_load_profile_truncated_json(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_text(json.dumps(SPEEDSCOPE_DOC)[:-40])
    with pytest.raises(ProfileFormatError, match="truncated"):
        load_profile(p)
    p.write_text(json.dumps(SPEEDSCOPE_DOC))
    assert load_profile(p).total == 9


# --- raw -------------------------------------------------------------------------------------


def test_parse_raw_frames_with_spaces_and_pseudo_frames() -> None:
    text = (
        "<module> (app.py:10);generate graph (my app/x y.py:5);spin (app.py:2) 41\n"
        "\n"
        "<module> (app.py:10);wait_idle (app.py:6) 17\n"
        'process 42:"python -c import a; b = 1\nprint(b)";thread (42);<module> (<string>:3) 5\n'
        "<lambda> (app.py) 2\n"
        "<module> (app.py:10);wait_idle (app.py:6) 3\n"
        " 4\n"  # samples with no Python frame
    )
    t = parse_raw(text)
    assert t.total == 41 + 17 + 5 + 2 + 3 + 4
    f = {fr.name: fr for fr in t.frames}
    assert f["generate graph"] == Frame("generate graph", "my app/x y.py", 5)
    assert f["<lambda>"] == Frame("<lambda>", "app.py", 0)
    assert 'process 42:"python -c import a; b = 1\nprint(b)"' in f
    assert f["thread (42)"].file == ""
    counts = {tuple(t.frames[i].name for i in s): n for s, n in t.stacks}
    assert counts[("<module>", "wait_idle")] == 20 and counts[()] == 4
    assert counts[('process 42:"python -c import a; b = 1\nprint(b)"', "thread (42)",
                   "<module>")] == 5


@pytest.mark.parametrize("text", ["main (a.py:1);f (a.py:2)\n", "5\n", "main (a.py:1) x\n"])
def test_parse_raw_rejects_malformed(text: str) -> None:
    with pytest.raises(ProfileFormatError, match="raw profile line 1"):
        parse_raw(text)


# --- rules -----------------------------------------------------------------------------------


def test_module_and_function_globs() -> None:
    path = split_path("/opt/env/lib/python3.11/site-packages/distributed/scheduler.py")
    assert ModuleGlob("distributed/scheduler.py").matches(path)
    assert ModuleGlob("scheduler.py").matches(path)
    assert not ModuleGlob("dask/scheduler.py").matches(path)
    assert ModuleGlob("site-packages/").matches(path)
    assert ModuleGlob("distributed/").matches(path)
    assert not ModuleGlob("scheduler.py/").matches(path)  # a directory glob never hits the file
    assert ModuleGlob("scheduler/wire/compact*").matches(split_path("scheduler/wire/compact.py"))
    assert ModuleGlob("dask/array/").matches(split_path("/e/dask/array/_array_expr/_blockwise.py"))
    g = FunctionGlobs(("update_graph", "Client.*"))
    assert g.matches("Scheduler.update_graph") and g.matches("update_graph")
    assert g.matches("Client._submit") and not g.matches("Worker._submit")
    assert not g.matches("update_graph_later")


def test_rule_validation() -> None:
    with pytest.raises(ValueError, match="neither module nor function"):
        Rule(S.execute)
    with pytest.raises(TypeError, match="Stage"):
        Rule("execute", function="f")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        Rule(S.execute, function=("f", ""))
    r = Rule(S.execute, module="a.py", function="f", roles="worker")
    assert r.module == ("a.py",) and r.roles == ("worker",)


# --- attribution -----------------------------------------------------------------------------

TEST_MAP = StageMap("test", (
    Rule(S.generate, function="generate_graph"),
    Rule(S.serialize, module="lib/codec.py", roles="client"),
    Rule(S.update_graph, module="lib/codec.py", roles="scheduler"),
    Rule(S.schedule, function="schedule_tasks"),
    Rule(S.execute, function="schedule_tasks", note="never used: the rule above wins"),
    Rule(S.dispatch, module="lib/io.py", within="send_batch"),
    Rule(S.execute, module="lib/graph.py", fallback=True),
), IDLE_PATTERNS, IMPORT_PATTERNS)


def test_attribution_leaf_first_order_roles_within_fallback() -> None:
    app = "/srv/app.py"
    assert category_of([("main", app), ("generate_graph", app), ("spin", app)],
                       TEST_MAP) == "generate"
    # leaf first: the frame nearest the leaf that matches wins over one further down
    assert category_of([("generate_graph", app), ("schedule_tasks", app)], TEST_MAP) == "schedule"
    # role-dependent rules; a role family matches "scheduler-2"; no role: neither applies
    codec = [("main", app), ("encode", "/srv/lib/codec.py")]
    assert category_of(codec, TEST_MAP, "client") == "serialize"
    assert category_of(codec, TEST_MAP, "scheduler-2") == "update_graph"
    assert category_of(codec, TEST_MAP, "") == UNATTRIBUTED
    # within: only under a caller named send_batch (the frame itself or an ancestor)
    assert category_of([("send_batch", app), ("write", "/srv/lib/io.py")],
                       TEST_MAP) == "dispatch"
    assert category_of([("main", app), ("write", "/srv/lib/io.py")], TEST_MAP) == UNATTRIBUTED
    # fallback: only when nothing specific is on the stack
    graph = ("build", "/srv/lib/graph.py")
    assert category_of([("generate_graph", app), graph], TEST_MAP) == "generate"
    assert category_of([("main", app), graph], TEST_MAP) == "execute"


def test_attribution_idle_import_native() -> None:
    sel = ("EpollSelector.select", "/usr/lib/python3.11/selectors.py")
    assert category_of([("generate_graph", "/a.py"), sel], TEST_MAP) == IDLE
    # idle is a property of the leaf, not of a frame below it
    assert category_of([sel, ("generate_graph", "/a.py")], TEST_MAP) == "generate"
    # native leaf frames up to the first Python frame are checked
    assert category_of([("generate_graph", "/a.py"), ("epoll_wait", "libc.so.6")],
                       TEST_MAP) == IDLE
    assert category_of([("generate_graph", "/a.py"), ("PyNumber_Add", "abstract.c"),
                        ("_PyEval_EvalFrame", "ceval.c")], TEST_MAP) == "generate"
    # a Python function that happens to be called select is not a native wait
    assert category_of([("select", "/srv/app.py")], TEST_MAP) == UNATTRIBUTED
    imp = [("main", "/a.py"), ("_find_and_load", "<frozen importlib._bootstrap>"),
           ("<module>", "/e/dask/array/core.py"), ("generate_graph", "/e/dask/array/core.py")]
    assert category_of(imp, TEST_MAP) == IMPORT


def test_stage_table_shares_sum_to_one_and_top_n() -> None:
    app = "/srv/app.py"
    sel = ("EpollSelector.select", "selectors.py")
    t = table_of(
        ([("generate_graph", app), ("a", app)], 5),
        ([("generate_graph", app), ("b", app)], 3),
        ([("generate_graph", app), ("c", app)], 2),
        ([("schedule_tasks", app)], 4),
        ([("main", app), sel], 4),
        ([("main", app), ("mystery", app)], 2),
    )
    a = attribute(t, TEST_MAP, "client")
    assert a.total == 20 and a.idle == 4 and a.unattributed == 2 and a.attributed == 14
    assert a.attributed_share == pytest.approx(14 / 16) and a.idle_share == pytest.approx(0.2)
    full = stage_table(a, top_n=None)
    assert list(full.columns) == ["stage", "function", "self_samples", "share"]
    assert math.isclose(full["share"].sum(), 1.0)
    assert full["self_samples"].sum() == 20
    assert list(dict.fromkeys(full["stage"])) == ["generate", "schedule", IDLE, UNATTRIBUTED]
    short = stage_table(a, top_n=1)
    gen = short[short.stage == "generate"]
    assert list(gen.function) == ["a (srv/app.py)", "(other: 2 functions)"]
    assert list(gen.self_samples) == [5, 5]
    assert math.isclose(short["share"].sum(), 1.0)
    totals = stage_totals(a)
    assert dict(zip(totals.stage, totals.samples, strict=True)) == {
        "generate": 10, "schedule": 4, IDLE: 4, UNATTRIBUTED: 2}
    assert set(a.summary()["samples_by_category"]) <= set(CATEGORIES)
    json.dumps(a.summary())
    empty = attribute(StackTable((), ()), TEST_MAP)
    assert empty.total == 0 and empty.attributed_share == 0.0 and stage_table(empty).empty


def test_reference_map_role_dependent() -> None:
    ref = get_stage_map("reference")
    assert ref is REFERENCE_MAP
    main = ("main", "/srv/bench.py")
    lower = ("Blockwise.lower", "/repo/scheduler/graph/layers.py")
    # lowering: in user code on the client it is generate; under the scheduler's graph
    # handler update_graph; with the scheduler role and no handler, update_graph (fallback)
    assert category_of([main, lower], ref, "client") == "generate"
    assert category_of([("SchedulerServer._on_graph", "/r/scheduler/runtime/scheduler_server.py"),
                        lower], ref, "scheduler") == "update_graph"
    assert category_of([main, lower], ref, "scheduler") == "update_graph"
    # encoding is serialize, decoding update_graph, whatever helper runs under them
    helper = ("_deps_to_wire", "/r/scheduler/wire/compact.py")
    enc = ("encode_graph", "/r/scheduler/wire/encodings.py")
    dec = ("decode_graph", "/r/scheduler/wire/encodings.py")
    assert category_of([main, enc, helper], ref, "client") == "serialize"
    assert category_of([main, dec, helper], ref, "scheduler") == "update_graph"
    # a codec called directly (a benchmark): by role and direction (fallback rules)
    compact_decode = ("decode", "/r/scheduler/wire/compact.py")
    compact_encode = ("encode", "/r/scheduler/wire/compact.py")
    assert category_of([main, compact_encode], ref, "client") == "serialize"
    assert category_of([main, compact_decode], ref, "scheduler") == "update_graph"
    assert category_of([main, compact_decode], ref, "worker-0") == "dispatch"
    assert category_of([main, compact_encode], ref, "") == "serialize"
    # the same state-machine helper belongs to its caller
    state = "/r/scheduler/state/scheduler.py"
    trans = ("SchedulerState._transition", state)
    assert category_of([("SchedulerState._graph_submitted", state), trans], ref) == "update_graph"
    assert category_of([("SchedulerState._tasks_finished", state), trans], ref) == "execute"
    assert category_of([("SchedulerState._assign", state), trans], ref) == "schedule"
    # the connection writer has no caller: its stage depends on the process
    write = [("Comm._write_loop", "/r/scheduler/runtime/comm.py"),
             ("StreamWriter.drain", "/usr/lib/python3.11/asyncio/streams.py")]
    assert [category_of(write, ref, r) for r in ("client", "scheduler", "worker-1")] == [
        "communicate", "dispatch", "execute"]
    # a task body on a worker
    body = [("run_batch", "/r/scheduler/runtime/worker.py"),
            ("_compile.<locals>.run", "/r/scheduler/graph/task.py"), ("add", "/r/user.py")]
    assert category_of(body, ref, "worker-0") == "execute"


def test_dask_map_merged_and_role_dependent() -> None:
    dsched = "/e/site-packages/distributed/scheduler.py"
    trans = ("SchedulerState._transition", dsched)
    assert category_of([("Scheduler.update_graph", dsched), trans], DASK_MAP,
                       "scheduler") == "update_graph"
    assert category_of([("Scheduler.stimulus_task_finished", dsched), trans], DASK_MAP,
                       "scheduler") == "execute"
    assert category_of([("Handle._run", "/usr/lib/python3.11/asyncio/events.py"), trans],
                       DASK_MAP, "scheduler") == "schedule"  # merged: the earliest stage
    assert "distributed/scheduler.py:SchedulerState._transitions" in MERGED
    order = ("order", "/e/site-packages/dask/order.py")
    assert category_of([("Scheduler.update_graph", dsched), order], DASK_MAP,
                       "scheduler") == "update_graph"
    sub = [("_run_task", "/e/site-packages/distributed/worker.py"),
           ("_execute_subgraph", "/e/site-packages/dask/_task_spec.py"), order]
    assert category_of(sub, DASK_MAP, "worker-0") == "execute"
    layer = ("Blockwise._dict", "/e/site-packages/dask/blockwise.py")
    assert category_of([("main", "/srv/a.py"), layer], DASK_MAP, "client") == "generate"
    assert category_of([("main", "/srv/a.py"), layer], DASK_MAP, "scheduler") == "update_graph"
    pickle = ("dumps", "/e/site-packages/distributed/protocol/pickle.py")
    assert category_of([("SchedulerState._task_to_msg", dsched), pickle], DASK_MAP,
                       "scheduler") == "dispatch"
    assert category_of([("Client._graph_to_futures", "/e/site-packages/distributed/client.py"),
                        pickle], DASK_MAP, "client") == "serialize"
    opt = ("optimize", "/e/site-packages/dask/array/optimization.py")
    assert category_of([("_materialize_graph", dsched), opt], DASK_MAP, "scheduler") == "optimize"


def test_maps_are_immutable_and_named() -> None:
    with pytest.raises(TypeError):
        DASK_MAP.merged["x"] = "y"  # type: ignore[index]
    with pytest.raises(KeyError, match="known: dask, reference"):
        get_stage_map("nope")
    extended = REFERENCE_MAP.with_rules(Rule(S.schedule, function="my_new_fn"), name="mine")
    assert extended.rules[0].function == ("my_new_fn",) and extended.name == "mine"
    assert len(extended.rules) == len(REFERENCE_MAP.rules) + 1


# --- flame graph -----------------------------------------------------------------------------


def test_flamegraph_is_valid_svg_with_tooltips() -> None:
    t = table_of(([("main", "/a.py"), ("f<&>", "/a.py"), ("g", "/b.py")], 6),
                 ([("main", "/a.py"), ("h", "/a.py")], 4),
                 ([("main", "/a.py"), ("tiny", "/a.py")], 1))
    a = attribute(t, TEST_MAP)
    svg = render_flamegraph(t, title="t <1>", categories=a.stack_categories, width=400,
                            min_width=50)
    root = ET.fromstring(svg.encode())
    assert root.tag == f"{SVG_NS}svg"
    titles = [e.text or "" for e in root.iter(f"{SVG_NS}title")]
    assert any(x.startswith("f<&> (/a.py)\n6 samples") for x in titles)
    assert not any(x.startswith("tiny") for x in titles)  # narrower than min_width
    assert any(x.startswith("all\n11 samples") for x in titles)
    plain = render_flamegraph(t)  # colours from names
    ET.fromstring(plain.encode())
    ET.fromstring(render_flamegraph(StackTable((), ())).encode())
    with pytest.raises(ValueError, match="categories"):
        render_flamegraph(t, categories=["execute"])


def test_write_profile_outputs(tmp_path: Path) -> None:
    p = tmp_path / "profile.json"
    p.write_text(json.dumps(SPEEDSCOPE_DOC))
    m = StageMap("m", (Rule(S.generate, function="generate_graph"),
                       Rule(S.schedule, function="schedule_tasks")))
    out = write_profile_outputs(p, tmp_path / "out", stage_map=m, role="client", top_n=5)
    df = pd.read_csv(out.csv_path)
    assert list(df.columns) == ["stage", "function", "self_samples", "share"]
    assert math.isclose(df["share"].sum(), 1.0) and df["self_samples"].sum() == 9
    assert out.svg_path is not None
    ET.fromstring(out.svg_path.read_bytes())
    assert out.summary()["attributed_share"] == pytest.approx(7 / 9)  # 2 empty stacks
    first = out.csv_path.read_bytes()
    write_profile_outputs(p, tmp_path / "out", stage_map=m, role="client", top_n=5)
    assert out.csv_path.read_bytes() == first  # re-rendering is idempotent


# --- end to end with the real py-spy ----------------------------------------------------------

STAGE_SCRIPT = """
import sys, time

def spin(seconds):
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n

def generate_graph(s):
    return spin(s)

def update_graph(s):
    return spin(s)

def execute_tasks(s):
    return spin(s)

if __name__ == "__main__":
    each = float(sys.argv[1])
    print("ready", flush=True)
    generate_graph(each)
    update_graph(each)
    execute_tasks(each)
"""

E2E_MAP = StageMap("e2e", (Rule(S.generate, function="generate_graph"),
                           Rule(S.update_graph, function="update_graph"),
                           Rule(S.execute, function="execute_tasks")),
                   IDLE_PATTERNS, IMPORT_PATTERNS)

_CANNOT_ATTACH = ("permission denied", "operation not permitted", "ptrace", "eperm",
                  "access denied", "failed to open process", "failed to suspend")


def _pyspy_or_skip() -> str:
    try:
        return find_pyspy()
    except PySpyNotFound as e:
        pytest.skip(f"py-spy not installed here: {e}")


def _skip_if_cannot_sample(text: str) -> None:
    low = text.lower()
    if any(h in low for h in _CANNOT_ATTACH):
        first = next((ln for ln in text.splitlines() if ln.strip()), text)
        pytest.skip(f"py-spy cannot sample processes in this environment: {first}")


def _start_or_skip(session: ProfileSession) -> ProfileSession:
    try:
        return session.start()
    except PySpyError as e:
        _skip_if_cannot_sample(str(e))
        raise


def _check_or_skip(session: ProfileSession) -> None:
    r = session.result
    assert r is not None
    if not r.ok:
        _skip_if_cannot_sample(r.stderr + "\n".join(r.messages))
        r.check()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["speedscope", "raw"])
def test_e2e_record_command(tmp_path: Path, fmt: str) -> None:
    _pyspy_or_skip()
    script = tmp_path / "stages.py"
    script.write_text(STAGE_SCRIPT)
    out = tmp_path / f"profile.{'json' if fmt == 'speedscope' else 'txt'}"
    s = ProfileSession(PySpyOptions(output=out, format=fmt, rate=100),
                       command=[sys.executable, str(script), "0.7"], role="client")
    _start_or_skip(s)
    assert s.wait(timeout=60), "the profiled script should end by itself"
    s.stop(check=False)
    _check_or_skip(s)
    r = s.result
    assert r is not None
    assert r.ended_by == "itself" and r.stop_reason == "process exited"
    assert r.samples is not None and r.samples > 0
    table = load_profile(out)
    assert table.total > 0
    a = attribute(table, E2E_MAP, "client")
    assert a.attributed > 0
    assert {c for c, n in a.counts.items() if n} - {IDLE, IMPORT, UNATTRIBUTED} <= {
        "generate", "update_graph", "execute"}
    outputs = write_profile_outputs(out, tmp_path / "report", stage_map=E2E_MAP, role="client")
    assert not outputs.stages.empty
    ET.fromstring(outputs.svg_path.read_bytes())  # type: ignore[union-attr]


def _spawn_target(tmp_path: Path, seconds: float) -> subprocess.Popen[str]:
    script = tmp_path / "stages.py"
    script.write_text(STAGE_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"  # the loop has started
    return proc


def _reap(proc: subprocess.Popen[str]) -> None:
    try:
        proc.wait(timeout=60)  # it ends by itself
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.timeout(120)
def test_e2e_attach_and_stop_with_sigint(tmp_path: Path) -> None:
    _pyspy_or_skip()
    proc = _spawn_target(tmp_path, 1.0)
    try:
        s = ProfileSession(PySpyOptions(output=tmp_path / "p.json", rate=100), pid=proc.pid,
                           role="scheduler")
        _start_or_skip(s)
        time.sleep(0.5)
        s.stop(check=False)
        _check_or_skip(s)
        r = s.result
        assert r is not None and r.ended_by == "sigint"
        assert r.stop_reason == "Control-C pressed" and r.samples is not None
        assert r.target_pid == proc.pid and proc.poll() is None  # the target keeps running
        load_profile(r.output)
    finally:
        _reap(proc)
    assert proc.returncode == 0


@pytest.mark.timeout(120)
def test_e2e_attach_target_exits_first(tmp_path: Path) -> None:
    _pyspy_or_skip()
    proc = _spawn_target(tmp_path, 0.4)
    try:
        s = ProfileSession(PySpyOptions(output=tmp_path / "p.json", rate=100), pid=proc.pid,
                           role="worker-0")
        _start_or_skip(s)
        assert s.wait(timeout=60)  # py-spy notices the exit, writes its file, ends
        s.stop(check=False)
        _check_or_skip(s)
        r = s.result
        assert r is not None and r.ended_by == "itself"
        assert r.stop_reason == "process exited"
        a = attribute(load_profile(r.output), E2E_MAP, "worker-0")
        assert a.total == sum(a.counts.values())
    finally:
        _reap(proc)
