"""What a results folder holds, read once: one :class:`SlideRecord` per slide of ``status.csv`` and of the
``NAME.json`` summaries, the slide files they came from, annotations (from a manifest) and evaluation metrics.

Only the files named here are ever served: the viewer looks a request's slide up by its key (the slide's file
name without extension) in :attr:`Catalogue.records`; no part of a request becomes a path.

>>> cat = load_catalogue("results/", slides="cohort.csv")  # doctest: +SKIP
>>> [r.key for r in cat.records.values()]  # doctest: +SKIP
['s1', 's2']
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from h2gnet.cohort.status import read_status
from h2gnet.conventions import STATUS_FILE, SUMMARY_SUFFIX, SlideOutputs, slide_outputs
from h2gnet.errors import H2GNetError
from h2gnet.evaluation.metrics import METRICS
from h2gnet.io.manifest import read_manifest

#: File name of an evaluation's per-slide table (``h2gnet evaluate -o DIR``).
EVALUATION_FILE = "slides.csv"
#: Sub-folder of the results folder searched for an evaluation when none is given.
EVALUATION_DIR = "evaluation"
#: Extensions taken as slides when ``--slides`` is a folder (first match wins, in this order).
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm",
                  ".czi", ".png", ".jpg", ".jpeg")
#: Largest summary file read (bytes): a summary is a few KB.
MAX_SUMMARY_BYTES = 1 << 20


@dataclass
class SlideRecord:
    """One slide of the results folder: its status, summary, files and metrics.

    ``slide``: the slide file (None when it cannot be found), ``slide_mpp``: its level-0 µm/px as segment
    used it; ``seconds``: wall time of its task (s); ``metrics``: evaluation columns (design/metric -> value).
    """

    key: str
    status: str = ""
    error: str = ""
    seconds: float | None = None
    summary: dict[str, Any] | None = None
    slide: Path | None = None
    slide_mpp: float | None = None
    annotation: Path | None = None
    annotation_downsample: float = 4.0
    tumour_free: bool = False
    metrics: dict[str, float | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def number(self, name: str) -> float | None:
        """A finite number of the summary (``tumour_area_mm2``, ``classified_fraction``...), else None."""
        value = (self.summary or {}).get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)

    def design(self) -> str:
        """The design segment reported (``patch-wise + refinement``...), or ''."""
        value = (self.summary or {}).get("design")
        return value if isinstance(value, str) else ""

    def model_cards(self) -> str:
        """The models' cards by stage, e.g. ``patch: h2gnet-2022, refine: h2gnet-2022`` ('' if unknown)."""
        models = (self.summary or {}).get("models")
        if not isinstance(models, dict):
            return ""
        parts = []
        for stage, model in models.items():
            if not isinstance(model, dict):
                continue
            card = model.get("card")
            name = card.get("name") if isinstance(card, dict) else None
            label = name or model.get("arch") or Path(str(model.get("path", "?"))).name
            parts.append(f"{stage}: {label}")
        return ", ".join(parts)

    def dimensions(self) -> tuple[int, int] | None:
        """The slide's level-0 (width, height) in px from its summary, or None."""
        dims = (self.summary or {}).get("dimensions_l0")
        if isinstance(dims, list) and len(dims) == 2 and all(isinstance(v, int) and v > 0 for v in dims):
            return int(dims[0]), int(dims[1])
        return None


@dataclass
class Catalogue:
    """The slides of one results folder, in the order of ``status.csv`` then of the summaries' names.

    ``metric_columns``: the evaluation's columns (``dice``, or ``design: dice`` with several designs);
    ``notes``: problems of the folder as a whole (an unreadable ``status.csv``), shown on the cohort page.
    """

    results: Path
    records: dict[str, SlideRecord]
    metric_columns: list[str] = field(default_factory=list)
    evaluation: Path | None = None
    notes: list[str] = field(default_factory=list)

    def outputs(self, key: str) -> SlideOutputs:
        """The output files of slide ``key`` (named by :func:`h2gnet.conventions.slide_outputs`)."""
        return slide_outputs(self.results, key)

    def output_file(self, key: str, kind: str) -> Path:
        """The output ``kind`` (``mask``, ``geojson``, ``heatmap``, ``overlay``) of slide ``key``, checked: a
        regular file inside the results folder (a link that leads out of it is refused)."""
        path = self.outputs(key).as_dict()[kind]
        if not path.is_file():
            raise H2GNetError(path, f"no {kind} output for this slide")
        real, root = path.resolve(), self.results.resolve()
        if not real.is_relative_to(root):
            raise H2GNetError(path, "is a link to a file outside the results folder; not served")
        return path


def _read_summary(path: Path) -> dict[str, Any]:
    """A slide summary ``NAME.json`` of ``segment``; H2GNetError when it is not one."""
    try:
        if path.stat().st_size > MAX_SUMMARY_BYTES:
            raise H2GNetError(path, f"is larger than {MAX_SUMMARY_BYTES} bytes: not a slide summary")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise H2GNetError(path, f"unreadable slide summary ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), dict) or "name" not in doc:
        raise H2GNetError(path, "is not a slide summary of `h2gnet segment` (no 'name' and 'outputs')")
    return doc


def _summaries(results: Path, keys: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Summaries of the slides in ``keys`` and of every other ``NAME.json`` that is one; failures by key."""
    found: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    candidates = dict.fromkeys(keys)
    candidates.update(dict.fromkeys(sorted(p.name[: -len(SUMMARY_SUFFIX)] for p in results.glob(f"*{SUMMARY_SUFFIX}")
                                           if p.is_file() and p.name.count(".") == 1)))
    for key in candidates:
        path = slide_outputs(results, key).summary
        if not path.exists():
            continue
        try:
            found[key] = _read_summary(path)
        except H2GNetError as exc:
            if key in keys:  # a stray JSON that no status row names is not a slide
                errors[key] = str(exc)
    return found, errors


def _evaluation(folder: Path) -> tuple[dict[str, dict[str, float | None]], list[str]]:
    """Metrics by slide key from an evaluation's ``slides.csv``; columns ``dice`` or ``design: dice``."""
    path = folder / EVALUATION_FILE
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise H2GNetError(path, f"unreadable evaluation table ({type(exc).__name__})") from None
    if not rows or "slide" not in rows[0] or not any(m in rows[0] for m in METRICS):
        raise H2GNetError(path, f"is not an evaluation table of `h2gnet evaluate` (columns slide, "
                                f"{', '.join(METRICS)})")
    designs = list(dict.fromkeys(r.get("design") or "" for r in rows))
    metrics = [m for m in ("dice", "recall", "precision") if m in rows[0]]
    columns = [m if len(designs) == 1 else f"{d}: {m}" for d in designs for m in metrics]
    by_slide: dict[str, dict[str, float | None]] = {}
    for r in rows:
        for m in metrics:
            column = m if len(designs) == 1 else f"{r.get('design') or ''}: {m}"
            try:
                value: float | None = float(r[m]) if r.get(m) else None
            except ValueError:
                value = None
            by_slide.setdefault(r.get("slide") or "", {})[column] = value
    return by_slide, columns


def _find_evaluation(results: Path, evaluation: Path | None) -> Path | None:
    if evaluation is not None:
        if not (evaluation / EVALUATION_FILE).is_file():
            raise H2GNetError(evaluation, f"holds no {EVALUATION_FILE} (give the -o folder of `h2gnet evaluate`)")
        return evaluation
    for folder in (results, results / EVALUATION_DIR):
        if (folder / EVALUATION_FILE).is_file():
            return folder
    return None


def _slides_folder(folder: Path) -> dict[str, Path]:
    """Slide files of a folder by key (stem); the first extension of :data:`SLIDE_SUFFIXES` wins."""
    rank = {s: i for i, s in enumerate(SLIDE_SUFFIXES)}
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir(), key=lambda p: (rank.get(p.suffix.lower(), 99), p.name)):
        if p.suffix.lower() in rank and p.stem not in out:
            out[p.stem] = p
    return out


def _recorded_slide(recorded: str, results: Path) -> Path | None:
    """The slide file a status row or summary names: absolute, or relative to here or to the results folder."""
    path = Path(recorded)
    tries = [path] if path.is_absolute() else [Path.cwd() / path, results / path, results.parent / path]
    return next((p for p in tries if p.is_file()), None)


def load_catalogue(results: str | Path, slides: str | Path | None = None,
                   evaluation: str | Path | None = None) -> Catalogue:
    """Read a ``segment`` output folder (``status.csv``, ``NAME.json``) and where its slides are.

    ``slides``: a manifest (``.csv``: slide files, their µm/px and annotations) or a folder of slide files,
    for results whose recorded slide paths no longer lead to the files (moved, or relative to another
    folder). ``evaluation``: an ``h2gnet evaluate -o`` folder (default: the results folder or its
    ``evaluation/`` sub-folder, when one holds ``slides.csv``). Problems of single slides become the
    records' ``problems``; a folder that is not a results folder is an :class:`H2GNetError`.
    """
    results = Path(results)
    if not results.is_dir():
        raise H2GNetError(results, "no such results folder" if not results.exists() else "is not a folder")
    notes: list[str] = []
    status: dict[str, dict[str, str]] = {}
    if (results / STATUS_FILE).exists():
        try:
            status = read_status(results / STATUS_FILE)
        except H2GNetError as exc:
            notes.append(f"{exc.path}: unreadable ({exc.problem}); slides are listed from their summaries")
    keys = list(dict.fromkeys(Path(s).stem for s in status))
    summaries, summary_errors = _summaries(results, keys)
    keys += [k for k in summaries if k not in keys]
    if not keys:
        raise H2GNetError(results, f"holds no {STATUS_FILE} and no slide summary (NAME.json): not an output "
                                   "folder of `h2gnet segment`")
    records = {k: SlideRecord(k) for k in keys}
    for slide, row in status.items():  # later rows of the same key win, as in the file
        rec = records[Path(slide).stem]
        rec.status, rec.error = row["status"], row["error"]
        try:
            rec.seconds = float(row["seconds"])
        except ValueError:
            rec.seconds = None
        rec.slide = _recorded_slide(slide, results)
    for key, summary in summaries.items():
        rec = records[key]
        rec.summary = summary
        rec.status = rec.status or "done"
        if rec.status == "skipped" or rec.seconds is None:  # "already done": the time of the run that did it
            total = (summary.get("seconds") or {}).get("total") if isinstance(summary.get("seconds"), dict) else None
            rec.seconds = float(total) if isinstance(total, (int, float)) else rec.seconds
        mpp = summary.get("slide_mpp")
        rec.slide_mpp = float(mpp) if isinstance(mpp, (int, float)) and mpp > 0 else None
        if isinstance(summary.get("slide"), str):
            rec.slide = _recorded_slide(summary["slide"], results) or rec.slide
    for key, message in summary_errors.items():
        records[key].problems.append(message)
    missing = _resolve_slides(records, slides)
    found = _find_evaluation(results, None if evaluation is None else Path(evaluation))
    columns: list[str] = []
    if found is not None:
        metrics, columns = _evaluation(found)
        for key, values in metrics.items():
            if key in records:
                records[key].metrics = values
    for rec in records.values():
        if rec.slide is None:
            rec.problems.append(missing.get(rec.key) or f"{rec.key}: the slide file was not found (give its folder "
                                                        "or manifest with --slides)")
    return Catalogue(results, records, columns, found, notes)


def _resolve_slides(records: dict[str, SlideRecord], slides: str | Path | None) -> dict[str, str]:
    """Slide files (and annotations, µm/px) from a manifest or a folder; they win over the recorded paths.
    Returns why a listed slide is missing, by key."""
    missing: dict[str, str] = {}
    if slides is None:
        return missing
    slides = Path(slides)
    if slides.is_dir():
        for key, path in _slides_folder(slides).items():
            if key in records:
                records[key].slide = path
        return missing
    if not slides.exists():
        raise H2GNetError(slides, "no such slide folder or manifest")
    for entry in read_manifest(slides, check_files=False):
        rec = records.get(entry.key)
        if rec is None:
            continue
        rec.slide = entry.slide if entry.slide.is_file() else None
        if rec.slide is None:
            missing[entry.key] = f"{entry.slide}: no such slide file (listed in {slides})"
        rec.slide_mpp = rec.slide_mpp or entry.mpp
        rec.annotation, rec.annotation_downsample = entry.annotation, entry.annotation_downsample
        rec.tumour_free = entry.tumour_free
    return missing
