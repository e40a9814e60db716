"""``scheduler.state.routing.route``: one answer of the scheduler, grouped per worker as every
sender (server, in-process cluster, benchmarks) sends it."""

from __future__ import annotations

import numpy as np

from scheduler.state.events import CancelTasks, GraphRejected, KeysInMemory, ReleaseData, SendTasks
from scheduler.state.routing import ANY_ASSIGNMENT, route


def ids(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def test_batches_of_one_worker_and_graph_are_merged_in_order_naming_the_first_cause() -> None:
    out = route([
        SendTasks(stimulus_id="done-1", worker=0, segment=3, ids=ids(5, 6)),
        SendTasks(stimulus_id="done-2", worker=1, segment=3, ids=ids(7)),
        SendTasks(stimulus_id="done-3", worker=0, segment=3, ids=ids(8)),
        SendTasks(stimulus_id="done-4", worker=0, segment=4, ids=ids(9)),
    ])
    assert list(out.sends) == [(0, 3), (1, 3), (0, 4)]
    assert out.sends[0, 3].ids.tolist() == [5, 6, 8] and out.sends[0, 3].stimulus_id == "done-1"
    assert out.sends[1, 3].ids.tolist() == [7] and out.n_sent == 5


def test_releases_keep_their_assignment_numbers_and_none_means_any() -> None:
    out = route([
        ReleaseData(stimulus_id="r-1", worker=2, ids=ids(1, 2), seqs=np.asarray([3, 1],
                                                                              dtype=np.int32)),
        ReleaseData(stimulus_id="r-2", worker=2, ids=ids(4)),
        CancelTasks(stimulus_id="c-1", worker=2, ids=ids(9)),
        CancelTasks(stimulus_id="c-2", worker=2, ids=ids(10)),
    ])
    rel = out.releases[2]
    assert rel.ids.tolist() == [1, 2, 4] and rel.stimulus_id == "r-1"
    assert rel.seqs is not None and rel.seqs.tolist() == [3, 1, ANY_ASSIGNMENT]
    assert out.cancels[2].ids.tolist() == [9, 10] and out.cancels[2].stimulus_id == "c-1"
    assert out.sends == {} and out.others == []


def test_instructions_for_clients_pass_through_in_order() -> None:
    a = KeysInMemory(stimulus_id="s", client="c", graph_id="g", ids=ids(1), workers=ids(0),
                     done=False)
    b = GraphRejected(stimulus_id="s", client="c", graph_id="h", reason="bad")
    out = route([a, SendTasks(stimulus_id="s", worker=0, segment=0, ids=ids(1)), b])
    assert out.others == [a, b]
