"""The published H2G-Net FAST pipeline (``breast_tumour_segmentation.fpl``) with other model files.

``pipelines/breast_tumour_segmentation.fpl`` is FastPathology's own published pipeline text, byte for
byte (AICAN-Research/FAST-Pathology commit 1a142c1a, ``data/pipelines/``; BSD-2-Clause, see
``pipelines/NOTICE-FastPathology.txt``): FAST's colour-threshold tissue detection, 256-px patches at 10×
(``PatchGenerator``'s default mask threshold 0.5), the classifier fed uint8 RGB × 1/255, patch stitching,
the tumour channel as an image, the lowest pyramid level min/max-normalised by ``IntensityNormalization``,
the refiner (OpenVINO engine) with two inputs, and two renderers for FastPathology's window.
:func:`published_pipeline` changes only its two model paths, and drops the renderers for a headless
run (pyFAST refuses to parse them without a display). :func:`published_header` tells
:func:`h2gnet.fast.runner.run_fast_pipeline` how to read its results. How the ``h2gnet-2022`` preset
follows the rules FAST 4.18 applies to this text, and where it deliberately does not, is in
``docs/guide/compare-fast.md``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from h2gnet.errors import H2GNetError
from h2gnet.fast.fpl import FAST_UM_AT_1X
from h2gnet.infer.model_card import ModelCard, load_preset
from h2gnet.io.atomic import write_text

PUBLISHED_FPL = "breast_tumour_segmentation.fpl"
#: The model paths as the published pipeline writes them (relative to the pipeline's folder).
PUBLISHED_MODEL_PATHS = {
    "patch-classifier": "$CURRENT_PATH$/../models/pw_tumour_mobilenetv2_model.onnx",
    "refiner": "$CURRENT_PATH$/../models/unet_tumour_refinement_model_fix-opset9.onnx",
}


def published_text() -> str:
    """The published pipeline's text as shipped with h2gnet."""
    return (resources.files("h2gnet.fast") / "pipelines" / PUBLISHED_FPL).read_text(encoding="utf-8")


def without_renderers(text: str) -> str:
    """``text`` without its ``Renderer`` blocks (a ``Renderer`` line and the ``Attribute``/``Input`` lines
    under it): they only draw in FastPathology's window, and pyFAST refuses to parse them without a display
    ("Rendering in FAST was disabled"). The processing chain is untouched."""
    kept: list[str] = []
    in_renderer = False
    for line in text.splitlines():
        head = line.strip().split(" ", 1)[0]
        if head == "Renderer":
            in_renderer = True
            continue
        if in_renderer and head in ("Attribute", "Input"):
            continue
        in_renderer = False
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join(kept) + "\n"


def published_pipeline(patch_model: str | Path, refine_model: str | Path, out: str | Path, *,
                       headless: bool = True, text: str | None = None) -> Path:
    """Write the published pipeline (or ``text``, e.g. a copy from FAST's data hub) to ``out`` with only its
    two model paths replaced by these files, and, when ``headless``, without its renderers
    (:func:`without_renderers`)."""
    text = published_text() if text is None else text
    if headless:
        text = without_renderers(text)
    for kind, model in (("patch-classifier", patch_model), ("refiner", refine_model)):
        path = Path(model).resolve()
        if not path.is_file():
            raise H2GNetError(path, "no such model file")
        if '"' in str(path):
            raise H2GNetError(path, "FAST cannot read a model path with a double quote")
        old = PUBLISHED_MODEL_PATHS[kind]
        if text.count(old) != 1:
            raise H2GNetError(None, f"the published pipeline does not name {old} once")
        text = text.replace(old, str(path))
    write_text(Path(out), text)
    return Path(out)


def published_header(card: ModelCard | None = None) -> dict:
    """What :func:`h2gnet.fast.runner.run_fast_pipeline` needs to read the published pipeline's results."""
    card = card or load_preset("h2gnet-2022").cards["patch-classifier"]
    assert card.mpp is not None and card.input_size is not None
    refine = load_preset("h2gnet-2022").cards["refiner"]
    return {"patch_size": card.input_size, "patch_mpp": card.mpp, "magnification": FAST_UM_AT_1X / card.mpp,
            "tumour_channel": card.tumour_class, "refine_size": refine.input_size, "classes": list(card.class_names),
            "objects": {"sink": "refinement", "tissue": "tissueSeg", "stitcher": "stitcher",
                        "segmentation": "refinement"}}
