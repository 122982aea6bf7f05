from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from h2gnet.errors import H2GNetError  # noqa: E402
from h2gnet.infer.runtime import OnnxModel  # noqa: E402
from h2gnet.train.patch_classifier import PatchTrainConfig, train_patch_classifier  # noqa: E402
from h2gnet.train.run_state import load_checkpoint, read_log  # noqa: E402

pytestmark = pytest.mark.slow  # every test here trains or runs a study


def _cfg(cohort: Path, **kw) -> PatchTrainConfig:
    base = PatchTrainConfig(manifest=str(cohort / "manifest.csv"), index_dir=str(cohort / "index"), epochs=1,
                            steps=2, val_steps=1, batch_size=4, input_size=64, workers=0, eval_per_class=2,
                            progress=False)
    return replace(base, **kw)


def test_patch_run_outputs(patch_run: Path) -> None:
    for name in ("model.onnx", "config.json", "log.csv", "checkpoint_last.pt", "checkpoint_best.pt", "metrics.json"):
        assert (patch_run / name).exists(), name
    model = OnnxModel(patch_run / "model.onnx", "patch-classifier")
    assert model.input_size == 64 and model.mpp == pytest.approx(4.0)  # 256 px at 1 µm/px seen as 64 px
    probs = model(np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32))
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    metrics = json.loads((patch_run / "metrics.json").read_text())
    assert 0 <= metrics["test"]["balanced_accuracy"] <= 1 and metrics["test"]["patches"] > 0
    config = json.loads((patch_run / "config.json").read_text())
    assert config["lr"] == 1e-4 and config["arch"] == "mobilenetv2"


def test_resume_continues_and_refuses_other_settings(mini_cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.warns(UserWarning):
        train_patch_classifier(run, _cfg(mini_cohort))
    assert [r["epoch"] for r in read_log(run)] == ["1"]
    first = load_checkpoint(run / "checkpoint_last.pt")["model"]
    with pytest.warns(UserWarning):
        train_patch_classifier(run, _cfg(mini_cohort, epochs=2))  # resumes at epoch 2
    assert [r["epoch"] for r in read_log(run)] == ["1", "2"]
    second = load_checkpoint(run / "checkpoint_last.pt")
    assert second["epoch"] == 2
    assert any(not torch.equal(first[k], second["model"][k]) for k in first if first[k].is_floating_point())
    with pytest.raises(H2GNetError, match="other settings"):
        train_patch_classifier(run, _cfg(mini_cohort, epochs=2, lr=1e-3))


def test_blur_augmentation_reaches_the_training_batches(mini_cohort: Path, tmp_path: Path, capfd,
                                                         monkeypatch) -> None:
    from h2gnet.train import augment
    from h2gnet.train.patch_classifier import _loader, _samplers

    sigmas: list[float] = []
    blur = augment.gaussian_blur
    monkeypatch.setattr(augment, "gaussian_blur", lambda img, sigma: sigmas.append(sigma) or blur(img, sigma))
    cfg = _cfg(mini_cohort, batch_size=64, blur_um=8.0)
    next(iter(_loader(_samplers(cfg)[0], cfg, 11, 1, augment=True, input_size=64)))  # workers=0: in this process
    # 256 px at 1 µm/px seen as 64 px: 4 µm per px, so σ ≤ 8 µm is σ ≤ 2 px, on about half of the 64 patches
    assert 16 <= len(sigmas) <= 48 and max(sigmas) <= 2.0 and max(sigmas) > 1.0
    run = tmp_path / "blur"
    with pytest.warns(UserWarning, match="random"):
        train_patch_classifier(run, _cfg(mini_cohort, blur_um=8.0))
    assert json.loads((run / "config.json").read_text())["blur_um"] == 8.0
    assert "Gaussian blur σ ≤ 8 µm" in capfd.readouterr().err  # the plan line says what the run does


def test_cluster_guided_training(mini_cohort: Path, tmp_path: Path) -> None:
    from h2gnet.train.cluster_guiding import ClusterConfig, fit_cohort_clustering

    with pytest.warns(UserWarning, match="random"):
        summary = fit_cohort_clustering(tmp_path / "clusters", ClusterConfig(
            manifest=str(mini_cohort / "manifest.csv"), index_dir=str(mini_cohort / "index"), k=3, batches=4,
            batch_size=8, input_size=32, workers=0, progress=False))
    assert summary["k"] == 3 and summary["explained_variance"] >= 0.95
    with pytest.warns(UserWarning):
        metrics = train_patch_classifier(tmp_path / "km", _cfg(mini_cohort, clusters=str(tmp_path / "clusters")))
    assert np.isfinite(metrics["best_val_loss"])


def test_refinement_training_and_export(mini_cohort: Path, patch_run: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from h2gnet.cli import main
    from h2gnet.train.refiner import RefineTrainConfig, train_refiner

    assert main(["-q", "heatmap", str(mini_cohort / "manifest.csv"), "--patch-model",
                 str(patch_run / "model.onnx"), "-o", str(tmp_path / "heat")]) == 0
    cfg = RefineTrainConfig(manifest=str(mini_cohort / "manifest.csv"), heatmaps=str(tmp_path / "heat"),
                            arch="agunet", input_size=128, epochs=2, filters=(4, 8, 8, 16), progress=False)
    with pytest.warns(UserWarning, match=r"only 2 optimizer steps .*1/epoch × 2 epochs") as caught:
        metrics = train_refiner(tmp_path / "ref", cfg)
    log = read_log(tmp_path / "ref")
    assert 0 <= metrics["val_dice"] <= 1 and len(log) == 2
    # the patch-wise mask of the validation slide, scored beside the refiner: per epoch and at the end
    patchwise = metrics["val_dice_patchwise"]
    assert 0 <= patchwise <= 1 and all(float(r["val_dice_patchwise"]) == pytest.approx(patchwise) for r in log)
    saved = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert saved["val_dice"] == metrics["val_dice"] and saved["val_dice_patchwise"] == patchwise
    assert saved["plan"]["total_steps"] == 2 and saved["plan"]["samples"] == 2
    worse = metrics["val_dice"] < patchwise
    assert saved["verdict"].startswith("refinement makes validation Dice worse" if worse else "refinement ")
    printed = capsys.readouterr().err
    assert "train-refine plan: 2 slides/epoch = 1 batches of 4" in printed
    assert (saved["verdict"] in [str(w.message) for w in caught]) if worse else (saved["verdict"] in printed)
    model = OnnxModel(tmp_path / "ref" / "model.onnx", "refiner")
    assert model.in_channels == 4 and model.input_size == 128
    assert float(model.metadata["val_dice"]) == pytest.approx(metrics["val_dice"])
    assert float(model.metadata["val_dice_patchwise"]) == pytest.approx(patchwise)
    out = model(np.zeros((1, 4, 128, 128), np.float32))
    assert out.shape == (1, 2, 128, 128)


@pytest.mark.parametrize(("calibration", "float_ends"), [("minmax", False), ("percentile", False), ("minmax", True)])
def test_int8_quantisation_keeps_predictions_close(mini_cohort: Path, patch_run: Path, tmp_path: Path,
                                                   calibration: str, float_ends: bool) -> None:
    import onnx

    from h2gnet.infer.quantize import QuantizeConfig, quantize_patch_model

    cfg = QuantizeConfig(mini_cohort / "manifest.csv", mini_cohort / "index", patches=32, calibration=calibration,
                         float_ends=float_ends)
    out = quantize_patch_model(patch_run / "model.onnx", tmp_path / "q.onnx", cfg)
    q = OnnxModel(out, "patch-classifier")
    f = OnnxModel(patch_run / "model.onnx", "patch-classifier")
    assert q.metadata["precision"] == "int8" and q.input_size == f.input_size and q.mpp == f.mpp
    assert q.metadata["calibration_method"] == calibration
    graph = onnx.load(str(out)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    kept = [n for n in graph.node if n.name in q.metadata["float32_nodes"].split(",")]
    if float_ends:  # first conv + the head's Gemm(s), with float32 weights
        assert [n.op_type for n in kept][:1] == ["Conv"] and len(kept) >= 2
        assert all(n.input[1] not in dequantized for n in kept)
    else:
        assert not kept
    assert sum(n.op_type == "Conv" and n.input[1] in dequantized for n in graph.node) > 10
    from h2gnet.infer.quantize import calibration_batches

    x = calibration_batches(mini_cohort / "manifest.csv", mini_cohort / "index", 64, 16, seed=9)[0]
    assert np.abs(q(x) - f(x)).max() < 0.2  # int8 rounding, not a different model
    assert out.stat().st_size < (patch_run / "model.onnx").stat().st_size


def test_segment_warns_for_a_refiner_worse_than_patchwise(tiny_slide, tmp_path: Path) -> None:
    from h2gnet.infer.segment import SegmentConfig, segment_many
    from h2gnet.train.export import export_refiner_onnx
    from h2gnet.train.models import build_refiner

    slide, _, _ = tiny_slide
    torch.manual_seed(0)
    lr = build_refiner("unet-lr", filters=(4, 8, 8, 16)).eval()  # 3 channels: no patch model needed
    worse = export_refiner_onnx(lr, tmp_path / "worse.onnx", 64,
                                validation={"val_dice": 0.33, "val_dice_patchwise": 0.65})
    better = export_refiner_onnx(lr, tmp_path / "better.onnx", 64,
                                 validation={"val_dice": 0.8, "val_dice_patchwise": 0.65})
    plain = export_refiner_onnx(lr, tmp_path / "plain.onnx", 64)  # no validation figures: no warning
    with pytest.warns(UserWarning, match=r"worse than patch-wise .*0\.330 against 0\.650") as caught:
        segment_many([str(slide)], tmp_path / "out-worse", SegmentConfig(None, worse, progress=False))
    assert sum("worse than patch-wise" in str(w.message) for w in caught) == 1  # once per run
    for model in (better, plain):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            status = segment_many([str(slide)], tmp_path / f"out-{model.stem}", SegmentConfig(None, model,
                                                                                            progress=False))
        assert [r["status"] for r in status.values()] == ["done"]
