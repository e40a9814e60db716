"""The report layer: run folders (data) -> tables -> figures, HTML and Markdown; and compare.

Modules: ``columns`` (the run-folder contract: files, columns, types), ``validate`` (its
rules), ``schema`` (read and write run folders; re-exports both), ``tables`` (pure
DataFrame -> DataFrame summaries), ``stats`` (growth exponent, rank test), ``figures`` (pure
DataFrame -> Figure), ``markup`` (Markdown/HTML/text rendering), ``render`` (the report of one
or more runs), ``compare`` (A/B comparison with significance and an exit code), ``synthetic``
(tables with known answers, for tests and demos).

Everything here reads stored data only: nothing measures, and re-rendering is idempotent.
"""

from harness.report.compare import compare_runs, exit_code, render_compare
from harness.report.render import render_report
from harness.report.schema import SCHEMA_VERSION, Run, RunFolderError, read_run, write_tables

__all__ = [
    "SCHEMA_VERSION",
    "Run",
    "RunFolderError",
    "compare_runs",
    "exit_code",
    "read_run",
    "render_compare",
    "render_report",
    "write_tables",
]
