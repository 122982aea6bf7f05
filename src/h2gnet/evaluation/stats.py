"""Pairwise Tukey's range test (HSD) on per-slide Dice, as in the paper's Supplementary Table 1.

The test treats each design's per-slide Dice values as an independent sample
(``scipy.stats.tukey_hsd``; Tukey-Kramer when designs have different numbers
of slides). NaN values are dropped before testing.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from h2gnet.io.atomic import write_text


def tukey_table(dice_by_design: Mapping[str, Sequence[float]]) -> tuple[list[str], np.ndarray]:
    """Designs (in the mapping's order) and the symmetric matrix of pairwise Tukey p-values.

    Args:
        dice_by_design: design name -> per-slide Dice values (at least two
            designs, each with at least two non-NaN values and not all samples constant).

    Returns:
        ``(designs, p)`` with ``p[i, j]`` the adjusted p-value of design i vs j
        (``p[i, i] = 1``).
    """
    designs = list(dice_by_design)
    if len(designs) < 2:
        raise ValueError("Tukey's test needs at least two designs")
    samples = [_clean(dice_by_design[d], d) for d in designs]
    if all(np.ptp(s) == 0 for s in samples):
        raise ValueError("Tukey's test is undefined when every design's values are constant")
    from scipy import stats  # imported here: SciPy's stats take ~0.7 s to import, and `segment` needs none

    pvalue = np.array(stats.tukey_hsd(*samples).pvalue, dtype=np.float64)
    pvalue = np.clip((pvalue + pvalue.T) / 2, 0.0, 1.0)
    np.fill_diagonal(pvalue, 1.0)
    return designs, pvalue


def _clean(values: Sequence[float], design: str) -> np.ndarray:
    """Non-NaN float64 values of one design; at least two are required."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size < 2:
        raise ValueError(f"design {design!r} has {arr.size} Dice value(s); Tukey's test needs >= 2")
    return arr


def format_p(p: float) -> str:
    """p-value as text: ``<0.001`` below 0.001, else three decimals."""
    if np.isnan(p):
        return "nan"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def tukey_markdown(designs: Sequence[str], pvalue: np.ndarray, alpha: float = 0.05) -> str:
    """A Markdown matrix of p-values; off-diagonal cells below ``alpha`` get a ``*``."""
    lines = ["| Design | " + " | ".join(designs) + " |", "|---|" + "---:|" * len(designs)]
    for i, name in enumerate(designs):
        cells = []
        for j in range(len(designs)):
            if i == j:
                cells.append("–")
            else:
                star = "*" if pvalue[i, j] < alpha else ""
                cells.append(format_p(float(pvalue[i, j])) + star)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Pairwise Tukey's range test on per-slide Dice; * p < {alpha:g}.")
    return "\n".join(lines) + "\n"


def tukey_csv(designs: Sequence[str], pvalue: np.ndarray) -> str:
    """Long-format CSV text: ``design_a,design_b,p_value`` for each unordered pair (full precision)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["design_a", "design_b", "p_value"])
    for i in range(len(designs)):
        for j in range(i + 1, len(designs)):
            writer.writerow([designs[i], designs[j], repr(float(pvalue[i, j]))])
    return buf.getvalue()


def write_tukey_markdown(path: str | Path, designs: Sequence[str], pvalue: np.ndarray) -> Path:
    """Atomically write :func:`tukey_markdown`; returns ``Path(path)``."""
    write_text(path, tukey_markdown(designs, pvalue))
    return Path(path)


def write_tukey_csv(path: str | Path, designs: Sequence[str], pvalue: np.ndarray) -> Path:
    """Atomically write :func:`tukey_csv`; returns ``Path(path)``."""
    write_text(path, tukey_csv(designs, pvalue))
    return Path(path)


def write_tukey(out_dir: str | Path, dice_by_design: Mapping[str, Sequence[float]]) -> dict | None:
    """``tukey.md`` and ``tukey.csv`` in ``out_dir``; returns ``{"designs", "p"}``, or None when the
    test cannot be computed (fewer than two designs or slides, constant values) — then ``tukey.md``
    says why and no CSV is written."""
    out = Path(out_dir)
    try:
        designs, p = tukey_table(dice_by_design)
    except ValueError as exc:
        write_text(out / "tukey.md", f"Tukey's range test not computed: {exc}.\n")
        return None
    write_tukey_markdown(out / "tukey.md", designs, p)
    write_tukey_csv(out / "tukey.csv", designs, p)
    return {"designs": designs, "p": p.tolist()}
