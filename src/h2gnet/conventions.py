"""One home for the conventions every stage shares: resolutions (µm/px) and file names.

Physical units: 1.0 µm/px is the paper's "×100" (a 10× objective), 8.0 µm/px its "×1.25" plane, where tissue is
detected and segmentations are scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Resolution of the patch classifier's input (µm/px): the paper's "×100" (10× objective).
PATCH_MPP = 1.0
#: Resolution of tissue detection and of evaluation (µm/px): the paper's "×1.25" plane.
LOW_MPP = 8.0
#: Resolution at which predictions are scored against annotations (µm/px).
EVAL_MPP = LOW_MPP

#: Largest whole-slide canvas (one array: tissue plane, annotation mask, resampled raster), GB.
MAX_CANVAS_GB = 2.0
#: Environment variable that overrides :data:`MAX_CANVAS_GB` (``h2gnet --max-canvas-gb`` sets it).
MAX_CANVAS_ENV = "H2GNET_MAX_CANVAS_GB"
#: Largest plausible side of a slide's scanned area, mm (glass slides are 75 mm long; large-format 75×50 mm):
#: level-0 size × µm/px beyond it means the µm/px (or the header) is wrong.
MAX_SLIDE_SIDE_MM = 100.0

#: A training run's exported model and its final metrics, inside the run folder.
MODEL_FILE = "model.onnx"
METRICS_FILE = "metrics.json"
#: A cohort command's per-slide status table, inside the output folder.
STATUS_FILE = "status.csv"
#: Stage-1 heatmap of a slide: ``NAME.heatmap.tiff``.
HEATMAP_SUFFIX = ".heatmap.tiff"
MASK_SUFFIX = ".mask.tiff"
GEOJSON_SUFFIX = ".geojson"
OVERLAY_SUFFIX = ".overlay.png"
SUMMARY_SUFFIX = ".json"


@dataclass(frozen=True)
class SlideOutputs:
    """The files ``segment`` writes for one slide, named after the slide, in one flat folder."""

    mask: Path
    geojson: Path
    heatmap: Path
    overlay: Path
    summary: Path

    def as_dict(self) -> dict[str, Path]:
        """Output kind -> path (``mask``, ``geojson``, ``heatmap``, ``overlay``, ``summary``)."""
        return {"mask": self.mask, "geojson": self.geojson, "heatmap": self.heatmap, "overlay": self.overlay,
                "summary": self.summary}


def slide_outputs(out_dir: str | Path, name: str) -> SlideOutputs:
    """Paths of the outputs of slide ``name`` (its file name without extension) in ``out_dir``."""
    out = Path(out_dir)
    return SlideOutputs(mask=out / f"{name}{MASK_SUFFIX}", geojson=out / f"{name}{GEOJSON_SUFFIX}",
                        heatmap=out / f"{name}{HEATMAP_SUFFIX}", overlay=out / f"{name}{OVERLAY_SUFFIX}",
                        summary=out / f"{name}{SUMMARY_SUFFIX}")
