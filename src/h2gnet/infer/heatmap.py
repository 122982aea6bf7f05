"""Stage-1 inference: the patch classifier over a slide's tissue, stitched into a heatmap (section 2.5).

The slide is covered by the patch grid (patch side = the model's input size at
its µm/px, 256 px at 1.0 µm/px by default); patches with enough tissue are
read on background threads, batched, and classified by ONNX Runtime; each
patch's tumour probability becomes one heatmap pixel. Memory is bounded by
the prefetch depth whatever the slide size; no level-0 canvas exists.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from h2gnet.cohort import Engine, SlideTask, StatusTable, slide_threads
from h2gnet.conventions import STATUS_FILE, slide_outputs
from h2gnet.errors import H2GNetError
from h2gnet.infer.adaptive import AdaptiveConfig, adaptive_values
from h2gnet.infer.model_card import HSV_RULE, ModelCard
from h2gnet.infer.runtime import OnnxModel, check_probabilities
from h2gnet.io.atomic import atomic_path
from h2gnet.io.lock import folder_lock
from h2gnet.io.raster import Raster
from h2gnet.io.slides import Slide, open_slide
from h2gnet.io.tiff import read_tiff_page
from h2gnet.params import Rule, check_fields, param
from h2gnet.patches.grid import MIN_TISSUE, PatchGrid, cell_fractions, fast_cell_fractions
from h2gnet.patches.tissue import FAST_MAX_LEVEL_SIDE, detect_tissue, detect_tissue_rgb_distance

#: Rules shared by :class:`HeatmapSettings` and the segmentation settings (one rule per parameter).
MIN_TISSUE_RULE = Rule(float, low=0, high=1, high_open=True,
                       help="a patch is classified when more than this fraction of it is tissue")
MAX_UPSAMPLING_RULE = Rule(float, low=1, high=1000, unit="×",
                           help="refuse a slide whose finest level is coarser than the patch model's µm/px by more "
                                "than this factor (its patches would be upsampled: noise presented as a result)")
ALLOW_UPSAMPLING_RULE = Rule(bool, help="segment slides coarser than --max-upsampling allows all the same "
                                        "(a warning, and the summary records the factor)")
#: The phrase that marks a refused slide in its status row (see :func:`is_upsampling_refusal`).
UPSAMPLING_REFUSAL = "is coarser than the patch model"
BATCH_SIZE_RULE = Rule(int, low=1, high=4096,
                       help="patches per inference batch (memory grows with it: ~25 MB per 256-px patch)")
READERS_RULE = Rule(int, low=1, high=64, help="patch-reading threads")


@dataclass
class HeatmapStats:
    """What a heatmap run did: patches classified, tissue patches, seconds per stage (``heatmap``: the
    whole patch stage; ``inference``: in the model; ``read_wait``: the model waiting for patches), for an
    adaptive run the patches classified per round, and the slide tiles decoded."""

    patches: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    tissue_patches: int = 0
    rounds: list[int] = field(default_factory=list)
    tiles: dict[str, int] | None = None  # tiles decoded and cache hits (direct TIFF decoding only)


def patch_grid_for(slide: Slide, model: OnnxModel) -> PatchGrid:
    """The slide's patch grid at the classifier's input size and µm/px."""
    return PatchGrid(slide.dimensions, slide.mpp, model.input_size, model.mpp)


def tissue_patches(grid: PatchGrid, tissue: Raster, min_tissue: float = MIN_TISSUE, *,
                   inclusive: bool = False, fraction: str = "area") -> tuple[np.ndarray, ...]:
    """(rows, cols, xs, ys) of the grid cells with more than ``min_tissue`` tissue (fraction; at least
    that much when ``inclusive``, FAST's rule); xs, ys are level-0 px. These are the patches a heatmap
    classifies. ``fraction`` "area": measured exactly (:func:`cell_fractions`); "fast-resize": as FAST 4.18
    estimates it (:func:`fast_cell_fractions`)."""
    fractions = fast_cell_fractions(tissue, grid) if fraction == "fast-resize" else cell_fractions(tissue, grid)
    rows, cols = np.nonzero(fractions >= min_tissue if inclusive else fractions > min_tissue)
    xs, ys = grid.locations(rows, cols)
    return rows, cols, xs, ys


def _read_input_batch(slide: Slide, xs: np.ndarray, ys: np.ndarray, size: int, mpp: float) -> np.ndarray:
    """float32 NCHW in [0, 1], the network's input, made on the reader thread (off the inference loop)."""
    batch = np.empty((len(xs), size, size, 3), np.uint8)
    for i, (x, y) in enumerate(zip(xs, ys)):
        batch[i] = slide.read_region((int(x), int(y)), (size, size), mpp)
    out = np.empty((len(xs), 3, size, size), np.float32)
    np.multiply(batch.transpose(0, 3, 1, 2), np.float32(1.0 / 255.0), out=out)
    return out


def patch_batches(slide: Slide, xs: np.ndarray, ys: np.ndarray, size: int, mpp: float, batch_size: int,  # noqa: PLR0913
                  readers: int, prefetch: int, pool: ThreadPoolExecutor | None = None,
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """(start, float32 NCHW [0, 1] batch) in order, read ``prefetch`` batches ahead on ``readers`` threads
    (or on ``pool``'s, which the caller keeps, e.g. across the rounds of an adaptive heatmap)."""
    starts = list(range(0, len(xs), batch_size))
    with contextlib.ExitStack() as stack:
        if pool is None:
            pool = stack.enter_context(ThreadPoolExecutor(max(1, readers)))
        pending: deque = deque()
        for start in starts:
            pending.append((start, pool.submit(_read_input_batch, slide, xs[start:start + batch_size],
                                               ys[start:start + batch_size], size, mpp)))
            if len(pending) > prefetch:
                s, fut = pending.popleft()
                yield s, fut.result()
        while pending:
            s, fut = pending.popleft()
            yield s, fut.result()


def z_order(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Indices that sort grid cells (``rows``, ``cols``) along the Z-order (Morton) curve: cells close on the
    grid come close in the sequence at every scale, so patches that share a slide tile are read one after the
    other whatever the tile size, and the tiles a stretch of patches needs stay few (the tile cache holds them)."""
    def spread(v: np.ndarray) -> np.ndarray:
        v = v.astype(np.uint64) & np.uint64(0xFFFFFFFF)
        for shift, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF), (4, 0x0F0F0F0F0F0F0F0F),
                            (2, 0x3333333333333333), (1, 0x5555555555555555)):
            v = (v | (v << np.uint64(shift))) & np.uint64(mask)
        return v

    return np.argsort(spread(rows) << np.uint64(1) | spread(cols), kind="stable")


#: Order in which each round of an adaptive heatmap reads its patches: "z" (:func:`z_order`: patches sharing
#: tiles together) or "grid" (row by row, as the cells come; the order before issue 22).
ADAPTIVE_READ_ORDER = "z"
#: Tile-cache budget of an adaptive heatmap (MB, at most; the tiles its tissue patches need, if fewer): later
#: rounds read the neighbours of earlier rounds' patches, in the tiles those decoded. None: the reader's default.
ADAPTIVE_TILE_CACHE_MB: int | None = 512


def _tile_budget(slide: Slide, n_patches: int, size: int, mpp: float) -> int | None:
    """Bytes of decoded tiles an adaptive heatmap keeps: the footprint of ``n_patches`` patches of ``size`` px
    at ``mpp`` µm/px on the level they are read from (times 1.5 for tiles that stick out of the tissue), at
    most :data:`ADAPTIVE_TILE_CACHE_MB`."""
    if ADAPTIVE_TILE_CACHE_MB is None:
        return None
    side = size * mpp / slide.best_level(mpp).mpp  # level px per patch side
    return int(min(ADAPTIVE_TILE_CACHE_MB << 20, 1.5 * n_patches * side * side * 3))


@dataclass(frozen=True)
class HeatmapSettings:
    """How a cohort's heatmaps are computed: ``min_tissue`` (fraction of a patch), patches per
    ``batch_size``, patch-reading threads (``readers``); ``adaptive`` None (dense, the default: heatmaps
    are the refiner's training input) or the coarse-to-fine settings; checked when made."""

    min_tissue: float = param(MIN_TISSUE, MIN_TISSUE_RULE)
    batch_size: int = param(16, BATCH_SIZE_RULE)
    readers: int = param(2, READERS_RULE)
    adaptive: AdaptiveConfig | None = None
    max_upsampling: float = param(2.0, MAX_UPSAMPLING_RULE)
    allow_upsampling: bool = param(False, ALLOW_UPSAMPLING_RULE)

    def __post_init__(self) -> None:
        check_fields(self)


def compute_heatmap(slide: Slide, model: OnnxModel, tissue: Raster,  # noqa: PLR0915
                    settings: HeatmapSettings = HeatmapSettings(), *, progress: bool = True,
                    stats: HeatmapStats | None = None) -> Raster:
    """Tumour-probability heatmap (float32, one pixel per patch; 0 where no tissue patch is).

    ``settings``: the patches' ``min_tissue`` (a model card's tissue rule replaces it), ``batch_size``,
    ``readers`` and ``adaptive``; its upsampling limits are the caller's to check (:func:`check_upsampling`).
    ``adaptive`` None classifies every tissue patch (dense); otherwise only the patches the coarse-to-fine
    evaluation picks are read and classified, the others filled from them (:mod:`h2gnet.infer.adaptive`).
    An adaptive run reads each round's patches in :data:`ADAPTIVE_READ_ORDER` on one pool of reader threads,
    with the tile cache raised to :func:`_tile_budget` for the run.
    """
    min_tissue, batch_size, readers, adaptive = (settings.min_tissue, settings.batch_size, settings.readers,
                                                 settings.adaptive)
    grid = patch_grid_for(slide, model)
    t0 = time.perf_counter()
    card = getattr(model, "card", None)  # stand-ins of an OnnxModel may have none
    rule = card.tissue if card is not None else None
    if rule is not None:  # a model card's rule replaces the default fraction
        min_tissue = rule.min_fraction
    rows, cols, _, _ = tissue_patches(grid, tissue, min_tissue, inclusive=rule is not None and rule.inclusive,
                                      fraction=rule.fraction if rule is not None else "area")
    heat = np.full(grid.shape, card.unclassified_value if card is not None else 0.0, np.float32)
    if len(rows) == 0:
        raise H2GNetError(slide.path, f"no patch has more than {min_tissue:.0%} tissue; nothing to classify")
    tumour_col = getattr(model, "tumour_channel", None)
    if tumour_col is None:
        tumour_col = model.classes.index("tumour") if "tumour" in model.classes else -1
    t_infer = t_wait = 0.0
    tiles_before = slide.tile_counts()
    if progress:
        from tqdm.auto import tqdm  # imported only for a bar (its import is ~0.1 s of a run's start)

        bar = tqdm(total=len(rows), desc=f"heatmap {slide.name}", unit="patch")
    else:
        bar = None
    with contextlib.ExitStack() as stack:
        if bar is not None:
            stack.enter_context(bar)
        pool = stack.enter_context(ThreadPoolExecutor(max(1, readers)))  # one reader pool for every round

        def classify(r: np.ndarray, c: np.ndarray) -> np.ndarray:
            nonlocal t_infer, t_wait
            order = z_order(r, c) if adaptive is not None and ADAPTIVE_READ_ORDER == "z" else None
            if order is not None:
                r, c = r[order], c[order]
            x, y = grid.locations(r, c)
            out = np.empty(len(r), np.float32)
            batches = patch_batches(slide, x, y, model.input_size, model.mpp, batch_size, readers,
                                    prefetch=max(2, readers * 2), pool=pool)
            while True:
                t1 = time.perf_counter()
                item = next(batches, None)
                t2 = time.perf_counter()
                t_wait += t2 - t1
                if item is None:
                    break
                start, batch = item
                out[start:start + len(batch)] = check_probabilities(model(batch), model.path, slide.path)[:, tumour_col]
                t_infer += time.perf_counter() - t2
                if bar is not None:
                    bar.update(len(batch))
            if order is not None:  # back to the caller's order
                back = np.empty_like(out)
                back[order] = out
                out = back
            return out

        if adaptive is None:
            heat[rows, cols] = classify(rows, cols)
            classified, rounds = len(rows), [len(rows)]
        else:
            budget = _tile_budget(slide, len(rows), model.input_size, model.mpp)
            stack.enter_context(slide.tile_cache(budget))
            cells = np.zeros(grid.shape, bool)
            cells[rows, cols] = True
            result = adaptive_values(cells, classify, adaptive)
            heat = result.values
            classified, rounds = int(np.count_nonzero(result.classified)), result.rounds
            if bar is not None:
                bar.total = classified
                bar.refresh()
    if stats is not None:
        stats.patches = classified
        stats.tissue_patches = len(rows)
        stats.rounds = rounds
        stats.seconds["heatmap"] = time.perf_counter() - t0
        stats.seconds["inference"] = t_infer
        stats.seconds["read_wait"] = t_wait
        tiles_after = slide.tile_counts()
        if tiles_before is not None and tiles_after is not None:
            stats.tiles = {k: tiles_after[k] - tiles_before[k] for k in tiles_after}
    return Raster(heat, grid.cell_mpp, slide.mpp)


#: Tissue mask for a card's RGB-distance rule, in mask pixels per patch side: FAST's level (the pyramid's
#: smallest) is used while it gives at least FAST_MIN_PX_PER_PATCH; on pyramids that go further down (DICOM's
#: reach 1×1 px, where FAST finds no tissue) the smallest level with TISSUE_PX_PER_PATCH.
FAST_MIN_PX_PER_PATCH = 2
TISSUE_PX_PER_PATCH = 8


def tissue_for(slide: Slide, model: OnnxModel | None) -> Raster:
    """The slide's tissue mask by the rule of ``model``'s card (h2gnet's HSV rule when it names none)."""
    rule = model.card.tissue if model is not None and model.card is not None else None
    if rule is None or rule.method == HSV_RULE:
        return detect_tissue(slide)
    assert model is not None
    cell_um = model.input_size * model.mpp
    smallest = slide.levels[-1]
    if smallest.mpp <= cell_um / FAST_MIN_PX_PER_PATCH and max(smallest.dimensions) <= FAST_MAX_LEVEL_SIDE:
        return detect_tissue_rgb_distance(slide, rule.threshold, rule.dilation, rule.erosion)  # FAST's level
    return detect_tissue_rgb_distance(slide, rule.threshold, rule.dilation, rule.erosion,
                                      max_mpp=cell_um / TISSUE_PX_PER_PATCH)


def check_upsampling(slide: Slide, model: OnnxModel, max_factor: float, *, allow: bool) -> float | None:
    """How much ``model``'s patches would be upsampled on ``slide``: level-0 µm/px ÷ the model's µm/px
    when that is above 1 (the finest level is coarser than the model), else None.

    Above ``max_factor`` the slide is refused (:class:`H2GNetError` naming both resolutions) unless
    ``allow``, which warns instead. Called before any pixel is read.
    """
    factor = slide.mpp / model.mpp
    if factor <= 1.0 + 1e-6:
        return None
    if factor > max_factor:
        what = (f"{UPSAMPLING_REFUSAL}: its finest level is {slide.mpp:g} µm/px, the patch model reads "
                f"{model.mpp:g} µm/px ({factor:.3g}× upsampling, more than {max_factor:g}×)")
        if not allow:
            raise H2GNetError(slide.path, f"{what}; use a slide scanned at a finer resolution, or "
                                          "--allow-upsampling to go on")
        warnings.warn(f"{slide.path}: {what}; going on (--allow-upsampling)", UserWarning, stacklevel=2)
    return factor


def is_upsampling_refusal(error: str) -> bool:
    """True when a status row's ``error`` is :func:`check_upsampling`'s refusal (bad input, exit 2)."""
    return UPSAMPLING_REFUSAL in error


@dataclass(frozen=True)
class ModelSpec:
    """A patch classifier as a worker loads it: its file (resolved path), SHA-256, execution provider,
    threads (None: the worker's share) and precision; hashable, the key of the worker's model cache."""

    path: str
    sha256: str
    device: str
    threads: int | None
    precision: str

    @classmethod
    def of(cls, model: OnnxModel) -> ModelSpec:
        """The spec of a loaded model."""
        return cls(str(model.path.resolve()), model.sha256(), model.device, model.threads, model.precision)

    def load(self, card: ModelCard | None = None) -> OnnxModel:
        """The model, loaded (``card``: its model card when the ONNX metadata do not carry one)."""
        return OnnxModel(Path(self.path), "patch-classifier", self.device, self.threads, self.precision, card=card)


@dataclass(frozen=True)
class HeatmapJob:
    """One slide of :func:`heatmap_cohort`: the slide (and its µm/px override), the heatmap file to write,
    the model and the settings."""

    slide: str
    mpp: float | None
    target: str
    model: ModelSpec
    settings: HeatmapSettings
    progress: bool = True
    card: ModelCard | None = None


def heatmap_task(cache: dict, job: HeatmapJob) -> tuple[str, str]:
    """One slide of :func:`heatmap_cohort` where it runs (here or a Dask worker); the model is loaded once
    per process into ``cache``."""
    if Path(job.target).is_file():
        return "done", job.target  # an earlier attempt finished it
    model, progress = job.model, job.progress
    threads = slide_threads()
    if threads is not None:  # on a Dask worker
        model, progress = replace(model, threads=model.threads or threads), False
    onnx = cache.get(model)
    if onnx is None:
        onnx = cache[model] = model.load(job.card)
    with open_slide(job.slide, job.mpp) as s:
        opts = job.settings
        check_upsampling(s, onnx, opts.max_upsampling, allow=opts.allow_upsampling)
        heat = compute_heatmap(s, onnx, tissue_for(s, onnx), opts, progress=progress)
        save_heatmap(job.target, heat, s.dimensions, str(s.path))
    return "done", job.target


def heatmap_cohort(entries: list, out_dir: str | Path, model: OnnxModel, *, overwrite: bool = False,
                   settings: HeatmapSettings | None = None, progress: bool = True,
                   engine: Engine | None = None) -> list[str]:
    """Heatmaps of manifest ``entries`` into ``out_dir`` (``NAME.heatmap.tiff``), one task per slide on
    ``engine`` (default: in this process); existing ones are kept unless ``overwrite``; ``status.csv``
    records each slide. Returns the errors of slides that failed (the others are still done)."""

    engine = engine or Engine()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine.check_output_folder(out_dir)
    key = ModelSpec.of(model)
    if not engine.distributed:
        engine.cache.setdefault(key, model)
    with folder_lock(out_dir, "heatmap"):
        status = StatusTable(out_dir / STATUS_FILE)
        tasks = []
        for e in entries:
            target = slide_outputs(out_dir, e.key).heatmap
            if target.is_file() and not overwrite:
                continue
            if target.is_dir():
                raise H2GNetError(target, "is a folder where the heatmap file should be written")
            target.unlink(missing_ok=True)
            slide = Path(e.slide).resolve() if engine.distributed else e.slide
            where = target.resolve() if engine.distributed else target
            card = None if model.card is None or model.card.native else model.card
            job = HeatmapJob(str(slide), e.mpp, str(where), key, settings or HeatmapSettings(), progress, card)
            tasks.append(SlideTask(str(e.slide), (job,), (str(where),)))
        outcomes = engine.run(heatmap_task, tasks, desc="heatmaps", progress=progress,
                              on_end=lambda o: status.record(o.key, o.status, o.seconds, o.error))
    # an unexpected exception's reason does not name the slide: say which one it was
    return [o.error if o.key in o.error else f"{o.key}: {o.error}" for o in outcomes.values() if o.status == "failed"]


# -- storage ---------------------------------------------------------------------------
def save_heatmap(path: str | Path, heatmap: Raster, extent_l0: tuple[int, int], slide: str = "") -> Path:
    """A float32 TIFF (one pixel per patch) with µm/px resolution tags and JSON metadata."""
    import tifffile

    meta = {"h2gnet_kind": "heatmap", "mpp": heatmap.mpp, "slide_mpp": heatmap.slide_mpp,
            "extent_l0": list(extent_l0), "slide": slide}
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, heatmap.array.astype(np.float32), description=json.dumps(meta),
                         resolution=(1e4 / heatmap.mpp, 1e4 / heatmap.mpp), resolutionunit="CENTIMETER",
                         compression="zlib", metadata=None)
    return Path(path)


def load_heatmap(path: str | Path) -> tuple[Raster, tuple[int, int]]:
    """(heatmap raster, slide extent in level-0 px) from :func:`save_heatmap`'s file."""
    path = Path(path)
    if not path.exists():
        raise H2GNetError(path, "no such heatmap file")
    page = read_tiff_page(path, "the heatmap", 4, "is not an h2gnet heatmap ({error})", description=json.loads)
    meta, arr = page.description, page.array
    if not isinstance(meta, dict) or meta.get("h2gnet_kind") != "heatmap":
        raise H2GNetError(path, "is not an h2gnet heatmap")
    try:
        mpp, slide_mpp = float(meta["mpp"]), float(meta["slide_mpp"])
        extent = (int(meta["extent_l0"][0]), int(meta["extent_l0"][1]))
    except (KeyError, TypeError, ValueError, IndexError):
        raise H2GNetError(path, "has unreadable h2gnet heatmap metadata (mpp, slide_mpp, extent_l0)") from None
    if arr.ndim != 2 or not (np.isfinite(mpp) and mpp > 0 and np.isfinite(slide_mpp) and slide_mpp > 0):
        raise H2GNetError(path, "is not a valid h2gnet heatmap (2-D array with positive µm/px)")
    if not np.isfinite(arr).all() or arr.min(initial=0) < 0 or arr.max(initial=0) > 1:
        raise H2GNetError(path, "holds values outside [0, 1] or non-finite: not tumour probabilities")
    return Raster(arr.astype(np.float32), mpp, slide_mpp), extent


def load_slide_heatmap(path: str | Path, slide: Slide) -> Raster:
    """The heatmap at ``path``, checked to belong to ``slide``: same level-0 extent and µm/px.

    A heatmap cached for another slide (same file name, other scan) is refused rather than stretched.
    """
    heat, extent = load_heatmap(path)
    if tuple(int(v) for v in extent) != tuple(slide.dimensions) or abs(heat.slide_mpp - slide.mpp) > 1e-6 * slide.mpp:
        raise H2GNetError(path, f"is the heatmap of a {extent[0]}×{extent[1]} px slide at {heat.slide_mpp:g} µm/px, "
                                f"but {slide.path.name} is {slide.dimensions[0]}×{slide.dimensions[1]} px at "
                                f"{slide.mpp:g} µm/px: a heatmap of another slide?")
    return heat
