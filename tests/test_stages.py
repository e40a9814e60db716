"""The stage vocabulary and the span recorder (``scheduler/stages.py``)."""

from __future__ import annotations

import msgpack
import pytest

from scheduler.stages import NULL_RECORDER, SpanRecorder, SpanRow, Stage, shift_rows

# The table of DESIGN.md, in pipeline order.
DESIGN_STAGES = ["generate", "optimize", "serialize", "communicate", "update_graph",
                 "schedule", "dispatch", "execute"]


# --- Stage ---------------------------------------------------------------------------------

def test_stage_has_the_eight_design_stages_in_pipeline_order():
    assert [s.name for s in Stage] == DESIGN_STAGES
    assert [int(s) for s in Stage] == list(range(1, 9))
    assert sorted(Stage) == list(Stage)


def test_stage_round_trips_through_its_int_value():
    for s in Stage:
        assert Stage(int(s)) is s
        assert Stage[s.name] is s


# --- SpanRecorder: spans -------------------------------------------------------------------

def test_span_records_counters_set_inside_the_block():
    rec = SpanRecorder("client")
    with rec.span(Stage.serialize, tasks=3) as s:
        s.nbytes = 1234
        s.messages += 2
        s.tasks += 1
    (row,) = rec.drain()
    assert isinstance(row, SpanRow)
    assert row.stage == int(Stage.serialize)
    assert type(row.stage) is int
    assert row.role == "client"
    assert (row.tasks, row.nbytes, row.messages) == (4, 1234, 2)
    assert row.end_ns >= row.start_ns > 0


def test_span_counters_given_up_front():
    rec = SpanRecorder("scheduler")
    with rec.span(Stage.update_graph, tasks=10, nbytes=20, messages=1):
        pass
    (row,) = rec.drain()
    assert (row.stage, row.tasks, row.nbytes, row.messages) == (5, 10, 20, 1)


def test_span_is_recorded_even_when_the_block_raises():
    rec = SpanRecorder("worker-0")
    with pytest.raises(RuntimeError, match="boom"), rec.span(Stage.execute, tasks=1):
        raise RuntimeError("boom")
    assert len(rec) == 1
    assert rec.drain()[0].stage == int(Stage.execute)


def test_consecutive_spans_are_ordered_in_time():
    rec = SpanRecorder("client")
    for stage in Stage:
        with rec.span(stage):
            pass
    rows = rec.drain()
    assert [r.stage for r in rows] == [int(s) for s in Stage]
    for a, b in zip(rows, rows[1:], strict=False):
        assert a.end_ns <= b.start_ns


def test_record_with_explicit_times():
    rec = SpanRecorder("scheduler")
    rec.record(Stage.communicate, 100, 250, tasks=7, nbytes=4096, messages=3)
    rec.record(Stage.schedule, 300, 300)  # zero-length spans are fine
    rows = rec.drain()
    assert rows == [SpanRow(4, "scheduler", 100, 250, 7, 4096, 3),
                    SpanRow(6, "scheduler", 300, 300, 0, 0, 0)]


def test_record_rejects_a_span_that_ends_before_it_starts():
    rec = SpanRecorder("scheduler")
    with pytest.raises(ValueError, match=r"communicate ends before it starts \(250 > 100\)"):
        rec.record(Stage.communicate, 250, 100)
    assert len(rec) == 0


def test_every_row_carries_the_recorder_role():
    rec = SpanRecorder("worker-3")
    with rec.span(Stage.dispatch):
        pass
    rec.record(Stage.execute, 1, 2)
    assert {r.role for r in rec.drain()} == {"worker-3"}


def test_drain_returns_rows_and_empties():
    rec = SpanRecorder("client")
    rec.record(Stage.generate, 0, 1)
    rec.record(Stage.optimize, 1, 2)
    assert len(rec) == 2
    rows = rec.drain()
    assert [r.stage for r in rows] == [1, 2]
    assert len(rec) == 0
    assert rec.drain() == []
    rec.record(Stage.serialize, 2, 3)
    assert [r.stage for r in rec.drain()] == [3]
    assert rows == [SpanRow(1, "client", 0, 1, 0, 0, 0), SpanRow(2, "client", 1, 2, 0, 0, 0)]


def test_extend_adopts_rows_from_elsewhere_keeping_their_role():
    worker = SpanRecorder("worker-0")
    worker.record(Stage.execute, 10, 20, tasks=5)
    shipped = [list(r) for r in worker.drain()]  # as they arrive after msgpack
    client = SpanRecorder("client")
    client.record(Stage.generate, 0, 5)
    client.extend(shipped)
    client.extend([(7, "scheduler", 30, 40, 0, 0, 2)])
    rows = client.drain()
    assert all(type(r) is SpanRow for r in rows)
    assert [(r.role, r.stage) for r in rows] == [("client", 1), ("worker-0", 8),
                                                 ("scheduler", 7)]
    assert rows[1] == SpanRow(8, "worker-0", 10, 20, 5, 0, 0)


def test_shift_rows_moves_both_times():
    rows = [SpanRow(8, "worker-1", 100, 150, 1, 2, 3), [7, "worker-1", 0, 10, 0, 0, 1]]
    shifted = shift_rows(rows, 1_000)
    assert shifted == [SpanRow(8, "worker-1", 1_100, 1_150, 1, 2, 3),
                       SpanRow(7, "worker-1", 1_000, 1_010, 0, 0, 1)]
    assert all(type(r) is SpanRow for r in shifted)
    assert shift_rows(shifted, -1_000) == [SpanRow(*r) for r in rows]
    assert shift_rows([], 5) == []
    # the input is left as it was
    assert rows[0] == SpanRow(8, "worker-1", 100, 150, 1, 2, 3)


# --- recording off -------------------------------------------------------------------------

def test_disabled_recorder_records_nothing():
    rec = SpanRecorder("client", enabled=False)
    with rec.span(Stage.generate, tasks=10) as s:
        s.tasks += 5
        s.nbytes = 100
    rec.record(Stage.communicate, 0, 10)
    rec.record(Stage.communicate, 10, 0)  # not even checked when off
    assert len(rec) == 0
    assert rec.drain() == []
    assert "off" in repr(rec)


def test_disabled_recorder_hands_out_one_shared_null_span():
    rec = SpanRecorder("client", enabled=False)
    a = rec.span(Stage.generate)
    b = rec.span(Stage.execute, tasks=3)
    c = NULL_RECORDER.span(Stage.schedule)
    assert a is b is c
    with a as inner:
        assert inner is a
        inner.tasks += 5
        inner.nbytes += 10
        inner.messages = 3
        # counters read as 0 and writes are forgotten
        assert (inner.tasks, inner.nbytes, inner.messages) == (0, 0, 0)


def test_null_span_does_not_swallow_exceptions():
    with pytest.raises(KeyError), NULL_RECORDER.span(Stage.execute):
        raise KeyError("x")


def test_null_recorder_is_off():
    assert NULL_RECORDER.enabled is False
    with NULL_RECORDER.span(Stage.update_graph):
        pass
    assert len(NULL_RECORDER) == 0


def test_recorder_can_be_switched_on_later():
    rec = SpanRecorder("client", enabled=False)
    with rec.span(Stage.generate):
        pass
    rec.enabled = True
    with rec.span(Stage.optimize):
        pass
    assert [r.stage for r in rec.drain()] == [int(Stage.optimize)]


# --- wire form -----------------------------------------------------------------------------

def test_rows_round_trip_through_msgpack():
    rec = SpanRecorder("worker-12")
    with rec.span(Stage.dispatch, tasks=2, nbytes=2**40, messages=1):
        pass
    rec.record(Stage.execute, 2**62, 2**62 + 5, tasks=1)
    rows = rec.drain()
    data = msgpack.packb(rows)
    back = [SpanRow(*r) for r in msgpack.unpackb(data)]
    assert back == rows
    assert all(type(r.stage) is int and type(r.role) is str for r in back)


# --- role ----------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["", None, 3, b"client"])
def test_invalid_role_is_rejected(role):
    with pytest.raises(ValueError, match="non-empty role name"):
        SpanRecorder(role)  # type: ignore[arg-type]


def test_repr_names_role_state_and_count():
    rec = SpanRecorder("scheduler")
    rec.record(Stage.schedule, 0, 1)
    assert repr(rec) == "SpanRecorder(role='scheduler', on, 1 spans)"
