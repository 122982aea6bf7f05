"""A phantom cohort: many slides, their tumour annotations and a manifest with grades and splits.

Default cohort (``width``/``height``/``mpp`` left as None): slides of about
12000 x 9000 level-0 px (each side scaled by a random 0.85-1.1), cycling
through these scanner layouts (pixel size µm/px, pyramid downsamples):

====================  =======================
0.5                   1, 2, 4, 8, 16, 32
0.2527                1, 4, 16, 64
0.499                 1, 3, 9, 27
0.25                  1, 2, 4, 8, 16, 32
0.5                   1, 4, 16, 64
0.5 (0.6x size)       1 (single level)
====================  =======================

so 0.5 µm/px slides cover about 6 x 4.5 mm of glass and 0.25 µm/px ones about
3 x 2.25 mm. Levels smaller than 64 px are dropped. A 24-slide default cohort
is about 2.3 gigapixels of level 0 (310 MB of TIFF) and takes about 210 s of CPU
time, so just under two minutes on two free cores.

``stain_set="alternative"`` stains every slide like another lab and scanner (bluer
haematoxylin, orange-pink eosin, warm glass; :data:`h2gnet.synth.style.STAIN_SETS`):
with another seed and ``mpp``, a cohort from a different generator setting.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from h2gnet.errors import H2GNetError
from h2gnet.io.atomic import write_text
from h2gnet.io.manifest import SlideEntry, write_manifest
from h2gnet.params import ParameterError, Rule, check_fields, param
from h2gnet.synth.annotation import geojson_text
from h2gnet.synth.noise import sub_seed
from h2gnet.synth.spec import MIN_SIDE, MPP_RANGE, make_slide_spec, validate_geometry
from h2gnet.synth.style import STAIN_SET_RULE

DEFAULT_WIDTH, DEFAULT_HEIGHT = 12000, 9000
MIN_LEVEL_PX = 64

#: (level-0 µm/px, pyramid downsamples, size factor) cycled through by the default cohort.
LAYOUTS: tuple[tuple[float, tuple[int, ...], float], ...] = (
    (0.5, (1, 2, 4, 8, 16, 32), 1.0),
    (0.2527, (1, 4, 16, 64), 1.0),
    (0.499, (1, 3, 9, 27), 1.0),
    (0.25, (1, 2, 4, 8, 16, 32), 1.0),
    (0.5, (1, 4, 16, 64), 1.0),
    (0.5, (1,), 0.6),
)


@dataclass(frozen=True)
class CohortSlide:
    """One planned slide: its name, scene seed, grade, split, geometry (level-0 px, µm/px) and stain set."""

    name: str
    seed: int
    grade: int
    split: str
    width: int
    height: int
    mpp: float
    pyramid: tuple[int, ...]
    stain_set: str = "reference"

    @property
    def slide_path(self) -> str:
        """The slide's path relative to the cohort folder."""
        return f"slides/{self.name}.tiff"

    @property
    def annotation_path(self) -> str:
        """The annotation's path relative to the cohort folder."""
        return f"annotations/{self.name}.geojson"


def balanced_grades(n: int, rng: np.random.Generator) -> list[int]:
    """``n`` grades, as equal counts of 1, 2 and 3 as possible, in random order."""
    grades = [1 + i % 3 for i in range(n)]
    rng.shuffle(grades)
    return grades


def _quotas(counts: dict[int, int], total: int, rng: np.random.Generator) -> dict[int, int]:
    """Share ``total`` among groups in proportion to ``counts``, at least one each (largest remainders)."""
    share = {g: total * c / sum(counts.values()) for g, c in counts.items()}
    out = {g: max(1, math.floor(v)) for g, v in share.items()}
    order = sorted(counts, key=lambda g: (out[g] - share[g], rng.random()))
    for g in order[: max(0, total - sum(out.values()))]:
        out[g] += 1
    return out


def assign_splits(grades: list[int], rng: np.random.Generator, val_fraction: float = 0.2,
                  test_fraction: float = 0.2) -> list[str]:
    """train / val / test per slide, about 60 / 20 / 20 by default (fractions of the slides).

    With 9 or more slides the split is stratified by grade so every split holds
    every grade; with fewer, there is at least one train slide, and at least one
    test slide from 2 slides on (val from 3 on).
    """
    if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
        raise H2GNetError(None, f"val and test fractions must be ≥ 0 and leave training slides, "
                                f"not {val_fraction} and {test_fraction}")
    n = len(grades)
    splits = ["train"] * n
    if n >= 9:
        counts = {g: grades.count(g) for g in sorted(set(grades))}
        n_test = _quotas(counts, round(test_fraction * n), rng)
        n_val = _quotas(counts, round(val_fraction * n), rng)
        for g in counts:
            idx = [i for i in range(n) if grades[i] == g]
            rng.shuffle(idx)
            for i in idx[: n_test[g]]:
                splits[i] = "test"
            for i in idx[n_test[g] : n_test[g] + n_val[g]]:
                splits[i] = "val"
        return splits
    idx = list(range(n))
    rng.shuffle(idx)
    k_test = max(1, round(test_fraction * n)) if n >= 2 and test_fraction > 0 else 0
    k_val = max(1, round(val_fraction * n)) if n >= 3 and val_fraction > 0 else 0
    for i in idx[:k_test]:
        splits[i] = "test"
    for i in idx[k_test : k_test + k_val]:
        splits[i] = "val"
    return splits


def _fit_pyramid(pyramid: tuple[int, ...], width: int, height: int) -> tuple[int, ...]:
    """``pyramid`` without levels whose short side would be under :data:`MIN_LEVEL_PX`."""
    kept = tuple(d for d in pyramid if math.ceil(min(width, height) / d) >= MIN_LEVEL_PX)
    return kept or (1,)


@dataclass
class CohortConfig:
    """What phantom cohort to make (``h2gnet synth``, a study's ``[cohort]`` section); checked when made.
    ``width``/``height``/``mpp``: None gives varied slides."""

    slides: int = param(24, Rule(int, low=1, high=100_000, help="number of slides"))
    seed: int = param(0, Rule(int, low=0, help="random seed"))
    width: int | None = param(None, Rule(int, low=MIN_SIDE, high=1_000_000, optional=True,
                                         help="slide width in level-0 px"))
    height: int | None = param(None, Rule(int, low=MIN_SIDE, high=1_000_000, optional=True,
                                          help="slide height in level-0 px"))
    mpp: float | None = param(None, Rule(float, low=MPP_RANGE[0], high=MPP_RANGE[1], optional=True, unit="µm/px",
                                         help="level-0 µm/px of every slide (default: varied)"))
    val_fraction: float = param(0.2, Rule(float, low=0, high=1, high_open=True,
                                          help="share of slides in the val split"))
    test_fraction: float = param(0.2, Rule(float, low=0, high=1, high_open=True,
                                           help="share of slides in the test split"))
    stain_set: str = param("reference", STAIN_SET_RULE)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.val_fraction + self.test_fraction >= 1:
            raise ParameterError("test_fraction", f"val and test fractions must leave training slides "
                                                  f"(got {self.val_fraction} + {self.test_fraction})")


def plan_cohort(n_slides: int, seed: int = 0, width: int | None = None, height: int | None = None,
                mpp: float | None = None, val_fraction: float = 0.2,
                test_fraction: float = 0.2, *, stain_set: str = "reference") -> list[CohortSlide]:
    """The slides of a cohort (deterministic in ``seed``); see the module docstring for defaults.
    ``val_fraction``/``test_fraction``: shares of the slides in those splits (per grade);
    ``stain_set``: the stain colours of every slide (:data:`~h2gnet.synth.style.STAIN_SETS`)."""
    stain_set = STAIN_SET_RULE.check("stain_set", stain_set)
    if n_slides < 1:
        raise H2GNetError(None, f"a cohort needs at least one slide, not {n_slides}")
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xC0407])
    grades = balanced_grades(n_slides, rng)
    splits = assign_splits(grades, rng, val_fraction, test_fraction)
    plan = []
    for i in range(n_slides):
        layout_mpp, pyramid, factor = LAYOUTS[i % len(LAYOUTS)]
        if width is None or height is None:
            sw, sh = rng.uniform(0.85, 1.1, 2)
            w = round((width or DEFAULT_WIDTH * factor) * (sw if width is None else 1.0))
            h = round((height or DEFAULT_HEIGHT * factor) * (sh if height is None else 1.0))
        else:
            w, h = width, height
            if pyramid == (1,) and w * h > 10**8:
                pyramid = (1, 2, 4, 8, 16, 32, 64, 128)  # no single-level giants
        pyramid = _fit_pyramid(pyramid, w, h)
        slide_mpp = layout_mpp if mpp is None else mpp
        validate_geometry(w, h, slide_mpp, pyramid)
        slide_seed = sub_seed(seed, 0xC0, i) & 0x7FFFFFFF
        name = f"phantom_{i:03d}"
        plan.append(CohortSlide(name, slide_seed, grades[i], splits[i], w, h, slide_mpp, pyramid, stain_set))
    return plan


def render_cohort_slide(out_dir: Path, item: CohortSlide) -> str:
    """Render one planned slide and its annotation under ``out_dir``; returns its name."""
    spec = make_slide_spec(item.seed, item.grade, item.width, item.height, item.mpp, item.pyramid,
                           stain_set=item.stain_set)
    from h2gnet.synth.slide import render_slide  # the renderer is imported by the commands that render

    render_slide(out_dir / item.slide_path, spec)
    write_text(out_dir / item.annotation_path, geojson_text(spec))
    return item.name


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)


def make_cohort(out_dir: str | Path, cfg: CohortConfig, *, progress: bool = True, workers: int | None = None) -> Path:
    """Generate the phantom cohort ``cfg`` in ``out_dir`` and return the path of its ``manifest.csv``.

    Writes ``slides/<name>.tiff``, ``annotations/<name>.geojson`` and, last,
    ``manifest.csv``. ``cfg``: ``slides`` and ``seed``; ``width``/``height`` (level-0 px) and ``mpp`` (µm/px)
    apply to every slide when given; ``val_fraction``/``test_fraction`` are the shares of
    slides in those splits (stratified by grade); ``stain_set`` the stain colours of every slide
    ("reference" or "alternative", another lab and scanner). Same settings, same bytes. Slides render in
    ``workers`` processes (default: one per CPU core); ``progress`` shows a
    tqdm bar with rate and ETA. Slides whose TIFF and GeoJSON already exist
    (files appear atomically, and rendering is deterministic) are kept, so an
    interrupted run resumes.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    plan = plan_cohort(cfg.slides, cfg.seed, cfg.width, cfg.height, cfg.mpp, cfg.val_fraction, cfg.test_fraction,
                       stain_set=cfg.stain_set)
    for sub in ("slides", "annotations"):
        try:
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise H2GNetError(out_dir / sub, f"cannot create directory ({exc.strerror or exc})") from None
    todo = [p for p in plan if not ((out_dir / p.slide_path).exists() and (out_dir / p.annotation_path).exists())]
    workers = max(1, min(workers or os.cpu_count() or 1, max(1, len(todo))))
    with tqdm(total=len(plan), initial=len(plan) - len(todo), unit="slide", desc="synth",
              disable=not progress) as bar:
        if workers == 1:
            for item in todo:
                render_cohort_slide(out_dir, item)
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
                futures = [pool.submit(render_cohort_slide, out_dir, item) for item in todo]
                for fut in cf.as_completed(futures):
                    fut.result()
                    bar.update()
    manifest = out_dir / "manifest.csv"
    write_manifest(manifest, [SlideEntry(slide=out_dir / item.slide_path, annotation=out_dir / item.annotation_path,
                                         grade=item.grade, split=item.split) for item in plan])
    return manifest
