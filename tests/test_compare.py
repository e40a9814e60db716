"""Tests of ``harness.report.compare``: marks, significance, exit code, renderings."""

from __future__ import annotations

import html.parser
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.exit_codes import ExitCode
from harness.report.compare import (
    COMPARE_COLUMNS,
    NothingToCompare,
    compare_frames,
    compare_html,
    compare_markdown,
    compare_runs,
    compare_text,
    exit_code,
    render_compare,
)
from harness.report.schema import STAGE_NAMES, write_tables
from harness.report.stats import (
    mann_whitney_p,
    min_two_sided_p,
    ratio_interval,
    repeats_needed,
    u_null_cdf,
)
from harness.report.synthetic import SyntheticSpec, synthetic_meta, synthetic_tables

BASE = SyntheticSpec(backends=("reference",), sizes=(1_000, 10_000), repeats=5, seed=1)


def make_run(path: Path, spec: SyntheticSpec) -> Path:
    stages, spans, runs = synthetic_tables(spec)
    write_tables(path, stages, spans, runs, synthetic_meta(spec))
    return path


def with_scale(spec: SyntheticSpec, scale: float, seed: int) -> SyntheticSpec:
    return SyntheticSpec(backends=spec.backends, sizes=spec.sizes, repeats=spec.repeats,
                         scale={b: scale for b in spec.backends},
                         not_applicable=spec.not_applicable, seed=seed)


def measures_of(values: dict[str, list[float]]) -> pd.DataFrame:
    """A ``measures`` table for one configuration: stage -> seconds of each repeat."""
    rows = [{"backend": "reference", "workload": "w", "n_tasks": 100, "repeat": i,
             "stage": stage, "seconds": v, "applicable": not math.isnan(v)}
            for stage, vs in values.items() for i, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_a_2x_slowdown_is_a_regression(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", BASE)
    b = make_run(tmp_path / "b", with_scale(BASE, 2.0, seed=2))
    table = compare_runs(a, b)
    assert list(table.columns) == list(COMPARE_COLUMNS)
    assert len(table) == 2 * (len(STAGE_NAMES) + 2)  # two sizes x (stages + ttft + wall)
    assert (table["mark"] == "+").all()
    assert table["ratio"].between(1.9, 2.1).all()
    assert table["p_value"].lt(0.01).all()  # 5 vs 5 repeats: the rank test can decide
    assert (table["ci_low"] > 1.5).all() and (table["ci_high"] < 2.5).all()
    assert (table["verdict"] == "worse").all()
    assert exit_code(table) == 2


def test_identical_runs_are_not_significant(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", BASE)
    b = make_run(tmp_path / "b", BASE)
    table = compare_runs(a, b)
    assert (table["mark"] == "~").all()
    assert (table["ratio"] == 1.0).all()
    assert exit_code(table) == 0
    # Same configuration, different noise: still nothing beyond the factor.
    c = make_run(tmp_path / "c", with_scale(BASE, 1.0, seed=9))
    noisy = compare_runs(a, c)
    assert (noisy["mark"] == "~").all() and exit_code(noisy) == 0


def test_a_2x_speedup_is_an_improvement(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", BASE)
    b = make_run(tmp_path / "b", with_scale(BASE, 0.5, seed=3))
    table = compare_runs(a, b)
    assert (table["mark"] == "-").all()
    assert exit_code(table) == 0


def test_too_few_repeats_say_so_and_how_many_are_needed() -> None:
    a = {"generate": [1.0, 1.1, 1.2], "optimize": [1.0, 1.1, 1.2]}
    b = {"generate": [2.0, 2.1, 2.2],  # clearly apart, but 3 vs 3 cannot reach p < 0.01
         "optimize": [1.15, 1.3, 1.5]}
    table = compare_frames(measures_of(a), measures_of(b)).set_index("stage")
    assert (table["mark"] == "?").all()
    assert (table["repeats_needed"] == 5).all()
    assert table["verdict"].str.startswith("not enough repeats (3 vs 3)").all()
    assert table["p_value"].isna().all() and table["ci_low"].isna().all()
    assert table.loc["generate", "ratio_min"] == pytest.approx(2.0 / 1.2)
    assert table.loc["generate", "ratio_max"] == pytest.approx(2.2 / 1.0)
    assert exit_code(table.reset_index()) == ExitCode.INCOMPLETE
    assert "run at least 5 repeats per side" in compare_text(table.reset_index())
    # One side with many repeats lowers what the other needs: 3 vs 9 can decide.
    many = compare_frames(measures_of({"execute": [1.0, 1.1, 1.2]}),
                          measures_of({"execute": [2.0 + i / 100 for i in range(9)]}))
    assert many["mark"].iloc[0] == "+"
    some = compare_frames(measures_of({"execute": [1.0, 1.1, 1.2, 1.3]}),
                          measures_of({"execute": [2.0, 2.1]}))
    assert some["mark"].iloc[0] == "?" and some["repeats_needed"].iloc[0] == 5


def test_five_repeats_decide_only_when_apart() -> None:
    a = [1.00, 1.02, 1.04, 1.06, 1.08]
    apart = compare_frames(measures_of({"wall": a}),
                           measures_of({"wall": [1.30, 1.32, 1.34, 1.36, 1.38]}))
    assert apart["mark"].iloc[0] == "+"
    assert apart["p_value"].iloc[0] == pytest.approx(2 / 252)
    # 5 vs 5 at 99 %: the interval is the full range of pairwise ratios
    assert apart["ci_low"].iloc[0] == pytest.approx(1.30 / 1.08)
    assert apart["ci_high"].iloc[0] == pytest.approx(1.38 / 1.00)
    one_overlap = compare_frames(measures_of({"wall": a}),
                                 measures_of({"wall": [1.07, 1.32, 1.34, 1.36, 1.38]}))
    assert one_overlap["mark"].iloc[0] == "~"  # p = 4/252 > 0.01
    assert one_overlap["verdict"].iloc[0] == "not significant"


def test_identical_samples_are_not_significant_at_any_repeat_count() -> None:
    for n in (5, 8, 20):
        same = [1.0 + 0.01 * ((7 * i) % n) for i in range(n)]
        table = compare_frames(measures_of({"wall": same}), measures_of({"wall": same}))
        assert table["mark"].iloc[0] == "~"
        assert table["p_value"].iloc[0] == pytest.approx(1.0)
        assert table["ci_low"].iloc[0] <= 1.0 <= table["ci_high"].iloc[0]


def test_false_alarms_on_synthetic_noise_are_rare() -> None:
    """Pairs of runs drawn from one distribution, 5 repeats a side: a row is marked + only
    when every B repeat is slower than every A one (chance 1 in 252) and the medians differ by
    more than the factor, so fewer than 0.4 % of the rows."""
    rng = np.random.default_rng(7)
    values_a = {f"s{i}": list(rng.lognormal(0.0, 0.2, 5)) for i in range(1000)}
    values_b = {f"s{i}": list(rng.lognormal(0.0, 0.2, 5)) for i in range(1000)}
    table = compare_frames(measures_of(values_a), measures_of(values_b))
    assert len(table) == 1000 and table["p_value"].notna().all()
    assert (table["mark"] == "+").sum() <= 6
    assert (table["p_value"] < 0.01).sum() <= 15  # both directions: 2 in 252


def test_nothing_in_common_is_an_error(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", BASE)
    b = make_run(tmp_path / "b", SyntheticSpec(backends=("other",), sizes=(1_000,), repeats=5))
    with pytest.raises(NothingToCompare, match="no configuration in common") as err:
        compare_runs(a, b)
    assert "other · elementwise · n=1,000" in str(err.value)
    assert "reference · elementwise · n=1,000" in str(err.value)


def test_factor_guards_small_significant_changes() -> None:
    a = {"execute": [1.00, 1.01, 1.02, 1.03, 1.04]}
    b = {"execute": [1.05, 1.06, 1.07, 1.08, 1.09]}  # significant, but only ~5 % slower
    table = compare_frames(measures_of(a), measures_of(b))
    assert table["p_value"].iloc[0] < 0.01 and table["mark"].iloc[0] == "~"
    assert table["verdict"].iloc[0] == "significant, but within the factor 1.1"
    strict = compare_frames(measures_of(a), measures_of(b), factor=1.02)
    assert strict["mark"].iloc[0] == "+"
    with pytest.raises(ValueError, match="factor"):
        compare_frames(measures_of(a), measures_of(b), factor=0.9)


def test_not_applicable_is_its_own_mark() -> None:
    nan = float("nan")
    a = {"dispatch": [nan] * 5, "execute": [1.0] * 5}
    b = {"dispatch": [0.5] * 5, "execute": [1.0] * 5}
    table = compare_frames(measures_of(a), measures_of(b)).set_index("stage")
    assert table.loc["dispatch", "mark"] == "n/a"
    assert table.loc["execute", "mark"] == "~"
    assert exit_code(table.reset_index()) == 0


def test_ratio_interval_and_null_distribution() -> None:
    # P(U <= u) for 4 vs 3, counted by hand from the 35 splits: 1, 1, 2, 3, 4, ... ways
    assert u_null_cdf(4, 3)[:4] == pytest.approx([1 / 35, 2 / 35, 4 / 35, 7 / 35])
    assert u_null_cdf(5, 5)[-1] == pytest.approx(1.0)
    assert repeats_needed(0.01) == 5 and repeats_needed(0.002) == 7
    assert repeats_needed(0.01, 3, 3) == 5 and repeats_needed(0.01, 3, 9) == 1
    lo, hi = ratio_interval(np.linspace(1.0, 1.2, 10), np.linspace(1.3, 1.5, 10), 0.01)
    assert 1.0 < lo < 1.3 / 1.2 * 1.1 and 1.5 / 1.0 > hi > 1.25
    assert all(math.isnan(v) for v in ratio_interval([1, 2, 3], [2, 3, 4], 0.01))
    assert all(math.isnan(v) for v in ratio_interval([0.0] * 5, [1.0] * 5, 0.01))


def test_mann_whitney_exact_and_approximate() -> None:
    assert mann_whitney_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)
    assert mann_whitney_p([1, 1, 1], [1, 1, 1]) == 1.0
    assert mann_whitney_p([1, 3, 5, 7], [2, 4, 6, 8]) > 0.5
    assert math.isnan(mann_whitney_p([], [1.0]))
    assert min_two_sided_p(3, 3) == pytest.approx(0.1)
    assert min_two_sided_p(4, 4) < 0.05
    big = mann_whitney_p(list(range(12)), list(range(100, 112)))  # normal approximation
    assert big < 1e-3
    same = mann_whitney_p(list(range(12)), [x + 0.5 for x in range(12)])
    assert same > 0.5


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


def test_renderings(tmp_path: Path) -> None:
    one_size = SyntheticSpec(backends=("reference",), sizes=(1_000,), repeats=5, seed=1)
    a = make_run(tmp_path / "a", one_size)
    b = make_run(tmp_path / "b", with_scale(one_size, 2.0, seed=2))
    table = compare_runs(a, b)
    text = compare_text(table)
    assert text.splitlines()[0].split()[:3] == ["mark", "backend", "workload"]
    assert "10 worse (+)" in text and "0 not enough repeats (?)" in text
    md = compare_markdown(table, "a", "b")
    assert re.search(r"^\|\s*\+\s*\|\s*reference\s*\|\s*elementwise\s*\|", md, re.M)
    parser = _Tags()
    parser.feed(compare_html(table, "a<b>", "b"))
    assert "table" in parser.tags and "b" not in parser.tags  # run names are escaped
    out = tmp_path / "cmp"
    html_path, md_path = render_compare(table, out, "a", "b")
    first = (html_path.read_bytes(), md_path.read_bytes(),
             (out / "figures" / "compare-ratio.png").read_bytes())
    render_compare(compare_runs(a, b), out, "a", "b")
    again = (html_path.read_bytes(), md_path.read_bytes(),
             (out / "figures" / "compare-ratio.png").read_bytes())
    assert first == again and len(first[2]) > 1000


def test_a_stage_change_too_small_against_the_wall_time_is_not_a_regression() -> None:
    wall = [4.0, 4.1, 3.9, 4.05, 3.95]
    tiny = [85e-6, 86e-6, 84e-6, 85.5e-6, 84.5e-6]  # 85 µs of a 4 s run ...
    a = measures_of({"optimize": tiny, "execute": [1.0, 1.01, 0.99, 1.02, 0.98],
                     "wall": wall})
    b = measures_of({"optimize": [t * 1.31 for t in tiny],  # ... now 112 µs
                     "execute": [1.31, 1.32, 1.3, 1.33, 1.29], "wall": wall})
    table = compare_frames(a, b).set_index("stage")
    assert table.loc["optimize", "mark"] == "~"
    assert "under 0.5% of the wall time" in table.loc["optimize", "verdict"]
    assert table.loc["execute", "mark"] == "+"  # 0.31 s is no detail
