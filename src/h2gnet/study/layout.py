"""The places of a study folder (``h2gnet ablation``, ``h2gnet demo``): one home for every folder and result
file that the study writes and its report and the command line read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StudyLayout:
    """A study folder ``root``::

        cohort/              phantom cohort (unless the config names a manifest)
        index/               patch index
        runs/<model>/        training runs (model.onnx, log.csv, …); runs/clusters/: the k-means fit
        heatmaps/<model>/    stage-1 heatmaps of every slide (Mob-PW; refinement input)
        predictions/<design>/  masks, GeoJSON, overlays of the test slides
        results/             table1.md/.csv, table2.md, tukey.md/.csv, slides.csv,
                             dice_boxplot.png, figure4.png, report.html
        study-config.json    the settings the folder's results were made with (checked on resume)
    """

    root: Path

    @property
    def cohort(self) -> Path:
        """The phantom cohort's folder."""
        return self.root / "cohort"

    @property
    def manifest(self) -> Path:
        """The phantom cohort's manifest."""
        return self.cohort / "manifest.csv"

    @property
    def index(self) -> Path:
        """The patch index folder."""
        return self.root / "index"

    @property
    def runs(self) -> Path:
        """The folder of the training runs."""
        return self.root / "runs"

    def run(self, name: str) -> Path:
        """The run folder of model ``name`` (e.g. "mob", "unet"; "clusters": the k-means fit)."""
        return self.runs / name

    def heatmaps(self, model: str) -> Path:
        """The stage-1 heatmaps of patch model ``model`` (e.g. "mob")."""
        return self.root / "heatmaps" / model

    def predictions(self, design: str) -> Path:
        """The segmentations of the test slides by design ``design`` (e.g. "mob-pw-unet")."""
        return self.root / "predictions" / design

    @property
    def results(self) -> Path:
        """The tables, figures and report."""
        return self.root / "results"

    @property
    def table1(self) -> Path:
        """Table 1 (Markdown) in :attr:`results`."""
        return self.results / "table1.md"

    @property
    def report(self) -> Path:
        """The HTML report in :attr:`results`."""
        return self.results / "report.html"

    @property
    def config(self) -> Path:
        """The settings the study was first run with (JSON)."""
        return self.root / "study-config.json"
