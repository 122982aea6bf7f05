"""The bad-input corpus: every case is a file or option a careless or hostile user could give.

Each case must end with exit status 2, ONE ``error:`` line naming the file (and the key or option),
no traceback, and no output left behind (an empty output folder at most, no ``.part`` file).
The files are generated here, small; the CLI runs in-process (``h2gnet.cli.main``).

To add a case: append ``Case(id, build)`` to ``CASES`` where ``build(c, tmp)`` writes what it needs
under ``tmp`` and returns ``(argv, [substrings the message must contain], output path)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import phantom_image, tumour_geojson, write_pyramid_tiff
from h2gnet.cli import _patch_config, build_parser, main

pytest.importorskip("onnx")
from tiny_models import tiny_patch_model, tiny_refiner

SLIDE_W, SLIDE_H, SLIDE_MPP = 1024, 768, 0.5


# -- the corpus's good files ------------------------------------------------------------------------
@dataclass(frozen=True)
class Corpus:
    """Good inputs the bad cases start from (read-only: cases write under their own ``tmp``)."""

    root: Path
    slide: Path
    geojson: Path
    manifest: Path
    patch_model: Path
    refiner: Path
    other_slide: Path

    def manifest_with(self, tmp: Path, header: str = "slide,annotation,grade,split", row: str | None = None,
                      name: str = "m.csv", text: str | None = None) -> Path:
        """A manifest in ``tmp`` (paths absolute) with ``row`` (default: the good slide)."""
        path = tmp / name
        if text is None:
            row = row if row is not None else f"{self.slide},{self.geojson},2,test"
            text = f"{header}\n{row}\n"
        path.write_text(text, encoding="utf-8")
        return path

    def training_manifest(self, tmp: Path) -> Path:
        """A manifest with an annotated train slide and an annotated val slide."""
        return self.manifest_with(tmp, text=f"slide,annotation,grade,split\n{self.slide},{self.geojson},2,train\n"
                                            f"{self.other_slide},{self.geojson},3,val\n")

    def annotated(self, tmp: Path, doc: object | str, extra: str = "") -> Path:
        """A one-slide manifest whose annotation is ``doc`` (JSON-dumped unless a str)."""
        ann = tmp / "ann.geojson"
        ann.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
        header = "slide,annotation,grade,split" + (",no_tumour" if extra else "")
        return self.manifest_with(tmp, header, f"{self.slide},{ann},2,test" + (f",{extra}" if extra else ""))

    def predictions(self, tmp: Path, slide: Path | None = None) -> Path:
        """A folder holding a valid prediction mask for the good slide (of ``slide``'s extent if given)."""
        from h2gnet.io.raster import Raster
        from h2gnet.io.slides import open_slide
        from h2gnet.outputs.mask_tiff import write_mask_tiff

        folder = tmp / "pred"
        with open_slide(slide or self.slide) as s:
            rows, cols = s.shape_at(8.0)
            write_mask_tiff(folder / f"{self.slide.stem}.mask.tiff",
                            Raster(np.ones((rows, cols), bool), 8.0, s.mpp), s.dimensions)
        return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("corpus")
    img, _ = phantom_image(SLIDE_W, SLIDE_H)
    slide = write_pyramid_tiff(root / "good.tiff", img, SLIDE_MPP, downsamples=(1, 4))
    other = write_pyramid_tiff(root / "other.tiff", phantom_image(2 * SLIDE_W, SLIDE_H, seed=1)[0], SLIDE_MPP,
                               downsamples=(1, 4))
    ann = tumour_geojson(root / "good.geojson", (SLIDE_W / 2, SLIDE_H / 2), SLIDE_H * 0.15)
    manifest = root / "manifest.csv"
    manifest.write_text("slide,annotation,grade,split\ngood.tiff,good.geojson,2,test\n")
    return Corpus(root, slide, ann, manifest, tiny_patch_model(root / "patch.onnx"), tiny_refiner(root / "refine.onnx"),
                  other)


Build = Callable[[Corpus, Path], tuple[list[str], list[str], Path]]


@dataclass(frozen=True)
class Case:
    id: str
    build: Build


def _seg(c: Corpus, tmp: Path, *extra: str, slide: Path | None = None) -> list[str]:
    return ["segment", str(slide or c.slide), "-o", str(tmp / "out"), *extra]


def huge_header_tiff(path: Path, side: int = 10**6, tile: int = 4096, mpp: float = 0.25) -> Path:
    """A ~0.5 MB tiled RGB TIFF whose header claims ``side``×``side`` px (every tile points at 1 byte)."""
    import struct

    n = (-(-side // tile)) ** 2
    off_counts = 8 + 4 * n
    off_bps = off_counts + 4 * n
    off_xres, off_yres = off_bps + 6, off_bps + 14
    off_tile = off_yres + 8
    ifd = off_tile + 16
    tags = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 3, off_bps), (259, 3, 1, 1), (262, 3, 1, 2),
            (277, 3, 1, 3), (282, 5, 1, off_xres), (283, 5, 1, off_yres), (284, 3, 1, 1), (296, 3, 1, 3),
            (322, 3, 1, tile), (323, 3, 1, tile), (324, 4, n, 8), (325, 4, n, off_counts)]
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd))
    out += struct.pack(f"<{n}I", *([off_tile] * n)) + struct.pack(f"<{n}I", *([1] * n))
    out += struct.pack("<3H", 8, 8, 8) + struct.pack("<II", round(1e4 / mpp), 1) * 2 + b"\x00" * 16
    out += struct.pack("<H", len(tags))
    for tag, typ, count, value in tags:
        packed = struct.pack("<HH", value, 0) if typ == 3 and count == 1 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    path.write_bytes(bytes(out + struct.pack("<I", 0)))
    return path


def truncated_copy(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _then(*_effects: object) -> None:
    """Marks the file-making steps at the start of a case (their values are ignored)."""


def _loop(tmp: Path) -> Path:
    loop = tmp / "loop.tiff"
    os.symlink(loop, loop)
    return loop


def _train_patch_argv(t: Path, *extra: str) -> list[str]:
    return ["train-patch", str(t / "m.csv"), "--index", str(t / "idx"), "-o", str(t / "out"), *extra]


def _seg_options(t: Path, *extra: str) -> list[str]:
    return ["segment", str(t / "s.tiff"), "-o", str(t / "out"), "--no-refine", "--patch-model", str(t / "p.onnx"),
            *extra]


def _toml(t: Path, text: str) -> Path:
    path = t / "study.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _file(path: Path) -> Path:
    path.write_text("not a folder")
    return path


def _option_cases(command: Callable[..., list[str]], option: str, values: list[str]) -> list[Case]:
    """``command`` with ``option`` set to each bad value: the error names the option and the value."""
    return [Case(f"{command.__name__.strip('_').removesuffix('_argv').removesuffix('_options')}{option}={v}",
                 lambda c, t, v=v: (command(t, option, v), [option, f"(got {v})"], t / "out")) for v in values]


_MPP = ["0", "nan", "inf", "-1", "1e6", "1e-6"]


CASES: list[Case] = [
    # -- tissue ----------------------------------------------------------------------------------
    Case("tissue-missing-slide", lambda c, t: (
        ["tissue", str(t / "nope.tiff"), "-o", str(t / "out" / "m.png")], ["nope.tiff", "no such file"], t / "out")),
    Case("tissue-garbage-slide", lambda c, t: (
        _then((t / "bad.tiff").write_bytes(b"\x00" * 64)),
        ["tissue", str(t / "bad.tiff"), "-o", str(t / "out" / "m.png")], ["bad.tiff"], t / "out")),
    Case("tissue-slide-is-folder", lambda c, t: (
        _then((t / "dir.tiff").mkdir()),
        ["tissue", str(t / "dir.tiff"), "-o", str(t / "out" / "m.png")], ["dir.tiff", "folder"], t / "out")),
    Case("tissue-no-mpp", lambda c, t: (
        ["tissue", str(write_pyramid_tiff(t / "nompp.tiff", phantom_image(256, 256)[0], None)),
         "-o", str(t / "out" / "m.png")], ["nompp.tiff", "--mpp"], t / "out")),
    Case("tissue-mpp-zero", lambda c, t: (
        ["tissue", str(c.slide), "--mpp", "0", "-o", str(t / "out" / "m.png")], ["--mpp", "µm/px"], t / "out")),
    Case("tissue-mpp-nan", lambda c, t: (
        ["tissue", str(c.slide), "--mpp", "nan", "-o", str(t / "out" / "m.png")], ["--mpp", "µm/px"], t / "out")),
    Case("tissue-bad-suffix", lambda c, t: (
        ["tissue", str(c.slide), "-o", str(t / "out" / "m.jpg")], ["m.jpg", ".png"], t / "out")),
    Case("tissue-blank-slide", lambda c, t: (
        ["tissue", str(write_pyramid_tiff(t / "blank.tiff", np.full((512, 512, 3), 250, np.uint8), 0.5)),
         "-o", str(t / "out" / "m.png")], ["blank.tiff", "no tissue"], t / "out")),
    Case("tissue-symlink-loop", lambda c, t: (
        ["tissue", str(_loop(t)), "-o", str(t / "out" / "m.png")], ["loop.tiff"], t / "out")),
    Case("tissue-huge-header", lambda c, t: (
        ["tissue", str(huge_header_tiff(t / "huge.tiff")), "-o", str(t / "out" / "m.png")],
        ["huge.tiff", "250 mm"], t / "out")),
    Case("tissue-mpp-100", lambda c, t: (
        ["tissue", str(c.slide), "--mpp", "100", "-o", str(t / "out" / "m.png")], ["good.tiff", "mm"], t / "out")),
    Case("tissue-canvas-over-limit", lambda c, t: (
        ["--max-canvas-gb", "1e-7", "tissue", str(c.slide), "-o", str(t / "out" / "m.png")],
        ["good.tiff", "GB limit"], t / "out")),
    Case("tissue-max-canvas-negative", lambda c, t: (
        ["--max-canvas-gb", "-1", "tissue", str(c.slide), "-o", str(t / "out" / "m.png")],
        ["--max-canvas-gb"], t / "out")),
    Case("tissue-output-is-a-folder", lambda c, t: (
        _then((t / "out" / "m.png").mkdir(parents=True)),
        ["tissue", str(c.slide), "-o", str(t / "out" / "m.png")], ["m.png", "folder"], t / "out" / "m.png")),
    Case("tissue-otsu-blank-slide", lambda c, t: (
        ["tissue", str(write_pyramid_tiff(t / "blank.tiff", np.full((512, 512, 3), 250, np.uint8), 0.5)),
         "--method", "otsu", "-o", str(t / "out" / "m.png")], ["blank.tiff", "no tissue"], t / "out")),
    Case("tissue-truncated-tiff", lambda c, t: (
        ["tissue", str(truncated_copy(c.slide, t / "cut.tiff")), "-o", str(t / "out" / "m.png")],
        ["cut.tiff", "truncated"], t / "out")),
    # -- patches ---------------------------------------------------------------------------------
    Case("patches-missing-manifest", lambda c, t: (
        ["patches", str(t / "none.csv"), "-o", str(t / "out")], ["none.csv", "no such manifest"], t / "out")),
    Case("patches-missing-column", lambda c, t: (
        ["patches", str(c.manifest_with(t, "slide,grade,split", f"{c.slide},2,test")), "-o", str(t / "out")],
        ["m.csv", "annotation"], t / "out")),
    Case("patches-grade-4", lambda c, t: (
        ["patches", str(c.manifest_with(t, row=f"{c.slide},{c.geojson},4,test")), "-o", str(t / "out")],
        ["m.csv", "grade"], t / "out")),
    Case("patches-split-bad", lambda c, t: (
        ["patches", str(c.manifest_with(t, row=f"{c.slide},{c.geojson},2,testing")), "-o", str(t / "out")],
        ["m.csv", "split"], t / "out")),
    Case("patches-mpp-not-number", lambda c, t: (
        ["patches", str(c.manifest_with(t, "slide,annotation,grade,split,mpp", f"{c.slide},{c.geojson},2,test,abc")),
         "-o", str(t / "out")], ["m.csv", "mpp"], t / "out")),
    Case("patches-listed-file-missing", lambda c, t: (
        ["patches", str(c.manifest_with(t, row=f"{t / 'gone.tiff'},,2,test")), "-o", str(t / "out")],
        ["m.csv", "gone.tiff"], t / "out")),
    Case("patches-duplicate-slide", lambda c, t: (
        ["patches", str(c.manifest_with(
            t, text=f"slide,annotation,grade,split\n{c.slide},,2,test\n{c.slide},,2,test\n")),
         "-o", str(t / "out")], ["m.csv", "more than once"], t / "out")),
    Case("patches-no-rows", lambda c, t: (
        ["patches", str(c.manifest_with(t, text="slide,annotation,grade,split\n")), "-o", str(t / "out")],
        ["m.csv", "no slides"], t / "out")),
    Case("patches-manifest-binary", lambda c, t: (
        _then((t / "m.csv").write_bytes(b"\xff\xfe\x00bad")),
        ["patches", str(t / "m.csv"), "-o", str(t / "out")], ["m.csv"], t / "out")),
    # -- segment ---------------------------------------------------------------------------------
    Case("segment-missing-slide-glob", lambda c, t: (
        _seg(c, t, "--no-refine", "--patch-model", str(c.patch_model), slide=t / "*.svs"),
        ["*.svs", "matches no file"], t / "out")),
    Case("segment-no-refine-choice", lambda c, t: (
        _seg(c, t, "--patch-model", str(c.patch_model)), ["--refine-model", "--no-refine"], t / "out")),
    Case("segment-no-refine-without-patch-model", lambda c, t: (
        _seg(c, t, "--no-refine"), ["--no-refine", "--patch-model"], t / "out")),
    Case("segment-patch-model-missing", lambda c, t: (
        _seg(c, t, "--no-refine", "--patch-model", str(t / "none.onnx")), ["none.onnx", "no such model"], t / "out")),
    Case("segment-patch-model-garbage", lambda c, t: (
        _then((t / "bad.onnx").write_bytes(b"garbage")),
        _seg(c, t, "--no-refine", "--patch-model", str(t / "bad.onnx")), ["bad.onnx", "ONNX"], t / "out")),
    Case("segment-models-swapped", lambda c, t: (
        _seg(c, t, "--patch-model", str(c.refiner), "--refine-model", str(c.patch_model)),
        ["refine.onnx", "patch-classifier"], t / "out")),
    Case("segment-duplicate-names", lambda c, t: (
        _then((t / "b").mkdir(), (t / "b" / "good.tiff").write_bytes(c.slide.read_bytes())),
        ["segment", str(c.slide), str(t / "b" / "good.tiff"), "-o", str(t / "out"), "--no-refine",
         "--patch-model", str(c.patch_model)], ["good"], t / "out")),
    Case("segment-output-is-a-file", lambda c, t: (
        _then((t / "out").write_text("x")),
        _seg(c, t, "--no-refine", "--patch-model", str(c.patch_model)), ["out", "not writable"], t / "nothing")),
    Case("segment-refiner-5-channels", lambda c, t: (
        _seg(c, t, "--patch-model", str(c.patch_model), "--refine-model",
             str(tiny_refiner(t / "r5.onnx", channels=5))), ["r5.onnx", "channels"], t / "out")),
    Case("segment-symlink-loop", lambda c, t: (
        _seg(c, t, "--no-refine", "--patch-model", str(c.patch_model), slide=_loop(t)),
        ["loop.tiff", "symlink loop"], t / "out")),
    Case("patches-symlink-loop", lambda c, t: (
        ["patches", str(c.manifest_with(t, row=f"{_loop(t)},,2,test")), "-o", str(t / "out")],
        ["m.csv", f"line 2: slide {t / 'loop.tiff'}: is a symlink loop"], t / "out")),
    Case("patches-annotation-symlink-loop", lambda c, t: (
        ["patches", str(c.manifest_with(t, row=f"{c.slide},{_loop(t)},2,test")), "-o", str(t / "out")],
        ["m.csv", f"line 2: annotation {t / 'loop.tiff'}: is a symlink loop"], t / "out")),
    Case("segment-patch-model-unused-by-unet-lr", lambda c, t: (
        _seg(c, t, "--patch-model", str(c.patch_model), "--refine-model",
             str(tiny_refiner(t / "r3.onnx", channels=3))), ["patch.onnx", "r3.onnx", "takes no heatmap"],
        t / "out")),
    Case("segment-heatmaps-folder-missing", lambda c, t: (
        _seg(c, t, "--no-refine", "--patch-model", str(c.patch_model), "--heatmaps", str(t / "nowhere")),
        [f"{t / 'nowhere'}: --heatmaps: no such folder"], t / "out")),
    # -- heatmap ---------------------------------------------------------------------------------
    Case("heatmap-missing-manifest", lambda c, t: (
        ["heatmap", str(t / "none.csv"), "-o", str(t / "out"), "--patch-model", str(c.patch_model)],
        ["none.csv"], t / "out")),
    Case("heatmap-model-is-refiner", lambda c, t: (
        ["heatmap", str(c.manifest), "-o", str(t / "out"), "--patch-model", str(c.refiner)],
        ["refine.onnx", "patch-classifier"], t / "out")),
    Case("heatmap-output-is-a-file", lambda c, t: (
        _then((t / "out").write_text("x")),
        ["heatmap", str(c.manifest), "-o", str(t / "out"), "--patch-model", str(c.patch_model)],
        ["out", "not writable"], t / "nothing")),
    # -- evaluate --------------------------------------------------------------------------------
    Case("evaluate-no-prediction", lambda c, t: (
        ["evaluate", str(c.manifest), "--predictions", str(t / "pred"), "-o", str(t / "out")],
        ["pred", "no prediction"], t / "out")),
    Case("evaluate-no-annotated-slide", lambda c, t: (
        ["evaluate", str(c.manifest_with(t, row=f"{c.slide},,2,test")), "--predictions", str(t / "pred"),
         "-o", str(t / "out")], ["no annotated"], t / "out")),
    Case("evaluate-mask-garbage", lambda c, t: (
        _then((t / "pred").mkdir(), (t / "pred" / "good.mask.tiff").write_bytes(b"II*\x00bad")),
        ["evaluate", str(c.manifest), "--predictions", str(t / "pred"), "-o", str(t / "out")],
        ["good.mask.tiff"], t / "out")),
    Case("evaluate-geojson-invalid-json", lambda c, t: (
        ["evaluate", str(c.annotated(t, "{not json")), "--predictions", str(c.predictions(t)),
         "-o", str(t / "out")], ["ann.geojson", "JSON"], t / "out")),
    Case("evaluate-geojson-outside-slide", lambda c, t: (
        ["evaluate", str(c.annotated(t, {"type": "Polygon", "coordinates": [[[0, 0], [9e5, 0], [9e5, 9e5], [0, 0]]]})),
         "--predictions", str(c.predictions(t)), "-o", str(t / "out")], ["ann.geojson", "outside"], t / "out")),
    Case("evaluate-geojson-ring-not-numbers", lambda c, t: (
        ["evaluate", str(c.annotated(t, {"type": "Polygon", "coordinates": [[["a", "b"], [1, 2], [3, 4]]]})),
         "--predictions", str(c.predictions(t)), "-o", str(t / "out")], ["ann.geojson", "ring"], t / "out")),
    Case("evaluate-mask-of-another-slide", lambda c, t: (
        ["evaluate", str(c.manifest), "--predictions", str(c.predictions(t, slide=c.other_slide)),
         "-o", str(t / "out")], ["good.mask.tiff", "another slide"], t / "out")),
    *[Case(f"evaluate-geojson-{name}", lambda c, t, doc=doc, key=key: (
        ["evaluate", str(c.annotated(t, doc)), "--predictions", str(c.predictions(t)), "-o", str(t / "out")],
        ["ann.geojson", key], t / "out")) for name, doc, key in [
        ("hello-world", {"hello": "world"}, "type None"),
        ("features-not-list", {"type": "FeatureCollection", "features": 5}, "'features'"),
        ("feature-not-object", {"type": "FeatureCollection", "features": [5]}, "features[0]"),
        ("geometry-not-object", {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": "abc", "properties": {}}]}, "features[0].geometry"),
        ("coordinates-not-list", {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": 5}},
         "'coordinates'"),
        ("multipolygon-not-rings", {"type": "MultiPolygon", "coordinates": [5]}, "coordinates[0]"),
        ("unknown-geometry", {"type": "Feature", "geometry": {"type": "Circle", "coordinates": []}}, "'Circle'"),
        ("geometries-not-list", {"type": "GeometryCollection", "geometries": {}}, "'geometries'"),
        ("deep-nesting", "[" * 100000 + "]" * 100000, "nested"),
        ("deep-collections", {"type": "Feature", "geometry": json.loads(
            '{"type":"GeometryCollection","geometries":[' * 40 + ']}' * 40)}, "nested"),
        ("points-only", {"type": "Point", "coordinates": [1, 2]}, "no valid tumour polygon"),
        ("empty-collection", {"type": "FeatureCollection", "features": []}, "tumour_free"),
        ("two-point-ring", {"type": "Polygon", "coordinates": [[[0, 0], [5, 5]]]}, "no valid tumour polygon"),
        ("nan-coordinates", '{"type": "Polygon", "coordinates": [[[0, 0], [NaN, 5], [5, 0], [0, 0]]]}',
         "non-finite"),
        ("bool-coordinates", {"type": "Polygon", "coordinates": [[[True, 0], [5, 5], [5, 0]]]}, "ring 0"),
        ("top-level-number", "5", "not a GeoJSON object"),
    ]],
    Case("evaluate-geojson-not-utf8", lambda c, t: (
        _then((t / "ann.geojson").write_bytes(b"\xff\xfe\xfa")),
        ["evaluate", str(c.manifest_with(t, row=f"{c.slide},{t / 'ann.geojson'},2,test")),
         "--predictions", str(c.predictions(t)), "-o", str(t / "out")], ["ann.geojson", "cannot be read"], t / "out")),
    Case("evaluate-tumour-free-but-polygons", lambda c, t: (
        ["evaluate", str(c.manifest_with(t, "slide,annotation,grade,split,tumour_free",
                                         f"{c.slide},{c.geojson},2,test,yes")),
         "--predictions", str(c.predictions(t)), "-o", str(t / "out")], ["good.geojson", "tumour_free"], t / "out")),
    Case("evaluate-annotation-is-folder", lambda c, t: (
        _then((t / "dir.geojson").mkdir()),
        ["evaluate", str(c.manifest_with(t, row=f"{c.slide},{t / 'dir.geojson'},2,test")),
         "--predictions", str(c.predictions(t)), "-o", str(t / "out")], ["dir.geojson", "folder"], t / "out")),
    # -- manifest values ---------------------------------------------------------------------------
    *[Case(f"manifest-{name}", lambda c, t, header=header, row=row, key=key: (
        ["patches", str(c.manifest_with(t, header, row.format(s=c.slide, a=c.geojson))), "-o", str(t / "out")],
        ["m.csv", key], t / "out")) for name, header, row, key in [
        ("grade-2.7", "slide,annotation,grade,split", "{s},{a},2.7,test", "grade"),
        ("grade-nan", "slide,annotation,grade,split", "{s},{a},nan,test", "grade"),
        ("downsample-0", "slide,annotation,grade,split,annotation_downsample", "{s},{a},2,test,0",
         "annotation_downsample"),
        ("downsample-negative", "slide,annotation,grade,split,annotation_downsample", "{s},{a},2,test,-4",
         "annotation_downsample"),
        ("downsample-nan", "slide,annotation,grade,split,annotation_downsample", "{s},{a},2,test,nan",
         "annotation_downsample"),
        ("mpp-zero", "slide,annotation,grade,split,mpp", "{s},{a},2,test,0", "mpp"),
        ("mpp-inf", "slide,annotation,grade,split,mpp", "{s},{a},2,test,inf", "mpp"),
        ("tumour-free-maybe", "slide,annotation,grade,split,tumour_free", "{s},{a},2,test,maybe", "tumour_free"),
    ]],
    # -- models ----------------------------------------------------------------------------------
    *[Case(f"segment-model-mpp-{label}", lambda c, t, value=value: (
        _seg(c, t, "--no-refine", "--patch-model", str(tiny_patch_model(t / "p.onnx", metadata={"mpp": value}))),
        ["p.onnx", "'mpp'"], t / "out")) for label, value in [("0", "0"), ("-1", "-1"), ("nan", "nan"),
                                                              ("abc", "abc")]],
    Case("segment-model-one-column", lambda c, t: (
        _seg(c, t, "--no-refine", "--patch-model", str(tiny_patch_model(t / "p.onnx", columns=1))),
        ["p.onnx", "classes >= 2"], t / "out")),
    Case("segment-refiner-one-class", lambda c, t: (
        _seg(c, t, "--patch-model", str(c.patch_model), "--refine-model", str(tiny_refiner(t / "r.onnx", classes=1))),
        ["r.onnx", "classes >= 2"], t / "out")),
    Case("heatmap-model-one-column", lambda c, t: (
        ["heatmap", str(c.manifest), "-o", str(t / "out"), "--patch-model",
         str(tiny_patch_model(t / "p.onnx", columns=1))], ["p.onnx", "classes >= 2"], t / "out")),
    # -- training and the other commands ------------------------------------------------------
    Case("train-patch-missing-manifest", lambda c, t: (
        ["train-patch", str(t / "none.csv"), "--index", str(t / "idx"), "-o", str(t / "out")], ["none.csv"],
        t / "out")),
    Case("train-refine-missing-manifest", lambda c, t: (
        ["train-refine", str(t / "none.csv"), "-o", str(t / "out")], ["none.csv"], t / "out")),
    Case("cluster-missing-manifest", lambda c, t: (
        ["cluster", str(t / "none.csv"), "--index", str(t / "idx"), "-o", str(t / "out")], ["none.csv"], t / "out")),
    Case("quantize-missing-model", lambda c, t: (
        ["quantize", str(t / "none.onnx"), str(c.manifest), "--index", str(t / "idx"), "-o", str(t / "out" / "q.onnx")],
        ["none.onnx"], t / "out")),
    Case("train-patch-index-missing", lambda c, t: (
        ["train-patch", str(c.training_manifest(t)), "--index", str(t / "idx"), "-o", str(t / "out")], ["idx"],
        t / "out")),
    Case("train-refine-heatmaps-missing", lambda c, t: (
        ["train-refine", str(c.training_manifest(t)), "--heatmaps", str(t / "heat"), "-o", str(t / "out")], ["heat"],
        t / "out")),
    Case("cluster-index-missing", lambda c, t: (
        ["cluster", str(c.training_manifest(t)), "--index", str(t / "idx"), "-o", str(t / "out")], ["idx"],
        t / "out")),
    Case("quantize-model-garbage", lambda c, t: (
        _then((t / "bad.onnx").write_bytes(b"\x08\x01garbage")),
        ["quantize", str(t / "bad.onnx"), str(c.manifest), "--index", str(t / "idx"),
         "-o", str(t / "out" / "q.onnx")],
        ["bad.onnx", "ONNX"], t / "out")),
    Case("quantize-model-is-refiner", lambda c, t: (
        ["quantize", str(c.refiner), str(c.manifest), "--index", str(t / "idx"), "-o", str(t / "out" / "q.onnx")],
        ["refine.onnx"], t / "out")),
    Case("synth-output-is-a-file", lambda c, t: (
        _then((t / "afile").write_text("x")),
        ["synth", str(t / "afile"), "--slides", "2"], ["afile"], t / "nothing")),
    Case("ablation-config-missing", lambda c, t: (
        ["ablation", "-o", str(t / "out"), "--config", str(t / "none.toml")], ["none.toml"], t / "out")),
    Case("export-fast-missing-run", lambda c, t: (
        ["export-fast", str(t / "norun"), "-o", str(t / "out")], ["norun"], t / "out")),
    # -- options: every numeric option is checked by its parameter's one rule (h2gnet.params) before any
    # work; the message names the option and the accepted values ------------------------------------------
    # -- train-patch: every numeric option, before the manifest is even read ----------------------
    *_option_cases(_train_patch_argv, "--batch-size", ["0", "-5", "abc"]),
    *_option_cases(_train_patch_argv, "--lr", ["-1", "0", "nan", "inf"]),
    *_option_cases(_train_patch_argv, "--workers", ["-1"]),
    *_option_cases(_train_patch_argv, "--epochs", ["0", "2.5"]),
    *_option_cases(_train_patch_argv, "--input-size", ["7", "0"]),
    *_option_cases(_train_patch_argv, "--steps", ["0"]),
    *_option_cases(_train_patch_argv, "--val-steps", ["-1"]),
    *_option_cases(_train_patch_argv, "--threads", ["0"]),
    *_option_cases(_train_patch_argv, "--seed", ["-3"]),
    Case("train-patch-inception-too-small", lambda c, t: (
        _train_patch_argv(t, "--arch", "inceptionv3", "--input-size", "64"), ["--input-size", "at least 75"],
        t / "out")),
    Case("train-patch-output-is-a-file", lambda c, t: (
        [*_train_patch_argv(t)[:5], str(_file(t / "run.txt")), *_train_patch_argv(t)[6:]], ["run.txt", "is a file"],
        t / "out")),
    Case("train-refine-output-is-a-file", lambda c, t: (
        ["train-refine", str(t / "m.csv"), "-o", str(_file(t / "run.txt"))], ["run.txt", "is a file"], t / "out")),
    Case("cluster-output-is-a-file", lambda c, t: (
        ["cluster", str(t / "m.csv"), "--index", str(t / "idx"), "-o", str(_file(t / "c.txt"))],
        ["c.txt", "is a file"], t / "out")),
    # -- train-refine, cluster, quantize ------------------------------------------------------------
    Case("train-refine-input-size-not-multiple", lambda c, t: (
        ["train-refine", str(t / "m.csv"), "-o", str(t / "out"), "--input-size", "100"],
        ["--input-size", "multiples of"], t / "out")),
    *[Case(f"train-refine{o}={v}", lambda c, t, o=o, v=v: (
        ["train-refine", str(t / "m.csv"), "-o", str(t / "out"), o, v], [o, f"(got {v})"], t / "out"))
      for o, v in [("--accumulation", "0"), ("--patience", "0"), ("--lr", "2"), ("--batch-size", "-1"),
                   ("--epochs", "-2"), ("--input-size", "7")]],
    *[Case(f"cluster{o}={v}", lambda c, t, o=o, v=v: (
        ["cluster", str(t / "m.csv"), "--index", str(t / "idx"), "-o", str(t / "out"), o, v], [o, f"(got {v})"],
        t / "out")) for o, v in [("-k", "1"), ("--variance", "0"), ("--variance", "1.5"), ("--batches", "0"),
                                 ("--workers", "-1"), ("--input-size", "7")]],
    *[Case(f"quantize{o}={v}", lambda c, t, o=o, v=v: (
        ["quantize", str(t / "p.onnx"), str(t / "m.csv"), "--index", str(t / "idx"), "-o", str(t / "out" / "q.onnx"),
         o, v], [o], t / "out")) for o, v in [("--patches", "0"), ("--calibration", "median")]],
    # -- inference -----------------------------------------------------------------------------------
    *_option_cases(_seg_options, "--batch-size", ["0", "-5"]),
    *_option_cases(_seg_options, "--readers", ["0"]),
    *_option_cases(_seg_options, "--threads", ["0", "-2"]),
    *_option_cases(_seg_options, "--mpp", _MPP),
    Case("segment-device-unknown", lambda c, t: (_seg_options(t, "--device", "tpu"), ["--device", "tpu"], t / "out")),
    Case("segment-adaptive-check-unknown", lambda c, t: (_seg_options(t, "--adaptive", "--check", "max"),
                                                         ["--check", "max"], t / "out")),
    Case("segment-adaptive-radius-zero", lambda c, t: (_seg_options(t, "--adaptive", "--radius", "0"),
                                                       ["--radius", "(got 0)"], t / "out")),
    Case("train-refine-lr-schedule-unknown", lambda c, t: (
        ["train-refine", str(t / "m.csv"), "-o", str(t / "out"), "--lr-schedule", "step"], ["--lr-schedule", "step"],
        t / "out")),
    *[Case(f"heatmap{o}={v}", lambda c, t, o=o, v=v: (
        ["heatmap", str(t / "m.csv"), "-o", str(t / "out"), "--patch-model", str(t / "p.onnx"), o, v],
        [o, f"(got {v})"], t / "out"))
      for o, v in [("--batch-size", "0"), ("--batch-size", "-5"), ("--readers", "-1")]],
    *[Case(f"segment{o}={v}", lambda c, t, o=o, v=v: (_seg_options(t, o, v), [o, f"(got {v})"], t / "out"))
      for o, v in [("--workers", "-1"), ("--retries", "-1"), ("--connect-timeout", "0"),
                   ("--connect-timeout", "nan")]],
    Case("segment-workers-and-scheduler", lambda c, t: (
        _seg_options(t, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"), ["--workers", "--scheduler"],
        t / "out")),
    # -- evaluate, tissue, patches, synth --------------------------------------------------------------
    *[Case(f"evaluate--mpp={v}", lambda c, t, v=v: (
        ["evaluate", str(t / "m.csv"), "--predictions", str(t / "pred"), "-o", str(t / "out"), "--mpp", v],
        ["--mpp", "µm/px", f"(got {v})"], t / "out")) for v in _MPP],
    *[Case(f"tissue--mpp={v}", lambda c, t, v=v: (
        ["tissue", str(t / "s.tiff"), "-o", str(t / "out" / "m.png"), "--mpp", v], ["--mpp", "µm/px"], t / "out"))
      for v in ("-1", "nan")],
    *[Case(f"patches{o}={v}", lambda c, t, o=o, v=v: (
        ["patches", str(t / "m.csv"), "-o", str(t / "out"), o, v], [o, f"(got {v})"], t / "out"))
      for o, v in [("--patch-size", "7"), ("--patch-size", "1e9"), ("--patch-mpp", "0"), ("--patch-mpp", "nan")]],
    *[Case(f"synth{o}={v}", lambda c, t, o=o, v=v: (
        ["synth", str(t / "out"), o, v], [o, f"(got {v})"], t / "out"))
      for o, v in [("--slides", "0"), ("--slides", "-3"), ("--width", "10"), ("--mpp", "9"), ("--mpp", "0"),
                   ("--val-fraction", "1.5"), ("--test-fraction", "-0.1")]],
    Case("synth-unknown-stain-set", lambda c, t: (
        ["synth", str(t / "out"), "--stain-set", "purple"], ["--stain-set", "purple", "alternative"], t / "out")),
    Case("synth-fractions-leave-no-training", lambda c, t: (
        ["synth", str(t / "out"), "--val-fraction", "0.6", "--test-fraction", "0.5"],
        ["--test-fraction", "leave training slides"], t / "out")),
    *[Case(f"export-fast--tissue-threshold={v}", lambda c, t, v=v: (
        ["export-fast", str(t / "run"), "-o", str(t / "out"), "--tissue-threshold", v], ["--tissue-threshold"],
        t / "out")) for v in ("-1", "500", "abc")],
    # -- study configs (ablation / demo): one rule per key, misspelt keys named ---------------------------
    Case("ablation-misspelt-key", lambda c, t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, "[patch]\nbatch_sise = 8\n"))],
        ["study.toml", "[patch]", "'batch_sise'"], t / "out")),
    Case("ablation-unknown-section", lambda c, t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, "[pach]\nlr = 0.1\n"))],
        ["study.toml", "'pach'"], t / "out")),
    Case("ablation-bad-value", lambda c, t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, "[refine]\nlr = -1\n"))],
        ["study.toml", "[refine] lr", "(got -1)"], t / "out")),
    Case("ablation-inception-too-small", lambda c, t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, "[inception]\ninput_size = 64\n"))],
        ["study.toml", "[inception] input_size", "at least 75"], t / "out")),
    Case("ablation-unknown-design", lambda c, t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, 'designs = ["mob-pw", "mob-pv"]\n'))],
        ["study.toml", "mob-pv"], t / "out")),
    Case("ablation-cohort-no-slides", lambda c, t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, "[cohort]\nslides = 0\n"))],
        ["study.toml", "[cohort] slides"], t / "out")),
    Case("ablation-cohort-stain-set", lambda c, t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, '[cohort]\nstain_set = "purple"\n'))],
        ["study.toml", "[cohort] stain_set", "alternative", "(got 'purple')"], t / "out")),
    Case("ablation-evaluate-mpp", lambda c, t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, "[evaluate]\nmpp = 0\n"))],
        ["study.toml", "[evaluate] mpp", "µm/px"], t / "out")),
    Case("ablation-section-not-table", lambda c, t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, "patch = 3\n"))],
        ["study.toml", "[patch]"], t / "out")),
    Case("demo-output-is-a-file", lambda c, t: (
        ["demo", str(_file(t / "demo.txt"))], ["demo.txt", "study folder"], t / "out")),
    Case("demo-config-not-toml", lambda c, t: (
        ["demo", str(t / "out"), "--config", str(_toml(t, "[patch\n"))], ["study.toml", "not valid TOML"], t / "out")),
    Case("demo-config-missing", lambda c, t: (
        ["demo", str(t / "out"), "--config", str(t / "none.toml")], ["none.toml", "no such config"], t / "out")),
    # -- view (each refused before anything listens) -------------------------------------------------------
    Case("view-missing-folder", lambda c, t: (
        ["view", str(t / "nope")], ["nope", "no such results folder"], t / "out")),
    Case("view-not-a-results-folder", lambda c, t: (
        _then((t / "empty").mkdir()), ["view", str(t / "empty")], ["empty", "not an output folder"], t / "out")),
    Case("view-port-out-of-range", lambda c, t: (
        ["view", str(t), "--port", "70000"], ["--port", "65535"], t / "out")),
    Case("view-cache-zero", lambda c, t: (
        ["view", str(t), "--cache-mb", "0"], ["--cache-mb"], t / "out")),
    Case("view-slides-missing", lambda c, t: (
        _then((t / "status.csv").write_text("slide,status,seconds,error\na.tiff,failed,0,x\n")),
        ["view", str(t), "--slides", str(t / "none.csv")], ["none.csv", "no such slide folder or manifest"],
        t / "out")),
    Case("view-slides-bad-manifest", lambda c, t: (
        _then((t / "status.csv").write_text("slide,status,seconds,error\na.tiff,failed,0,x\n")),
        ["view", str(t), "--slides", str(c.manifest_with(t, header="slide,grade"))], ["m.csv", "missing column"],
        t / "out")),
    Case("view-evaluation-without-table", lambda c, t: (
        _then((t / "status.csv").write_text("slide,status,seconds,error\na.tiff,failed,0,x\n"), (t / "ev").mkdir()),
        ["view", str(t), "--evaluation", str(t / "ev")], ["ev", "slides.csv"], t / "out")),
]


def _no_output_left(out: Path, tmp: Path) -> None:
    if out.exists():
        assert out.is_dir() and not any(out.iterdir()), f"output left in {out}: {sorted(out.iterdir())}"
    assert not [p for p in tmp.rglob("*") if ".part" in p.name], "temporary files left behind"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_error(case: Case, corpus: Corpus, tmp_path: Path, capsys) -> None:
    built = case.build(corpus, tmp_path)
    argv, wanted, out = built[-3:]  # a case may start with _then(file-making steps)
    capsys.readouterr()
    code = main(["-q", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in wanted:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    _no_output_left(out, tmp_path)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60


def test_geojson_and_manifest_with_byte_order_mark_are_read(corpus: Corpus, tmp_path: Path) -> None:
    ann = tmp_path / "bom.geojson"
    ann.write_bytes(b"\xef\xbb\xbf" + corpus.geojson.read_bytes())
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + f"slide,annotation,grade,split\n{corpus.slide},{ann},2,test\n".encode())
    assert main(["-q", "evaluate", str(manifest), "--predictions", str(corpus.predictions(tmp_path)),
                 "-o", str(tmp_path / "out")]) == 0


def test_tumour_free_slide_with_empty_annotation_is_evaluated(corpus: Corpus, tmp_path: Path) -> None:
    ann = tmp_path / "empty.geojson"
    ann.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    manifest = corpus.manifest_with(tmp_path, "slide,annotation,grade,split,tumour_free",
                                    f"{corpus.slide},{ann},,test,yes")
    assert main(["-q", "evaluate", str(manifest), "--predictions", str(corpus.predictions(tmp_path)),
                 "-o", str(tmp_path / "out")]) == 0


# -- run folders ------------------------------------------------------------------------------------
def _resumable_run(t: Path, argv: list[str]) -> Path:
    """A run folder whose config.json is exactly what ``argv`` asks for, with a last checkpoint."""
    torch = pytest.importorskip("torch")
    from h2gnet import __version__
    from h2gnet.train.run_state import save_checkpoint

    run = t / "out"
    run.mkdir()
    cfg = _patch_config(build_parser().parse_args(argv))
    (run / "config.json").write_text(json.dumps({**asdict(cfg), "h2gnet_version": __version__}, default=str))
    save_checkpoint(run / "checkpoint_last.pt", {"model": {"w": torch.zeros(1)}, "optimizer": {}, "epoch": 1,
                                                 "best_val_loss": 1.0})
    return run


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_train_patch_refuses_a_planted_malicious_checkpoint(tmp_path: Path, capsys) -> None:
    torch = pytest.importorskip("torch")
    argv = _train_patch_argv(tmp_path)
    run = _resumable_run(tmp_path, argv)
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker), "epoch": 1}, run / "checkpoint_last.pt")
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint_last.pt" in err and "never runs code" in err, err
    assert not marker.exists()


def test_train_patch_corrupt_config_json_is_a_clear_error(tmp_path: Path, capsys) -> None:
    argv = _train_patch_argv(tmp_path)
    run = _resumable_run(tmp_path, argv)
    (run / "config.json").write_text('{"lr": 0.1,')
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json" in err and "not valid JSON" in err, err


@pytest.mark.slow  # builds the mini cohort and its patch index
def test_a_failed_train_patch_start_leaves_nothing_that_blocks_the_rerun(mini_cohort: Path, tmp_path: Path,
                                                                        capsys) -> None:
    pytest.importorskip("torch")
    run = tmp_path / "run"
    bad = ["train-patch", str(mini_cohort / "manifest.csv"), "--index", str(tmp_path / "no-index"), "-o", str(run),
           "--input-size", "64", "--workers", "0"]
    assert main(["-q", *bad]) == 2
    assert not run.exists() or not any(run.iterdir())
    from h2gnet.train.run_state import TrainingRun  # the corrected settings are accepted in the same folder

    fixed = _patch_config(build_parser().parse_args([*bad[:2], "--index", str(mini_cohort / "index"), *bad[4:]]))
    TrainingRun(run, fixed)
