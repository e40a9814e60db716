"""Stories of the worker's state machine (``scheduler/state/worker.py``): events in,
instructions out, nothing run for real. A test plays the runtime: it "runs" an ``Execute`` by
calling the runners and feeds back an ``ExecutedEvent``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import pytest

from scheduler.state.worker import (
    MOVES,
    CancelTasksEvent,
    ComputeTasksEvent,
    DataFetchedEvent,
    Execute,
    ExecutedEvent,
    FetchData,
    ForgetGraphEvent,
    InvalidMove,
    ReleaseDataEvent,
    ReportDataLost,
    ReportErred,
    ReportFinished,
    WorkerState,
    WorkerTaskState,
)

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _every_move_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every story here checks each task's moves against the legality table."""
    monkeypatch.setattr(WorkerState, "CHECK_MOVES", True)


def total_plus_one(args: list, index: tuple) -> int:
    return sum(args) + 1


def compute(ids: Sequence[int], *, prios: Sequence[int] | None = None,
            deps: Sequence[Sequence[int]] | None = None,
            holders: Sequence[Sequence[int]] | None = None,
            stimulus_id: str = "compute") -> ComputeTasksEvent:
    """A ComputeTasksEvent for ``ids``; ``deps[i]`` are task ``i``'s dependencies, held by
    workers ``holders[i]`` (default: no dependencies, priorities = position)."""
    n = len(ids)
    deps = deps if deps is not None else [[] for _ in ids]
    holders = holders if holders is not None else [[-1] * len(d) for d in deps]
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(d) for d in deps], out=ptr[1:])
    return ComputeTasksEvent(
        stimulus_id=stimulus_id, ids=np.asarray(ids, dtype=np.int64),
        priorities=np.asarray(prios if prios is not None else range(n), dtype=np.int64),
        runners=[total_plus_one] * n, indices=[()] * n, dep_ptr=ptr,
        dep_ids=np.asarray([d for ds in deps for d in ds], dtype=np.int64),
        dep_holders=np.asarray([h for hs in holders for h in hs], dtype=np.int64))


def of(out: list, kind: type[T]) -> list[T]:
    return [i for i in out if isinstance(i, kind)]


def execute(ex: Execute) -> ExecutedEvent:
    """Run a batch the way the runtime does."""
    return ExecutedEvent(stimulus_id="ran",
                         results={tid: run(args, index) for tid, run, args, index in ex.tasks})


def ran_ids(ex: Execute) -> list[int]:
    return [t[0] for t in ex.tasks]


# --- running local work ---------------------------------------------------------------------

def test_local_tasks_run_in_priority_order_in_bounded_batches() -> None:
    """Ten tasks with no dependencies arrive in shuffled priority order at a worker with 2
    threads and batches of at most 3. At once two batches start (one per thread), each in
    priority order; the next batch starts only when one comes back. Over the whole run the
    tasks execute in priority order, and each finished batch is reported once."""
    ws = WorkerState(nthreads=2, max_batch=3)
    prios = list(range(10))
    random.Random(1).shuffle(prios)
    ids = [100 + i for i in range(10)]
    out = ws.handle(compute(ids, prios=prios))
    batches = of(out, Execute)
    assert len(batches) == 2 and out == batches
    assert [len(b.tasks) for b in batches] == [3, 3]
    by_prio = [t for _, t in sorted(zip(prios, ids, strict=True))]
    ran = ran_ids(batches[0]) + ran_ids(batches[1])
    assert ran == by_prio[:6]
    pending = list(batches)
    reports = []
    while pending:
        out = ws.handle(execute(pending.pop(0)))
        reports += of(out, ReportFinished)
        new = of(out, Execute)
        assert len(new) <= 1 and ws.running_batches <= 2
        for b in new:
            assert 1 <= len(b.tasks) <= 3
            ran += ran_ids(b)
        pending += new
    assert ran == by_prio
    assert sorted(i for r in reports for i in r.ids) == sorted(ids)
    assert ws.idle and ws.executed == 10
    assert set(ws.data) == set(ids)


def test_tasks_reading_local_results_run_without_fetching() -> None:
    """``b`` and ``c`` read ``a``, computed here. They run as soon as they arrive, with
    ``a``'s value as argument, and nothing is fetched."""
    ws = WorkerState()
    [ex] = of(ws.handle(compute([1])), Execute)
    ws.handle(execute(ex))
    out = ws.handle(compute([2, 3], deps=[[1], [1]], holders=[[0], [0]]))
    assert not of(out, FetchData)
    [ex] = of(out, Execute)
    assert [(t[0], t[2]) for t in ex.tasks] == [(2, [1]), (3, [1])]


def test_batch_size_is_bounded_by_max_batch() -> None:
    """With one thread and ``max_batch=4``, 10 ready tasks go out 4 at a time."""
    ws = WorkerState(nthreads=1, max_batch=4)
    [ex] = of(ws.handle(compute(list(range(10)))), Execute)
    sizes = [len(ex.tasks)]
    while True:
        out = of(ws.handle(execute(ex)), Execute)
        if not out:
            break
        [ex] = out
        sizes.append(len(ex.tasks))
    assert sizes == [4, 4, 2]


# --- fetching -----------------------------------------------------------------------------------

def test_missing_dependencies_are_fetched_with_one_request_per_peer() -> None:
    """Three tasks need data held by peers 5 and 6. The worker sends exactly one request to
    each peer, listing each id once. A fourth task needing data already on its way asks for
    nothing new. When peer 5 answers, the tasks that only needed peer 5 run; the others wait
    for peer 6."""
    ws = WorkerState(nthreads=1, max_batch=10)
    out = ws.handle(compute([1, 2, 3], deps=[[100, 101], [100, 102], [103]],
                            holders=[[5, 6], [5, 5], [6]]))
    fetches = {f.peer: sorted(f.ids) for f in of(out, FetchData)}
    assert fetches == {5: [100, 102], 6: [101, 103]}
    assert not of(out, Execute)
    assert ws.handle(compute([4], deps=[[102]], holders=[[5]], prios=[9])) == []
    out = ws.handle(DataFetchedEvent(stimulus_id="f5", peer=5, values={100: 10, 102: 20}))
    [ex] = of(out, Execute)
    assert [(t[0], t[2]) for t in ex.tasks] == [(2, [10, 20]), (4, [20])]
    ws.handle(execute(ex))
    out = ws.handle(DataFetchedEvent(stimulus_id="f6", peer=6, values={101: 1, 103: 3}))
    [ex] = of(out, Execute)
    assert [(t[0], t[2]) for t in ex.tasks] == [(1, [10, 1]), (3, [3])]


def test_a_dependency_moved_to_another_holder_is_fetched_from_it() -> None:
    """Task 1 waits for ``100`` from peer 5, which died without answering. The scheduler
    cancels task 1 and sends it again naming peer 7 (where it computed ``100`` again): the
    worker asks peer 7 at once instead of waiting on peer 5, and peer 5's late "missing"
    answer (its connection ended) loses nothing: peer 7's value runs the task."""
    ws = WorkerState()
    [f5] = of(ws.handle(compute([1], deps=[[100]], holders=[[5]])), FetchData)
    ws.handle(CancelTasksEvent(stimulus_id="cancel", ids=np.asarray([1])))
    [f7] = of(ws.handle(compute([1], deps=[[100]], holders=[[7]])), FetchData)
    assert (f5.peer, f5.ids, f7.peer, f7.ids) == (5, [100], 7, [100])
    out = ws.handle(DataFetchedEvent(stimulus_id="f5", peer=5, values={}, missing=[100]))
    assert not of(out, ReportDataLost) and ws.fetching == {100: 7}
    [ex] = of(ws.handle(DataFetchedEvent(stimulus_id="f7", peer=7, values={100: 4})), Execute)
    assert [(t[0], t[2]) for t in ex.tasks] == [(1, [4])]


def test_data_a_peer_does_not_have_is_reported_lost() -> None:
    """Peer 6 answers that it has no ``101``. Task 1 (which needed it) is given up and
    reported with the missing id; task 2 (which needed only peer 5's data) is unaffected.
    The copy of ``100`` fetched for task 1 alone is not kept."""
    ws = WorkerState()
    ws.handle(compute([1, 2], deps=[[100, 101], [102]], holders=[[5, 6], [5]]))
    ws.handle(DataFetchedEvent(stimulus_id="f5", peer=5, values={100: 1, 102: 2}))
    out = ws.handle(DataFetchedEvent(stimulus_id="f6", peer=6, values={}, missing=[101]))
    assert [(r.id, r.missing) for r in of(out, ReportDataLost)] == [(1, [101])]
    assert 1 not in ws.tasks
    assert 100 not in ws.data


def test_fetched_copies_go_when_no_local_task_needs_them_own_results_stay() -> None:
    """Task 2 reads ``100`` fetched from peer 5 and ``1`` computed here. Once task 2 has
    started, the copy of ``100`` is dropped; ``1`` stays (the scheduler may send more readers
    or a client may want it) until the scheduler releases it."""
    ws = WorkerState(nthreads=1)
    [ex] = of(ws.handle(compute([1])), Execute)
    ws.handle(execute(ex))
    ws.handle(compute([2, 3], deps=[[100, 1], [100]], holders=[[5, 0], [5]]))
    out = ws.handle(DataFetchedEvent(stimulus_id="f", peer=5, values={100: 7}))
    [ex] = of(out, Execute)
    assert [(t[0], t[2]) for t in ex.tasks] == [(2, [7, 1]), (3, [7])]
    assert 100 not in ws.data and 1 in ws.data
    ws.handle(execute(ex))
    assert set(ws.data) == {1, 2, 3}
    assert ws.handle(ReleaseDataEvent(stimulus_id="rel", ids=np.asarray([1, 2]))) == []
    assert set(ws.data) == {3}


def test_a_fetched_copy_stays_while_a_queued_task_still_needs_it() -> None:
    """Two readers of fetched ``100``; only one fits in the first batch. The copy stays
    until the second reader has started too."""
    ws = WorkerState(nthreads=1, max_batch=1)
    ws.handle(compute([2, 3], deps=[[100], [100]], holders=[[5], [5]]))
    out = ws.handle(DataFetchedEvent(stimulus_id="f", peer=5, values={100: 7}))
    [ex] = of(out, Execute)
    assert ran_ids(ex) == [2] and 100 in ws.data
    [ex] = of(ws.handle(execute(ex)), Execute)
    assert ran_ids(ex) == [3] and 100 not in ws.data


# --- cancelling, errors ----------------------------------------------------------------------

def test_cancel_forgets_a_task_waiting_for_data() -> None:
    """Task 2 waits for ``100`` from peer 5 and is cancelled. When the data arrives nobody
    wants it: it is not stored and nothing runs."""
    ws = WorkerState()
    ws.handle(compute([2], deps=[[100]], holders=[[5]]))
    assert ws.handle(CancelTasksEvent(stimulus_id="c", ids=np.asarray([2]))) == []
    assert ws.idle
    assert ws.handle(DataFetchedEvent(stimulus_id="f", peer=5, values={100: 7})) == []
    assert ws.data == {} and not ws.fetched_users and not ws.waiters


def test_cancel_forgets_a_queued_task_but_not_a_running_one() -> None:
    """One thread runs task 1; tasks 2 and 3 are queued. Cancelling 1 (already running)
    and 2 (queued): 1 still reports, 2 never runs, 3 runs next."""
    ws = WorkerState(nthreads=1, max_batch=1)
    [ex] = of(ws.handle(compute([1, 2, 3])), Execute)
    assert ran_ids(ex) == [1]
    assert ws.handle(CancelTasksEvent(stimulus_id="c", ids=np.asarray([1, 2]))) == []
    out = ws.handle(execute(ex))
    assert [r.ids for r in of(out, ReportFinished)] == [[1]]
    assert [ran_ids(e) for e in of(out, Execute)] == [[3]]


def test_a_task_cancelled_and_sent_again_waits_for_its_data() -> None:
    """The scheduler cancels task 2 (queued, its fetched ``100`` in hand) and later sends it
    again; the fetched copy went with the cancel, so it must be fetched again and task 2
    must not start before it arrives."""
    ws = WorkerState(nthreads=1)
    [busy] = of(ws.handle(compute([1])), Execute)
    ws.handle(compute([2], deps=[[100]], holders=[[5]]))
    ws.handle(DataFetchedEvent(stimulus_id="f", peer=5, values={100: 7}))
    ws.handle(CancelTasksEvent(stimulus_id="c", ids=np.asarray([2])))
    out = ws.handle(compute([2], deps=[[100]], holders=[[5]], stimulus_id="again"))
    assert [(f.peer, f.ids) for f in of(out, FetchData)] == [(5, [100])]
    out = ws.handle(execute(busy))
    assert not of(out, Execute)
    [ex] = of(ws.handle(DataFetchedEvent(stimulus_id="f2", peer=5, values={100: 8})), Execute)
    assert [(t[0], t[2]) for t in ex.tasks] == [(2, [8])]


def test_errors_are_reported_one_by_one_and_results_together() -> None:
    """A batch of three comes back with two results and one error: one ``ReportFinished``
    for the two, one ``ReportErred`` carrying the error blob and text."""
    ws = WorkerState(max_batch=10)
    [ex] = of(ws.handle(compute([1, 2, 3])), Execute)
    out = ws.handle(ExecutedEvent(stimulus_id="ran", results={1: 1, 3: 3},
                                  errors=[(2, b"pickled", "ValueError: bad")]))
    assert [r.ids for r in of(out, ReportFinished)] == [[1, 3]]
    assert [(r.id, r.error, r.text) for r in of(out, ReportErred)] == [
        (2, b"pickled", "ValueError: bad")]
    assert set(ws.data) == {1, 3} and ws.idle and ws.executed == 3
    assert all(i.stimulus_id == "ran" for i in out)


def test_a_long_batch_reports_as_it_goes_and_frees_its_thread_at_the_end() -> None:
    """One thread, a batch of three. The runtime says two of them finished while the batch
    still runs: they are reported at once, but the thread stays busy (task 4, sent
    meanwhile, waits). The last part frees the thread and task 4 starts."""
    ws = WorkerState(nthreads=1, max_batch=3)
    [ex] = of(ws.handle(compute([1, 2, 3])), Execute)
    assert ran_ids(ex) == [1, 2, 3]
    out = ws.handle(ExecutedEvent(stimulus_id="part", results={1: 1, 2: 2}, partial=True))
    assert [r.ids for r in of(out, ReportFinished)] == [[1, 2]]
    assert ws.running_batches == 1 and ws.running == {3}
    assert not of(ws.handle(compute([4], stimulus_id="more")), Execute)
    out = ws.handle(ExecutedEvent(stimulus_id="rest", results={3: 3}))
    assert [r.ids for r in of(out, ReportFinished)] == [[3]]
    [ex4] = of(out, Execute)
    assert ran_ids(ex4) == [4] and ws.running == {4} and ws.executed == 3


def test_a_task_sent_twice_runs_once() -> None:
    """A task sent again while it is still queued here, or after its result is here, is not
    queued or run a second time; one sent again after its result is here is reported
    finished again (the scheduler sends it again only when it dropped the first report as
    stale: without a new report it would wait for it forever)."""
    ws = WorkerState(nthreads=1, max_batch=1)
    [ex] = of(ws.handle(compute([1, 2])), Execute)
    assert ran_ids(ex) == [1]
    assert ws.handle(compute([2])) == []
    [ex2] = of(ws.handle(execute(ex)), Execute)
    assert ran_ids(ex2) == [2]
    again = ws.handle(compute([1]))
    assert not of(again, Execute)
    assert [r.ids for r in of(again, ReportFinished)] == [[1]]
    assert of(ws.handle(execute(ex2)), Execute) == []
    assert ws.idle and ws.executed == 2


def test_results_left_of_a_forgotten_graph_are_dropped() -> None:
    """Task 11 ran and was cancelled after it ran (the scheduler dropped its report as stale
    and never sent it again): its result stays until the scheduler forgets its graph (ids
    10..19), then goes; results of other graphs stay."""
    ws = WorkerState(nthreads=1, max_batch=4)
    [ex] = of(ws.handle(compute([11, 25])), Execute)
    ws.handle(execute(ex))
    assert ws.handle(CancelTasksEvent(stimulus_id="cancel", ids=np.asarray([11]))) == []
    assert set(ws.data) == {11, 25}
    ws.handle(ForgetGraphEvent(stimulus_id="forget", base=10, n=10))
    assert set(ws.data) == {25}


def test_bad_input_is_refused() -> None:
    """No threads, or an event the worker does not know: the runtime's bug, raised."""
    with pytest.raises(ValueError, match="at least one thread"):
        WorkerState(nthreads=0)
    with pytest.raises(TypeError, match="unknown event"):
        WorkerState().handle(FetchData(stimulus_id="x", peer=1, ids=[]))  # type: ignore[arg-type]


def test_reports_echo_the_newest_assignment_and_older_releases_are_ignored() -> None:
    """Task 5 runs (its first assignment) and is sent again as the third: the answer from
    ``data`` says 3. A release naming the second assignment (sent before the third) keeps
    the result; one naming the third frees it, and its number with it. Tasks sent once
    report 1 without keeping any number."""
    ws = WorkerState(nthreads=1, max_batch=4)
    [ex] = of(ws.handle(compute([5, 6])), Execute)
    [first] = of(ws.handle(execute(ex)), ReportFinished)
    assert first.ids == [5, 6] and first.seqs is None  # all first assignments
    again = dataclasses.replace(compute([5]), seqs=np.asarray([3], dtype=np.int32))
    [answer] = of(ws.handle(again), ReportFinished)
    assert answer.ids == [5] and answer.seqs == [3]
    ws.handle(ReleaseDataEvent(stimulus_id="old", ids=np.asarray([5, 6]),
                               seqs=np.asarray([2, 1], dtype=np.int32)))
    assert set(ws.data) == {5}
    ws.handle(ReleaseDataEvent(stimulus_id="new", ids=np.asarray([5]),
                               seqs=np.asarray([3], dtype=np.int32)))
    assert ws.data == {} and ws.seq == {}


# --- causes and pace ------------------------------------------------------------------------

def test_every_instruction_names_the_event_that_caused_it() -> None:
    """A batch of work started by a scheduler message carries that message's stimulus id;
    the report of the batch carries the id of the event that said it ran; a fetch carries
    the id of the compute message that needed the data."""
    ws = WorkerState(nthreads=1, max_batch=8)
    out = ws.handle(compute([1, 2], stimulus_id="done-41"),
                    compute([3], deps=[[9]], holders=[[2]], stimulus_id="done-42"))
    [ex] = of(out, Execute)
    [fetch] = of(out, FetchData)
    assert ex.stimulus_id == "done-42"  # the batch started after both were handled
    assert fetch.stimulus_id == "done-42" and fetch.ids == [9]
    ran = dataclasses.replace(execute(ex), stimulus_id="worker-a-ran-0")
    [report] = of(ws.handle(ran), ReportFinished)
    assert report.stimulus_id == "worker-a-ran-0" and report.ids == [1, 2]


def test_the_batch_size_comes_with_the_event_that_measured_it() -> None:
    """The runtime says how many tasks the next batch may take (from the last batch's pace)
    in the ``ExecutedEvent``; the state uses it for the batches it starts next."""
    ws = WorkerState(nthreads=1, max_batch=2)
    [ex] = of(ws.handle(compute(list(range(10)))), Execute)
    assert len(ex.tasks) == 2
    done = dataclasses.replace(execute(ex), next_batch=5)
    [ex2] = of(ws.handle(done), Execute)
    assert len(ex2.tasks) == 5
    with pytest.raises(ValueError, match="at least one task"):
        ws.handle(dataclasses.replace(execute(ex2), next_batch=0))


def test_task_states_follow_a_story_through_the_legal_moves() -> None:
    """A task waits for a dependency fetched from a peer, becomes ready when it arrives,
    executes, and holds its result until released; the fetched copy goes once used."""
    ws = WorkerState(nthreads=1, max_batch=4)
    out = ws.handle(compute([5], deps=[[9]], holders=[[1]]))
    assert ws.state_of(5) is WorkerTaskState.waiting
    assert ws.state_of(9) is WorkerTaskState.fetching and of(out, FetchData)
    [ex] = of(ws.handle(DataFetchedEvent(stimulus_id="got", peer=1, values={9: 1},
                                         missing=[])), Execute)
    assert ws.state_of(5) is WorkerTaskState.executing
    assert ws.state_of(9) is WorkerTaskState.released  # the copy was read: dropped
    ws.handle(execute(ex))
    assert ws.state_of(5) is WorkerTaskState.memory
    ws.handle(ReleaseDataEvent(stimulus_id="rel", ids=np.asarray([5])))
    assert ws.state_of(5) is WorkerTaskState.released and ws.states() == {}


def test_a_move_outside_the_table_is_refused_with_the_task_and_the_cause() -> None:
    """A result for a task this worker never ran would take it from released to memory,
    which no event may do: with the check on, that is an error naming both."""
    assert WorkerTaskState.memory not in MOVES[WorkerTaskState.released]
    ws = WorkerState(nthreads=1)
    with pytest.raises(InvalidMove, match=r"task id 3 moved from released to memory on "
                                          r"ExecutedEvent \('bogus'\)"):
        ws.handle(ExecutedEvent(stimulus_id="bogus", results={3: 0}, partial=True))


def test_every_state_has_its_moves_listed() -> None:
    assert set(MOVES) == set(WorkerTaskState)
    assert all(s not in MOVES[s] for s in WorkerTaskState)
