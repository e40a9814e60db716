"""The collector settings of processes that run tasks: set for a block, then put back."""

import gc

import pytest

from scheduler.runtime.gcpolicy import TASK_GC_THRESHOLDS, task_gc


def test_task_gc_sets_thresholds_and_restores_them():
    before = gc.get_threshold()
    assert before != TASK_GC_THRESHOLDS  # else the test could not tell
    with task_gc():
        assert gc.get_threshold() == TASK_GC_THRESHOLDS
    assert gc.get_threshold() == before


def test_task_gc_restores_thresholds_when_the_block_raises():
    before = gc.get_threshold()
    with pytest.raises(KeyError), task_gc():
        raise KeyError("x")
    assert gc.get_threshold() == before


def test_task_gc_still_collects_cycles():
    class Node:
        pass

    with task_gc():
        gc.collect()
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert gc.collect() > 0
