"""The HTML report in a real browser (headless Chromium): it renders, every image is present
and decodes, nothing is logged as an error, and the page needs nothing beside itself.

The report is rendered from a synthetic run, then moved away from its folder (so a figure
linked instead of embedded would break), and opened by ``tests.browser``. CI installs
Chromium (``.ci/run``); elsewhere the test is skipped, saying why, only when no Chromium can
be found.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from harness.report.render import render_report
from tests.browser import check_page, find_chromium
from tests.test_report import NA_SPEC, make_run

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium found (install Debian's `chromium`, or set "
                             "STAGECOST_CHROMIUM to a Chromium binary)")


def test_the_report_renders_in_a_browser_on_its_own(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", NA_SPEC, profile=True)
    html_path, _ = render_report([run], run)
    alone = tmp_path / "mailed" / "report.html"
    alone.parent.mkdir()
    shutil.copy(html_path, alone)
    shutil.rmtree(run)  # the run folder and its figures/ are gone

    assert CHROMIUM is not None
    seen = check_page(CHROMIUM, alone)

    assert seen.console_errors == []
    assert len(seen.images) >= 4  # stacked, timelines, scaling, ratios
    for img in seen.images:
        assert img["ok"] and img["complete"], img
        assert img["width"] > 100 and img["height"] > 100, img
    assert seen.title.startswith("stagecost report")
    assert "dominates with" in seen.text and "Stage costs, ranked" in seen.text
    shot = matplotlib.image.imread(io.BytesIO(seen.screenshot_png))
    assert shot.shape[0] >= 1000 and shot.shape[1] >= 1000
    # Not blank: many distinct colours (text, table rules, the figures' stage colours).
    colours = np.unique((shot[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50 and shot.std() > 0.05
