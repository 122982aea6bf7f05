"""``h2gnet segment``: slides in, tumour segmentations out (ONNX Runtime only, no PyTorch).

Per slide, in a flat output folder, files named after the slide:

* ``NAME.mask.tiff`` — pyramidal tiled tumour mask (0/255) with µm/px tags (OpenSlide, QuPath);
* ``NAME.geojson`` — the tumour region as QuPath annotations (level-0 px, class "Tumor");
* ``NAME.heatmap.tiff`` — stage-1 tumour probabilities, one pixel per patch;
* ``NAME.overlay.png`` — thumbnail with heatmap and outline;
* ``NAME.json`` — summary: areas, timings, models and checksums, version.

The summary is written last, so its presence means the slide is done; a run
over many slides keeps ``status.csv`` (done / failed with the error / skipped)
and skips finished slides when run again.
"""

from __future__ import annotations

import glob
import json
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from h2gnet import __version__
from h2gnet.cohort import Engine, SlideTask, StatusTable, slide_threads
from h2gnet.conventions import STATUS_FILE, slide_outputs
from h2gnet.errors import H2GNetError
from h2gnet.infer.adaptive import AdaptiveConfig
from h2gnet.infer.heatmap import (
    ALLOW_UPSAMPLING_RULE,
    BATCH_SIZE_RULE,
    MAX_UPSAMPLING_RULE,
    MIN_TISSUE_RULE,
    READERS_RULE,
    HeatmapSettings,
    HeatmapStats,
    check_upsampling,
    compute_heatmap,
    load_slide_heatmap,
    save_heatmap,
    tissue_for,
)
from h2gnet.infer.model_card import HSV_RULE, preset_names
from h2gnet.infer.refine_input import REFINE_SIZE, low_resolution, refine
from h2gnet.infer.runtime import DEVICES, PRECISIONS, OnnxModel, default_threads, sha256_of
from h2gnet.io.atomic import write_text
from h2gnet.io.lock import folder_lock
from h2gnet.io.manifest import read_manifest
from h2gnet.io.raster import Raster
from h2gnet.io.slides import Slide, open_slide
from h2gnet.outputs.geojson import mask_to_geojson, write_geojson
from h2gnet.outputs.mask_tiff import write_mask_tiff
from h2gnet.outputs.overlay import render_overlay, write_png
from h2gnet.params import Rule, check_fields, param
from h2gnet.patches.grid import MIN_TISSUE
from h2gnet.patches.tissue import detect_tissue, tissue_area_mm2

OVERLAY_MAX_SIDE = 2048
#: The consecutive stages of a slide in its summary's ``seconds`` (their sum is ``total``); ``inference`` (time in
#: the patch model) and ``read_wait`` (the model waiting for patches) are parts of ``heatmap``.
STAGES = ("tissue", "heatmap", "refinement", "write")


@dataclass
class SegmentConfig:
    """Inference settings.

    ``refine_model`` None gives the patch-wise result (heatmap > 0.5); a 3-channel
    refiner (UNet-LR) needs no ``patch_model``. ``heatmap_dir``: reuse stage-1
    heatmaps found there (``NAME.heatmap.tiff``) instead of recomputing them. ``adaptive``: coarse-to-fine
    patch evaluation (:mod:`h2gnet.infer.adaptive`; the default, with its default settings, since its accuracy
    study: docs/performance.md); None classifies every tissue patch (dense). ``preset``: the model
    card of models without h2gnet metadata and without ``NAME.card.json`` beside them (e.g. "h2gnet-2022").
    """

    patch_model: Path | None
    refine_model: Path | None = None
    heatmap_dir: Path | None = None
    device: str = param("cpu", Rule(str, choices=DEVICES, help="ONNX Runtime execution provider"))
    threads: int | None = param(None, Rule(int, low=1, high=1024, optional=True,
                                           help="inference threads (default: all cores)"))
    precision: str = param("fp32", Rule(str, choices=PRECISIONS, help="with --device openvino: bf16 lets "
                                        "OpenVINO compute in bfloat16 (int8: `h2gnet quantize`)"))
    batch_size: int = param(16, BATCH_SIZE_RULE)
    readers: int = param(2, READERS_RULE)
    min_tissue: float = param(MIN_TISSUE, MIN_TISSUE_RULE)
    threshold: float = param(0.5, Rule(float, low=0, high=1, low_open=True, high_open=True,
                                       help="tumour where the probability is above this"))
    tta: bool = param(False, Rule(bool, help="test-time augmentation of the refiner: average its output over the "
                                             "eight flips and quarter turns of its input"))
    progress: bool = param(True, Rule(bool))
    adaptive: AdaptiveConfig | None = field(default_factory=AdaptiveConfig)
    preset: str | None = param(None, Rule(str, choices=tuple(preset_names()), optional=True,
                                          help="conventions of published models (a model card): without "
                                               "--patch-model/--refine-model, the files `h2gnet fetch-models "
                                               "PRESET` got"))
    max_upsampling: float = param(2.0, MAX_UPSAMPLING_RULE)
    allow_upsampling: bool = param(False, ALLOW_UPSAMPLING_RULE)

    def __post_init__(self) -> None:
        check_fields(self)

    def heatmap(self) -> HeatmapSettings:
        """The stage-1 part of these settings."""
        return HeatmapSettings(self.min_tissue, self.batch_size, self.readers, self.adaptive,
                               max_upsampling=self.max_upsampling, allow_upsampling=self.allow_upsampling)


@dataclass
class Models:
    """Loaded ONNX models (load once, segment many slides)."""

    patch: OnnxModel | None
    refine: OnnxModel | None

    @classmethod
    def load(cls, cfg: SegmentConfig) -> Models:
        """Load and check the models named in ``cfg`` (patch classifier, refiner or both)."""
        threads = cfg.threads or default_threads()

        def load(path: Path | None, kind: str) -> OnnxModel | None:
            return None if path is None else OnnxModel(Path(path), kind, cfg.device, threads, cfg.precision,
                                                       preset=cfg.preset)

        with ThreadPoolExecutor(1) as pool:  # ONNX Runtime builds sessions without the GIL: both at once
            refiner = pool.submit(load, cfg.refine_model, "refiner")
            patch = load(cfg.patch_model, "patch-classifier")
            ref = refiner.result()
        if ref is not None and ref.in_channels not in (3, 4):
            raise H2GNetError(ref.path, f"takes {ref.in_channels} channels; a refiner takes 4 (RGB + heatmap) "
                                        "or 3 (UNet-LR)")
        if patch is None and (ref is None or ref.in_channels != 3):
            raise H2GNetError(None, "a patch model is needed (only a 3-channel UNet-LR refiner works without one)")
        if patch is not None and ref is not None and ref.in_channels == 3:  # its heatmaps would go unused
            raise H2GNetError(patch.path, f"would not be used: the refiner {ref.path} takes no heatmap (3 channels, "
                                          "UNet-LR); leave out the patch model, or give a 4-channel refiner")
        return cls(patch, ref)


def refiner_warning(model: OnnxModel | None) -> str | None:
    """A warning if ``model`` is a refiner whose own validation (metadata ``val_dice`` against
    ``val_dice_patchwise``, written by ``train-refine``) was worse than the patch-wise mask; else None."""
    if model is None:
        return None
    try:
        refined = float(model.metadata["val_dice"])
        patchwise = float(model.metadata["val_dice_patchwise"])
    except (KeyError, ValueError):
        return None  # older models, or exported without a validation: nothing to say
    if refined >= patchwise:
        return None
    return (f"{model.path}: this refiner was worse than patch-wise on its own validation slides (Dice "
            f"{refined:.3f} against {patchwise:.3f}); consider --no-refine or a refiner trained longer")


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and prove we can write there, before any work is done."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".h2gnet-write-test-"):
            pass
    except OSError as exc:
        raise H2GNetError(out_dir, f"output folder is not writable ({exc.strerror or exc})") from None


def _thumbnail(low_rgb: np.ndarray) -> np.ndarray:
    img = low_rgb
    scale = OVERLAY_MAX_SIDE / max(img.shape[:2])
    if scale < 1:
        img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return img


def segment_slide(slide: Slide | str | Path, out_dir: str | Path, models: Models, cfg: SegmentConfig,  # noqa: PLR0913
                  mpp: float | None = None, *, tissue: Raster | None = None) -> dict:
    """Segment one slide and write its outputs; returns the summary (also ``NAME.json``). ``tissue``: the
    slide's tissue mask when already found (by the rule :func:`tissue_for` would use)."""

    out_dir = Path(out_dir)
    if not isinstance(slide, Slide):
        slide = open_slide(slide, mpp)
    paths = slide_outputs(out_dir, slide.name).as_dict()
    upsampling = None if models.patch is None else check_upsampling(slide, models.patch, cfg.max_upsampling,
                                                                     allow=cfg.allow_upsampling)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if tissue is None:
        tissue = tissue_for(slide, models.patch)  # h2gnet's HSV rule unless the patch model's card names another
    timings["tissue"] = time.perf_counter() - t
    stats = HeatmapStats()
    heat = None
    size = (models.refine.input_size or REFINE_SIZE) if models.refine else REFINE_SIZE
    with ThreadPoolExecutor(1) as pool:
        # the low-resolution image does not depend on the heatmap: read it while the patches run
        low_future = pool.submit(low_resolution, slide, size,
                                 models.refine.card.image_source if models.refine and models.refine.card else "h2gnet")
        if models.patch is not None:
            cached = slide_outputs(cfg.heatmap_dir, slide.name).heatmap if cfg.heatmap_dir else None
            if cached is not None and cached.is_file():
                heat = load_slide_heatmap(cached, slide)
            else:
                heat = compute_heatmap(slide, models.patch, tissue, cfg.heatmap(), progress=cfg.progress, stats=stats)
            timings.update(stats.seconds)
        t = time.perf_counter()
        low = low_future.result()
    if models.refine is not None:
        prob = refine(models.refine, low, heat, tta=cfg.tta)
        mask = Raster(prob.array > cfg.threshold, prob.mpp, prob.slide_mpp)
    else:
        assert heat is not None
        mask = Raster(heat.array > cfg.threshold, heat.mpp, heat.slide_mpp)
    timings["refinement"] = time.perf_counter() - t
    t = time.perf_counter()
    if heat is None:
        del paths["heatmap"]
    # the output set lands together or not at all: the summary (the 'done' marker) goes first and comes
    # back last; if any write fails (a full disk) the files of this attempt are removed
    paths["summary"].unlink(missing_ok=True)
    try:
        with ThreadPoolExecutor(1) as pool:  # OpenCV and the encoders release the GIL: two outputs at a time
            overlay = pool.submit(lambda path: write_png(path, render_overlay(_thumbnail(low.image), heat, mask)),
                                  paths["overlay"])
            try:
                write_mask_tiff(paths["mask"], mask, slide.dimensions)
                write_geojson(paths["geojson"], mask_to_geojson(mask))
                if heat is not None:
                    save_heatmap(paths["heatmap"], heat, slide.dimensions, str(slide.path))
            finally:
                overlay.result()
    except BaseException:
        for kind, written in paths.items():
            if kind != "summary":
                written.unlink(missing_ok=True)
        raise
    timings["write"] = time.perf_counter() - t
    seconds = {k: round(v, 3) for k, v in timings.items()}
    summary = {
        "slide": str(slide.path), "name": slide.name, "h2gnet_version": __version__,
        "slide_mpp": slide.mpp, "dimensions_l0": list(slide.dimensions),
        "tumour_area_mm2": tissue_area_mm2(mask), "tissue_area_mm2": tissue_area_mm2(tissue),
        "patches": stats.patches, "tissue_patches": stats.tissue_patches,
        "classified_fraction": round(stats.patches / stats.tissue_patches, 4) if stats.tissue_patches else None,
        "evaluation": _evaluation(cfg, stats), "mask_mpp": mask.mpp,
        "heatmap_mpp": heat.mpp if heat is not None else None,
        "design": _design(models),
        "upsampling": None if upsampling is None else {
            "factor": round(upsampling, 4), "slide_mpp": slide.mpp,
            "model_mpp": models.patch.mpp if models.patch is not None else None,
            "allowed": upsampling > cfg.max_upsampling},
        "models": {name: {"path": str(m.path.resolve()), "sha256": m.sha256(), "arch": m.metadata.get("arch"),
                          "card": m.card.summary() if m.card is not None else None}
                   for name, m in (("patch", models.patch), ("refine", models.refine)) if m is not None},
        "device": cfg.device, "engine": (models.patch or models.refine).engine,  # type: ignore[union-attr]
        "seconds": seconds,
        "outputs": {k: p.name for k, p in paths.items()},
    }
    seconds["total"] = round(sum(v for k, v in timings.items() if k in STAGES), 3)
    try:
        write_text(paths["summary"], json.dumps(summary, indent=2))
    except BaseException:
        for written in paths.values():
            written.unlink(missing_ok=True)
        raise
    return summary


def _evaluation(cfg: SegmentConfig, stats: HeatmapStats) -> dict | None:
    """How the heatmap's patches were picked (None when it was reused from ``heatmap_dir``)."""
    if not stats.tissue_patches:
        return None
    if cfg.adaptive is None:
        return {"mode": "dense"}
    return {"mode": "adaptive", **asdict(cfg.adaptive), "rounds": stats.rounds}


def _design(models: Models) -> str:
    if models.refine is None:
        return "patch-wise (heatmap > 0.5)"
    if models.patch is None:
        return "low-resolution network only (UNet-LR)"
    return "patch-wise + refinement"


# -- many slides --------------------------------------------------------------------------
def expand_inputs(inputs: list[str]) -> list[tuple[Path, float | None]]:
    """Slides from paths, globs and manifests (``.csv``), with per-slide µm/px overrides from manifests."""

    out: list[tuple[Path, float | None]] = []
    for item in inputs:
        if item.lower().endswith(".csv"):
            out += [(e.slide, e.mpp) for e in read_manifest(item, check_files=False)]
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise H2GNetError(item, "the pattern matches no file")
            out += [(Path(m), None) for m in matches]
        else:
            out.append((Path(item), None))
    seen: set[Path] = set()
    unique = []
    for path, mpp in out:
        try:
            real = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            raise H2GNetError(path, "is a symlink loop (or unresolvable link); give the slide file itself") from None
        if real not in seen:
            seen.add(real)
            unique.append((path, mpp))
    names = [p.stem for p, _ in unique]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise H2GNetError(None, f"several input slides are named {', '.join(dupes)}; outputs are named after "
                                "the slide, so segment them into different folders")
    return unique


def slide_done(out_dir: str | Path, name: str) -> bool:
    """True when slide ``name`` has a complete output set in ``out_dir``: its summary ``NAME.json`` is a
    readable file (written last) and every output it lists exists."""
    summary = slide_outputs(out_dir, name).summary
    if not summary.is_file():
        return False
    try:
        outputs = json.loads(summary.read_text(encoding="utf-8")).get("outputs", {})
        return all((Path(out_dir) / str(f)).is_file() for f in outputs.values())
    except (OSError, ValueError, AttributeError):
        return False


def model_key(cfg: SegmentConfig) -> tuple:
    """What identifies the loaded models of ``cfg``: paths, SHA-256s and engine settings (a worker cache key)."""
    models = tuple((str(Path(p).resolve()), sha256_of(p) if Path(p).is_file() else "")
                   for p in (cfg.patch_model, cfg.refine_model) if p is not None)
    return (*models, cfg.refine_model is None, cfg.device, cfg.precision, cfg.threads)


def segment_task(cache: dict, slide: str, mpp: float | None, out_dir: str, cfg: SegmentConfig,
                 key: tuple) -> tuple[str, dict]:
    """One slide of :func:`segment_many`, where it runs (here or a Dask worker): models come from
    ``cache`` under ``key`` (loaded once per process); a slide an earlier attempt finished is done. A slide
    opened and its tissue found while the models loaded (:func:`segment_many`) is taken from ``cache``."""
    prefetched = cache.pop(("prefetched", slide), None)
    summary = slide_outputs(out_dir, Path(slide).stem).summary
    if slide_done(out_dir, Path(slide).stem):
        return "done", json.loads(summary.read_text(encoding="utf-8"))
    threads = slide_threads()
    if threads is not None:  # on a Dask worker: its share of the cores, no per-patch progress bars
        cfg = replace(cfg, threads=cfg.threads or threads, progress=False)
    models = cache.get((key, cfg.threads))
    if models is None:
        models = cache[(key, cfg.threads)] = Models.load(cfg)
    if prefetched is not None and uses_default_tissue(models.patch):
        opened, tissue = prefetched
        return "done", segment_slide(opened, out_dir, models, cfg, mpp, tissue=tissue)
    return "done", segment_slide(slide, out_dir, models, cfg, mpp)


def uses_default_tissue(model: OnnxModel | None) -> bool:
    """Whether :func:`~h2gnet.infer.heatmap.tissue_for` finds ``model``'s tissue with h2gnet's HSV rule
    (its card names no other rule)."""
    rule = model.card.tissue if model is not None and model.card is not None else None
    return rule is None or rule.method == HSV_RULE


def _prefetch_tissue(path: Path, mpp: float | None) -> tuple[Slide, Raster] | None:
    """``path`` opened and its tissue found with h2gnet's HSV rule, or None when either fails (the slide's
    task then meets the same problem and reports it)."""
    try:
        slide = open_slide(path, mpp)
        return slide, detect_tissue(slide)
    except Exception:  # noqa: BLE001 - reported by the slide's own task
        return None


def segment_many(inputs: list[str], out_dir: str | Path, cfg: SegmentConfig, mpp: float | None = None,
                 *, overwrite: bool = False, engine: Engine | None = None) -> dict[str, dict]:
    """Segment every input slide into ``out_dir``; one failure does not stop the others.

    One task per slide on ``engine`` (default: in this process). Returns the status table (slide →
    {status, seconds, error}); ``status.csv`` is rewritten as each slide ends, so an interrupted run
    shows where it stopped. In this process, the first slide to do is opened and its tissue found while the
    models load (used when the patch model's card names no other tissue rule).
    """
    out_dir = Path(out_dir)
    slides = expand_inputs(inputs)
    check_writable(out_dir)
    engine = engine or Engine()
    with ThreadPoolExecutor(1) as pool:  # ONNX Runtime builds the sessions while this thread finds tissue
        loading = pool.submit(Models.load, cfg)  # a bad model is an error before any slide
        todo = [(p, m) for p, m in slides if overwrite or not slide_done(out_dir, p.stem)]
        prefetched = None
        if todo and not engine.distributed and cfg.preset is None and cfg.patch_model is not None:
            prefetched = _prefetch_tissue(todo[0][0], todo[0][1] or mpp)
        models = loading.result()
    message = refiner_warning(models.refine)
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=2)
    engine.check_output_folder(out_dir)
    key = model_key(cfg)
    if not engine.distributed:
        engine.cache.setdefault((key, cfg.threads), models)
        if prefetched is not None:
            engine.cache[("prefetched", str(todo[0][0]))] = prefetched
    with folder_lock(out_dir, "segment"):
        status = StatusTable(out_dir / STATUS_FILE)
        tasks = []
        for path, slide_mpp in slides:
            outputs = slide_outputs(out_dir, path.stem)
            if not overwrite and slide_done(out_dir, path.stem):
                status.record(str(path), "skipped", 0.0, "already done")
                continue
            clash = next(((kind, p) for kind, p in outputs.as_dict().items()
                          if p.is_dir() and (kind != "heatmap" or models.patch is not None)), None)
            if clash is not None:  # an output name taken by a folder: say which, before any work
                status.record(str(path), "failed", 0.0, f"{clash[1]}: is a folder where the slide's "
                                                        f"{clash[0]} should be written; move it away")
                continue
            outputs.summary.unlink(missing_ok=True)  # redone: not done until its task writes it again
            where = path.resolve() if engine.distributed else path
            out = str(out_dir.resolve() if engine.distributed else out_dir)
            tasks.append(SlideTask(str(path), (str(where), slide_mpp or mpp, out, cfg, key),
                                   tuple(str(p) for p in outputs.as_dict().values())))
        try:
            engine.run(segment_task, tasks, desc="segment", progress=cfg.progress,
                       on_end=lambda o: status.record(o.key, o.status, o.seconds, o.error))
        finally:
            left = engine.cache.pop(("prefetched", str(todo[0][0])), None) if prefetched is not None else None
            if left is not None:  # not taken (the slide failed before its task): close it now
                left[0].close()
    return {str(p): status.rows[str(p)] for p, _ in slides}
