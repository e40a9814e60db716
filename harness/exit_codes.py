"""The exit codes of ``stagecost``, one place for all commands (documented in the README).

Rules: a code says what happened, never how bad it was; a usage error (the command line itself
is wrong) is never confused with a failure of the work or with a verdict of ``compare``.
"""

from __future__ import annotations

import argparse
import enum
import sys
from typing import NoReturn

__all__ = ["ExitCode", "StageCostParser", "UsageError"]


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1          # the work failed: unreadable run folder, nothing to compare, a crash
    REGRESSION = 2     # compare: something got significantly slower than the factor
    INCOMPLETE = 3     # run/profile: report written, some configurations failed; compare:
    #                    nothing regressed, some rows had too few repeats to decide or the
    #                    machine itself changed speed between the runs
    USAGE = 64         # the command line is wrong (sysexits' EX_USAGE); nothing was run
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), what shells report for an interrupted command


class UsageError(ValueError):
    """The caller's command line or arguments are wrong (bad flag value, missing option)."""


class StageCostParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors exit with ``ExitCode.USAGE``, not argparse's 2
    (which ``compare`` uses for "regressed")."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.USAGE), f"{self.prog}: error: {message}\n")
