"""Coarse-to-fine (adaptive) patch evaluation: classify only the patches whose value can change the mask.

A dense heatmap classifies every tissue patch. Most of them lie inside large
regions that are confidently tumour or confidently not, where a patch's value
follows from its neighbours'. The adaptive evaluation

1. classifies a sparse lattice of the tissue patches (every ``stride``-th patch
   each way, shifted to hold the most tissue patches);
2. marks for classification every unclassified tissue patch whose neighbourhood
   (the classified patches within ``radius`` cells, Chebyshev distance) is
   *uncertain* or *disagrees* (values on both sides of ``threshold``: tumour
   borders, isolated positives) or does not *enclose* it (the centre of its
   classified neighbours lies more than half the radius away from it, as at
   the edge of the tissue, where a fill would extrapolate from one side).
   Uncertain (``check``): "any" — some classified
   neighbour has ``low < p < high`` (the safest, most patches); "mean" — the mean
   of the classified neighbours, the value the patch would be filled with, is
   between ``low`` and ``high`` (fewer patches: a single uncertain neighbour
   among confident ones on the same side does not count); tissue that no
   classified patch reaches yet (thin strips between lattice rows) gets a
   shifted lattice of its own;
3. classifies the marked patches and repeats step 2 until nothing is marked;
4. fills every other tissue patch with the mean of its classified neighbours
   (all confident, on the same side of the threshold and around it, by
   construction: an interpolation, never an extrapolation).

``stride`` 1 classifies every tissue patch: the dense heatmap, exactly. The
algorithm works on the patch grid only; reading and classifying are the
caller's ``classify`` callback, so only the classified patches are ever read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from h2gnet.params import ParameterError, Rule, check_fields, param

#: classify(rows, cols) -> tumour probabilities (float, one per patch) of those grid cells
Classifier = Callable[[np.ndarray, np.ndarray], np.ndarray]


#: How a neighbourhood counts as uncertain (see the module doc).
CHECKS = ("any", "mean")


@dataclass(frozen=True)
class AdaptiveConfig:
    """Settings of the coarse-to-fine evaluation; checked when made.

    ``stride``: lattice spacing of the first pass, in patches (1 = dense);
    ``radius``: neighbourhood for the checks and the fill, in patches (Chebyshev;
    default: ``stride // 2`` (at least 1), the smallest that reaches a lattice patch from anywhere);
    ``low``/``high``: probabilities strictly between them are uncertain;
    ``threshold``: the tumour decision whose side neighbours must agree on;
    ``check``: "any" (a patch is classified when any classified neighbour is uncertain) or "mean" (when the
    mean of its classified neighbours is; see the module doc).
    """

    stride: int = param(2, Rule(int, low=1, high=64, unit="patches",
                                help="adaptive: lattice spacing of the first pass, in patches"))
    radius: int | None = param(None, Rule(int, low=1, high=64, optional=True, unit="patches",
                                          help="adaptive: neighbourhood radius in patches (default stride // 2)"))
    low: float = param(0.1, Rule(float, low=0, high=1, help="adaptive: uncertain above this probability"))
    high: float = param(0.9, Rule(float, low=0, high=1, help="adaptive: uncertain below this probability"))
    threshold: float = param(0.5, Rule(float, low=0, high=1, low_open=True, high_open=True,
                                       help="the tumour decision neighbours must agree on"))
    check: str = param("any", Rule(str, choices=CHECKS,
                                   help="adaptive: uncertain when any classified neighbour is (any) or when their "
                                        "mean is (mean: fewer patches)"))

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.low < self.threshold < self.high:
            raise ParameterError("adaptive band", f"must satisfy low < threshold < high, not low={self.low:g}, "
                                                  f"threshold={self.threshold:g}, high={self.high:g}")

    @property
    def window(self) -> int:
        """Side of the neighbourhood in patches (2 × radius + 1)."""
        return 2 * (self.radius or max(1, self.stride // 2)) + 1


@dataclass
class AdaptiveResult:
    """Heatmap values (float32, grid shape; 0 outside tissue), the classified cells, the tissue cells, and
    the number of patches classified in each round."""

    values: np.ndarray
    classified: np.ndarray
    tissue: np.ndarray
    rounds: list[int] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        """Classified tissue patches / tissue patches (0-1)."""
        n = int(np.count_nonzero(self.tissue))
        return float(np.count_nonzero(self.classified)) / n if n else 0.0


def _box_sum(a: np.ndarray, window: int) -> np.ndarray:
    """Sum of ``a`` (float32) over the ``window`` × ``window`` neighbourhood of each cell (zero outside)."""
    return cv2.boxFilter(a.astype(np.float32), -1, (window, window), normalize=False,
                         borderType=cv2.BORDER_CONSTANT)


def _offset_sums(known: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums of the row and column offsets (in cells) of the ``known`` cells within ``radius`` of each cell."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    kx = np.tile(offsets, (offsets.size, 1))
    # filter2D correlates: dst[y, x] = sum over (i, j) of kernel[i, j] * src[y + i - r, x + j - r]
    sx = cv2.filter2D(known, -1, kx, borderType=cv2.BORDER_CONSTANT)
    sy = cv2.filter2D(known, -1, np.ascontiguousarray(kx.T), borderType=cv2.BORDER_CONSTANT)
    return sy, sx


def to_classify(tissue: np.ndarray, classified: np.ndarray, values: np.ndarray, cfg: AdaptiveConfig) -> np.ndarray:
    """Unclassified tissue cells whose classified neighbourhood is uncertain, disagrees or does not enclose
    them, and tissue the classified cells do not reach yet, on a lattice of its own (the shifted lattice with
    most such cells)."""
    known = classified.astype(np.float32)
    n = _box_sum(known, cfg.window)
    positive = _box_sum(known * (values >= cfg.threshold), cfg.window)
    if cfg.check == "mean":
        mean = _box_sum(known * values, cfg.window) / np.maximum(n, 1.0)
        uncertain = (n > 0.5) & (mean > cfg.low) & (mean < cfg.high)
    else:  # box sums of 0/1 floats are exact integers well below 2^24
        uncertain = _box_sum(known * ((values > cfg.low) & (values < cfg.high)), cfg.window) > 0.5
    radius = cfg.window // 2
    sy, sx = _offset_sums(known, radius)
    reach = 0.5 * radius * np.maximum(n, 1.0) + 1e-3  # |centre offset| <= radius / 2, without dividing
    one_sided = (n > 0.5) & ((np.abs(sy) > reach) | (np.abs(sx) > reach))
    open_ = tissue & ~classified
    out = open_ & (uncertain | one_sided | ((positive > 0.5) & (positive < n - 0.5)))
    uncovered = open_ & (n < 0.5)
    if uncovered.any():
        s = cfg.stride
        counts = [(int(uncovered[dy::s, dx::s].sum()), dy, dx) for dy in range(s) for dx in range(s)]
        _, dy, dx = max(counts)
        out[dy::s, dx::s] |= uncovered[dy::s, dx::s]
    return out


def fill(tissue: np.ndarray, classified: np.ndarray, values: np.ndarray, window: int) -> np.ndarray:
    """``values`` with each unclassified tissue cell set to the mean of its classified neighbours."""
    known = classified.astype(np.float32)
    n = _box_sum(known, window)
    total = _box_sum(known * values, window)
    out = values.copy()
    gaps = tissue & ~classified
    out[gaps] = total[gaps] / np.maximum(n[gaps], 1.0)
    return out


def adaptive_values(tissue: np.ndarray, classify: Classifier, cfg: AdaptiveConfig | None = None) -> AdaptiveResult:
    """Coarse-to-fine values over the grid cells where ``tissue`` (bool, grid shape) is set.

    ``classify`` is called once per round with the (rows, cols) of cells never
    classified before; see the module doc for the rules.
    """
    cfg = cfg or AdaptiveConfig()
    tissue = np.asarray(tissue, bool)
    values = np.zeros(tissue.shape, np.float32)
    classified = np.zeros(tissue.shape, bool)
    rounds: list[int] = []
    todo = to_classify(tissue, classified, values, cfg)  # nothing classified yet: the lattice
    while todo.any():
        rows, cols = np.nonzero(todo)
        probs = np.asarray(classify(rows, cols), np.float32)
        if probs.shape != rows.shape:
            raise ValueError(f"classify returned {probs.shape} values for {len(rows)} patches")
        values[rows, cols] = probs
        classified |= todo
        rounds.append(len(rows))
        todo = to_classify(tissue, classified, values, cfg)
    return AdaptiveResult(fill(tissue, classified, values, cfg.window), classified, tissue, rounds)
