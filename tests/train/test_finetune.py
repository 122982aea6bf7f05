"""Fine-tuning (``--init``): h2gnet's own runs and stand-ins of the published models (NHWC, two-input refiner)
start from the converted model, train, resume, and export in the source's conventions with its card."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")

from h2gnet.cli import main  # noqa: E402
from h2gnet.errors import H2GNetError  # noqa: E402
from h2gnet.infer.runtime import OnnxModel  # noqa: E402
from h2gnet.train.finetune import Freezer, load_init  # noqa: E402
from h2gnet.train.patch_classifier import PatchTrainConfig, train_patch_classifier  # noqa: E402
from h2gnet.train.refiner import RefineTrainConfig, train_refiner  # noqa: E402
from h2gnet.train.run_state import read_log  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from standins import colour_classifier, keras_like_patch, keras_like_refiner  # noqa: E402

TOLERANCE = 1e-4
#: The published patch classifier's card (h2gnet-2022) with the stand-in's size: 64 px at 4 µm/px.
PATCH_CARD = {"spec_version": 1, "kind": "patch-classifier", "name": "stand-in",
              "class_names": ["non-tumour", "tumour"], "tumour_class": 1, "output": "softmax",
              "input": {"layout": "auto"},
              "transform": [{"name": "Scale", "arguments": {"factor": 0.003921568627451}}],
              "patch_size_pixels": 64, "spacing_um_px": 4.0}
#: The published refiner's card: two NHWC inputs, FAST's lowest level, min/max normalisation.
REFINER_CARD = {"spec_version": 1, "kind": "refiner", "name": "stand-in refiner", "output": "softmax",
                "input": {"layout": "auto", "inputs": "separate"},
                "refiner": {"input_size_pixels": 64, "image_source": "smallest-level",
                            "image_normalisation": "minmax", "resize": "stretch"}}


def _inputs(model: OnnxModel, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.random((3, model.in_channels, model.input_size, model.input_size), dtype=np.float32)
    return x * rng.random((3, 1, 1, 1), dtype=np.float32)


def _same_outputs(a: Path, b: Path, kind: str) -> float:
    ma, mb = OnnxModel(a, kind), OnnxModel(b, kind)
    assert (ma.input_size, ma.in_channels, ma.classes) == (mb.input_size, mb.in_channels, mb.classes)
    x = _inputs(ma)
    return float(np.abs(ma(x) - mb(x)).max())


def _patch_cfg(cohort: Path, **kw) -> PatchTrainConfig:
    return PatchTrainConfig(manifest=str(cohort / "manifest.csv"), index_dir=str(cohort / "index"), epochs=1,
                            steps=2, val_steps=1, batch_size=4, workers=0, eval_per_class=2, progress=False, **kw)


@pytest.fixture(scope="module")
def standins(patch_run: Path, tmp_path_factory) -> dict[str, Path]:
    """Published-style stand-ins with their cards: the trained patch classifier as a Keras-like NHWC graph, a
    tiny 4-channel U-Net (BatchNorm calibrated, so its outputs vary) as a two-input NHWC refiner."""
    from h2gnet.train.export import export_refiner_onnx
    from h2gnet.train.models import build_refiner, calibrate_batchnorm

    root = tmp_path_factory.mktemp("standins")
    patch = keras_like_patch(patch_run / "model.onnx", root / "pw_tumour_mobilenetv2_model.onnx")
    (root / "pw_tumour_mobilenetv2_model.card.json").write_text(json.dumps(PATCH_CARD))
    torch.manual_seed(0)
    unet = build_refiner("unet", filters=(4, 8, 8, 16))
    calibrate_batchnorm(unet, [torch.rand(2, 4, 64, 64) for _ in range(2)])
    native = export_refiner_onnx(unet.eval(), root / "unet.onnx", 64)
    refiner = keras_like_refiner(native, root / "unet_tumour_refinement_model.onnx")
    (root / "unet_tumour_refinement_model.card.json").write_text(json.dumps(REFINER_CARD))
    return {"patch": patch, "refiner": refiner}


def test_h2gnet_run_fine_tunes_resumes_and_exports(mini_cohort: Path, patch_run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    init = load_init(str(patch_run), "patch-classifier")  # the run folder: architecture + best checkpoint
    assert init.how == "h2gnet checkpoint" and init.input_size == 64 and init.mpp == pytest.approx(4.0)
    assert init.backbone and all(n.startswith("backbone.") for n in init.backbone)
    before = init.export(init.model.eval(), tmp_path / "before.onnx")  # the export before any step
    assert _same_outputs(patch_run / "model.onnx", before, "patch-classifier") <= TOLERANCE

    run = tmp_path / "ft"
    with pytest.warns(UserWarning, match="optimizer steps"):
        train_patch_classifier(run, _patch_cfg(mini_cohort, init=str(patch_run), freeze_backbone_steps=1))
    plan = capsys.readouterr().err
    assert "trains the head (" in plan and "for the first 1 optimizer steps, then all" in plan
    assert f"from {patch_run} (h2gnet checkpoint) at lr 1e-05 (the --init default: a tenth of 0.0001)" in plan
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == pytest.approx(1e-5) and config["init"] == str(patch_run)
    with pytest.warns(UserWarning, match="optimizer steps"):
        metrics = train_patch_classifier(run, _patch_cfg(mini_cohort, init=str(patch_run), freeze_backbone_steps=1,
                                                         total_steps=4))  # resumes: 2 epochs of 2 steps
    assert [r["epoch"] for r in read_log(run)] == ["1", "2"]
    assert metrics["init"]["how"] == "h2gnet checkpoint" and len(metrics["init"]["sha256"]) == 64
    tuned = OnnxModel(run / "model.onnx", "patch-classifier")
    assert tuned.card.native and tuned.input_size == 64 and tuned.mpp == pytest.approx(4.0)
    assert _same_outputs(patch_run / "model.onnx", run / "model.onnx", "patch-classifier") > 0  # it trained


def test_published_standins_fine_tune_resume_and_keep_their_card(mini_cohort: Path, patch_run: Path,
                                                                  standins: dict[str, Path], tmp_path: Path) -> None:
    # the classifier: NHWC input_1, x/255 in the card, converted by onnx2torch
    init = load_init(str(standins["patch"]), "patch-classifier")
    assert init.how == "onnx2torch" and init.backbone and init.card.layout == "NHWC"
    before = init.export(init.model.eval(), tmp_path / "patch-before.onnx")
    assert (tmp_path / "patch-before.card.json").is_file()  # the card, beside the export
    assert _same_outputs(standins["patch"], before, "patch-classifier") <= TOLERANCE
    run = tmp_path / "patch"
    args = ["-q", "train-patch", str(mini_cohort / "manifest.csv"), "--index", str(mini_cohort / "index"),
            "-o", str(run), "--init", str(standins["patch"]), "--steps", "2", "--val-steps", "1",
            "--batch-size", "4", "--workers", "0", "--freeze-backbone-steps", "1"]
    with pytest.warns(UserWarning, match="optimizer steps"):
        assert main([*args, "--epochs", "1"]) == 0
    with pytest.warns(UserWarning, match="optimizer steps"):
        assert main([*args, "--epochs", "2"]) == 0  # resumes
    assert [r["epoch"] for r in read_log(run)] == ["1", "2"]
    tuned = OnnxModel(run / "model.onnx", "patch-classifier")  # runs with the card written beside it
    assert not tuned.card.native and tuned.card.layout == "NHWC" and tuned.input_name == "input_1"
    assert tuned.card.scale == pytest.approx(1 / 255) and tuned.mpp == pytest.approx(4.0)
    assert "fine-tuned" in tuned.card.name
    assert tuned(_inputs(tuned)).shape == (3, 2)

    # the refiner: two NHWC inputs, FAST's lowest level and min/max normalisation; the heatmaps from the classifier
    init = load_init(str(standins["refiner"]), "refiner")
    assert init.how == "onnx2torch" and init.in_channels == 4 and init.card.refiner_inputs == "separate"
    before = init.export(init.model.eval(), tmp_path / "refiner-before.onnx")
    assert _same_outputs(standins["refiner"], before, "refiner") <= TOLERANCE
    heat = tmp_path / "heat"
    assert main(["-q", "heatmap", str(mini_cohort / "manifest.csv"), "--patch-model", str(patch_run / "model.onnx"),
                 "-o", str(heat)]) == 0
    cfg = RefineTrainConfig(manifest=str(mini_cohort / "manifest.csv"), heatmaps=str(heat), epochs=1,
                            init=str(standins["refiner"]), freeze_backbone_steps=1, progress=False)
    assert cfg.lr == pytest.approx(1e-4) and cfg.input_size is None  # a tenth of 1e-3; the model's size
    with pytest.warns(UserWarning):
        train_refiner(tmp_path / "ref", cfg)
    with pytest.warns(UserWarning):
        metrics = train_refiner(tmp_path / "ref", replace(cfg, epochs=2))
    assert len(read_log(tmp_path / "ref")) == 2 and metrics["init"]["how"] == "onnx2torch"
    tuned = OnnxModel(tmp_path / "ref" / "model.onnx", "refiner")
    assert tuned.card.refiner_inputs == "separate" and tuned.card.image_normalisation == "minmax"
    assert [i.name for i in tuned.session.get_inputs()] == ["input_1", "input_2"] and tuned.card.layout == "NHWC"
    out = tuned(_inputs(tuned))
    assert out.shape == (3, 2, 64, 64) and np.allclose(out.sum(1), 1, atol=1e-5)


def test_wrong_or_missing_card_is_a_clear_error_before_training(mini_cohort: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    foreign = colour_classifier(tmp_path / "foreign.onnx", size=64)  # NHWC, softmax, no h2gnet metadata
    base = ["-q", "train-patch", str(mini_cohort / "manifest.csv"), "--index", str(mini_cohort / "index"),
            "--workers", "0"]

    def fails(init: str, *extra: str) -> str:
        run = tmp_path / "run"
        assert main([*base, "-o", str(run), "--init", init, *extra]) == 2
        assert not run.exists()  # refused before any work
        return capsys.readouterr().err

    err = fails(str(foreign))
    assert "foreign.onnx" in err and "without a model card" in err and "--preset" in err
    (tmp_path / "foreign.card.json").write_text(json.dumps({**PATCH_CARD, "patch_size_pixels": 128}))
    err = fails(str(foreign))
    assert "foreign.onnx" in err and "patch_size_pixels" in err and "128 px, but the graph takes 64" in err
    (tmp_path / "foreign.card.json").write_text(json.dumps({**PATCH_CARD, "spacing_um_px": 1.0}))
    err = fails(str(foreign))  # patches indexed 256 px at 1 µm/px, read as 64 px = 4 µm/px
    assert "index" in err and "takes 1 µm/px" in err and "--patch-mpp 0.25" in err
    (tmp_path / "foreign.card.json").write_text(json.dumps({**PATCH_CARD, "kind": "refiner"}))
    assert "model card key" in fails(str(foreign))
    (tmp_path / "foreign.card.json").write_text("{not json")
    assert "not valid JSON" in fails(str(foreign))
    assert "no such model or run folder" in fails(str(tmp_path / "missing.onnx"))
    monkeypatch.setenv("H2GNET_MODELS", str(tmp_path / "models"))  # a preset's name: its fetched file
    assert "h2gnet fetch-models h2gnet-2022" in fails("h2gnet-2022")
    shutil.copy(foreign, tmp_path / "foreign.txt")
    assert "not an ONNX model" in fails(str(tmp_path / "foreign.txt"))


def test_freezer_keeps_the_backbone_still_for_n_steps() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    freezer = Freezer(model, ["0.weight", "0.bias"], steps=2)
    assert freezer.describe() == \
        "the head (10 parameters; backbone of 16 frozen) for the first 2 optimizer steps, then all 26"
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    first, head = model[0].weight.detach().clone(), model[2].weight.detach().clone()
    for step in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 3)).sum().backward()
        freezer.before_step(step)
        optimizer.step()
        if step < 2:
            assert torch.equal(model[0].weight, first) and not torch.equal(model[2].weight, head)
    assert not torch.equal(model[0].weight, first)  # trained from step 2 on
    with pytest.raises(H2GNetError, match="backbone cannot be told"):
        Freezer(model, [], steps=1)


def test_h2gnet_refiner_run_folder_starts_from_its_best_checkpoint(tmp_path: Path) -> None:
    from h2gnet.train.config import RefineTrainConfig
    from h2gnet.train.export import export_refiner_onnx
    from h2gnet.train.models import build_refiner, calibrate_batchnorm
    from h2gnet.train.run_state import BEST_CHECKPOINT, TrainingRun, save_checkpoint

    torch.manual_seed(0)
    unet = build_refiner("agunet", filters=(4, 8, 8, 16))
    calibrate_batchnorm(unet, [torch.rand(2, 4, 64, 64) for _ in range(2)])
    run = TrainingRun(tmp_path / "run", RefineTrainConfig(manifest="m.csv", heatmaps=None, arch="agunet",
                                                          input_size=64, filters=(4, 8, 8, 16)))
    run.begin()
    save_checkpoint(run.dir / BEST_CHECKPOINT, {"model": unet.state_dict(), "epoch": 1})
    export_refiner_onnx(unet.eval(), run.dir / "model.onnx", 64)
    for spec in (run.dir, run.dir / "model.onnx"):  # the folder, or its model.onnx
        init = load_init(str(spec), "refiner")
        assert init.how == "h2gnet checkpoint" and init.arch == "agunet" and init.filters == (4, 8, 8, 16)
        assert init.backbone and all(".encoder." in f".{n}" for n in init.backbone)
        assert _same_outputs(run.dir / "model.onnx", init.export(init.model.eval(), tmp_path / "e.onnx"),
                             "refiner") <= TOLERANCE
    with pytest.raises(H2GNetError, match="is 'refiner', expected a patch-classifier"):
        load_init(str(run.dir), "patch-classifier")
    with pytest.raises(H2GNetError, match="is where --init .* comes from"):
        init.check_output(run.dir)
    init.check_output(tmp_path / "elsewhere")
