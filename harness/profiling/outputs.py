"""One call from a py-spy file to the files a run keeps: stage table, flame graph, summary.

Rules: reads one profile file, writes into ``out_dir`` only the files named by the arguments,
and returns what it wrote plus the attribution summary (for ``meta.json``). Re-running it on
the same input rewrites the same bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .attribution import Attribution, attribute, write_stage_csv
from .flamegraph import render_flamegraph
from .rules import StageMap
from .speedscope import StackTable, load_profile

__all__ = ["ProfileOutputs", "write_profile_outputs"]


@dataclass(frozen=True, slots=True)
class ProfileOutputs:
    """What ``write_profile_outputs`` produced."""

    table: StackTable
    attribution: Attribution
    stages: pd.DataFrame
    csv_path: Path
    svg_path: Path | None

    def summary(self) -> dict[str, Any]:
        return {**self.attribution.summary(), "stages_csv": self.csv_path.name,
                "flamegraph": self.svg_path.name if self.svg_path else None}


def write_profile_outputs(profile: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                          stage_map: StageMap, role: str = "", top_n: int | None = 10,
                          csv_name: str = "profile_stages.csv",
                          svg_name: str | None = "flamegraph.svg",
                          title: str | None = None) -> ProfileOutputs:
    """Parse ``profile`` (speedscope or raw), attribute it with ``stage_map`` for ``role``,
    write ``csv_name`` and (unless ``svg_name`` is None) a flame graph coloured by stage.

    Raises ``ProfileFormatError`` for a malformed profile, ``FileNotFoundError`` if it is
    missing (py-spy wrote nothing: check its ``ProfileResult``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = load_profile(profile)
    attribution = attribute(table, stage_map, role)
    csv_path = out / csv_name
    stages = write_stage_csv(attribution, csv_path, top_n)
    svg_path = None
    if svg_name is not None:
        svg_path = out / svg_name
        label = title or f"{role or 'profile'}: {table.total} samples, stage map {stage_map.name}"
        svg = render_flamegraph(table, title=label, categories=attribution.stack_categories)
        svg_path.write_text(svg, encoding="utf-8", errors="replace")
    return ProfileOutputs(table, attribution, stages, csv_path, svg_path)
