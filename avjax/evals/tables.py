"""Evaluation results as files people read: a JSON object and a markdown page per split."""

from __future__ import annotations

import json
from collections.abc import Sequence

from avjax import paths


def table(head: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None):
    """Markdown table lines: `| a | b |`, then the rule (`|---|---|`, or `| --- | ---: |` from
    `align`, one marker per column), then one line per row of already formatted cells."""
    rule = "|" + "---|" * len(head) if align is None else "| " + " | ".join(align) + " |"
    return [_row(head), rule, *(_row(r) for r in rows)]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def write(
    out_dir: paths.PathLike, name: str, result: dict, markdown: str
) -> tuple[paths.Path, paths.Path]:
    """Writes `out_dir/<name>.json` (`result`, indented) and `out_dir/<name>.md`.

    Returns:
      (json path, markdown path).
    """
    out_dir = paths.as_path(out_dir)  # a local folder or a run's gs:// eval/
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=2))
    md_path.write_text(markdown)
    return json_path, md_path
