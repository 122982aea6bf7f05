"""Export the cascade as a FAST / FastPathology text pipeline (``.fpl``), and run it with pyFAST.

:func:`export_fast` writes into one folder

* ``patch.onnx`` — the patch classifier, a byte-for-byte copy (FAST feeds it the
  NCHW float32 input it was exported with: uint8 RGB × ``scale-factor`` 1/255);
* ``refine.onnx`` — the refiner (optional) with its single 4-channel input split in
  the graph into ``input_0_image`` (N, 3, S, S), RGB on the 0–255 scale and divided
  by 255 inside the graph, and ``input_1_heatmap`` (N, 1, S, S), concatenated back
  into the original input: the network and its numerics are unchanged. FAST gives
  a network's input ports to its input nodes in the alphabetical order of their
  names (pyFAST 4.18), hence the prefixes; the division sits in the graph because
  FAST's ``scale-factor`` would scale the heatmap too and no pipeline object of
  4.18 casts an image to float with a scale;
* ``h2gnet.fpl`` — the pipeline: colour-threshold tissue detection, 256-px patches
  at 10× (1 µm/px) kept when ≥ 25 % tissue, the classifier, patch stitching into a
  heatmap, then (with a refiner) the refinement network on a low-resolution level
  + heatmap, and an ``ImageFileExporter`` that writes the segmentation (``.mhd``).

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

Where FAST differs from h2gnet (see also :data:`FAST_TISSUE_THRESHOLD`):
tissue is "RGB distance from white > threshold" on the pyramid's *smallest*
level with disk closings (h2gnet: HSV saturation > 20 at 8 µm/px, square
closings 5×5 and 3×3); patches are kept when the tissue fraction is ≥ 25 %
(h2gnet: > 25 %); when no level sits at the patch resolution FAST resamples a
patch of truncated integer size with pre-smoothing (h2gnet: area averaging from
the finest level within 1 %); the refiner's input is resized by FAST's
``ImageResizer`` from a whole pyramid level (h2gnet: area-reduced to at most 2×
the input size, then bilinear); FAST's segmentation is the network's arg-max at
its input size, stretched over the slide (h2gnet resizes the probability back
to the low-resolution grid and thresholds it at 0.5). The patch grid starts at
the level-0 origin in both, without overlap; border patches are padded white.

Numerics: FAST's default inference engine is OpenVINO (2023.0 in pyFAST 4.18), whose CPU plugin
computes in bfloat16 on CPUs with AVX512-BF16 (e.g. AMD EPYC Zen 4): a 1×1 convolution by
1 + 2⁻⁹ returns 200/255 as 0.78515625, the bfloat16 value, and an untrained MobileNetV2's tumour
probabilities move by up to 0.56. Export with ``inference_engine="ONNXRuntime"`` for float32.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from h2gnet import __version__
from h2gnet.conventions import EVAL_MPP, LOW_MPP, MODEL_FILE
from h2gnet.errors import H2GNetError
from h2gnet.evaluation.metrics import slide_metrics
from h2gnet.infer.runtime import OnnxModel, model_kind
from h2gnet.io.atomic import atomic_path, write_text
from h2gnet.io.raster import Raster
from h2gnet.patches.grid import MIN_TISSUE

#: FAST's magnification convention: ``M`` × objective = ``FAST_UM_AT_1X / M`` µm/px (40× = 0.25 µm/px).
FAST_UM_AT_1X = 10.0
#: RGB distance from white above which FAST's colour thresholding calls a pixel tissue (0–255 scale).
#: FAST's default is 85; 70 agrees best with h2gnet's saturation > 20: Dice 0.995, 0.993 and 0.993
#: with :func:`h2gnet.patches.tissue.detect_tissue` at 8 µm/px on two phantom slides and CMU-1-Small-Region.svs
#: (same closings; 60–85 all gave ≥ 0.990).
FAST_TISSUE_THRESHOLD = 70
#: Closing disk diameter (px) at h2gnet's 8 µm/px tissue plane; rescaled to the smallest level per slide.
FAST_TISSUE_KERNEL = 5
FPL_NAME = "h2gnet.fpl"
PATCH_FILE = "patch.onnx"
REFINE_FILE = "refine.onnx"
#: Input node names of the exported refiner (FAST binds input ports in the alphabetical order of names).
FAST_IMAGE_INPUT = "input_0_image"
FAST_HEATMAP_INPUT = "input_1_heatmap"
#: The machine-readable first line of an exported pipeline (a comment for FAST).
HEADER_PREFIX = "# h2gnet-fast "
SEGMENTATION_SUFFIX = ".fast-segmentation.mhd"
RESULT_SUFFIX = ".fast.npz"


@dataclass(frozen=True)
class FastModel:
    """An h2gnet ONNX model as the pipeline sees it (sizes in px, resolution in µm/px)."""

    path: Path
    kind: str
    input_size: int
    in_channels: int
    mpp: float | None
    classes: tuple[str, ...]
    arch: str


def _model_file(run_or_onnx: str | Path) -> Path:
    """The ``.onnx`` file of a run folder (its ``model.onnx``) or the file itself."""
    path = Path(run_or_onnx)
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise H2GNetError(path, f"is a folder without {MODEL_FILE} (not a training run, or its training "
                                    "has not finished)")
        return path / MODEL_FILE
    if not path.is_file():
        raise H2GNetError(path, "no such run folder or model file")
    return path


def resolve_model(run_or_onnx: str | Path, kind: str) -> FastModel:
    """The model of a training run folder (its ``model.onnx``) or an ``.onnx`` file, checked to be ``kind``.

    ``kind``: "patch-classifier" or "refiner" (the ``h2gnet_kind`` of the model's metadata).
    """

    model = OnnxModel(_model_file(run_or_onnx), kind, threads=1)
    mpp = model.mpp if kind == "patch-classifier" else None
    return FastModel(model.path, kind, model.input_size, model.in_channels, mpp, tuple(model.classes),
                     model.metadata.get("arch", "unknown"))


def split_models(paths: list[str | Path]) -> tuple[Path, Path | None]:
    """(patch classifier, refiner or None) among one or two run folders / .onnx files, in any order."""
    if not 1 <= len(paths) <= 2:
        raise H2GNetError(None, f"give one patch-classifier run (and optionally one refiner run), got {len(paths)}")
    found: dict[str, Path] = {}
    for item in paths:
        kind = model_kind(_model_file(item))
        if kind not in ("patch-classifier", "refiner"):
            what = "an ONNX model without h2gnet metadata" if kind is None else f"a {kind!r} model"
            raise H2GNetError(item, f"is {what}, not a patch classifier or refiner exported by h2gnet")
        if kind in found:
            raise H2GNetError(item, f"is a second {kind} (already given: {found[kind]})")
        found[kind] = Path(item)
    if "patch-classifier" not in found:
        raise H2GNetError(None, "no patch-classifier run among the inputs (FAST's pipeline starts from the heatmap)")
    return found["patch-classifier"], found.get("refiner")


def fast_magnification(mpp: float) -> float:
    """FAST's objective magnification for ``mpp`` µm/px (1.0 µm/px → 10)."""
    if mpp <= 0:
        raise ValueError(f"µm/px must be positive, got {mpp}")
    return FAST_UM_AT_1X / mpp


def _number(value: float) -> str:
    """A float as FAST's attribute parser reads it (no exponent; integers without a point)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.10f}".rstrip("0")


# -- the ONNX graph edit ------------------------------------------------------------------------
def fast_refiner_graph(path: str | Path):
    """The refiner of ``path`` with FAST-friendly inputs (an ``onnx.ModelProto``; numerics unchanged).

    Inputs become ``input_0_image`` (N, 3, S, S) float32 RGB on the 0–255 scale, divided by 255
    in the graph, and — for 4-channel refiners — ``input_1_heatmap`` (N, 1, S, S) float32 in [0, 1];
    a ``Concat`` along the channels rebuilds the original input. The output is untouched.
    """
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        raise H2GNetError(None, "exporting a refiner for FAST needs the onnx package (pip install onnx, or "
                                "install h2gnet with the [train] extra)") from None
    model = onnx.load(str(path))
    graph = model.graph
    initialisers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise H2GNetError(path, f"has {len(inputs)} inputs; an h2gnet refiner has one")
    original = inputs[0]
    dims = original.type.tensor_type.shape.dim
    shape = [d.dim_param or d.dim_value for d in dims]
    if len(shape) != 4 or shape[1] not in (3, 4):
        raise H2GNetError(path, f"has input shape {shape}; expected (N, 3 or 4, S, S)")
    batch, channels, height, width = shape
    names = {n for node in graph.node for n in (*node.input, *node.output)} | initialisers
    for taken in (FAST_IMAGE_INPUT, FAST_HEATMAP_INPUT):
        if taken in names:
            raise H2GNetError(path, f"already has a tensor named {taken!r}: is it exported for FAST already?")
    scaled = "h2gnet_fast_image_01" if channels == 4 else original.name
    graph.initializer.append(helper.make_tensor("h2gnet_fast_255", TensorProto.FLOAT, [], [255.0]))
    nodes = [helper.make_node("Div", [FAST_IMAGE_INPUT, "h2gnet_fast_255"], [scaled], name="h2gnet_fast_div255")]
    new_inputs = [helper.make_tensor_value_info(FAST_IMAGE_INPUT, TensorProto.FLOAT, [batch, 3, height, width])]
    if channels == 4:
        nodes.append(helper.make_node("Concat", [scaled, FAST_HEATMAP_INPUT], [original.name], axis=1,
                                      name="h2gnet_fast_concat"))
        new_inputs.append(helper.make_tensor_value_info(FAST_HEATMAP_INPUT, TensorProto.FLOAT,
                                                        [batch, 1, height, width]))
    graph.input.remove(original)
    for i, value in enumerate(new_inputs):
        graph.input.insert(i, value)
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    entry = model.metadata_props.add()
    entry.key = "fast_inputs"
    entry.value = (f"{FAST_IMAGE_INPUT}: RGB 0-255 (divided by 255 in the graph)"
                   + (f"; {FAST_HEATMAP_INPUT}: tumour probability 0-1" if channels == 4 else ""))
    onnx.checker.check_model(model)
    return model


# -- the pipeline text ----------------------------------------------------------------------------
def fpl_text(patch: FastModel, refine: FastModel | None, *, tissue_threshold: int = FAST_TISSUE_THRESHOLD,
             min_tissue: float = MIN_TISSUE, inference_engine: str | None = None) -> str:
    """The FAST text pipeline for ``patch`` (and ``refine``), models beside it as ``patch.onnx``/``refine.onnx``.

    Slide-dependent values are FAST pipeline variables with defaults: ``tissue_kernel`` (closing disk
    diameter in px of the smallest level, default 5), ``patch_magnification`` (default 10 / model
    µm/px), ``patch_level`` and ``patch_size`` (used when ``patch_magnification`` is 0: patches of
    that size on that level, resized by the network to its input), ``lowres_level`` (pyramid level
    the refiner reads, default -1: the smallest, as FastPathology's H2G-Net pipeline) and ``output``
    (the exported segmentation, default ``segmentation.mhd`` beside the pipeline).
    """
    assert patch.mpp is not None
    magnification = fast_magnification(patch.mpp)
    tumour = patch.classes.index("tumour") if "tumour" in patch.classes else len(patch.classes) - 1
    header = {"format": 1, "h2gnet_version": __version__, "patch_size": patch.input_size, "patch_mpp": patch.mpp,
              "magnification": magnification, "tumour_channel": tumour, "classes": list(patch.classes),
              "refine_size": refine.input_size if refine else None,
              "refine_channels": refine.in_channels if refine else None,
              "tissue_threshold": tissue_threshold, "min_tissue": min_tissue}
    engine = [f"Attribute inference-engine {inference_engine}"] if inference_engine else []
    design = f"{patch.arch} patch-wise" + (f" + {refine.arch} refinement" if refine else " (heatmap > 0.5)")
    lines = [
        HEADER_PREFIX + json.dumps(header, separators=(",", ":")),
        f"# Exported by h2gnet {__version__} for FAST / FastPathology (written for pyFAST 4.18).",
        "# Run with h2gnet.fast.pipeline.run_fast_pipeline, which also sets the slide's magnification from its",
        "# um/px when the file declares none, and the pipeline variables below per slide.",
        'PipelineName "h2gnet breast tumour segmentation"',
        f'PipelineDescription "H2G-Net cascade from h2gnet: {design}"',
        'PipelineInputData WSI "Whole-slide image"',
        "PipelineOutputData tissue tissue 0",
        "PipelineOutputData heatmap stitcher 0",
        f"PipelineOutputData segmentation {'refinement' if refine else 'threshold'} 0",
        'Attribute classes "Background;Tumour"',
        "",
        f"### Tissue: RGB distance from white > {tissue_threshold} on the smallest level, then a closing",
        "ProcessObject tissue TissueSegmentation",
        "Attribute color-thresholding true",
        f"Attribute threshold {tissue_threshold}",
        f"Attribute dilate-kernel-size @@tissue_kernel={FAST_TISSUE_KERNEL}@@",
        f"Attribute erode-kernel-size @@tissue_kernel={FAST_TISSUE_KERNEL}@@",
        "Input 0 WSI",
        "",
        f"### Patches: {patch.input_size} px at {_number(magnification)}x ({_number(patch.mpp)} um/px), "
        f"kept at >= {min_tissue:.0%} tissue",
        "ProcessObject patches PatchGenerator",
        f"Attribute patch-size @@patch_size={patch.input_size}@@ @@patch_size={patch.input_size}@@",
        f"Attribute patch-magnification @@patch_magnification={_number(magnification)}@@",
        "Attribute patch-level @@patch_level=0@@",
        "Attribute patch-overlap 0.0",
        f"Attribute mask-threshold {_number(min_tissue)}",
        "Input 0 WSI",
        "Input 1 tissue 0",
        "",
        "### Patch classifier: uint8 RGB x 1/255 -> NCHW float32 in [0, 1], softmax output",
        "ProcessObject classifier NeuralNetwork",
        'Attribute model "$CURRENT_PATH$/' + PATCH_FILE + '"',
        "Attribute scale-factor 0.00392156862745098",
        *engine,
        "Input 0 patches 0",
        "",
        "### Heatmap: one value per patch",
        "ProcessObject stitcher PatchStitcher",
        "Input 0 classifier 0",
        "",
        "ProcessObject finish RunUntilFinished",
        "Input 0 stitcher 0",
        "",
        "ProcessObject heatmap TensorToImage",
        f"Attribute channels {tumour}",
        "Input 0 finish 0",
        "",
    ]
    if refine is not None:
        lines += [
            f"### Refinement: {refine.arch} on a pyramid level resized to {refine.input_size} px "
            + ("+ the heatmap" if refine.in_channels == 4 else "(RGB only)"),
            "ProcessObject lowres ImagePyramidLevelExtractor",
            "Attribute level @@lowres_level=-1@@",
            "Input 0 WSI",
            "",
            "ProcessObject refinement SegmentationNetwork",
            'Attribute model "$CURRENT_PATH$/' + REFINE_FILE + '"',
            "Attribute scale-factor 1.0",
            *engine,
            "Input 0 lowres 0",
            *(["Input 1 heatmap 0"] if refine.in_channels == 4 else []),
            "",
        ]
        segmentation = "refinement"
    else:
        lines += [
            "### Patch-wise segmentation: heatmap > 0.5",
            "ProcessObject threshold BinaryThresholding",
            "Attribute lower-threshold 0.5",
            "Input 0 heatmap 0",
            "",
        ]
        segmentation = "threshold"
    lines += [
        "### Segmentation exporter (MetaImage: .mhd + .raw, spacing in mm)",
        "ProcessObject exporter ImageFileExporter",
        'Attribute filename "@@output=$CURRENT_PATH$/segmentation.mhd@@"',
        f"Input 0 {segmentation} 0",
        "",
    ]
    return "\n".join(lines)


def read_header(fpl_path: str | Path) -> dict:
    """The h2gnet header of an exported pipeline (patch size, µm/px, magnification, …)."""
    path = Path(fpl_path)
    try:
        first = path.read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        raise H2GNetError(path, "cannot read the pipeline file") from None
    if not first.startswith(HEADER_PREFIX):
        raise H2GNetError(path, "is not a pipeline exported by `h2gnet export-fast`")
    return json.loads(first[len(HEADER_PREFIX):])


def _check_fast_path(folder: Path) -> None:
    """FAST splits ``@@name=default@@`` at '=' after putting the folder into the line: refuse such folders."""
    text = str(folder.resolve())
    if "=" in text or "@@" in text:
        raise H2GNetError(folder, "FAST cannot use a pipeline in a folder whose path contains '=' or '@@'")


def export_fast(patch_run_or_onnx: str | Path, refine_run_or_onnx: str | Path | None, out_dir: str | Path, *,
                tissue_threshold: int = FAST_TISSUE_THRESHOLD, min_tissue: float = MIN_TISSUE,
                inference_engine: str | None = None) -> Path:
    """Write ``patch.onnx``, ``refine.onnx`` (if a refiner is given) and ``h2gnet.fpl`` into ``out_dir``.

    Models are run folders (``model.onnx`` inside) or ``.onnx`` files. ``tissue_threshold``: RGB
    distance from white (0–255 scale) for FAST's tissue detection; ``min_tissue``: tissue fraction a
    patch needs (0–1); ``inference_engine``: a FAST engine name (e.g. "OpenVINO", "ONNXRuntime",
    "TensorRT") or None for FAST's choice. Every file is written atomically, the pipeline last.
    Returns the pipeline's path.
    """
    out = Path(out_dir)
    _check_fast_path(out)
    if not 0 <= tissue_threshold <= 442:
        raise H2GNetError(None, f"the tissue threshold is an RGB distance 0–442, got {tissue_threshold}")
    if not 0 <= min_tissue <= 1:
        raise H2GNetError(None, f"min_tissue is a fraction 0–1, got {min_tissue}")
    patch = resolve_model(patch_run_or_onnx, "patch-classifier")
    refine = resolve_model(refine_run_or_onnx, "refiner") if refine_run_or_onnx is not None else None
    if patch.input_size % 2:
        raise H2GNetError(patch.path, f"FAST's PatchGenerator needs an even patch size, not {patch.input_size}")
    text = fpl_text(patch, refine, tissue_threshold=tissue_threshold, min_tissue=min_tissue,
                    inference_engine=inference_engine)
    edited = fast_refiner_graph(refine.path) if refine is not None else None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise H2GNetError(out, f"cannot create the folder ({exc.strerror or exc})") from None
    with atomic_path(out / PATCH_FILE) as tmp:
        shutil.copyfile(patch.path, tmp)
    if edited is not None:
        import onnx

        with atomic_path(out / REFINE_FILE) as tmp:
            onnx.save(edited, str(tmp))
    else:
        (out / REFINE_FILE).unlink(missing_ok=True)  # a refiner of an earlier export must not linger
    write_text(out / FPL_NAME, text)
    return out / FPL_NAME


# -- running it with pyFAST ------------------------------------------------------------------------
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
                  workaround: bool = True) -> dict:
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


def _run_in_this_process(spec: _RunSpec, import_seconds: float | None = None) -> dict:
    """Run the pipeline here (FAST must be importable, and this must be the main thread)."""
    t_import = time.perf_counter()
    import fast  # noqa: PLC0415 (pyFAST: optional, imported only here)

    if import_seconds is None:
        import_seconds = time.perf_counter() - t_import
    fast.Reporter.setGlobalReportMethod(fast.Reporter.COUT if spec.verbose else fast.Reporter.NONE)
    header = read_header(spec.fpl)
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
                raise H2GNetError(slide, "FAST finds neither a magnification nor µm/px in this file; give mpp=") from None
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
                                 int(header["patch_size"]), slide_mpp, spec.patch_workaround)
    variables.update(patch_source.pop("variables"))
    lowres = spec.lowres_level
    if header.get("refine_size") and lowres is None:
        size = int(header["refine_size"])  # h2gnet's rule: the smallest level with both sides >= size
        fitting = [i for i, (w, h) in enumerate(levels) if w >= size and h >= size]
        lowres = fitting[-1] if fitting else 0
    if lowres is not None:
        variables["lowres_level"] = str(int(lowres))
    pipeline = fast.Pipeline(str(spec.fpl), variables)
    pipeline.parse({"WSI": wsi})
    # One sink only: pyFAST 4.18 deadlocks when a second sink re-pulls the finished patch stream, and
    # getPipelineOutputData loops forever on the refined segmentation (it inherits the stream's
    # "progress" without its last-frame flag). The exporter drives the whole pipeline once; the other
    # results are then read from their process objects without running them again.
    pipeline.getProcessObject("exporter").run()
    seconds = time.perf_counter() - t0

    def output(po: str):
        return pipeline.getProcessObject(po).getOutputData(0)

    # level-0 px per heatmap cell: FAST's level has downsample magnification / patch magnification
    cell_l0 = header["patch_size"] * magnification / header["magnification"]
    if patch_source["mode"] == "level 0":
        cell_l0 = float(patch_source["level0_patch_size"])
    heat = np.asarray(fast.Tensor.fromDataObject(output("stitcher")))[..., int(header["tumour_channel"])]
    tissue_img = fast.Image.fromDataObject(output("tissue"))
    tissue = np.asarray(tissue_img)[..., 0] > 0
    seg_po = "refinement" if header.get("refine_size") else "threshold"
    seg_img = fast.Image.fromDataObject(output(seg_po))
    segmentation = np.asarray(seg_img)[..., 0] > 0
    result = {
        "slide": str(slide), "fpl": str(spec.fpl), "seconds": seconds, "import_seconds": import_seconds,
        "fast_version": getattr(fast, "__version__", "4.x"), "magnification": magnification,
        "magnification_source": source, "slide_mpp": slide_mpp, "dimensions_l0": list(levels[0]),
        "levels": [list(lv) for lv in levels], "lowres_level": lowres, "tissue_kernel": kernel,
        "patch_source": patch_source,
        "variables": {k: v for k, v in variables.items() if k != "output"}, "patch_size": header["patch_size"], "patch_mpp": header["patch_mpp"],
        "heatmap_cell_l0": cell_l0, "heatmap_cell_um": cell_l0 * slide_mpp if slide_mpp else None,
        "tissue_spacing_um": [float(v) * 1000.0 for v in tissue_img.getSpacing()[:2]],
        "segmentation_spacing_um": [float(v) * 1000.0 for v in seg_img.getSpacing()[:2]],
    }
    arrays = {"heatmap": heat.astype(np.float32), "tissue": tissue, "segmentation": segmentation}
    with atomic_path(out_dir / f"{name}{RESULT_SUFFIX}") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    result["outputs"] = {"segmentation": str(_finish_mhd(Path(variables["output"]), out_dir / f"{name}"
                                                                                    f"{SEGMENTATION_SUFFIX}")),
                         "arrays": str(out_dir / f"{name}{RESULT_SUFFIX}")}
    write_text(out_dir / f"{name}.fast.json", json.dumps(result, indent=2))
    return {**result, **arrays}


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


def run_fast_pipeline(fpl_path: str | Path, slide_path: str | Path, out_dir: str | Path, *,
                      mpp: float | None = None, magnification: float | None = None,
                      lowres_level: int | None = None, tissue_kernel: int | None = None,
                      patch_workaround: bool = True, fast_home: str | Path | None = None,
                      timeout: float | None = None, isolate: bool = True,
                      verbose: bool = False) -> dict[str, Any]:
    """Run an exported pipeline with pyFAST on one slide; FAST's results as numpy, with timings.

    Writes into ``out_dir``: ``NAME.fast-segmentation.mhd`` (+ ``.raw``; FAST's exporter),
    ``NAME.fast.npz`` (arrays) and ``NAME.fast.json`` (the rest). Returns a dict with

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
    in HOME). Raises :class:`H2GNetError` when pyFAST is missing or the run fails.
    """
    fpl = Path(fpl_path).resolve()
    read_header(fpl)
    _check_fast_path(fpl.parent)
    slide = Path(slide_path).resolve()
    if not slide.exists():
        raise H2GNetError(slide, "no such slide file")
    out = Path(out_dir).resolve()
    spec = _RunSpec(str(fpl), str(slide), str(out), magnification, mpp, lowres_level, tissue_kernel,
                    patch_workaround, verbose)
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
        proc = subprocess.run([sys.executable, "-m", "h2gnet.fast.pipeline", json.dumps(asdict(spec))], env=env,
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
    result = json.loads((out / f"{slide.stem}.fast.json").read_text(encoding="utf-8"))
    with np.load(out / f"{slide.stem}{RESULT_SUFFIX}") as arrays:
        result.update({k: arrays[k] for k in arrays.files})
    result["process_seconds"] = process_seconds
    return result


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
def segmentation_raster(result: dict[str, Any], mpp: float = EVAL_MPP, key: str = "segmentation") -> Raster:
    """FAST's ``segmentation`` (or ``tissue``) of :func:`run_fast_pipeline` on the slide's frame at ``mpp`` µm/px.

    FAST's masks cover the slide's extent (anisotropic spacing for the refined one); they are mapped
    to the level-0 frame by their spacing and resampled with nearest neighbour.
    """
    slide_mpp = result.get("slide_mpp")
    if not slide_mpp:
        raise H2GNetError(result.get("slide"), "the FAST result has no µm/px; run it with mpp=")
    mask = np.asarray(result[key], bool)
    sx, sy = result[f"{key}_spacing_um"]
    w0, h0 = result["dimensions_l0"]
    rows, cols = max(1, round(h0 * slide_mpp / mpp)), max(1, round(w0 * slide_mpp / mpp))
    # centre of each target pixel, in µm, then the FAST pixel holding it
    ys = np.minimum(((np.arange(rows) + 0.5) * mpp / sy).astype(np.int64), mask.shape[0] - 1)
    xs = np.minimum(((np.arange(cols) + 0.5) * mpp / sx).astype(np.int64), mask.shape[1] - 1)
    return Raster(mask[ys][:, xs], mpp, float(slide_mpp))


def mask_dice(fast_mask: Raster, h2gnet_mask: Raster, extent_l0: tuple[int, int], mpp: float = EVAL_MPP) -> float:
    """Dice of two masks of one slide at ``mpp`` µm/px (h2gnet's conventions for empty masks)."""

    a = fast_mask.to_mpp(mpp, extent_l0).array
    b = h2gnet_mask.to_mpp(mpp, extent_l0).array
    rows, cols = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    return float(slide_metrics(a[:rows, :cols], b[:rows, :cols])["dice"])


def _main(argv: list[str]) -> int:
    """Child-process entry: ``python -m h2gnet.fast.pipeline SPEC_JSON`` (exit 3: no pyFAST)."""
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
