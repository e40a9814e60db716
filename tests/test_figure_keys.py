"""Each figure of a report shows its own workload's numbers: nothing in a legend, a label or
a bar is keyed so loosely that another workload's figures overwrite it."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from harness.report import figures as F
from harness.report import tables as T
from harness.report.render import report_blocks
from harness.report.schema import read_run, write_tables
from harness.report.synthetic import SyntheticSpec, synthetic_meta, synthetic_tables

# Two workloads that grow and compare differently: elementwise linearly, 3x the reference;
# reduction quadratically on Dask, 7x the reference.
SPECS = {
    "elementwise": SyntheticSpec(workloads=("elementwise",), sizes=(1_000, 10_000),
                                 scale={"dask-distributed": 3.0}, noise=0.0),
    "reduction": SyntheticSpec(workloads=("reduction",), sizes=(1_000, 10_000),
                               exponent={"dask-distributed": 2.0},
                               scale={"dask-distributed": 7.0}, noise=0.0),
}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folders = []
    for name, spec in SPECS.items():
        stages, spans, runs = synthetic_tables(spec)
        path = tmp_path_factory.mktemp(name) / "run"
        write_tables(path, stages, spans, runs, synthetic_meta(spec))
        folders.append(read_run(path))
    _, figure_jobs = report_blocks(folders, tmp_path_factory.mktemp("out"))
    return dict(figure_jobs)


def legend_texts(fig: plt.Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend() is not None
            for t in ax.get_legend().get_texts()]


@pytest.mark.parametrize(("workload", "dask_exponent"), [("elementwise", "1.00"),
                                                         ("reduction", "2.00")])
def test_scaling_legend_shows_its_own_workloads_exponents(jobs: dict[str, object],
                                                          workload: str,
                                                          dask_exponent: str) -> None:
    fig = jobs[f"scaling-{workload}.png"]()  # type: ignore[operator]
    try:
        texts = legend_texts(fig)
        dask = [t for t in texts if "[dask-distributed]" in t and t.startswith("execute ")]
        assert dask == [f"execute [dask-distributed] n^{dask_exponent}"]
        assert workload in fig.axes[0].get_title()
    finally:
        plt.close(fig)


@pytest.mark.parametrize(("workload", "scale"), [("elementwise", 3.0), ("reduction", 7.0)])
def test_ratio_bars_and_legend_belong_to_their_workload(jobs: dict[str, object],
                                                        workload: str, scale: float) -> None:
    fig = jobs[f"ratio-{workload}.png"]()  # type: ignore[operator]
    try:
        ax = fig.axes[0]
        assert ax.get_title().startswith(f"{workload}:")
        assert sorted(legend_texts(fig)) == ["dask-distributed n=1,000",
                                             "dask-distributed n=10,000"]
        if workload == "elementwise":  # same growth: every stage's bar is the scale
            widths = [p.get_width() for p in ax.patches]
            assert widths and all(w == pytest.approx(scale - 1.0) for w in widths)
    finally:
        plt.close(fig)


def test_timelines_are_one_per_backend_and_workload(jobs: dict[str, object]) -> None:
    names = sorted(n for n in jobs if n.startswith("timeline-"))
    assert names == [f"timeline-{b}-{w}.png" for b in ("dask-distributed", "reference")
                     for w in ("elementwise", "reduction")]
    for name in names:
        fig = jobs[name]()  # type: ignore[operator]
        try:
            match = re.match(r"timeline-(.+)-(elementwise|reduction)\.png", name)
            assert match is not None
            title = fig.axes[0].get_title()
            assert match.group(1) in title and match.group(2) in title
        finally:
            plt.close(fig)


def test_scaling_figure_picks_the_exponents_of_the_workload_it_draws() -> None:
    spec = SyntheticSpec(workloads=("a", "b"), backends=("reference",), noise=0.0)
    stages, _, runs = synthetic_tables(spec)
    points = T.scaling_points(T.measures(stages, runs))
    exps = T.growth_exponents(points)
    exps.loc[exps["workload"] == "b", "exponent"] = 5.0  # b's differ from a's
    for workload, shown in (("a", "1.00"), ("b", "5.00")):
        fig = F.scaling_figure(points[points["workload"] == workload], exps)
        try:
            assert f"execute [reference] n^{shown}" in legend_texts(fig)
        finally:
            plt.close(fig)


def test_ratio_figure_refuses_rows_its_series_cannot_tell_apart() -> None:
    frame = pd.DataFrame({"stage": ["execute", "execute"], "series": ["dask", "dask"],
                          "ratio": [2.0, 9.0], "ratio_min": [1.9, 8.0],
                          "ratio_max": [2.1, 10.0]})
    with pytest.raises(ValueError, match="several rows for series 'dask'"):
        F.ratio_figure(frame)
