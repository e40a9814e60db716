"""Every pattern of the stage maps names code that exists: ours, the installed Dask's and the
standard library's. A rename then fails here instead of moving samples to another row."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.profiling.map_check import default_roots, defined_functions, unmatched_patterns
from harness.profiling.rules import Rule, split_path
from harness.profiling.stage_map import REFERENCE_MAP
from scheduler.stages import Stage


def test_every_reference_map_pattern_matches_a_function_that_exists() -> None:
    assert unmatched_patterns(REFERENCE_MAP) == []


def test_every_dask_map_pattern_matches_the_installed_dask() -> None:
    pytest.importorskip("distributed")
    from harness.profiling.dask_map import DASK_MAP

    assert unmatched_patterns(DASK_MAP) == []


def test_a_renamed_function_or_moved_module_is_reported() -> None:
    roots = [r for r in default_roots() if r.name == "scheduler"]
    broken = REFERENCE_MAP.with_rules(
        Rule(Stage.schedule, module="scheduler/state/scheduler.py",
             function=("_schedule", "_choose_worker_renamed")),
        Rule(Stage.execute, module="scheduler/no_such_package/*.py", function="run"),
        Rule(Stage.execute, module="scheduler/runtime/worker.py", within="no_caller_named_so"),
        name="broken")
    problems = [p for p in unmatched_patterns(broken, roots) if "rule 0" in p or
                "rule 1 " in p or "rule 2 " in p]
    assert problems == [
        "broken map, rule 0 (schedule): function '_choose_worker_renamed' matches no function "
        "defined in scheduler/state/scheduler.py",
        "broken map, rule 1 (execute): module 'scheduler/no_such_package/*.py' matches no "
        "source file",
        "broken map, rule 2 (execute): within 'no_caller_named_so' matches no function "
        "anywhere"]


def test_functions_are_named_as_py_spy_names_frames(tmp_path: Path) -> None:
    src = tmp_path / "mod.py"
    src.write_text("def top():\n    def inner():\n        pass\n"
                   "class C:\n    async def method(self):\n        pass\n"
                   "    class D:\n        def deep(self):\n            pass\n")
    assert defined_functions(split_path(str(src))) == {
        "top", "top.<locals>.inner", "C.method", "C.D.deep"}
