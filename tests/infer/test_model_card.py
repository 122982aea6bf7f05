"""Model cards: validation with errors naming the file and key, card/graph mismatches, stand-ins of the
published models (NHWC, x/255, Keras-like names, a two-input refiner) giving h2gnet's native masks, the
h2gnet-2022 preset on real slides, and `h2gnet fetch-models`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import real_slide
from h2gnet.cli import main
from h2gnet.errors import H2GNetError
from h2gnet.infer.model_card import (
    ModelCard,
    TissueRule,
    card_from_dict,
    card_from_metadata,
    load_card,
    load_preset,
    preset_names,
)

PRESET = "h2gnet-2022"


def _preset_doc(kind: str) -> dict:
    from importlib import resources

    doc = json.loads((resources.files("h2gnet.infer") / "presets" / f"{PRESET}.json").read_text())
    return copy.deepcopy(doc["cards"][kind])


# -- the card as data ------------------------------------------------------------------------------
def test_preset_holds_the_published_conventions() -> None:
    assert PRESET in preset_names()
    preset = load_preset(PRESET)
    patch, refiner = preset.cards["patch-classifier"], preset.cards["refiner"]
    assert (patch.input_size, patch.mpp, patch.layout, patch.output, patch.tumour_class) == (256, 1.0, "auto",
                                                                                            "softmax", 1)
    assert patch.scale == pytest.approx(1 / 255) and patch.mean is None and patch.unclassified_value == 0.0
    # FAST 4.18's rules (see tests/fast/test_fast_rules.py): >= 50 % tissue as FAST's resized mask estimates it
    assert patch.tissue == TissueRule("rgb-distance", 85, 9, 9, 0.5, True, "fast-resize")
    assert (refiner.refiner_inputs, refiner.input_order, refiner.input_size, refiner.image_source,
            refiner.image_normalisation, refiner.resize, refiner.threshold) == (
        "separate", "alphabetical", 1024, "smallest-level", "minmax", "stretch", 0.5)
    assert preset.files == {"patch-classifier": "pw_tumour_mobilenetv2_model.onnx",
                            "refiner": "unet_tumour_refinement_model_fix-opset9.onnx"}
    assert preset.datahub["model_item"] == "breast-tumour-segmentation-model"
    # h2gnet's own exports: the card comes from the ONNX metadata
    own = card_from_metadata({"h2gnet_kind": "patch-classifier", "input_size": "64", "mpp": "4.0",
                              "classes": "non-tumour,tumour"}, "patch-classifier")
    assert (own.layout, own.input_size, own.mpp, own.tumour_class, own.tissue, own.native) == (
        "NCHW", 64, 4.0, 1, None, True)


@pytest.mark.parametrize("edit,key", [
    (lambda d: d.update(colour="red"), "'colour'"),
    (lambda d: d["tissue"].update(radius=3), "'tissue.radius'"),
    (lambda d: d["input"].update(order=[0]), "'input.order'"),
    (lambda d: d.pop("spec_version"), "'spec_version'"),
    (lambda d: d.update(spec_version=2), "'spec_version'"),
    (lambda d: d.update(kind="segmenter"), "'kind'"),
    (lambda d: d.update(output="probabilities"), "'output'"),
    (lambda d: d["input"].update(layout="HWC"), "'input.layout'"),
    (lambda d: d.update(patch_size_pixels="256"), "'patch_size_pixels'"),
    (lambda d: d.pop("spacing_um_px"), "'spacing_um_px'"),
    (lambda d: d["tissue"].update(min_fraction=1.5), "'tissue.min_fraction'"),
    (lambda d: d["tissue"].update(method="otsu"), "'tissue.method'"),
    (lambda d: d["tissue"].update(fraction="centre"), "'tissue.fraction'"),
    (lambda d: d["input"].update(order="graph"), "'input.order'"),
    (lambda d: d["transform"].append({"name": "Resize", "arguments": {}}), "'transform[1].name'"),
    (lambda d: d["transform"][0]["arguments"].update(offset=1), "'transform[0].arguments.offset'"),
    (lambda d: d.update(tumour_class=2), "'tumour_class'"),
    (lambda d: d.update(refiner={"resize": "stretch"}), "'refiner'"),
])
def test_bad_cards_name_the_file_and_the_key(edit, key: str, tmp_path: Path) -> None:
    doc = _preset_doc("patch-classifier")
    edit(doc)
    path = tmp_path / "model.card.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(H2GNetError) as info:
        load_card(path)
    message = str(info.value)
    assert message.startswith(str(path)) and key in message and "\n" not in message


def test_card_files_and_values() -> None:
    doc = _preset_doc("refiner")
    doc["refiner"]["resize"] = "keep-aspect"
    card = card_from_dict(doc, "x.card.json")
    assert card.resize == "keep-aspect" and card.origin == "x.card.json"
    bad = _preset_doc("refiner")
    bad["tissue"] = {"method": "rgb-distance"}
    with pytest.raises(H2GNetError, match="'tissue': is for patch classifiers"):
        card_from_dict(bad, "r.card.json")
    with pytest.raises(H2GNetError, match="unknown model preset 'h2gnet-2099'"):
        load_preset("h2gnet-2099")
    with pytest.raises(H2GNetError, match="'transform'"):
        ModelCard("patch-classifier", mpp=1.0, std=(1.0, 0.0, 1.0), mean=(0.0, 0.0, 0.0))


def test_card_json_errors(tmp_path: Path) -> None:
    broken = tmp_path / "a.card.json"
    broken.write_text("{ not json")
    with pytest.raises(H2GNetError, match=r"a.card.json: is not valid JSON \(line 1"):
        load_card(broken)
    with pytest.raises(H2GNetError, match="no such model card"):
        load_card(tmp_path / "missing.card.json")


# -- foreign graphs -----------------------------------------------------------------------------------
def _tiny_nhwc_classifier(path: Path, size: int = 32, classes: int = 2, nhwc: bool = True) -> Path:
    """A foreign ONNX classifier: mean colour → linear → softmax, NHWC (or NCHW), no h2gnet metadata."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    shape = ["N", size, size, 3] if nhwc else ["N", 3, size, size]
    axes = [1, 2] if nhwc else [2, 3]
    w = np.linspace(-3, 3, 3 * classes, dtype=np.float32).reshape(3, classes)
    g = helper.make_graph([
        helper.make_node("ReduceMean", ["input_1"], ["m"], axes=axes, keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["z"]),
        helper.make_node("Softmax", ["z"], ["dense_1"], axis=1)], "tiny",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("dense_1", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_graph_mismatches_are_named_before_any_slide(tmp_path: Path, tiny_slide, capsys) -> None:
    from h2gnet.infer.runtime import OnnxModel

    slide, _, _ = tiny_slide
    model = _tiny_nhwc_classifier(tmp_path / "clf.onnx")
    with pytest.raises(H2GNetError, match="without a model card: put clf.card.json beside it"):
        OnnxModel(model, "patch-classifier")
    with pytest.raises(H2GNetError, match="'patch_size_pixels': 256 px, but the graph takes 32 px"):
        OnnxModel(model, "patch-classifier", preset=PRESET)
    card = _preset_doc("patch-classifier")
    card["patch_size_pixels"] = 32
    card_path = tmp_path / "clf.card.json"
    for edit, key in [(lambda d: d["input"].update(layout="NCHW"), "'input.layout': NCHW"),
                      (lambda d: d.update(class_names=["a", "b", "c"]), "'class_names': 3 output channel"),
                      (lambda d: d.update(kind="refiner"), "'kind'")]:
        doc = copy.deepcopy(card)
        edit(doc)
        if doc["kind"] == "refiner":
            for k in ("tissue", "patch_size_pixels", "spacing_um_px", "transform"):
                doc.pop(k)
        card_path.write_text(json.dumps(doc))
        out = tmp_path / "out"
        assert main(["-q", "segment", str(slide), "--patch-model", str(model), "--no-refine", "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert key in err and err.count("\n") == 1 and err.startswith("error: "), err
        assert not out.exists() or not any(out.iterdir())
    # the card fits: the model runs; NHWC and x/255 read from the card and the graph
    card_path.write_text(json.dumps(card))
    m = OnnxModel(model, "patch-classifier")
    assert (m.card.layout, m.input_size, m.in_channels, m.mpp) == ("NHWC", 32, 3, 1.0)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    mean = x.mean(axis=(2, 3))
    w = np.linspace(-3, 3, 6, dtype=np.float32).reshape(3, 2)
    z = mean @ w
    want = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(m(x), want, rtol=1e-5)


def test_logits_and_normalisation_are_applied(tmp_path: Path) -> None:
    from h2gnet.infer.runtime import OnnxModel

    model = _tiny_nhwc_classifier(tmp_path / "nchw.onnx", nhwc=False)
    doc = _preset_doc("patch-classifier")
    doc.update(patch_size_pixels=32, output="logits",
               transform=[{"name": "Normalize", "arguments": {"mean": [10.0, 20.0, 30.0], "std": [2.0, 4.0, 5.0]}}])
    (tmp_path / "nchw.card.json").write_text(json.dumps(doc))
    m = OnnxModel(model, "patch-classifier")
    assert m.card.layout == "NCHW"
    x = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    fed = (x * 255 - np.array([10, 20, 30], np.float32)[None, :, None, None]) / np.array(
        [2, 4, 5], np.float32)[None, :, None, None]
    z = fed.mean(axis=(2, 3)) @ np.linspace(-3, 3, 6, dtype=np.float32).reshape(3, 2)
    p = np.exp(z - z.max(1, keepdims=True))  # the graph's softmax output is read as logits, then softmaxed
    p = p / p.sum(1, keepdims=True)
    e = np.exp(p - p.max(1, keepdims=True))
    np.testing.assert_allclose(m(x), e / e.sum(1, keepdims=True), rtol=1e-4)


# -- stand-ins built from h2gnet's own models ----------------------------------------------------------
@pytest.fixture(scope="module")
def native_refiner(tmp_path_factory) -> Path:
    """An h2gnet-exported 4-channel U-Net (64 px; BatchNorm calibrated), the refiner of the native run."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from h2gnet.train.export import export_refiner_onnx
    from h2gnet.train.models.common import calibrate_batchnorm
    from h2gnet.train.models.unets import build_refiner

    out = tmp_path_factory.mktemp("native-refiner") / "model.onnx"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        unet = build_refiner("unet", filters=(4, 8, 8, 16))
        calibrate_batchnorm(unet, [torch.rand(2, 4, 64, 64, generator=g) for _ in range(2)])
        export_refiner_onnx(unet.eval(), out, 64)
    finally:
        torch.set_num_threads(threads)
    return out


def test_standins_in_the_published_conventions_give_the_native_masks(patch_run: Path, native_refiner: Path,
                                                                     mini_cohort: Path, tmp_path: Path) -> None:
    from h2gnet.evaluation.metrics import slide_metrics
    from h2gnet.infer.heatmap import load_heatmap
    from h2gnet.infer.runtime import OnnxModel
    from standins import keras_like_patch, keras_like_refiner

    native_patch = OnnxModel(patch_run / "model.onnx", "patch-classifier", threads=1)
    patch = keras_like_patch(patch_run / "model.onnx", tmp_path / "pw_standin.onnx")
    refine = keras_like_refiner(native_refiner, tmp_path / "unet_standin.onnx")
    # the published conventions (NHWC read from the graph, x/255, separate image/heatmap inputs), with the
    # native models' sizes and h2gnet's tissue rule and low-resolution input
    pc = _preset_doc("patch-classifier")
    pc.update(patch_size_pixels=native_patch.input_size, spacing_um_px=native_patch.mpp,
              tissue={"method": "hsv-saturation", "min_fraction": 0.25, "inclusive": False})
    (tmp_path / "pw_standin.card.json").write_text(json.dumps(pc))
    rc = _preset_doc("refiner")
    rc["refiner"].update(input_size_pixels=64, image_source="h2gnet", image_normalisation="fixed")
    (tmp_path / "unet_standin.card.json").write_text(json.dumps(rc))
    assert OnnxModel(patch, "patch-classifier").card.layout == "NHWC"

    slide = str(mini_cohort / "s3.tiff")
    assert main(["-q", "segment", slide, "--patch-model", str(patch_run / "model.onnx"), "--refine-model",
                 str(native_refiner), "-o", str(tmp_path / "native")]) == 0
    assert main(["-q", "segment", slide, "--patch-model", str(patch), "--refine-model", str(refine),
                 "-o", str(tmp_path / "standin")]) == 0
    from h2gnet.outputs.mask_tiff import load_mask_tiff

    summaries = [json.loads((tmp_path / d / "s3.json").read_text()) for d in ("native", "standin")]
    masks = [load_mask_tiff(tmp_path / d / "s3.mask.tiff", summaries[0]["slide_mpp"]).array
             for d in ("native", "standin")]
    assert masks[0].any() and not masks[0].all()  # a mask with an edge: the comparison means something
    assert slide_metrics(masks[1], masks[0])["dice"] >= 0.999
    heats = [load_heatmap(tmp_path / d / "s3.heatmap.tiff")[0].array for d in ("native", "standin")]
    np.testing.assert_allclose(heats[1], heats[0], atol=1e-5)
    assert summaries[1]["patches"] == summaries[0]["patches"]
    card = summaries[1]["models"]["refine"]["card"]
    assert card["origin"].endswith("unet_standin.card.json") and card["layout"] == "NHWC"
    assert card["inputs"] == "separate"
    assert summaries[0]["models"]["patch"]["card"]["origin"].startswith("metadata")


# -- the preset, end to end with fetched stand-ins -------------------------------------------------------
@pytest.fixture(scope="module")
def published_standins(patch_run: Path, tmp_path_factory) -> Path:
    """A folder laid out as FAST's data-hub item, with stand-ins of the published models and a licence."""
    pytest.importorskip("onnx")
    from standins import heatmap_follower_refiner, keras_like_patch

    item = tmp_path_factory.mktemp("hub") / "breast-tumour-segmentation-model"
    item.mkdir()
    preset = load_preset(PRESET)
    keras_like_patch(patch_run / "model.onnx", item / preset.files["patch-classifier"], pool=4)  # 256 px at 1 µm/px
    heatmap_follower_refiner(item / preset.files["refiner"], 1024)
    (item / "LICENSE.txt").write_text("Stand-in licence text for the test\n")
    return item


def test_fetch_models_from_a_folder_records_sha256_and_licence(published_standins: Path, tmp_path: Path,
                                                               capsys) -> None:
    from h2gnet.infer.runtime import sha256_of

    out = tmp_path / "models"
    assert main(["fetch-models", PRESET, "--from", str(published_standins), "--models-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Stand-in licence text" in printed and "sha256" in printed
    record = json.loads((out / "fetched.json").read_text())
    name = load_preset(PRESET).files["patch-classifier"]
    assert record["files"]["patch-classifier"]["sha256"] == sha256_of(published_standins / name)
    assert record["licence"] == "Stand-in licence text for the test" and (out / "LICENSE.txt").exists()
    # FAST's storage folder is found the same way (the item below it)
    out2 = tmp_path / "models2"
    assert main(["fetch-models", PRESET, "--fast-storage", str(published_standins.parent), "--no-download",
                 "--models-dir", str(out2)]) == 0
    assert "FAST's storage folder" in json.loads((out2 / "fetched.json").read_text())["source"]


def test_fetch_models_says_what_to_do_when_nothing_works(tmp_path: Path, published_standins: Path,
                                                         capsys) -> None:
    out = tmp_path / "models"
    assert main(["fetch-models", PRESET, "--fast-storage", str(tmp_path / "empty"), "--no-download",
                 "--models-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not get the h2gnet-2022 models" in err
    assert "--from" in err and "pip install pyfast" in err and not out.exists()
    # a file that does not match the card: named, nothing copied
    bad = tmp_path / "bad" / "breast-tumour-segmentation-model"
    bad.mkdir(parents=True)
    preset = load_preset(PRESET)
    _tiny_nhwc_classifier(bad / preset.files["patch-classifier"], size=128)
    (bad / preset.files["refiner"]).write_bytes((published_standins / preset.files["refiner"]).read_bytes())
    assert main(["fetch-models", PRESET, "--from", str(bad), "--models-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pw_tumour_mobilenetv2_model.onnx" in err and "'patch_size_pixels'" in err and not out.exists()
    # segment with the preset before fetching: says how to get the files
    assert main(["-q", "segment", "x.svs", "--preset", PRESET, "--models-dir", str(out), "-o",
                 str(tmp_path / "o")]) == 2
    assert "h2gnet fetch-models h2gnet-2022" in capsys.readouterr().err


@pytest.mark.parametrize("name,mpp", [("CMU-1-Small-Region.svs", None),
                                      ("CMU-1-Small-Region-dicom/level-0-frames-0-30.dcm", None)])
def test_preset_runs_on_real_slides(name: str, mpp, published_standins: Path, tmp_path: Path) -> None:
    path = real_slide(name)
    models = tmp_path / "models"
    assert main(["fetch-models", PRESET, "--from", str(published_standins), "--models-dir", str(models)]) == 0
    args = ["-q", "segment", str(path), "--preset", PRESET, "--models-dir", str(models), "-o", str(tmp_path / "o")]
    assert main(args + (["--mpp", str(mpp)] if mpp else [])) == 0
    summary = json.loads((tmp_path / "o" / f"{path.stem}.json").read_text())
    assert summary["patches"] > 0 and summary["tissue_area_mm2"] > 0.1
    assert summary["models"]["patch"]["card"]["origin"] == f"preset {PRESET}"
    assert summary["models"]["refine"]["card"]["image_normalisation"] == "minmax"
    for suffix in (".mask.tiff", ".geojson", ".heatmap.tiff", ".overlay.png"):
        assert (tmp_path / "o" / f"{path.stem}{suffix}").exists()


def test_refiner_input_conventions_minmax_and_keep_aspect() -> None:
    from h2gnet.infer.refine_input import LowRes, network_input, probability_to_raster
    from h2gnet.io.raster import Raster

    rng = np.random.default_rng(0)
    image = rng.integers(40, 201, (30, 60, 3)).astype(np.uint8)  # 60 wide, 30 high
    low = LowRes(image, 16.0, 0.5)
    heat = Raster(rng.random((3, 6), dtype=np.float32), 256.0, 0.5)
    x = network_input(low, heat, 32, "minmax", "stretch")
    assert x.shape == (4, 32, 32) and x[:3].min() == pytest.approx(0.0, abs=0.02) and x[:3].max() <= 1.0
    assert x[:3].max() > 0.95  # stretched to [0, 1] by the image's own min and max, not /255
    fixed = network_input(low, heat, 32, "fixed", "stretch")
    assert fixed[:3].max() <= 200 / 255 + 1e-6
    kept = network_input(low, heat, 32, "fixed", "keep-aspect")
    assert np.all(kept[:, 16:, :] == 0) and kept[:3, :16, :].min() > 0  # long side 32 px, padded below
    prob = np.zeros((32, 32), np.float32)
    prob[:16] = 1.0  # the padding (rows 16-31) is cut off before mapping back
    back = probability_to_raster(prob, low, "keep-aspect")
    assert back.array.shape == (30, 60) and back.array.min() == pytest.approx(1.0)
    small = LowRes(image[:8, :16], 16.0, 0.5)  # a lowest level smaller than the network's output
    up = probability_to_raster(prob, small, "stretch", upsample=True)  # the network's finer grid is kept
    assert up.array.shape == (16, 32) and up.mpp == pytest.approx(8.0)
    assert probability_to_raster(prob, small, "stretch").array.shape == (8, 16)


def test_heatmap_cohort_command_with_the_preset(published_standins: Path, mini_cohort: Path, tmp_path: Path) -> None:
    from h2gnet.infer.heatmap import load_heatmap

    models = tmp_path / "models"
    assert main(["fetch-models", PRESET, "--from", str(published_standins), "--models-dir", str(models)]) == 0
    out = tmp_path / "heat"
    assert main(["-q", "heatmap", str(mini_cohort / "manifest.csv"), "--preset", PRESET, "--models-dir",
                 str(models), "-o", str(out)]) == 0
    heat, extent = load_heatmap(out / "s0.heatmap.tiff")
    assert heat.mpp == 256.0 and heat.array.shape == (4, 6) and (heat.array > 0).any()  # 1536 x 1024 µm
    assert "done" in (out / "status.csv").read_text()
