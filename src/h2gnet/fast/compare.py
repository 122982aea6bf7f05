"""``h2gnet compare-fast``: FAST's published pipeline and h2gnet's preset on the same slides, compared.

What a lab runs before it switches from FastPathology to h2gnet: pyFAST runs the published pipeline
text (FAST's own, or the user's copy with ``fpl``) with the preset's model files — only the two model
paths changed, renderers dropped (headless) — and h2gnet segments the slide with the same files and
the preset's card. Per slide: which patch positions each classified (both, h2gnet only, FAST only),
the tumour probabilities where both classified (largest and 95th-percentile difference), the final
masks' Dice at 8 µm/px and their tumour fractions, and a verdict. Known FAST 4.18 faults that apply to
the slide are named in ``notes`` (see :data:`KNOWN_DIFFERENCES`): where FAST is wrong the two are not
expected to agree, and the verdict says why.

pyFAST is optional (``pip install pyfast``); FAST runs in a child process with a time limit.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from h2gnet.conventions import EVAL_MPP
from h2gnet.errors import H2GNetError
from h2gnet.fast.fpl import FAST_UM_AT_1X
from h2gnet.fast.published import published_header, published_pipeline
from h2gnet.fast.runner import mask_dice, run_fast_pipeline, segmentation_raster
from h2gnet.infer.heatmap import FAST_MIN_PX_PER_PATCH, load_heatmap
from h2gnet.infer.model_card import preset_model
from h2gnet.infer.segment import Models, SegmentConfig, segment_slide
from h2gnet.io.atomic import write_text
from h2gnet.io.slides import Slide, open_slide
from h2gnet.outputs.mask_tiff import load_mask_tiff

#: Acceptance: share of classified positions both classified, largest probability difference, mask Dice.
MIN_AGREEMENT, MAX_DIFFERENCE, MIN_DICE = 0.99, 0.02, 0.98

#: FAST 4.18 faults h2gnet does not copy, by the note key :func:`compare_slide` gives when one applies.
KNOWN_DIFFERENCES = {
    "truncated-level-scale": "FAST reads patches of a level whose size was rounded up from the wrong place "
                             "(it maps level to level-0 pixels with the downsample truncated to an integer); "
                             "h2gnet reads them where they are",
    "magnification-not-resolution": "FAST chooses the patch level by the file's objective power, not its µm/px: "
                                    "on this slide its '10x' patches are not at 1 µm/px; h2gnet reads the "
                                    "model's µm/px",
    "no-magnification": "the file declares no objective power, where FAST 4.18 stops ('Unable to generate "
                        "patches'); compare-fast gave FAST the magnification 10 / level-0 µm/px",
    "tiny-smallest-level": "the pyramid's smallest level gives under 2 px per patch (DICOM pyramids reach 1x1 px), "
                           "where FAST's tissue detection sees almost nothing or fails; h2gnet finds tissue on a "
                           "finer level",
    "red-channel-normalisation": "FAST 4.18 min/max-normalises the refiner's image by the red channel's extremes "
                                 "alone on slides read by OpenSlide (its GPU min/max kernel reads one channel); "
                                 "h2gnet uses all three channels, as FAST documents and computes for images in "
                                 "memory ('minmax-red' in a card reproduces FAST)",
}


@dataclass
class Comparison:
    """One slide, FAST's published pipeline against h2gnet's preset (see the module docstring)."""

    slide: str
    verdict: str
    notes: list[str] = field(default_factory=list)
    h2gnet_seconds: float = 0.0
    tumour_fraction_h2gnet: float = 0.0
    patches_h2gnet: int = 0
    fast_error: str | None = None
    patches_both: int = 0
    patches_h2gnet_only: int = 0
    patches_fast_only: int = 0
    agreement: float = 0.0
    heatmap_max_difference: float | None = None
    heatmap_p95_difference: float | None = None
    dice: float | None = None
    tumour_fraction_fast: float | None = None
    fast_seconds: float | None = None
    fast_patch_level: int | None = None
    fast_resampling_factor: float | None = None
    fast_segmentation_spacing_um: list[float] | None = None

    def summary(self) -> dict:
        """JSON-ready fields, with the notes spelled out."""
        out = asdict(self)
        out["notes"] = {k: KNOWN_DIFFERENCES[k] for k in self.notes}
        return out

    def row(self) -> dict[str, str]:
        """One line of the printed table (the verdict without its reasons; the notes by key)."""

        def number(value: float | None, fmt: str) -> str:
            return "-" if value is None else format(value, fmt)

        return {"slide": Path(self.slide).name, "both": str(self.patches_both),
                "h2gnet only": str(self.patches_h2gnet_only), "FAST only": str(self.patches_fast_only),
                "max diff": number(self.heatmap_max_difference, ".4f"),
                "p95 diff": number(self.heatmap_p95_difference, ".4f"), "Dice": number(self.dice, ".3f"),
                "tumour h2gnet / FAST": f"{self.tumour_fraction_h2gnet:.1%} / "
                                        f"{number(self.tumour_fraction_fast, '.1%')}",
                "verdict": self.verdict.split(" (")[0].split(":")[0], "notes": ", ".join(self.notes)}


def _on_grid(values: np.ndarray, cell_um: float, shape: tuple[int, int], grid_um: float) -> np.ndarray:
    """A per-patch array (one value per ``cell_um`` µm cell, origin at the slide's corner) on a grid of
    ``grid_um`` cells of ``shape``: each cell takes the value of the source cell holding its centre."""
    if math.isclose(cell_um, grid_um, rel_tol=1e-3) and values.shape == shape:
        return values
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * grid_um / cell_um).astype(np.int64), values.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * grid_um / cell_um).astype(np.int64), values.shape[1] - 1)
    return values[rows][:, cols]


def _slide_notes(slide: Slide, cell_um: float, normalisation: str) -> list[str]:
    """Known differences that the slide alone decides (FAST's run may add more, :func:`_fast_notes`)."""
    notes = []
    power = slide.properties.get("openslide.objective-power")
    try:
        magnification = float(power) if power is not None else None
    except ValueError:
        magnification = None
    if magnification is None:
        notes.append("no-magnification")
    elif not math.isclose(FAST_UM_AT_1X / magnification, slide.mpp, rel_tol=0.02):
        notes.append("magnification-not-resolution")
    if cell_um / slide.levels[-1].mpp < FAST_MIN_PX_PER_PATCH:
        notes.append("tiny-smallest-level")
    if normalisation == "minmax":
        notes.append("red-channel-normalisation")
    return notes


def _verdict(agreement: float, max_diff: float | None, dice: float, notes: list[str]) -> str:
    failed = []
    if agreement < MIN_AGREEMENT:
        failed.append(f"patch positions {agreement:.1%} < {MIN_AGREEMENT:.0%}")
    if max_diff is not None and max_diff > MAX_DIFFERENCE:
        failed.append(f"probabilities differ by {max_diff:.3f} > {MAX_DIFFERENCE}")
    if dice < MIN_DICE:
        failed.append(f"mask Dice {dice:.3f} < {MIN_DICE}")
    if not failed:
        return "agree"
    why = "; ".join(failed)
    if notes:
        return f"differ ({why}): known FAST 4.18 fault(s) on this slide: {', '.join(notes)}"
    return f"differ ({why})"


def compare_slide(slide_path: str | Path, out_dir: str | Path, *, preset: str = "h2gnet-2022",  # noqa: PLR0913
                  models_dir: str | Path | None = None, fpl_text: str | None = None, mpp: float | None = None,
                  timeout: float = 1800.0, threads: int | None = None) -> Comparison:
    """Run FAST's published pipeline and h2gnet's ``preset`` on one slide; what they agree on.

    Writes into ``out_dir``: ``fast/`` (FAST's arrays and run summary), ``h2gnet/`` (h2gnet's outputs),
    ``pipeline/`` (the pipeline text FAST ran) and ``NAME.compare.json``. ``fpl_text``: the pipeline text
    (default: FAST's published ``breast_tumour_segmentation.fpl`` as h2gnet ships it); ``mpp``: level-0
    µm/px for files without it. Raises :class:`H2GNetError` when pyFAST is missing or a run fails.
    """
    slide_path, out = Path(slide_path), Path(out_dir)
    patch_model = preset_model(preset, "patch-classifier", models_dir)
    refine_model = preset_model(preset, "refiner", models_dir)
    cfg = SegmentConfig(patch_model=patch_model, refine_model=refine_model, preset=preset, threads=threads,
                        progress=False, adaptive=None)  # dense, as FAST's pipeline: the comparison is of the engines
    models = Models.load(cfg)  # the preset's cards, or a NAME.card.json beside a file (it takes precedence)
    assert models.patch is not None and models.refine is not None and models.refine.card is not None
    with open_slide(slide_path, mpp) as slide:  # h2gnet first: a slide h2gnet refuses is not given to FAST
        summary = segment_slide(slide, out / "h2gnet", models, cfg)
        extent, slide_mpp = slide.dimensions, slide.mpp
        notes = _slide_notes(slide, models.patch.input_size * models.patch.mpp, models.refine.card.image_normalisation)
    heat, _ = load_heatmap(out / "h2gnet" / summary["outputs"]["heatmap"])
    mask = load_mask_tiff(out / "h2gnet" / summary["outputs"]["mask"], slide_mpp)
    result = Comparison(slide=str(slide_path), verdict="", notes=notes,
                        h2gnet_seconds=float(summary["seconds"]["total"]),
                        tumour_fraction_h2gnet=round(float(mask.to_mpp(EVAL_MPP, extent).array.mean()), 4),
                        patches_h2gnet=int(np.count_nonzero(heat.array > 0)))
    fpl = published_pipeline(patch_model, refine_model, out / "pipeline" / "breast_tumour_segmentation.fpl",
                             text=fpl_text)
    try:
        fast = run_fast_pipeline(fpl, slide_path, out / "fast", mpp=mpp, fast_home=out / "fast" / "home",
                                 timeout=timeout, header=published_header(models.patch.card))
    except H2GNetError as exc:  # FAST's failure is a finding about FAST, not the end of the comparison
        result.fast_error = exc.problem
        result.verdict = "FAST failed" + (f": known FAST 4.18 fault(s) on this slide: {', '.join(notes)}"
                                          if set(notes) - {"red-channel-normalisation"} else f": {exc.problem}")
        write_text(out / f"{slide_path.stem}.compare.json", json.dumps(result.summary(), indent=2))
        return result
    if fast.patch_source.get("truncated_scale_bug"):
        result.notes.insert(0, "truncated-level-scale")
    ours = heat.array
    theirs = _on_grid(fast.heatmap, float(fast.heatmap_cell_um or heat.mpp), ours.shape, heat.mpp)
    a, b = ours > 0, theirs > 0
    both = a & b
    union = int(np.count_nonzero(a | b))
    diff = np.abs(ours[both] - theirs[both])
    fast_mask = segmentation_raster(fast, EVAL_MPP)
    dice = mask_dice(fast_mask, mask, extent)
    agreement = int(both.sum()) / union if union else 1.0
    max_diff = float(diff.max()) if diff.size else None
    result.patches_both, result.patches_h2gnet_only = int(both.sum()), int((a & ~b).sum())
    result.patches_fast_only, result.agreement = int((~a & b).sum()), round(agreement, 4)
    result.heatmap_max_difference = max_diff
    result.heatmap_p95_difference = float(np.percentile(diff, 95)) if diff.size else None
    result.dice, result.tumour_fraction_fast = round(dice, 4), round(float(fast_mask.array.mean()), 4)
    result.fast_seconds = round(fast.seconds, 3)
    result.fast_patch_level = int(fast.patch_source.get("level", 0))
    result.fast_resampling_factor = float(fast.patch_source.get("resampling_factor", 1.0))
    result.fast_segmentation_spacing_um = [round(float(v), 4) for v in fast.segmentation_spacing_um]
    result.verdict = _verdict(agreement, max_diff, dice, result.notes)
    write_text(out / f"{slide_path.stem}.compare.json", json.dumps(result.summary(), indent=2))
    return result
