"""The FAST / FastPathology text pipeline (``.fpl``) of an h2gnet cascade, and its export.

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
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from h2gnet import __version__
from h2gnet.conventions import MODEL_FILE
from h2gnet.errors import H2GNetError
from h2gnet.fast.graph import fast_refiner_graph
from h2gnet.infer.runtime import OnnxModel, model_kind
from h2gnet.io.atomic import atomic_path, write_text
from h2gnet.params import Rule
from h2gnet.patches.grid import MIN_TISSUE

#: FAST's magnification convention: ``M`` × objective = ``FAST_UM_AT_1X / M`` µm/px (40× = 0.25 µm/px).
FAST_UM_AT_1X = 10.0
#: RGB distance from white above which FAST's colour thresholding calls a pixel tissue (0–255 scale).
#: FAST's default is 85; 70 agrees best with h2gnet's saturation > 20: Dice 0.995, 0.993 and 0.993
#: with :func:`h2gnet.patches.tissue.detect_tissue` at 8 µm/px on two phantom slides and CMU-1-Small-Region.svs
#: (same closings; 60–85 all gave ≥ 0.990).
FAST_TISSUE_THRESHOLD = 70
#: Accepted tissue thresholds: an RGB distance from white (at most sqrt(3) * 255 = 442).
TISSUE_THRESHOLD_RULE = Rule(int, low=0, high=442, help="FAST tissue threshold: RGB distance from white, 0-255 scale")
#: Closing disk diameter (px) at h2gnet's 8 µm/px tissue plane; rescaled to the smallest level per slide.
FAST_TISSUE_KERNEL = 5
FPL_NAME = "h2gnet.fpl"
PATCH_FILE = "patch.onnx"
REFINE_FILE = "refine.onnx"
#: The machine-readable first line of an exported pipeline (a comment for FAST).
HEADER_PREFIX = "# h2gnet-fast "


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
        "# Run with h2gnet.fast.runner.run_fast_pipeline, which also sets the slide's magnification from its",
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
    TISSUE_THRESHOLD_RULE.check("tissue_threshold", tissue_threshold)
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
