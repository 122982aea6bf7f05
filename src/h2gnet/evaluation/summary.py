"""Evaluation reports: per-slide CSV, summary Markdown/JSON (paper Tables 1-2), terminal table, box plot.

``summaries`` below is a mapping design name -> :func:`h2gnet.evaluation.metrics.summarise`
output. Numbers are printed as ``mean ± std`` with three decimals
(``0.933 ± 0.069``); a metric averaged over fewer slides than the design has
(NaN = undefined, see :mod:`h2gnet.evaluation.metrics`) is suffixed ``(n=…)``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from h2gnet.evaluation.metrics import METRICS, STD_DDOF, group_sort_key
from h2gnet.io.atomic import atomic_path, write_text

LEADING_COLUMNS = ("design", "slide", "grade", *METRICS, "tp", "fp", "fn", "pred_px", "truth_px")
METRIC_TITLES = {"recall": "Recall", "precision": "Precision", "dice": "Dice"}

Summaries = Mapping[str, Mapping[str, Any]]


# ----------------------------------------------------------------------------- per-slide CSV


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Known columns first (those present), then any others in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return [c for c in LEADING_COLUMNS if c in seen] + [c for c in seen if c not in LEADING_COLUMNS]


def _csv_cell(value: Any) -> str:
    """CSV text of a value: None/NaN -> empty, floats at full precision."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def slides_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV text with one line per slide row (missing/NaN values are empty cells)."""
    columns = list(columns) if columns is not None else _columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    return buf.getvalue()


def write_slides_csv(
    path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> Path:
    """Atomically write :func:`slides_csv`; returns ``Path(path)``."""
    write_text(path, slides_csv(rows, columns))
    return Path(path)


# ----------------------------------------------------------------------------- formatting


def format_mean_std(stat: Mapping[str, Any], digits: int = 3, n_expected: int | None = None) -> str:
    """``"0.933 ± 0.069"`` from ``{"mean", "std", "n"}``.

    ``"–"`` when n = 0; the std is left out when NaN; ``" (n=k)"`` is appended
    when ``n_expected`` is given and differs from n.
    """
    n = int(stat.get("n", 0))
    if n == 0 or math.isnan(stat["mean"]):
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    if not math.isnan(stat["std"]):
        text += f" ± {stat['std']:.{digits}f}"
    if n_expected is not None and n != n_expected:
        text += f" (n={n})"
    return text


def _group_title(by: str | None, label: str) -> str:
    return f"Grade {label}" if by == "grade" else f"{by}={label}"


def overall_rows(summaries: Summaries, metrics: Sequence[str] = METRICS, digits: int = 3) -> list[list[str]]:
    """Table 1 rows: ``[design, metric cells...]``."""
    rows = []
    for design, summary in summaries.items():
        block = summary["overall"]
        rows.append([design] + [format_mean_std(block[m], digits, block["n"]) for m in metrics])
    return rows


def _group_labels(summaries: Summaries) -> list[str]:
    labels: dict[str, None] = {}
    for summary in summaries.values():
        labels.update(dict.fromkeys(summary.get("groups", {})))
    return sorted(labels, key=group_sort_key)


def _common_group_n(summaries: Summaries, label: str) -> int | None:
    """The slide count of group ``label`` if every design has the same, else None."""
    counts = {s.get("groups", {}).get(label, {}).get("n", 0) for s in summaries.values()}
    return counts.pop() if len(counts) == 1 else None


def group_table(
    summaries: Summaries, metric: str = "dice", digits: int = 3
) -> tuple[list[str], list[list[str]]]:
    """Table 2: header ``[Design, "Grade I (11)", ...]`` and rows of ``metric`` per group."""
    labels = _group_labels(summaries)
    by = next(iter(summaries.values()), {}).get("by")
    header = ["Design"]
    for label in labels:
        n = _common_group_n(summaries, label)
        header.append(_group_title(by, label) + (f" ({n})" if n is not None else ""))
    rows = []
    for design, summary in summaries.items():
        cells = [design]
        for label in labels:
            block = summary.get("groups", {}).get(label)
            if block is None:
                cells.append("–")
                continue
            cell = format_mean_std(block[metric], digits, block["n"])
            if _common_group_n(summaries, label) is None and "(n=" not in cell:
                cell += f" (n={block[metric]['n']})"
            cells.append(cell)
        rows.append(cells)
    return header, rows


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _slide_count_note(summaries: Summaries) -> str:
    counts = {s["overall"]["n"] for s in summaries.values()}
    n = f"n = {counts.pop()} slides" if len(counts) == 1 else "slide counts differ between designs"
    return f"Macro mean ± standard deviation over slides (ddof={STD_DDOF}); {n}."


def summary_markdown(
    summaries: Summaries, metrics: Sequence[str] = METRICS, group_metric: str = "dice", digits: int = 3
) -> str:
    """Markdown with Table 1 (``| Design | Recall | Precision | Dice |``) and, if grouped, Table 2."""
    header = ["Design"] + [METRIC_TITLES.get(m, m) for m in metrics]
    table = _markdown_table(header, overall_rows(summaries, metrics, digits))
    parts = ["## Slide-level segmentation performance\n\n", table]
    parts.append("\n" + _slide_count_note(summaries) + "\n")
    if _group_labels(summaries):
        g_header, g_rows = group_table(summaries, group_metric, digits)
        title = METRIC_TITLES.get(group_metric, group_metric)
        by = next(iter(summaries.values())).get("by")
        parts += [f"\n## {title} per {by}\n\n", _markdown_table(g_header, g_rows)]
    return "".join(parts)


def write_summary_markdown(path: str | Path, summaries: Summaries, **kwargs: Any) -> Path:
    """Atomically write :func:`summary_markdown`; returns ``Path(path)``."""
    write_text(path, summary_markdown(summaries, **kwargs))
    return Path(path)


def _json_safe(value: Any) -> Any:
    """Nested copy with NaN/inf -> None and numpy scalars -> Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def summary_json(summaries: Summaries, extra: Mapping[str, Any] | None = None) -> str:
    """JSON text ``{"std_ddof": 0, "designs": {design: summary}, **extra}`` (NaN -> null)."""
    doc = {"std_ddof": STD_DDOF, "designs": summaries, **(extra or {})}
    return json.dumps(_json_safe(doc), indent=2, allow_nan=False) + "\n"


def write_summary_json(
    path: str | Path, summaries: Summaries, extra: Mapping[str, Any] | None = None
) -> Path:
    """Atomically write :func:`summary_json`; returns ``Path(path)``."""
    write_text(path, summary_json(summaries, extra))
    return Path(path)


# ----------------------------------------------------------------------------- terminal


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain aligned table: first column left-aligned, others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]) + "\n"


def format_table(summaries: Summaries, metrics: Sequence[str] = METRICS, digits: int = 3) -> str:
    """The terminal text of :func:`print_table`."""
    header = ["Design"] + [METRIC_TITLES.get(m, m) for m in metrics]
    text = _text_table(header, overall_rows(summaries, metrics, digits))
    if _group_labels(summaries):
        text += "\n" + _text_table(*group_table(summaries, "dice", digits))
    return text


def print_table(summaries: Summaries, file: TextIO | None = None, **kwargs: Any) -> None:
    """Print Table 1 (and the per-group Dice table) as aligned text to ``file`` (stdout)."""
    print(format_table(summaries, **kwargs), end="", file=file or sys.stdout)


# ----------------------------------------------------------------------------- figure


def boxplot_png(
    dice_by_design: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str = "Per-slide Dice",
    ylabel: str = "Dice similarity coefficient",
) -> Path:
    """Atomically write a box plot (one box per design, slides as dots) to a PNG; needs matplotlib.

    NaN values are left out. matplotlib is imported here (the ``[train]``
    extra) and drawn with the Agg canvas, without touching pyplot's state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(dice_by_design)
    data = [np.asarray(dice_by_design[n], dtype=np.float64) for n in names]
    data = [d[~np.isnan(d)] for d in data]
    fig = Figure(figsize=(max(4.0, 1.1 * len(names) + 1.5), 4.5), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.boxplot(data, showfliers=False)
    rotate = len(names) > 3
    ax.set_xticks(range(1, len(names) + 1), names)
    if rotate:
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    for i, values in enumerate(data, start=1):
        jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(len(values))
        ax.scatter(i + jitter, values, s=8, alpha=0.5, color="tab:blue", zorder=3)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
