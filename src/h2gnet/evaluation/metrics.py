"""Slide-wise pixel metrics and their macro summaries (paper section 3.3, Tables 1-2).

Per slide
---------
Prediction and ground truth are boolean masks of the same slide at one common
resolution (the caller resamples). A probability heatmap is binarised with
:func:`binarise`: tumour where ``p >= 0.5`` (the authors' evaluation script
uses ``>=``). With TP, FP, FN counted in pixels:

* recall = TP / (TP + FN), precision = TP / (TP + FP), Dice = 2 TP / (2 TP + FP + FN).

Empty sets (a slide with no tumour annotated, or nothing predicted):

================  ===============  ======  =========  ====
truth             prediction       recall  precision  dice
================  ===============  ======  =========  ====
empty             empty            1.0     1.0        1.0
empty             non-empty        NaN     0.0        0.0
non-empty         empty            0.0     NaN        0.0
================  ===============  ======  =========  ====

NaN means "undefined": that slide is left out of that metric's mean and std,
and the summary's per-metric ``n`` says how many slides were averaged.

Summaries
---------
Macro average over slides (every slide weighs the same) and the **population**
standard deviation (``ddof=0``, numpy's default). The paper does not say which;
the authors' evaluation script calls ``np.std`` on the per-slide values, so
``ddof=0`` reproduces their tables. Summaries are given overall and per
histological grade (or any other row key).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

METRICS = ("recall", "precision", "dice")
STD_DDOF = 0
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4}


def binarise(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean tumour mask of a probability map: ``prob >= threshold`` (NaN -> False)."""
    prob = np.asarray(prob)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(prob, nan=-np.inf) >= threshold


def _ratio(num: int, den: int) -> float:
    """num / den, NaN when den is 0."""
    return num / den if den else math.nan


def slide_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """Pixel-wise recall, precision, Dice and counts of one slide.

    Args:
        pred: boolean predicted tumour mask.
        truth: boolean ground-truth mask, same shape.

    Returns:
        ``{"recall", "precision", "dice"}`` as floats (NaN where undefined, see
        the module docstring) and ``{"tp", "fp", "fn", "pred_px", "truth_px"}``
        as pixel counts.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    pred_px, truth_px = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    tp = int(np.count_nonzero(pred & truth))
    fp, fn = pred_px - tp, truth_px - tp
    if pred_px == 0 and truth_px == 0:
        recall = precision = dice = 1.0
    else:
        recall, precision = _ratio(tp, truth_px), _ratio(tp, pred_px)
        dice = 2 * tp / (pred_px + truth_px)
    return {
        "recall": recall,
        "precision": precision,
        "dice": dice,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "pred_px": pred_px,
        "truth_px": truth_px,
    }


def mean_std(values: Iterable[float], ddof: int = STD_DDOF) -> dict[str, float | int]:
    """``{"mean", "std", "n"}`` of the non-NaN ``values`` (NaN mean/std when none; std NaN if n <= ddof)."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    n = int(arr.size)
    mean = float(arr.mean()) if n else math.nan
    std = float(arr.std(ddof=ddof)) if n > ddof else math.nan
    return {"mean": mean, "std": std, "n": n}


def _summary_block(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """``{"n": slides, metric: {"mean", "std", "n"}, ...}`` for one group of rows."""
    block: dict[str, Any] = {"n": len(rows)}
    for metric in metrics:
        block[metric] = mean_std(row.get(metric, math.nan) for row in rows)
    return block


def group_sort_key(key: Any) -> tuple[int, float | str]:
    """Order group labels naturally: numbers and Roman numerals by value, then text."""
    text = str(key).strip()
    upper = text.upper().removeprefix("GRADE").strip()
    if upper in _ROMAN:
        return 0, float(_ROMAN[upper])
    try:
        return 0, float(upper)
    except ValueError:
        return 1, text


def group_label(value: Any) -> str:
    """A grouping value as text; integral numbers lose their ``.0`` (2.0 -> "2")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def summarise(
    rows: Sequence[Mapping[str, Any]], by: str | None = "grade", metrics: Sequence[str] = METRICS
) -> dict[str, Any]:
    """Macro mean ± std of per-slide metrics, overall and per ``rows[i][by]``.

    Args:
        rows: one mapping per slide holding the ``metrics`` (NaN = undefined)
            and the grouping key ``by``.
        by: grouping key (e.g. ``"grade"``); None: overall only. Rows whose key
            is missing/None/empty count overall but in no group.
        metrics: metric names to summarise.

    Returns:
        ``{"overall": block, "by": by, "groups": {label: block}}`` where a block
        is ``{"n": n_slides, metric: {"mean", "std", "n"}}``; group labels are
        strings, ordered naturally (I < II < III, 1 < 2 < 10).
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    if by is not None:
        for row in rows:
            if not _is_missing(row.get(by)):
                groups.setdefault(group_label(row[by]), []).append(row)
    ordered = sorted(groups, key=group_sort_key)
    return {
        "overall": _summary_block(rows, metrics),
        "by": by,
        "groups": {label: _summary_block(groups[label], metrics) for label in ordered},
    }


def split_by_design(
    rows: Sequence[Mapping[str, Any]], key: str = "design"
) -> dict[str, list[Mapping[str, Any]]]:
    """Rows grouped by ``row[key]`` (first-seen order of designs)."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(str(row[key]), []).append(row)
    return out


def summarise_designs(
    rows: Sequence[Mapping[str, Any]], by: str | None = "grade", key: str = "design"
) -> dict[str, dict[str, Any]]:
    """:func:`summarise` for each design of a long table of per-slide rows (``row[key]`` names the design)."""
    return {design: summarise(group, by=by) for design, group in split_by_design(rows, key).items()}


def values_by_design(
    rows: Sequence[Mapping[str, Any]], metric: str = "dice", key: str = "design"
) -> dict[str, list[float]]:
    """Per-slide ``metric`` values of each design (NaN kept): the input of Tukey's test and the box plot."""
    return {d: [float(r.get(metric, math.nan)) for r in g] for d, g in split_by_design(rows, key).items()}
