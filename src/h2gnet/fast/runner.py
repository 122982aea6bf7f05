"""Run an exported ``.fpl`` with pyFAST on one slide, and compare FAST's masks with h2gnet's.

How FAST 4.18 chooses the patch level: ``patch-magnification M`` needs the
pyramid's objective magnification ``M0``, which FAST takes from OpenSlide's
``openslide.objective-power`` (Aperio, Hamamatsu, …) or OME-XML
``NominalMagnification``; generic TIFFs — h2gnet's phantom slides included —
have none, and FAST then fails ("Unable to generate patches for magnification
level …"). With ``M0`` known, the first level whose rounded downsample ``d`` gives
``M0 / d == M`` exactly is read as it is; otherwise FAST reads a larger patch from
the finest level not coarser than the target (``0.25 µm × 40 / M``) and shrinks it
with its ``ImageResizer`` (Gaussian pre-smoothing + linear interpolation). FAST's
convention is 10× = 1 µm/px, so ``M = 10 / model µm/px``. :func:`run_fast_pipeline`
sets ``M0 = 10 / level-0 µm/px`` on slides whose file declares no magnification,
and works around a FAST 4.18 bug that reads patches from the wrong place on
levels whose size was rounded up (see :func:`fast_patch_level` and
``_patch_source``).

Numerics: FAST's default inference engine is OpenVINO (2023.0 in pyFAST 4.18), whose CPU plugin
computes in bfloat16 on CPUs with AVX512-BF16 (e.g. AMD EPYC Zen 4): a 1×1 convolution by
1 + 2⁻⁹ returns 200/255 as 0.78515625, the bfloat16 value, and an untrained MobileNetV2's tumour
probabilities move by up to 0.56. Export with ``inference_engine="ONNXRuntime"`` for float32.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from h2gnet.conventions import EVAL_MPP, LOW_MPP
from h2gnet.errors import H2GNetError
from h2gnet.evaluation.metrics import slide_metrics
from h2gnet.fast.fpl import (
    FAST_TISSUE_KERNEL,
    FAST_UM_AT_1X,
    _check_fast_path,
    fast_magnification,
    read_header,
)
from h2gnet.io.atomic import atomic_path, write_text
from h2gnet.io.raster import Raster

SEGMENTATION_SUFFIX = ".fast-segmentation.mhd"
RESULT_SUFFIX = ".fast.npz"


@dataclass
class FastRun:
    """What one pyFAST run of a pipeline produced (see :func:`run_fast_pipeline`).

    Masks and the heatmap are numpy arrays; spacings are µm per pixel (x, y); ``seconds`` is the
    pipeline's wall time (open slide → segmentation written), ``import_seconds`` that of ``import fast``
    and ``process_seconds`` the child process's whole wall time (None when run in this process).
    """

    slide: str
    fpl: str
    seconds: float
    import_seconds: float | None
    fast_version: str
    magnification: float
    magnification_source: str
    slide_mpp: float | None
    dimensions_l0: list[int]
    levels: list[list[int]]
    lowres_level: int | None
    tissue_kernel: int | None
    patch_source: dict[str, Any]
    variables: dict[str, str]
    patch_size: int
    patch_mpp: float
    heatmap_cell_l0: float
    heatmap_cell_um: float | None
    tissue_spacing_um: list[float]
    segmentation_spacing_um: list[float]
    outputs: dict[str, str] = field(default_factory=dict)
    heatmap: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32), repr=False)
    tissue: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool), repr=False)
    segmentation: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool), repr=False)
    process_seconds: float | None = None

    ARRAYS = ("heatmap", "tissue", "segmentation")

    def summary(self) -> dict[str, Any]:
        """The JSON-ready fields (everything but the arrays)."""
        return {k: v for k, v in asdict(self).items() if k not in self.ARRAYS}


@dataclass
class _RunSpec:
    fpl: str
    slide: str
    out_dir: str
    magnification: float | None = None
    mpp: float | None = None
    lowres_level: int | None = None
    tissue_kernel: int | None = None
    patch_workaround: bool = True
    verbose: bool = False
    header: dict | None = None


def _odd_kernel(size: float) -> int:
    """An odd closing size in [3, 9]: FAST's dilation loops over the disk per pixel, so a kernel
    scaled up for a fine smallest level (80 px on a single-level 0.5 µm/px slide) takes minutes."""
    k = min(9, max(3, int(round(size))))
    return k if k % 2 else k + 1


def fast_patch_level(scales: list[float], m0: float, m: float, slide_mpp: float | None) -> tuple[int, float]:
    """(level, resampling factor) FAST 4.18 reads ``m``× patches from, as observed and in its source.

    ``scales``: FAST's level scales (level-0 width / level width); ``m0``: the slide's magnification.
    The first level with ``m0 / round(scale) == m`` (exact float comparison) is read as it is;
    otherwise the finest level not coarser than the target ``10 / m`` µm/px, resampled by the factor.
    """
    for level, scale in enumerate(scales):
        if m0 / round(scale) == m:
            return level, 1.0
    level0_um = slide_mpp if slide_mpp else FAST_UM_AT_1X / m0
    target = FAST_UM_AT_1X / m
    level, factor = 0, target / level0_um
    for i, scale in enumerate(scales):
        level, factor = i, target / (scale * level0_um)
        if i + 1 < len(scales) and scales[i + 1] * level0_um > target:
            break
    return level, factor


def _patch_source(scales: list[float], m0: float, m: float, size: int, slide_mpp: float | None,
                  *, workaround: bool = True) -> dict:
    """How FAST should read patches on this slide, and the pipeline variables that say so.

    pyFAST 4.18 (OpenSlide backend) maps a level's pixel offsets to level 0 with the level scale
    *truncated* to an integer: on a level whose width was rounded up (level-0 width not a multiple
    of the downsample: 12151 px / 2 -> 6076 px, scale 1.9998 -> 1) every patch is read from the
    wrong place — at (d-1)/d of its position — while it is stitched at the right one; h2gnet.synth
    rounds level sizes up, so most phantom slides are affected. When the level FAST would use
    is affected, patches are taken from level 0 instead (``patch_magnification`` 0, ``patch_level``
    0, ``patch_size`` = the model's field of view in level-0 px, which the network resizes to its
    input), if that size is a multiple of 16 (FAST adds overlap otherwise) and ``workaround``; else
    the run goes on as FAST would and says so in ``warning``. Level-0 patches hold 4–64× more
    pixels, which FAST's OpenCL resizer shrinks slowly on a CPU (pocl): 45 s on a 13,000 × 9,000 px
    phantom here, where one of that size without the bug took 4 s.
    """
    level, factor = fast_patch_level(scales, m0, m, slide_mpp)
    scale = scales[level]
    affected = level > 0 and math.floor(scale + 1e-6) != round(scale)
    info: dict[str, Any] = {"mode": "magnification", "level": level, "resampling_factor": factor,
                            "level_scale": scale, "truncated_scale_bug": affected, "variables": {}}
    if not affected:
        return info
    size0 = size * (FAST_UM_AT_1X / m) / slide_mpp if slide_mpp else float("nan")
    if workaround and slide_mpp and abs(size0 - round(size0)) < 1e-3 and round(size0) % 16 == 0:
        info.update(mode="level 0", level=0, level0_patch_size=int(round(size0)), variables={
            "patch_magnification": "0", "patch_level": "0", "patch_size": str(int(round(size0)))})
    else:
        info["warning"] = (f"FAST reads level {level} (scale {scale:.4f}, truncated to {math.floor(scale)}): "
                           "its patches come from the wrong place on this slide")
    return info


def _run_in_this_process(spec: _RunSpec, import_seconds: float | None = None) -> FastRun:
    """Run the pipeline here (FAST must be importable, and this must be the main thread)."""
    t_import = time.perf_counter()
    import fast  # noqa: PLC0415 (pyFAST: optional, imported only here)

    if import_seconds is None:
        import_seconds = time.perf_counter() - t_import
    fast.Reporter.setGlobalReportMethod(fast.Reporter.COUT if spec.verbose else fast.Reporter.NONE)
    header = spec.header if spec.header is not None else read_header(spec.fpl)
    objects = {"sink": "exporter", "tissue": "tissue", "stitcher": "stitcher",
               "segmentation": "refinement" if header.get("refine_size") else "threshold",
               **header.get("objects", {})}
    foreign = spec.header is not None  # a pipeline not exported by h2gnet: no variables, no exporter
    slide = Path(spec.slide)
    out_dir = Path(spec.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = slide.stem
    t0 = time.perf_counter()
    wsi = fast.WholeSlideImageImporter.create(str(slide)).runAndGetOutputData()
    levels = [(wsi.getLevelWidth(i), wsi.getLevelHeight(i)) for i in range(wsi.getNrOfLevels())]
    spacing_um = float(f"{float(wsi.getSpacing()[0]) * 1000.0:.6g}")  # FAST keeps it as float32 mm
    slide_mpp = spec.mpp or (spacing_um if spacing_um != 1000.0 else None)  # 1 mm: FAST's "unknown"
    if spec.magnification is not None:
        wsi.setMagnification(float(spec.magnification))
        magnification, source = float(spec.magnification), "given"
    else:
        try:
            magnification, source = float(wsi.getMagnification()), "file"
        except Exception:  # FAST raises when the file declares no objective power
            if slide_mpp is None:
                raise H2GNetError(slide, "FAST finds neither a magnification nor µm/px in this file; "
                                         "give mpp=") from None
            magnification, source = fast_magnification(slide_mpp), "um/px"
            wsi.setMagnification(magnification)
    variables = {"output": str(out_dir / f".{name}.fast-part.mhd")}
    kernel = spec.tissue_kernel
    if kernel is None and slide_mpp is not None:
        smallest_mpp = slide_mpp * levels[0][0] / levels[-1][0]
        kernel = _odd_kernel(FAST_TISSUE_KERNEL * LOW_MPP / smallest_mpp)
    if kernel is not None:
        variables["tissue_kernel"] = str(int(kernel))
    scales = [float(wsi.getLevelScale(i)) for i in range(len(levels))]
    patch_source = _patch_source(scales, magnification, float(header["magnification"]),
                                 int(header["patch_size"]), slide_mpp, workaround=spec.patch_workaround)
    variables.update(patch_source.pop("variables"))
    lowres = spec.lowres_level
    if header.get("refine_size") and lowres is None:
        size = int(header["refine_size"])  # h2gnet's rule: the smallest level with both sides >= size
        fitting = [i for i, (w, h) in enumerate(levels) if w >= size and h >= size]
        lowres = fitting[-1] if fitting else 0
    if lowres is not None:
        variables["lowres_level"] = str(int(lowres))
    if foreign:
        if patch_source.get("mode") == "level 0":
            patch_source["warning"] = "FAST reads this slide's patches from the wrong place (a pipeline without "\
                                      "h2gnet's variables cannot be redirected to level 0)"
            patch_source["mode"] = "magnification"
        variables, lowres = {}, None
    pipeline = fast.Pipeline(str(spec.fpl), variables)
    pipeline.parse({"WSI": wsi})
    # One sink only: pyFAST 4.18 deadlocks when a second sink re-pulls the finished patch stream, and
    # getPipelineOutputData loops forever on the refined segmentation (it inherits the stream's
    # "progress" without its last-frame flag). The exporter drives the whole pipeline once; the other
    # results are then read from their process objects without running them again.
    pipeline.getProcessObject(objects["sink"]).run()
    seconds = time.perf_counter() - t0

    def output(po: str):
        return pipeline.getProcessObject(po).getOutputData(0)

    # level-0 px per heatmap cell: FAST's level has downsample magnification / patch magnification
    cell_l0 = header["patch_size"] * magnification / header["magnification"]
    if patch_source["mode"] == "level 0":
        cell_l0 = float(patch_source["level0_patch_size"])
    heat = np.asarray(fast.Tensor.fromDataObject(output(objects["stitcher"])))[..., int(header["tumour_channel"])]
    tissue_img = fast.Image.fromDataObject(output(objects["tissue"]))
    tissue = np.asarray(tissue_img)[..., 0] > 0
    seg_po = objects["segmentation"]
    seg_img = fast.Image.fromDataObject(output(seg_po))
    segmentation = np.asarray(seg_img)[..., 0] > 0
    result = {
        "slide": str(slide), "fpl": str(spec.fpl), "seconds": seconds, "import_seconds": import_seconds,
        "fast_version": getattr(fast, "__version__", "4.x"), "magnification": magnification,
        "magnification_source": source, "slide_mpp": slide_mpp, "dimensions_l0": list(levels[0]),
        "levels": [list(lv) for lv in levels], "lowres_level": lowres, "tissue_kernel": kernel,
        "patch_source": patch_source,
        "variables": {k: v for k, v in variables.items() if k != "output"}, "patch_size": header["patch_size"],
        "patch_mpp": header["patch_mpp"],
        "heatmap_cell_l0": cell_l0, "heatmap_cell_um": cell_l0 * slide_mpp if slide_mpp else None,
        "tissue_spacing_um": [float(v) * 1000.0 for v in tissue_img.getSpacing()[:2]],
        "segmentation_spacing_um": [float(v) * 1000.0 for v in seg_img.getSpacing()[:2]],
    }
    arrays: dict[str, Any] = {"heatmap": heat.astype(np.float32), "tissue": tissue, "segmentation": segmentation}
    with atomic_path(out_dir / f"{name}{RESULT_SUFFIX}") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    result["outputs"] = {"arrays": str(out_dir / f"{name}{RESULT_SUFFIX}")}
    if not foreign:
        result["outputs"]["segmentation"] = str(_finish_mhd(Path(variables["output"]),
                                                            out_dir / f"{name}{SEGMENTATION_SUFFIX}"))
    run = FastRun(**result, **arrays)
    write_text(out_dir / f"{name}.fast.json", json.dumps(run.summary(), indent=2))
    return run


def _finish_mhd(part: Path, final: Path) -> Path:
    """Rename FAST's ``.mhd``/``.raw`` pair from its temporary name to ``final`` (header rewritten last)."""
    raw_part, raw_final = part.with_suffix(".raw"), final.with_suffix(".raw")
    header = part.read_text(encoding="ascii")
    lines = [f"ElementDataFile = {raw_final.name}" if ln.startswith("ElementDataFile") else ln
             for ln in header.splitlines()]
    os.replace(raw_part, raw_final)
    write_text(final, "\n".join(lines) + "\n")
    part.unlink(missing_ok=True)
    return final


def run_fast_pipeline(fpl_path: str | Path, slide_path: str | Path, out_dir: str | Path, *,  # noqa: PLR0913 - keyword-only options of one FAST run
                      mpp: float | None = None, magnification: float | None = None,
                      lowres_level: int | None = None, tissue_kernel: int | None = None,
                      patch_workaround: bool = True, fast_home: str | Path | None = None,
                      timeout: float | None = None, isolate: bool = True,
                      verbose: bool = False, header: dict | None = None) -> FastRun:
    """Run an exported pipeline with pyFAST on one slide; FAST's results as numpy, with timings.

    Writes into ``out_dir``: ``NAME.fast-segmentation.mhd`` (+ ``.raw``; FAST's exporter),
    ``NAME.fast.npz`` (arrays) and ``NAME.fast.json`` (the rest). Returns a :class:`FastRun` with

    * ``seconds``: wall time of the pipeline (open slide → segmentation written), excluding
      ``import fast`` (``import_seconds``) and, with ``isolate``, the child process start
      (``process_seconds`` is the child's whole wall time);
    * ``heatmap``: float32 (rows, cols) tumour probability per patch, ``heatmap_cell_um`` µm per cell,
      level-0 origin (0 where no patch was classified);
    * ``tissue``: bool mask, ``tissue_spacing_um`` (x, y) µm per pixel;
    * ``segmentation``: bool mask (FAST's final result), ``segmentation_spacing_um`` (x, y);
    * ``magnification`` FAST used and its ``magnification_source`` ("file", "um/px" or "given"),
      ``patch_source`` (FAST's patch level, resampling factor, whether FAST 4.18's truncated-scale
      bug applies and the level-0 workaround was used, see ``_patch_source``), ``lowres_level``,
      ``tissue_kernel``, ``slide_mpp``, ``dimensions_l0``, ``levels``.

    ``mpp``: level-0 µm/px for files without it; ``magnification``: force the slide's objective
    magnification; ``lowres_level``/``tissue_kernel``: override the per-slide choices (defaults:
    h2gnet's rules). ``patch_workaround``: read patches from level 0 where FAST 4.18 would misplace
    them (slower, correct). ``isolate`` runs FAST in a child process (``timeout`` seconds at most): FAST must
    be imported in a main thread and may hang or abort, which a child contains. ``fast_home``:
    HOME and XDG_RUNTIME_DIR for that child (FAST keeps a kernel cache and copies of its pipelines
    in HOME). ``header``: for a pipeline not exported by h2gnet (e.g. the published H2G-Net one, see
    :mod:`h2gnet.fast.published`), what h2gnet's header would say (``patch_size``, ``patch_mpp``,
    ``magnification``, ``tumour_channel``, ``refine_size``) and its process objects (``objects``:
    ``sink``, ``tissue``, ``stitcher``, ``segmentation``); such a pipeline runs without variables and
    without an exporter (no ``.mhd``). Raises :class:`H2GNetError` when pyFAST is missing or the run fails.
    """
    fpl = Path(fpl_path).resolve()
    if header is None:
        read_header(fpl)
    _check_fast_path(fpl.parent)
    slide = Path(slide_path).resolve()
    if not slide.exists():
        raise H2GNetError(slide, "no such slide file")
    out = Path(out_dir).resolve()
    spec = _RunSpec(str(fpl), str(slide), str(out), magnification, mpp, lowres_level, tissue_kernel,
                    patch_workaround, verbose, header)
    if not isolate:
        return _run_in_this_process(spec, _require_fast())
    env = dict(os.environ)
    if fast_home is not None:
        home = Path(fast_home).resolve()
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = env["XDG_RUNTIME_DIR"] = str(home)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "h2gnet.fast.runner", json.dumps(asdict(spec))], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        _remove_parts(out, slide.stem)
        raise H2GNetError(slide, f"the FAST run did not finish within {timeout} s") from None
    process_seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        _remove_parts(out, slide.stem)
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        problem = "pyFAST is not installed (pip install pyfast)" if proc.returncode == 3 else \
            f"the FAST run failed (exit {proc.returncode}): {' | '.join(tail)[-400:]}"
        raise H2GNetError(slide, problem)
    summary = json.loads((out / f"{slide.stem}.fast.json").read_text(encoding="utf-8"))
    summary["process_seconds"] = process_seconds
    with np.load(out / f"{slide.stem}{RESULT_SUFFIX}") as arrays:
        return FastRun(**summary, **{k: arrays[k] for k in arrays.files})


def _remove_parts(out: Path, name: str) -> None:
    """Delete what a failed FAST run left under its temporary name."""
    for part in out.glob(f".{name}.fast-part.*"):
        part.unlink(missing_ok=True)


def _require_fast() -> float:
    """Import pyFAST; the seconds it took."""
    t0 = time.perf_counter()
    try:
        import fast  # noqa: F401, PLC0415
    except ImportError:
        raise H2GNetError(None, "pyFAST is not installed (pip install pyfast)") from None
    return time.perf_counter() - t0


def fast_available() -> bool:
    """True when pyFAST is installed (found without importing it: its import initialises OpenCL and Qt)."""
    from importlib.util import find_spec

    try:
        spec = find_spec("fast")
    except (ImportError, ValueError, AttributeError):  # e.g. sys.modules["fast"] = None
        return False
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    return any((Path(loc) / "fast.py").is_file() for loc in locations)


# -- comparing with h2gnet --------------------------------------------------------------------------
def segmentation_raster(result: FastRun, mpp: float = EVAL_MPP, key: str = "segmentation") -> Raster:
    """FAST's ``segmentation`` (or ``tissue``) of :func:`run_fast_pipeline` on the slide's frame at ``mpp`` µm/px.

    Both masks are images of the whole slide: the tissue mask is the smallest pyramid level's, the refined
    segmentation the network's output for that level stretched to its input (1024 × 1024 px for the
    published refiner). They are stretched back over the slide's extent and resampled with nearest
    neighbour. Not by the spacing FAST labels them with: pyFAST 4.18 labelled the 1024 × 1024 px
    segmentation of an 8,000 × 6,000 µm slide (smallest level 1000 × 750 px at 8 µm/px) 8.0 × 6.0 µm/px,
    which would make it 8,192 × 6,144 µm, 2.4 % larger than the slide it was computed from.
    """
    slide_mpp = result.slide_mpp
    if not slide_mpp:
        raise H2GNetError(result.slide, "the FAST result has no µm/px; run it with mpp=")
    mask = np.asarray(getattr(result, key), bool)
    w0, h0 = result.dimensions_l0
    rows, cols = max(1, round(h0 * slide_mpp / mpp)), max(1, round(w0 * slide_mpp / mpp))
    # centre of each target pixel, as a fraction of the slide, then the FAST pixel holding it
    ys = np.minimum(((np.arange(rows) + 0.5) / rows * mask.shape[0]).astype(np.int64), mask.shape[0] - 1)
    xs = np.minimum(((np.arange(cols) + 0.5) / cols * mask.shape[1]).astype(np.int64), mask.shape[1] - 1)
    return Raster(mask[ys][:, xs], mpp, float(slide_mpp))


def mask_dice(fast_mask: Raster, h2gnet_mask: Raster, extent_l0: tuple[int, int], mpp: float = EVAL_MPP) -> float:
    """Dice of two masks of one slide at ``mpp`` µm/px (h2gnet's conventions for empty masks)."""

    a = fast_mask.to_mpp(mpp, extent_l0).array
    b = h2gnet_mask.to_mpp(mpp, extent_l0).array
    rows, cols = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    return float(slide_metrics(a[:rows, :cols], b[:rows, :cols])["dice"])


def _main(argv: list[str]) -> int:
    """Child-process entry: ``python -m h2gnet.fast.runner SPEC_JSON`` (exit 3: no pyFAST)."""
    spec = _RunSpec(**json.loads(argv[0]))
    t0 = time.perf_counter()
    try:
        import fast  # noqa: F401, PLC0415
    except ImportError:
        print("pyFAST is not installed", file=sys.stderr)
        return 3
    try:
        _run_in_this_process(spec, time.perf_counter() - t0)
    except H2GNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
