"""Compare a folder of predicted masks (from ``h2gnet segment``) with a manifest's annotations.

Both are brought to one stated common resolution (µm/px): the ground truth is
rasterised there from its polygons, the prediction (``NAME.mask.tiff``, any
resolution) is resampled there (nearest neighbour when upsampling, area
fraction ≥ 0.5 when downsampling).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from h2gnet.cohort import Engine, SlideTask
from h2gnet.conventions import EVAL_MPP, slide_outputs
from h2gnet.errors import H2GNetError
from h2gnet.evaluation.metrics import slide_metrics, summarise_designs, values_by_design
from h2gnet.evaluation.stats import write_tukey
from h2gnet.evaluation.summary import write_slides_csv, write_summary_json, write_summary_markdown
from h2gnet.io.annotations import load_annotation
from h2gnet.io.manifest import SlideEntry
from h2gnet.io.slides import open_slide
from h2gnet.outputs.mask_tiff import load_mask_tiff
from h2gnet.params import Rule, check_fields, param


@dataclass
class EvaluateConfig:
    """How predictions are scored (``h2gnet evaluate``, a study's ``[evaluate]`` section); checked when made."""

    mpp: float = param(EVAL_MPP, Rule(float, low=0.5, high=100, unit="µm/px", help="common resolution in µm/px"))

    def __post_init__(self) -> None:
        check_fields(self)


def evaluate_slide(entry: SlideEntry, predictions: str | Path, mpp: float = EVAL_MPP) -> dict:
    """Per-slide recall, precision and Dice of ``predictions/NAME.mask.tiff`` at ``mpp`` µm/px."""

    if entry.annotation is None:
        raise H2GNetError(entry.slide, "has no annotation to evaluate against")
    with open_slide(entry.slide, entry.mpp) as slide:
        truth = load_annotation(entry.annotation, slide.dimensions, slide.mpp, mpp,
                                mask_downsample=entry.annotation_downsample,
                                     tumour_free=entry.tumour_free)
        mask_path = slide_outputs(predictions, entry.key).mask
        pred = load_mask_tiff(mask_path, slide.mpp)
        pred.check_extent(slide.dimensions, mask_path)
        pred = pred.to_mpp(mpp, slide.dimensions)
    rows = min(pred.shape[0], truth.shape[0]), min(pred.shape[1], truth.shape[1])
    m = slide_metrics(pred.array[: rows[0], : rows[1]], truth.array[: rows[0], : rows[1]])
    return {"slide": entry.key, "grade": entry.grade if entry.grade is not None else "", **m}


def evaluate_task(cache: dict, entry: SlideEntry, predictions: str, mpp: float) -> tuple[str, dict]:
    """One slide of :func:`evaluate_predictions` where it runs (here or a Dask worker)."""
    return "done", evaluate_slide(entry, predictions, mpp)


def evaluate_predictions(entries: list[SlideEntry], predictions: str | Path, mpp: float = EVAL_MPP,
                         design: str | None = None, *, progress: bool = True,
                         engine: Engine | None = None, failures: list[str] | None = None) -> list[dict]:
    """Rows for every annotated entry, one task per slide on ``engine`` (default: in this process);
    missing predictions are listed in one error. Scored at ``mpp`` µm/px (checked by
    :class:`EvaluateConfig`'s rule).

    With a ``failures`` list, a slide that cannot be evaluated (any exception: a bad annotation, a
    mask of another slide, ``MemoryError``) is appended there as "NAME: reason" and the others are
    scored; without one, a slide that cannot be evaluated is an error.
    """
    mpp = EvaluateConfig(mpp).mpp
    chosen = [e for e in entries if e.annotation is not None]
    if not chosen:
        raise H2GNetError(None, "no annotated slides to evaluate")
    missing = [e.key for e in chosen if not slide_outputs(predictions, e.key).mask.exists()]
    if missing:
        raise H2GNetError(predictions, f"no prediction for {len(missing)} slide(s): {', '.join(missing[:5])}")
    engine = engine or Engine()
    if engine.distributed:  # workers see the same files at the same absolute paths
        chosen = [replace(e, slide=Path(e.slide).resolve(),
                          annotation=Path(e.annotation).resolve() if e.annotation else None) for e in chosen]
        predictions = Path(predictions).resolve()
    tasks = [SlideTask(e.key, (e, str(predictions), mpp)) for e in chosen]
    outcomes = engine.run(evaluate_task, tasks, desc="evaluate", progress=progress)
    failed = [o for o in outcomes.values() if o.status == "failed"]
    if failed and failures is None:
        raise H2GNetError(None, failed[0].error)
    if failures is not None:
        failures += [f"{o.key}: {o.error}" for o in failed]
    rows = []
    for o in outcomes.values():
        if o.status != "failed":
            rows.append(o.value if design is None else {"design": design, **o.value})
    return rows


def write_evaluation(out_dir: str | Path, rows: list[dict], mpp: float) -> dict:
    """slides.csv, summary.md, summary.json (and Tukey tables when several designs) in ``out_dir``."""

    out = Path(out_dir)
    rows = [r if "design" in r else {"design": "prediction", **r} for r in rows]
    summaries = summarise_designs(rows, by="grade")
    write_slides_csv(out / "slides.csv", rows)
    write_summary_markdown(out / "summary.md", summaries)
    write_summary_json(out / "summary.json", summaries, extra={"mpp": mpp, "convention": "threshold 0.5; see "
                       "h2gnet.evaluation.metrics for empty-set rules"})
    dice = values_by_design(rows)
    if len(dice) >= 2:
        write_tukey(out, dice)
    return summaries

