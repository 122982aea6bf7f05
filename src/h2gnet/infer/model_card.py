"""Model cards: everything needed to feed an ONNX model and read its output, as data.

h2gnet's own exports carry their conventions in the ONNX metadata (``h2gnet_kind``,
``input_size``, ``mpp``, ``classes``); :func:`card_from_metadata` turns that into a card.
A foreign model (e.g. the published H2G-Net models run by FAST / FastPathology) is
described by a JSON file beside it (``NAME.card.json`` for ``NAME.onnx``) or by a named
preset (``src/h2gnet/infer/presets/*.json``, e.g. ``h2gnet-2022``).

The JSON schema (version 1) stays close to wsinfer's model-zoo ``config.json`` where it
fits (``class_names``, ``patch_size_pixels``, ``spacing_um_px``, ``transform`` as a list
of ``{"name", "arguments"}`` steps). Unknown keys are errors naming the file and the key.

.. code-block:: text

    spec_version        1 (required)
    kind                "patch-classifier" | "refiner" (required)
    name, description   free text
    class_names         list of class names (default ["non-tumour", "tumour"])
    tumour_class        index of the tumour output channel (default: "tumour" in class_names, else last)
    output              "softmax" | "logits" | "sigmoid" (default "softmax"): what the graph returns
    input               {"layout": "NCHW" | "NHWC" | "auto" (read from the graph),
                         "names": graph input names in role order (refiner: [image, heatmap]),
                         "inputs": "concatenated" | "separate" (refiner: RGB+heatmap as one tensor
                                   or two inputs),
                         "order": without "names", which separate input is the image: "channels" (the
                                  3-channel one, default) | "alphabetical" (FAST: the first name in
                                  alphabetical order, as FAST binds its ports)}
    transform           list of steps on RGB 0-255, in order: {"name": "Scale", "arguments":
                        {"factor": f}}, {"name": "Normalize", "arguments": {"mean": [..3], "std": [..3]}}
                        (patch classifiers; default: Scale 1/255)
    patch_size_pixels   patch side in px (patch classifiers; default: the graph's)
    spacing_um_px       µm/px of the patches (patch classifiers, required; FAST: 10× = 1.0)
    tissue              {"method": "hsv-saturation" (h2gnet: saturation > 20 at 8 µm/px, closings 5, 3)
                                   | "rgb-distance" (FAST: RGB distance from white > threshold on the
                                     smallest pyramid level, then dilation and erosion),
                         "threshold", "dilation", "erosion" (px of the smallest level),
                         "min_fraction" (tissue a patch needs, 0-1), "inclusive" (>= instead of >),
                         "fraction": how a patch's tissue fraction is measured: "area" (exact, default)
                                     | "fast-resize" (FAST 4.18: the mask Gaussian-smoothed and resized
                                       bilinearly onto the patch grid, one value per patch)}
    unclassified_value  heatmap value of patches not classified (default 0)
    refiner             {"input_size_pixels" (default: the graph's),
                         "image_source": "h2gnet" (smallest level >= size, read at most 2x size)
                                         | "smallest-level" (the pyramid's lowest level, FAST),
                         "image_normalisation": "fixed" (x/255) | "minmax" (per image, over all
                                                channels) | "minmax-red" (min and max of the red
                                                channel only: FAST 4.18 on slides read by OpenSlide),
                         "resize": "stretch" (aspect not kept, FAST) | "keep-aspect" (padded),
                         "threshold": tumour probability threshold (default 0.5)}
    licence, source     free text kept in the outputs' JSON
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from h2gnet.errors import H2GNetError

SPEC_VERSION = 1
KINDS = ("patch-classifier", "refiner")
OUTPUTS = ("softmax", "logits", "sigmoid")
LAYOUTS = ("NCHW", "NHWC", "auto")
CARD_SUFFIX = ".card.json"
#: h2gnet's HSV rule: saturation > 20 at 8 µm/px (see :mod:`h2gnet.patches.tissue`), patches > 25 % tissue.
HSV_RULE = "hsv-saturation"
RGB_DISTANCE_RULE = "rgb-distance"
#: How a patch's tissue fraction is measured (``tissue.fraction``).
FRACTIONS = ("area", "fast-resize")
#: How a refiner's low-resolution image is scaled to [0, 1] (``refiner.image_normalisation``).
NORMALISATIONS = ("fixed", "minmax", "minmax-red")
#: Which of a refiner's separate inputs is the image (``input.order``).
INPUT_ORDERS = ("channels", "alphabetical")


def _fail(source: str | Path | None, key: str, problem: str) -> H2GNetError:
    return H2GNetError(source, f"model card key {key!r}: {problem}")


@dataclass(frozen=True)
class TissueRule:
    """Which pixels are tissue and which patches are classified.

    ``method`` "hsv-saturation" (h2gnet's rule; ``threshold`` is ignored) or "rgb-distance"
    (FAST's: RGB distance from white > ``threshold`` on the 0–255 scale, on the smallest pyramid
    level, then a dilation and an erosion with discs of ``dilation`` / ``erosion`` px there); a patch is
    classified when its tissue fraction is > ``min_fraction`` (≥ when ``inclusive``). ``fraction``:
    "area" measures it exactly on the mask's pixels; "fast-resize" as FAST 4.18's ``PatchGenerator``
    does (:func:`h2gnet.patches.grid.fast_cell_fractions`).
    """

    method: str = HSV_RULE
    threshold: float = 85.0
    dilation: int = 9
    erosion: int = 9
    min_fraction: float = 0.25
    inclusive: bool = False
    fraction: str = "area"
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.method not in (HSV_RULE, RGB_DISTANCE_RULE):
            raise _fail(self.source, "tissue.method", f"{self.method!r} is not {HSV_RULE!r} or {RGB_DISTANCE_RULE!r}")
        if not 0 <= self.threshold <= 442:
            raise _fail(self.source, "tissue.threshold", f"{self.threshold} is not an RGB distance 0-442")
        for key in ("dilation", "erosion"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 99:
                raise _fail(self.source, f"tissue.{key}", f"{value!r} is not a size 0-99 px")
        if not 0 <= self.min_fraction <= 1:
            raise _fail(self.source, "tissue.min_fraction", f"{self.min_fraction} is not a fraction 0-1")
        if self.fraction not in FRACTIONS:
            raise _fail(self.source, "tissue.fraction", f"{self.fraction!r} is not one of {', '.join(FRACTIONS)}")


@dataclass(frozen=True)
class ModelCard:
    """How to feed one ONNX model and read its output (see the module docstring for the JSON form).

    Sizes in px, ``mpp`` in µm/px, ``scale``/``mean``/``std`` on RGB 0–255 (``x * scale``, then
    ``(x - mean) / std``). ``input_size`` None: the graph's. ``origin`` says where the card came from
    ("metadata", a file path, or "preset NAME").
    """

    kind: str
    name: str = ""
    class_names: tuple[str, ...] = ("non-tumour", "tumour")
    tumour_class: int | None = None
    output: str = "softmax"
    layout: str = "auto"
    input_names: tuple[str, ...] | None = None
    refiner_inputs: str = "concatenated"
    input_order: str = "channels"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: int | None = None
    mpp: float | None = None
    tissue: TissueRule | None = None
    unclassified_value: float = 0.0
    image_source: str = "h2gnet"
    image_normalisation: str = "fixed"
    resize: str = "stretch"
    threshold: float = 0.5
    description: str = ""
    licence: str = ""
    source_url: str = ""
    origin: str = field(default="", compare=False)
    native: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        src = self.origin or None
        if self.kind not in KINDS:
            raise _fail(src, "kind", f"{self.kind!r} is not one of {', '.join(KINDS)}")
        if len(self.class_names) < 1 or not all(isinstance(c, str) and c for c in self.class_names):
            raise _fail(src, "class_names", "must be a non-empty list of names")
        if self.tumour_class is None:
            names = list(self.class_names)
            object.__setattr__(self, "tumour_class", names.index("tumour") if "tumour" in names else len(names) - 1)
        assert self.tumour_class is not None
        if not 0 <= self.tumour_class < max(2, len(self.class_names)):
            raise _fail(src, "tumour_class", f"{self.tumour_class} is not a channel of {len(self.class_names)} classes")
        if self.output not in OUTPUTS:
            raise _fail(src, "output", f"{self.output!r} is not one of {', '.join(OUTPUTS)}")
        if self.layout not in LAYOUTS:
            raise _fail(src, "input.layout", f"{self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.refiner_inputs not in ("concatenated", "separate"):
            raise _fail(src, "input.inputs", f"{self.refiner_inputs!r} is not 'concatenated' or 'separate'")
        if self.refiner_inputs == "separate" and self.kind != "refiner":
            raise _fail(src, "input.inputs", "separate image and heatmap inputs are for refiners")
        if self.input_order not in INPUT_ORDERS:
            raise _fail(src, "input.order", f"{self.input_order!r} is not one of {', '.join(INPUT_ORDERS)}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise _fail(src, "transform", f"scale factor {self.scale} must be positive")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and (len(value) != 3 or not all(math.isfinite(v) for v in value)):
                raise _fail(src, "transform", f"Normalize {key} must be 3 numbers (RGB)")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise _fail(src, "transform", "Normalize std must be positive")
        if self.input_size is not None and not 8 <= self.input_size <= 16384:
            key = "patch_size_pixels" if self.kind == "patch-classifier" else "refiner.input_size_pixels"
            raise _fail(src, key, f"{self.input_size} is not a size 8-16384 px")
        if self.kind == "patch-classifier" and (self.mpp is None or not (math.isfinite(self.mpp)
                                                                     and 0.01 <= self.mpp <= 100)):
            raise _fail(src, "spacing_um_px", f"{self.mpp!r} is not a resolution 0.01-100 µm/px "
                                              "(required for patch classifiers; 10x = 1.0)")
        if self.image_source not in ("h2gnet", "smallest-level"):
            raise _fail(src, "refiner.image_source", f"{self.image_source!r} is not 'h2gnet' or 'smallest-level'")
        if self.image_normalisation not in NORMALISATIONS:
            raise _fail(src, "refiner.image_normalisation", f"{self.image_normalisation!r} is not one of "
                                                            f"{', '.join(NORMALISATIONS)}")
        if self.resize not in ("stretch", "keep-aspect"):
            raise _fail(src, "refiner.resize", f"{self.resize!r} is not 'stretch' or 'keep-aspect'")
        if not 0 < self.threshold < 1:
            raise _fail(src, "refiner.threshold", f"{self.threshold} is not a probability in (0, 1)")

    @property
    def channels(self) -> int:
        """Number of output classes the graph must have (1 for a sigmoid)."""
        return 1 if self.output == "sigmoid" else max(2, len(self.class_names))

    def summary(self) -> dict[str, Any]:
        """What the outputs' JSON says about the card."""
        out: dict[str, Any] = {"name": self.name, "origin": self.origin, "kind": self.kind, "layout": self.layout,
               "output": self.output, "tumour_class": self.tumour_class}
        if self.kind == "patch-classifier":
            out.update(patch_size=self.input_size, mpp=self.mpp,
                       tissue=None if self.tissue is None else {
                           "method": self.tissue.method, "threshold": self.tissue.threshold,
                           "dilation": self.tissue.dilation, "erosion": self.tissue.erosion,
                           "min_fraction": self.tissue.min_fraction, "inclusive": self.tissue.inclusive,
                           "fraction": self.tissue.fraction},
                       unclassified_value=self.unclassified_value)
        else:
            out.update(input_size=self.input_size, inputs=self.refiner_inputs, input_order=self.input_order,
                       image_source=self.image_source,
                       image_normalisation=self.image_normalisation, resize=self.resize, threshold=self.threshold)
        if self.licence:
            out["licence"] = self.licence
        return out


# -- JSON -----------------------------------------------------------------------------------------
_TOP = {"spec_version", "kind", "name", "description", "class_names", "tumour_class", "output", "input",
        "transform", "patch_size_pixels", "spacing_um_px", "tissue", "unclassified_value", "refiner",
        "licence", "source"}
_INPUT = {"layout", "names", "inputs", "order"}
_TISSUE = {"method", "threshold", "dilation", "erosion", "min_fraction", "inclusive", "fraction"}
_REFINER = {"input_size_pixels", "image_source", "image_normalisation", "resize", "threshold"}


def _check_keys(obj: Any, allowed: set[str], where: str, source: str | Path) -> dict:
    if not isinstance(obj, dict):
        raise _fail(source, where or "(top level)", f"must be a JSON object, not {type(obj).__name__}")
    for key in obj:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise _fail(source, name, f"unknown key (known: {', '.join(sorted(allowed))})")
    return obj


def _typed(obj: dict, key: str, kind: type | tuple, where: str, source: str | Path) -> Any:
    value = obj[key]
    bad = isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,))
    if bad or not isinstance(value, kind):
        name = f"{where}.{key}" if where else key
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(source, name, f"must be {want}, not {json.dumps(value)}")
    return value


def card_from_dict(doc: Any, source: str | Path, **overrides: Any) -> ModelCard:
    """A card from its JSON form (``source`` names the file or preset in errors)."""
    doc = _check_keys(doc, _TOP, "", source)
    if "spec_version" not in doc:
        raise _fail(source, "spec_version", "missing (this is version 1)")
    if doc["spec_version"] != SPEC_VERSION:
        raise _fail(source, "spec_version", f"{doc['spec_version']!r} is not supported (this is version 1)")
    if "kind" not in doc:
        raise _fail(source, "kind", f"missing ({' or '.join(KINDS)})")
    kw: dict[str, Any] = {"kind": _typed(doc, "kind", str, "", source), "origin": str(source)}
    for key, attr, kind in (("name", "name", str), ("description", "description", str),
                            ("output", "output", str), ("licence", "licence", str), ("source", "source_url", str),
                            ("patch_size_pixels", "input_size", int), ("spacing_um_px", "mpp", (int, float)),
                            ("unclassified_value", "unclassified_value", (int, float))):
        if key in doc:
            kw[attr] = _typed(doc, key, kind, "", source)
    if "class_names" in doc:
        names = _typed(doc, "class_names", list, "", source)
        if not all(isinstance(n, str) for n in names):
            raise _fail(source, "class_names", "must be a list of strings")
        kw["class_names"] = tuple(names)
    if "tumour_class" in doc:
        kw["tumour_class"] = _typed(doc, "tumour_class", int, "", source)
    if "input" in doc:
        inp = _check_keys(doc["input"], _INPUT, "input", source)
        if "layout" in inp:
            kw["layout"] = _typed(inp, "layout", str, "input", source)
        if "inputs" in inp:
            kw["refiner_inputs"] = _typed(inp, "inputs", str, "input", source)
        if "order" in inp:
            kw["input_order"] = _typed(inp, "order", str, "input", source)
        if inp.get("names") is not None:
            names = _typed(inp, "names", list, "input", source)
            if not names or not all(isinstance(n, str) and n for n in names):
                raise _fail(source, "input.names", "must be a list of graph input names")
            kw["input_names"] = tuple(names)
    if "transform" in doc:
        steps = _typed(doc, "transform", list, "", source)
        scale, mean, std = 1.0, None, None
        for i, step in enumerate(steps):
            where = f"transform[{i}]"
            step = _check_keys(step, {"name", "arguments"}, where, source)
            name = step.get("name")
            args = _check_keys(step.get("arguments", {}), {"factor"} if name == "Scale" else {"mean", "std"},
                               f"{where}.arguments", source)
            if name == "Scale":
                if "factor" not in args:
                    raise _fail(source, f"{where}.arguments.factor", "missing")
                scale *= float(_typed(args, "factor", (int, float), f"{where}.arguments", source))
            elif name == "Normalize":
                if mean is not None:
                    raise _fail(source, where, "a second Normalize step")
                for k in ("mean", "std"):
                    if k not in args:
                        raise _fail(source, f"{where}.arguments.{k}", "missing")
                mean = tuple(float(v) for v in _typed(args, "mean", list, f"{where}.arguments", source))
                std = tuple(float(v) for v in _typed(args, "std", list, f"{where}.arguments", source))
            else:
                raise _fail(source, f"{where}.name", f"{name!r} is not a known step (Scale, Normalize)")
        kw.update(scale=scale, mean=mean, std=std)
    if "tissue" in doc:
        t = _check_keys(doc["tissue"], _TISSUE, "tissue", source)
        tk: dict[str, Any] = {"source": str(source)}
        checks: tuple[tuple[str, type | tuple[type, ...]], ...] = (
            ("method", str), ("threshold", (int, float)), ("dilation", int), ("erosion", int),
            ("min_fraction", (int, float)), ("inclusive", bool), ("fraction", str))
        for key, want in checks:
            if key in t:
                tk[key] = _typed(t, key, want, "tissue", source)
        kw["tissue"] = TissueRule(**tk)
    if "refiner" in doc:
        r = _check_keys(doc["refiner"], _REFINER, "refiner", source)
        for key, attr, kind in (("input_size_pixels", "input_size", int), ("image_source", "image_source", str),
                                ("image_normalisation", "image_normalisation", str), ("resize", "resize", str),
                                ("threshold", "threshold", (int, float))):
            if key in r:
                kw[attr] = _typed(r, key, kind, "refiner", source)
    if kw["kind"] == "patch-classifier" and "refiner" in doc:
        raise _fail(source, "refiner", "a patch-classifier card has no refiner section")
    if kw["kind"] == "refiner":
        for key in ("tissue", "patch_size_pixels", "spacing_um_px", "transform"):
            if key in doc:
                raise _fail(source, key, "is for patch classifiers, not refiners")
    kw.update(overrides)
    return ModelCard(**kw)


def load_card(path: str | Path) -> ModelCard:
    """A card from a JSON file (errors name the file and the key)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise H2GNetError(path, "no such model card file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise H2GNetError(path, f"cannot read the model card ({exc})") from None
    except json.JSONDecodeError as exc:
        raise H2GNetError(path, f"is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return card_from_dict(doc, path)


def card_beside(model_path: str | Path) -> Path:
    """Where a model's JSON card is looked for: ``NAME.card.json`` beside ``NAME.onnx``."""
    p = Path(model_path)
    return p.with_name(p.stem + CARD_SUFFIX)


def card_from_metadata(metadata: dict[str, str], kind: str, origin: str = "metadata") -> ModelCard:
    """The card of one of h2gnet's own exports, from its ONNX metadata (NCHW, RGB in [0, 1], softmax)."""
    classes = tuple(metadata.get("classes", "non-tumour,tumour").split(","))
    size = int(metadata["input_size"]) if metadata.get("input_size", "").isdigit() else None
    return ModelCard(kind=kind, name=metadata.get("arch", "h2gnet"), class_names=classes, layout="NCHW",
                     input_size=size, mpp=float(metadata.get("mpp", 1.0)) if kind == "patch-classifier" else None,
                     origin=origin, native=True)


# -- presets --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A named set of cards for published models, with where their files come from."""

    name: str
    description: str
    files: dict[str, str]
    cards: dict[str, ModelCard]
    datahub: dict[str, str]
    licence_note: str = ""


def preset_names() -> list[str]:
    """Names of the presets shipped with h2gnet."""
    folder = resources.files("h2gnet.infer") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> Preset:
    """A preset by name (e.g. ``h2gnet-2022``); :class:`H2GNetError` listing the known ones otherwise."""
    known = preset_names()
    if name not in known:
        raise H2GNetError(None, f"unknown model preset {name!r} (known: {', '.join(known)})")
    origin = f"preset {name}"
    doc = json.loads((resources.files("h2gnet.infer") / "presets" / f"{name}.json").read_text(encoding="utf-8"))
    _check_keys(doc, {"name", "description", "files", "cards", "datahub", "licence_note"}, "", origin)
    cards = {kind: card_from_dict(card, origin) for kind, card in doc["cards"].items()}
    for kind, card in cards.items():
        if card.kind != kind:
            raise _fail(origin, f"cards.{kind}.kind", f"is {card.kind!r}")
    return Preset(doc["name"], doc.get("description", ""), dict(doc["files"]), cards, dict(doc.get("datahub", {})),
                  doc.get("licence_note", ""))


def with_graph(card: ModelCard, **values: Any) -> ModelCard:
    """``card`` with values read from the graph (layout, input size) filled in."""
    known = {f.name for f in fields(ModelCard)}
    return replace(card, **{k: v for k, v in values.items() if k in known})


def models_folder(preset: str, models_dir: str | Path | None = None) -> Path:
    """Where ``h2gnet fetch-models PRESET`` puts a preset's files: ``models_dir``, else
    ``$H2GNET_MODELS/PRESET``, else ``~/.cache/h2gnet/models/PRESET``."""
    import os

    if models_dir is not None:
        return Path(models_dir)
    root = os.environ.get("H2GNET_MODELS")
    return (Path(root) if root else Path.home() / ".cache" / "h2gnet" / "models") / preset


def preset_model(preset: str, kind: str, models_dir: str | Path | None = None) -> Path:
    """The fetched file of ``preset``'s ``kind`` model; :class:`H2GNetError` saying how to get it when absent."""
    p = load_preset(preset)
    if kind not in p.files:
        raise H2GNetError(None, f"preset {preset!r} has no {kind}")
    path = models_folder(preset, models_dir) / p.files[kind]
    if not path.is_file():
        raise H2GNetError(path, f"not there: get the {preset} models with `h2gnet fetch-models {preset}` "
                                "(or name the files with --patch-model / --refine-model)")
    return path
