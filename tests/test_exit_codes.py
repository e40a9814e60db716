"""Exit codes: usage errors, failures and verdicts never share a code."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.exit_codes import ExitCode


@pytest.mark.parametrize("argv", [
    ["compare", "a", "b", "--factor", "abc"],      # not a number
    ["compare", "a", "b", "--factor", "0.5"],      # a number, but not a factor
    ["run", "--workers", "0"],
    ["run", "-e", "no-such-encoding"],
    ["run", "--no-such-flag"],
    ["no-such-command"],
    [],
])
def test_usage_errors_exit_64_and_run_nothing(argv: list[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors leave through exit()
        code = e.code
    assert code == ExitCode.USAGE
    assert not (tmp_path / "reports").exists()
    capsys.readouterr()


def test_a_run_folder_that_does_not_exist_is_an_error_not_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compare", str(tmp_path / "missing-a"), str(tmp_path / "missing-b")])
    assert code == ExitCode.ERROR
    assert "missing-a" in capsys.readouterr().err


def test_the_codes_are_distinct() -> None:
    assert len({int(c) for c in ExitCode}) == len(ExitCode)


def _synthetic_run(path: Path, repeats: int, scale: float = 1.0, backend: str = "reference",
                   seed: int = 0) -> Path:
    from harness.report.schema import write_tables
    from harness.report.synthetic import SyntheticSpec, synthetic_meta, synthetic_tables

    spec = SyntheticSpec(backends=(backend,), sizes=(1_000,), repeats=repeats,
                         scale={backend: scale}, seed=seed)
    stages, spans, runs = synthetic_tables(spec)
    write_tables(path, stages, spans, runs, synthetic_meta(spec))
    return path


@pytest.mark.parametrize(("repeats", "scale", "backend", "code", "says"), [
    (5, 1.0, "reference", ExitCode.OK, "0 worse (+)"),
    (5, 2.0, "reference", ExitCode.REGRESSION, "10 worse (+)"),
    (3, 2.0, "reference", ExitCode.INCOMPLETE, "run at least 5 repeats per side"),
    (5, 1.0, "elsewhere", ExitCode.ERROR, "no configuration in common"),
], ids=["same", "regressed", "too-few-repeats", "nothing-in-common"])
def test_compare_verdicts_have_their_own_codes(tmp_path: Path, repeats: int, scale: float,
                                               backend: str, code: ExitCode, says: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    a = _synthetic_run(tmp_path / "a", repeats)
    b = _synthetic_run(tmp_path / "b", repeats, scale, backend, seed=1)
    assert main(["compare", str(a), str(b)]) == code
    out = capsys.readouterr()
    assert says in out.out + out.err
