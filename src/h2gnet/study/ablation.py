"""The paper's ablation study (section 3.2, Tables 1–2, Supplementary Table 1) from one config file.

Designs: (I) Otsu, (II) UNet-LR, (III) Inc-PW, (IV) Mob-PW, (V) Mob-KM-PW,
(VI) Mob-PW-UNet, (VII) Mob-PW-AGUNet, (VIII) Mob-PW-DAGUNet,
(IX) Mob-PW-DoubleUNet. Each is trained on the train split, selected on the
val split and evaluated on the test split. Every step leaves its result in the
output folder and is skipped when run again, so an interrupted study resumes
where it stopped. ``h2gnet demo`` is the same machinery with two designs. The output folder's layout:
:class:`h2gnet.study.layout.StudyLayout`.
"""

from __future__ import annotations

import csv
import json
import time
import tomllib
import warnings
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from h2gnet.cohort import Engine
from h2gnet.conventions import METRICS_FILE, MODEL_FILE, slide_outputs
from h2gnet.errors import H2GNetError
from h2gnet.evaluation.metrics import summarise_designs, values_by_design
from h2gnet.evaluation.predictions import EvaluateConfig, evaluate_predictions
from h2gnet.evaluation.stats import write_tukey
from h2gnet.evaluation.summary import (
    boxplot_png,
    format_mean_std,
    write_slides_csv,
    write_summary_json,
    write_summary_markdown,
)
from h2gnet.infer.adaptive import AdaptiveConfig
from h2gnet.infer.heatmap import heatmap_cohort
from h2gnet.infer.runtime import OnnxModel
from h2gnet.infer.segment import SegmentConfig, segment_many
from h2gnet.io.atomic import write_text
from h2gnet.io.manifest import read_manifest, select
from h2gnet.io.slides import open_slide
from h2gnet.outputs.mask_tiff import write_mask_tiff
from h2gnet.params import from_mapping
from h2gnet.patches.grid import index_cohort
from h2gnet.patches.tissue import otsu_tissue
from h2gnet.study.designs import DESIGNS, PAPER_TABLE1
from h2gnet.study.layout import StudyLayout
from h2gnet.study.report import write_figure4, write_html_report
from h2gnet.synth import CohortConfig, make_cohort
from h2gnet.train.cluster_guiding import fit_cohort_clustering
from h2gnet.train.clustering import ARRAYS_FILE
from h2gnet.train.config import REFINER_ARCHS, ClusterConfig, PatchTrainConfig, RefineTrainConfig
from h2gnet.train.patch_classifier import train_patch_classifier
from h2gnet.train.refiner import train_refiner
from h2gnet.train.run_state import read_log

# -- config: every section is one config dataclass's settings ------------------------------------
#: Settings a study fixes itself (paths, architecture per design, progress): not keys of its config.
_FIXED = {"manifest", "index_dir", "heatmaps", "arch", "clusters", "progress"}
PATCH_SECTIONS = {"patch", "inception", "mobilenet", "kmeans-patch"}
_PATCH_OVERRIDES = {"inc": "inception", "mob-km": "kmeans-patch", "mob": "mobilenet"}


def _keys(cls: type) -> set[str]:
    return {f.name for f in fields(cls)} - _FIXED


def _section_kinds() -> dict[str, tuple[type, set[str]]]:
    """Section name -> (config dataclass, keys a user may set there)."""
    kinds: dict[str, tuple[type, set[str]]] = {name: (PatchTrainConfig, _keys(PatchTrainConfig))
                                               for name in PATCH_SECTIONS}
    kinds["clusters"] = (ClusterConfig, _keys(ClusterConfig))
    kinds["refine"] = (RefineTrainConfig, _keys(RefineTrainConfig))
    kinds.update({f"refine-{arch}": (RefineTrainConfig, _keys(RefineTrainConfig)) for arch in REFINER_ARCHS})
    kinds["cohort"] = (CohortConfig, _keys(CohortConfig))  # and "manifest": a cohort of one's own
    kinds["evaluate"] = (EvaluateConfig, _keys(EvaluateConfig))
    kinds["segment"] = (SegmentConfig, SEGMENT_KEYS)
    kinds["adaptive"] = (AdaptiveConfig, _keys(AdaptiveConfig))  # present: coarse-to-fine heatmaps
    return kinds


def _table(config: dict, name: str) -> dict:
    value = config.get(name, {})
    return value if isinstance(value, dict) else {}


#: What a study's ``[segment]`` section may set of :class:`SegmentConfig` (how its test slides are segmented).
SEGMENT_KEYS = {"tta", "threshold", "min_tissue", "batch_size"}

_PLACEHOLDERS: dict[type, dict[str, Any]] = {
    SegmentConfig: {"patch_model": None},
    PatchTrainConfig: {"manifest": "", "index_dir": ""},
    ClusterConfig: {"manifest": "", "index_dir": ""},
    RefineTrainConfig: {"manifest": "", "heatmaps": None},
}


def check_config(config: dict, source: str | Path | None = None) -> dict:
    """Check a study config before any work: known sections and keys only (a misspelt key is an error
    naming it), every value within its parameter's rule, known designs. Returns ``config``."""
    kinds = _section_kinds()
    for key, value in config.items():
        if key == "caveats":
            if not isinstance(value, list) or not all(isinstance(c, str) and c.strip() for c in value):
                raise H2GNetError(source, "caveats must be a list of sentences (what this run leaves out)")
            continue
        if key == "designs":
            if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
                raise H2GNetError(source, "designs must be a list of design names")
            unknown = [d for d in value if d not in DESIGNS]
            if unknown:
                raise H2GNetError(source, f"unknown design(s) {', '.join(unknown)}; known: {', '.join(DESIGNS)}")
            continue
        if key not in kinds:
            raise H2GNetError(source, f"unknown section or key {key!r} (known: designs, caveats, "
                                      f"{', '.join(sorted(kinds))})")
        if not isinstance(value, dict):
            raise H2GNetError(source, f"[{key}] must be a table of settings")
        cls, allowed = kinds[key]
        data = dict(value)
        if key in PATCH_SECTIONS - {"patch"}:
            data = {**_table(config, "patch"), **data}
        elif key.startswith("refine-"):
            data = {**_table(config, "refine"), **data}
        if cls is CohortConfig:
            manifest = data.pop("manifest", None)
            if manifest is not None and not isinstance(manifest, str):
                raise H2GNetError(source, "[cohort] manifest: must be a path (a string)")
        given = {**_PLACEHOLDERS.get(cls, {}), **({"arch": "inceptionv3"} if key == "inception" else {}),
                 **({"arch": key.removeprefix("refine-")} if key.startswith("refine-") else {})}
        from_mapping(cls, data, source, key, allowed=allowed, **given)
    return config


def load_config(path: str | Path | None, builtin: str = "ablation-cpu") -> dict:
    """A TOML config file, or a built-in one (``ablation-cpu``, ``ablation-paper``, ``demo``), checked by
    :func:`check_config` (errors name the file, the section and the key)."""
    if path is None:
        text = resources.files("h2gnet.configs").joinpath(f"{builtin}.toml").read_text(encoding="utf-8")
        return check_config(tomllib.loads(text), f"built-in {builtin}.toml")
    path = Path(path)
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise H2GNetError(path, "no such config file") from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise H2GNetError(path, f"is not a TOML text file ({type(exc).__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise H2GNetError(path, f"is not valid TOML: {exc}") from None
    return check_config(config, path)


@dataclass
class Study:
    """A loaded, checked config and its output folder."""

    config: dict
    out: Path
    progress: bool = True
    engine: Engine = field(default_factory=Engine)  # where per-slide steps run (heatmaps, segment, evaluate)

    def __post_init__(self) -> None:
        check_config(self.config)

    @property
    def layout(self) -> StudyLayout:
        """The places of the output folder."""
        return StudyLayout(self.out)

    def section(self, name: str) -> dict:
        """The settings of one section (empty when the config has none)."""
        return dict(self.config.get(name, {}))

    @property
    def designs(self) -> list[str]:
        """The designs to run, in order (default: all nine)."""
        return list(self.config.get("designs", DESIGNS))

    def cohort(self) -> CohortConfig:
        """The ``[cohort]`` settings of a phantom cohort."""
        settings = self.section("cohort")
        settings.pop("manifest", None)
        return CohortConfig(**settings)

    def patch_config(self, name: str, manifest: Path, index: Path, clusters: Path | None) -> PatchTrainConfig:
        """Stage-1 settings of model ``name`` ("mob", "inc", "mob-km"): ``[patch]`` and its own section."""
        settings = {**self.section("patch"), **self.section(_PATCH_OVERRIDES[name])}
        return PatchTrainConfig(manifest=str(manifest), index_dir=str(index),
                                arch="inceptionv3" if name == "inc" else "mobilenetv2",
                                clusters=str(clusters) if clusters else None, progress=self.progress, **settings)

    def refine_config(self, arch: str, manifest: Path, heatmaps: Path | None) -> RefineTrainConfig:
        """Refinement settings of ``arch``: ``[refine]`` and ``[refine-ARCH]``."""
        settings = {**self.section("refine"), **self.section(f"refine-{arch}")}
        return RefineTrainConfig(manifest=str(manifest), heatmaps=str(heatmaps) if heatmaps else None, arch=arch,
                                 progress=self.progress, **settings)


# -- steps ---------------------------------------------------------------------------------
def _log(study: Study, message: str) -> None:
    if study.progress:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def step_cohort(study: Study) -> Path:
    """The cohort's manifest: the config's ``cohort.manifest``, or a phantom cohort made once."""
    given = study.section("cohort").get("manifest")
    if given is not None:
        return Path(given).resolve()
    manifest = study.layout.manifest
    if not manifest.exists():
        cohort = study.cohort()
        _log(study, f"phantom cohort: {cohort.slides} slides, seed {cohort.seed}, {cohort.stain_set} stains")
        make_cohort(study.layout.cohort, cohort, progress=study.progress)
    return manifest


def step_index(study: Study, manifest: Path) -> Path:
    """Index the cohort's patches into ``index/`` (resumes); returns the folder."""

    index = study.layout.index
    rows, failures = index_cohort(read_manifest(manifest), index, progress=study.progress)
    if failures:
        raise H2GNetError(failures[0][0], f"patch indexing failed: {failures[0][1]}")
    return index


def step_patch_model(study: Study, manifest: Path, index: Path, name: str) -> Path:
    """Train one stage-1 model: "mob", "inc" or "mob-km" (cluster-guided)."""

    run = study.layout.run(name)
    if (run / MODEL_FILE).exists() and (run / METRICS_FILE).exists():
        return run / MODEL_FILE
    clusters = step_clusters(study, manifest, index) if name == "mob-km" else None
    _log(study, f"training patch classifier {name}")
    train_patch_classifier(run, study.patch_config(name, manifest, index, clusters))
    return run / MODEL_FILE


def step_clusters(study: Study, manifest: Path, index: Path) -> Path:
    """Fit the k-means cluster guiding once (``clusters/``); returns the folder."""

    out = study.layout.run("clusters")
    if (out / ARRAYS_FILE).exists():
        return out
    _log(study, "fitting the k-means clustering")
    fit_cohort_clustering(out, ClusterConfig(manifest=str(manifest), index_dir=str(index), progress=study.progress,
                                             **study.section("clusters")))
    return out


def step_heatmaps(study: Study, manifest: Path, model: Path, name: str) -> Path:
    """Heatmaps of every slide of the cohort (the refinement networks' input)."""

    out = study.layout.heatmaps(name)
    failures = heatmap_cohort(read_manifest(manifest), out, OnnxModel(model, "patch-classifier"),
                              progress=study.progress, engine=study.engine)
    if failures:
        raise H2GNetError(None, f"heatmaps failed: {failures[0]}")
    return out


def step_refiner(study: Study, manifest: Path, arch: str, heatmaps: Path | None) -> Path:
    """Train (or reuse) the refiner ``arch`` on the heatmaps; returns its ``model.onnx``."""

    run = study.layout.run(arch)
    if (run / MODEL_FILE).exists() and (run / METRICS_FILE).exists():
        return run / MODEL_FILE
    _log(study, f"training refinement network {arch}")
    train_refiner(run, study.refine_config(arch, manifest, heatmaps))
    return run / MODEL_FILE


def _test_entries(manifest: Path) -> list:

    tests = [e for e in select(read_manifest(manifest), "test") if e.annotation is not None]
    if not tests:
        raise H2GNetError(manifest, "has no annotated test slides to evaluate")
    return tests


def predict_otsu(study: Study, manifest: Path, out: Path) -> None:
    """Design (I): Otsu's threshold on the low-resolution image of every test slide, masks into ``out``."""

    for e in _test_entries(manifest):
        target = slide_outputs(out, e.key).mask
        if not target.exists():
            with open_slide(e.slide, e.mpp) as slide:
                write_mask_tiff(target, otsu_tissue(slide), slide.dimensions)


def predict(study: Study, manifest: Path, out: Path, patch: Path | None, refiner: Path | None,
            heatmaps: Path | None) -> None:
    """Segment the test slides with a patch model and/or refiner into ``out`` (resumes), with the config's
    ``[segment]`` settings (e.g. ``tta = true``); dense heatmaps unless the config has an ``[adaptive]`` section
    (its settings, e.g. ``stride = 2``; empty for the defaults)."""

    adaptive = AdaptiveConfig(**study.section("adaptive")) if "adaptive" in study.config else None
    cfg = SegmentConfig(patch_model=patch, refine_model=refiner, heatmap_dir=None if adaptive else heatmaps,
                        progress=study.progress, adaptive=adaptive, **study.section("segment"))
    status = segment_many([str(e.slide) for e in _test_entries(manifest)], out, cfg, engine=study.engine)
    failed = {k: v["error"] for k, v in status.items() if v["status"] == "failed"}
    if failed:
        slide, error = next(iter(failed.items()))
        raise H2GNetError(slide, f"segmentation failed: {error}")


def run_design(study: Study, design: str, manifest: Path, index: Path) -> Path:
    """Train what the design needs and segment the test slides; returns its predictions folder."""
    chosen = DESIGNS[design]
    out = study.layout.predictions(design)
    if chosen.kind == "otsu":
        predict_otsu(study, manifest, out)
    elif chosen.kind == "lowres":
        assert chosen.arch is not None
        predict(study, manifest, out, None, step_refiner(study, manifest, chosen.arch, None), None)
    elif chosen.kind == "patchwise":
        assert chosen.model is not None
        model = step_patch_model(study, manifest, index, chosen.model)
        heat = step_heatmaps(study, manifest, model, "mob") if chosen.model == "mob" else None
        predict(study, manifest, out, model, None, heat)
    else:
        assert chosen.arch is not None
        model = step_patch_model(study, manifest, index, "mob")
        heat = step_heatmaps(study, manifest, model, "mob")
        predict(study, manifest, out, model, step_refiner(study, manifest, chosen.arch, heat), heat)
    return out


# -- results -------------------------------------------------------------------------------
def evaluate_designs(study: Study, manifest: Path, designs: list[str]) -> list[dict]:
    """Per-slide recall, precision and Dice of every design on the test split."""

    mpp = EvaluateConfig(**study.section("evaluate")).mpp
    tests = _test_entries(manifest)
    rows = []
    for d in designs:
        rows += evaluate_predictions(tests, study.layout.predictions(d), mpp, DESIGNS[d].label, progress=False,
                                     engine=study.engine)
    return rows


def refinement_lines(rows: list[dict], designs: list[str], tukey: dict | None) -> str:
    """One line per refined design run beside Mob-PW: the slides it improved (paired Dice) and Tukey's p."""
    if "mob-pw" not in designs:
        return ""
    base = DESIGNS["mob-pw"].label
    by_slide: dict[str, dict[str, float]] = {}
    for r in rows:
        by_slide.setdefault(str(r["slide"]), {})[str(r["design"])] = float(r["dice"])
    out = []
    for d in designs:
        label = DESIGNS[d].label
        if DESIGNS[d].kind != "refined":
            continue
        pairs = [(v[label], v[base]) for v in by_slide.values() if label in v and base in v]
        if not pairs:
            continue
        gains = np.array([a - b for a, b in pairs])
        line = (f"{label} against {base}: Dice higher on {int(np.sum(gains > 0))} of {len(pairs)} slides "
                f"(mean change {gains.mean():+.3f})")
        if tukey is not None and label in tukey["designs"] and base in tukey["designs"]:
            i, j = tukey["designs"].index(label), tukey["designs"].index(base)
            line += f", Tukey p = {tukey['p'][i][j]:.3g}"
        out.append(line + ".\n")
    return "".join(out)


def write_results(study: Study, rows: list[dict], designs: list[str], timings: dict[str, float]) -> dict:
    """Table 1 (with the paper's numbers beside ours), Table 2, Tukey, box plot, Figure 4, HTML report."""

    tests = _test_entries(step_cohort(study))

    res = study.layout.results
    res.mkdir(parents=True, exist_ok=True)
    summaries = summarise_designs(rows, by="grade")
    write_slides_csv(res / "slides.csv", rows)
    write_summary_markdown(res / "summary.md", summaries)  # the same files as `h2gnet evaluate`
    write_summary_json(res / "summary.json", summaries)
    labels = [DESIGNS[d].label for d in designs]
    lines = ["| Design | Recall | Precision | Dice | Paper's Dice (BCS-1, n = 90) |", "|---|---|---|---|---|"]
    csv_lines = ["design,recall_mean,recall_std,precision_mean,precision_std,dice_mean,dice_std,n"]
    for d, label in zip(designs, labels):
        s = summaries[label]["overall"]
        paper = PAPER_TABLE1[d][2]
        lines.append(f"| {label} | {format_mean_std(s['recall'])} | {format_mean_std(s['precision'])} | "
                     f"{format_mean_std(s['dice'])} | {paper[0]:.3f} ± {paper[1]:.3f} |")
        csv_lines.append(",".join([label] + [f"{s[m][k]:.4f}" for m in ("recall", "precision", "dice")
                                             for k in ("mean", "std")] + [str(s["n"])]))
    n_test = summaries[labels[0]]["overall"]["n"]
    given = study.section("cohort").get("manifest")  # a cohort of its own (real slides), else the phantom one
    cohort = "Phantom test slides" if given is None else f"Test slides of {Path(given).name}"
    table1 = "\n".join(lines) + f"\n\n{cohort}: n = {n_test}. Paper: BCS-1 cohort, 90 test WSIs.\n"
    dice = values_by_design(rows)
    deep = {k: v for k, v in dice.items() if k != DESIGNS["otsu"].label}
    tukey = write_tukey(res, deep)
    table1 += refinement_lines(rows, designs, tukey)
    caveats = study.config.get("caveats", [])
    if caveats:
        table1 += "\nLeft out of this run (its time budget):\n" + "".join(f"- {c}\n" for c in caveats)
    write_text(study.layout.table1, table1)
    write_text(res / "table1.csv", "\n".join(csv_lines) + "\n")
    grades = sorted({str(r["grade"]) for r in rows if r["grade"] != ""})
    t2 = ["| Design | " + " | ".join(f"Grade {g}" for g in grades) + " |", "|---" * (len(grades) + 1) + "|"]
    for label in labels:
        groups = summaries[label]["groups"]
        t2.append(f"| {label} | " + " | ".join(format_mean_std(groups[g]["dice"]) if g in groups else "–"
                                                for g in grades) + " |")
    write_text(res / "table2.md", "\n".join(t2) + "\n")
    try:
        boxplot_png({k: dice[k] for k in labels}, res / "dice_boxplot.png", title="Per-slide Dice (test split)")
        refined = [d for d in designs if DESIGNS[d].kind == "refined"]
        if refined:
            write_figure4(study.out, tests, (refined[0], DESIGNS[refined[0]].label), res / "figure4.png")
    except ImportError:
        pass  # matplotlib is in the [train] extra
    result = {"summaries": summaries, "tukey": tukey, "timings": timings, "designs": designs}
    write_text(res / "results.json", json.dumps(result, indent=2, default=_json_default))
    runs = sorted(p for p in study.layout.runs.glob("*") if (p / "log.csv").exists())
    logs = {run.name: read_log(run) for run in runs}
    write_html_report(study.out, tests, {d: DESIGNS[d].label for d in designs}, logs, table1, study.layout.report)
    return result


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


#: Config keys a resumed study may change: the designs (each has folders of its own), what the report lists as
#: left out, and the evaluation (recomputed on every run).
RESUMABLE_CHANGES = {"designs", "caveats", "evaluate"}


def _first_difference(old: Any, new: Any, where: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    return None if old == new else f"{where}: {old!r} then, {new!r} now"


def check_resumed_config(study: Study) -> None:
    """A study folder resumes only with the settings it was made with (``study-config.json``, written on its
    first run): otherwise its cohort, models and predictions would be kept silently under other settings.
    Changes to :data:`RESUMABLE_CHANGES` are allowed."""
    path = study.layout.config
    settings = {k: v for k, v in json.loads(json.dumps(study.config)).items() if k not in RESUMABLE_CHANGES}
    if not path.exists():
        manifest = study.layout.manifest
        if manifest.exists() and "manifest" not in study.section("cohort"):  # a folder from before this record
            with manifest.open(newline="") as f:  # rows only: the manifest itself is checked when it is read
                made = sum(1 for _ in csv.DictReader(f))
            asked = study.cohort().slides
            if made != asked:
                raise H2GNetError(study.out, f"holds a phantom cohort of {made} slides, the config asks for "
                                             f"{asked}: use a new folder, or delete it to start again")
            warnings.warn(f"{study.out}: made before studies recorded their settings; its cohort, models and "
                          "predictions are kept as they are (use a new folder if the config changed)",
                          UserWarning, stacklevel=2)
        write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise H2GNetError(path, f"cannot be read ({exc}); delete it to accept this folder's results as they are") \
            from None
    found = _first_difference(before, settings)
    if found:
        raise H2GNetError(study.out, f"was made with other settings ({found}); results in it would not be those "
                                     "of this config: use a new folder, or delete it to start again")


def run_study(config: dict, out: str | Path, *, progress: bool = True, engine: Engine | None = None) -> dict:
    """Run (or resume) every design of ``config`` into ``out`` and write the results; the per-slide steps
    (heatmaps, segmentation, evaluation) run on ``engine`` (default: in this process)."""
    study = Study(config, Path(out), progress, engine or Engine())
    try:
        study.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a file of that name
        raise H2GNetError(study.out, f"cannot be the study folder ({exc.strerror or exc})") from None
    check_resumed_config(study)
    designs = study.designs
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    manifest = step_cohort(study)
    index = step_index(study, manifest)
    timings["cohort_and_index"] = time.perf_counter() - t0
    for design in designs:
        t = time.perf_counter()
        _log(study, f"design {DESIGNS[design].label}")
        run_design(study, design, manifest, index)
        timings[design] = time.perf_counter() - t
    rows = evaluate_designs(study, manifest, designs)
    result = write_results(study, rows, designs, timings)
    timings["total"] = time.perf_counter() - t0
    return result
