"""Patch classifiers: head, normalisation, weights loading, BatchNorm calibration, sizes.

Tiny inputs (64x64 for MobileNetV2, 75-96 for InceptionV3) keep these fast.
No test touches the network: the ImageNet download function is replaced.
"""

from __future__ import annotations

import urllib.error
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("torchvision.models")

from torch import nn  # noqa: E402

from h2gnet.errors import H2GNetError  # noqa: E402
from h2gnet.train.models import classifier as clf  # noqa: E402
from h2gnet.train.models.common import calibrate_batchnorm, keras_style_count, parameter_count  # noqa: E402

RANDOM_INIT = "no ImageNet weights loaded.*random initialisation"


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def build(arch: str = "mobilenetv2", **kwargs) -> clf.PatchClassifier:
    """A randomly initialised classifier, expecting (and swallowing) the random-init warning."""
    with pytest.warns(UserWarning, match=RANDOM_INIT):
        return clf.build_classifier(arch, **kwargs)


def varied_batches(size: int, n_batches: int = 3, batch: int = 6, seed: int = 1) -> list[torch.Tensor]:
    """Random [0, 1] RGB batches with varied brightness, so patches differ in their statistics."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.rand(batch, 3, size, size, generator=g) * torch.rand(batch, 1, 1, 1, generator=g)
        for _ in range(n_batches)
    ]


@pytest.fixture(scope="module")
def inception() -> clf.PatchClassifier:
    """One randomly initialised InceptionV3 classifier (eval mode), shared by read-only tests."""
    return build("inceptionv3").eval()


def build_or_shared(arch: str, inception: clf.PatchClassifier) -> clf.PatchClassifier:
    """A fresh MobileNetV2 or the shared InceptionV3 (which is slow to build)."""
    return inception if arch == "inceptionv3" else build(arch).eval()


@pytest.fixture(autouse=True)
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if any test reaches the real ImageNet download."""

    def refuse(arch: str):
        raise AssertionError(f"test tried to download ImageNet weights for {arch}")

    monkeypatch.setattr(clf, "download_imagenet_state_dict", refuse)


@pytest.mark.parametrize(("arch", "features"), [("mobilenetv2", 1280), ("inceptionv3", 2048)])
def test_head_is_the_papers_simplified_head(arch: str, features: int, inception: clf.PatchClassifier) -> None:
    model = build_or_shared(arch, inception)
    kinds = [type(layer) for layer in model.head]
    assert kinds == [nn.Linear, nn.Dropout, nn.ReLU, nn.BatchNorm1d, nn.Linear]
    assert (model.head[0].in_features, model.head[0].out_features) == (features, 100)
    assert model.head[1].p == 0.5
    assert model.head[3].num_features == 100
    assert (model.head[4].in_features, model.head[4].out_features) == (100, 2)
    assert build("mobilenetv2", n_classes=3).head[4].out_features == 3


def test_forward_returns_logits_of_shape_n_by_classes() -> None:
    model = build(n_classes=3).eval()
    calibrate_batchnorm(model, varied_batches(64))
    out = model(torch.rand(5, 3, 64, 64))
    assert out.shape == (5, 3)
    assert out.dtype == torch.float32
    # Logits, not probabilities: rows do not sum to one and values leave [0, 1].
    assert not torch.allclose(out.sum(dim=1), torch.ones(5), atol=1e-3)


def test_inceptionv3_has_no_aux_logits_and_takes_256_and_75(inception: clf.PatchClassifier) -> None:
    model = inception
    assert not any("AuxLogits" in name for name, _ in model.named_modules())
    with torch.no_grad():
        assert model(torch.rand(1, 3, 256, 256)).shape == (1, 2)
        assert model(torch.rand(2, 3, 75, 80)).shape == (2, 2)


def test_too_small_patch_is_a_clear_error(inception: clf.PatchClassifier) -> None:
    model = inception
    with pytest.raises(ValueError, match="at least 75x75"):
        model(torch.rand(1, 3, 74, 80))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.rand(1, 4, 80, 80))


def test_parameter_counts_match_the_paper_when_counted_like_keras(inception: clf.PatchClassifier) -> None:
    # Paper section 3.2: MobileNetV2 ~2.39M, InceptionV3 ~22.00M (Keras totals,
    # which include BatchNorm moving statistics).
    mobilenet = build("mobilenetv2")
    assert keras_style_count(mobilenet) == pytest.approx(2.39e6, rel=0.005)
    assert keras_style_count(inception) == pytest.approx(22.00e6, rel=0.005)
    # Exact PyTorch figures (backbone + head), pinned against accidental changes.
    assert parameter_count(mobilenet) == 2_223_872 + 128_100 + 200 + 202
    assert parameter_count(inception) == 21_785_568 + 204_900 + 200 + 202


@pytest.mark.parametrize(
    ("arch", "mean", "std"),
    [("mobilenetv2", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ("inceptionv3", (0.5,) * 3, (0.5,) * 3)],
)
def test_model_normalises_zero_one_rgb_internally(
    arch: str, mean: tuple, std: tuple, inception: clf.PatchClassifier
) -> None:
    model = build_or_shared(arch, inception)
    assert "mean" in model.state_dict() and "std" in model.state_dict()
    seen: list[torch.Tensor] = []
    handle = model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.rand(1, 3, 80, 80)
    with torch.no_grad():
        model(x)
    handle.remove()
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], expected)


def test_channels_last_gives_the_same_logits() -> None:
    model = build().eval()
    calibrate_batchnorm(model, varied_batches(64))
    x = varied_batches(64, n_batches=1, seed=7)[0]
    with torch.no_grad():
        reference = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_unknown_arch_and_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="mobilenetv2, inceptionv3"):
        clf.build_classifier("resnet50")
    with pytest.raises(ValueError, match="n_classes"):
        clf.build_classifier("mobilenetv2", n_classes=1)
    with pytest.raises(ValueError, match="dropout"):
        clf.build_classifier("mobilenetv2", dropout=1.0)


# ----------------------------------------------------------------- weights


def torchvision_mobilenet_state(seed: int = 3) -> dict[str, torch.Tensor]:
    """A whole torchvision MobileNetV2 state dict (random, seeded), head included."""
    torch.manual_seed(seed)
    return tvm.mobilenet_v2(weights=None).state_dict()


def assert_backbone_equals(model: clf.PatchClassifier, state: dict[str, torch.Tensor]) -> None:
    """Every backbone tensor of ``model`` equals the torchvision ``features.*`` tensor."""
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, state["features." + key], rtol=0, atol=0)


def test_imagenet_weights_are_loaded_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    state = torchvision_mobilenet_state()
    monkeypatch.setattr(clf, "download_imagenet_state_dict", lambda arch: state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no random-init warning this time
        model = clf.build_classifier("mobilenetv2", weights="imagenet")
    assert_backbone_equals(model, state)


def test_inceptionv3_imagenet_state_dict_with_aux_and_fc_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(4)
    state = tvm.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    assert any(k.startswith("AuxLogits.") for k in state)
    monkeypatch.setattr(clf, "download_imagenet_state_dict", lambda arch: state)
    model = clf.build_classifier("inceptionv3", weights="ImageNet")
    loaded = model.backbone.Mixed_7c.branch1x1.conv.weight
    torch.testing.assert_close(loaded, state["Mixed_7c.branch1x1.conv.weight"])


def test_failed_download_falls_back_to_random_init_with_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(arch: str):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(clf, "download_imagenet_state_dict", offline)
    expected = r"mobilenetv2: no ImageNet weights loaded \(download failed: URLError"
    with pytest.warns(UserWarning, match=expected):
        model = clf.build_classifier("mobilenetv2", weights="imagenet")
    assert model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 2)


def test_local_torchvision_state_dict_file_loads(tmp_path: Path) -> None:
    state = torchvision_mobilenet_state()
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(state, path)
    model = clf.build_classifier("mobilenetv2", weights=path)
    assert_backbone_equals(model, state)
    # A backbone-only state dict (no "features." prefix, no head) loads the same.
    backbone_only = tmp_path / "backbone.pth"
    torch.save(model.backbone.state_dict(), backbone_only)
    again = clf.build_classifier("mobilenetv2", weights=str(backbone_only))
    assert_backbone_equals(again, state)


def test_state_dict_of_another_arch_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "inception.pth"
    torch.save(tvm.inception_v3(weights=None, aux_logits=False, init_weights=False).state_dict(), path)
    with pytest.raises(H2GNetError) as info:
        clf.build_classifier("mobilenetv2", weights=path)
    assert info.value.path == str(path)
    assert "missing keys" in info.value.problem and "unexpected keys" in info.value.problem


def test_state_dict_with_wrong_shapes_is_an_error(tmp_path: Path) -> None:
    state = torchvision_mobilenet_state()
    state["features.0.0.weight"] = torch.zeros(32, 4, 3, 3)
    path = tmp_path / "bad_shapes.pth"
    torch.save(state, path)
    with pytest.raises(H2GNetError, match=r"shapes do not match mobilenetv2: 0\.0\.weight"):
        clf.build_classifier("mobilenetv2", weights=path)


def test_missing_or_unreadable_weights_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(H2GNetError, match="not found") as info:
        clf.build_classifier("mobilenetv2", weights=tmp_path / "absent.pth")
    assert info.value.path == str(tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(H2GNetError, match="cannot read weights") as info:
        clf.build_classifier("mobilenetv2", weights=garbage)
    assert info.value.path == str(garbage)
    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(H2GNetError, match="not a state dict"):
        clf.build_classifier("mobilenetv2", weights=not_a_dict)


# ------------------------------------------------------- BatchNorm calibration


def test_calibration_sets_running_statistics_to_the_data_average() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.Dropout(0.5))
    net.train()
    batches = [torch.rand(4, 3, 8, 8) * (i + 1) + i for i in range(3)]
    assert calibrate_batchnorm(net, batches) == 3
    with torch.no_grad():
        conv_out = torch.cat([net[0](b) for b in batches])
    torch.testing.assert_close(net[1].running_mean, conv_out.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    assert net[1].momentum == 0.3  # restored
    assert net.training and net[1].training  # mode restored


def test_calibration_makes_a_random_classifier_discriminate() -> None:
    model = build().eval()
    batches = varied_batches(64)
    weights_before = [p.detach().clone() for p in model.parameters()]
    x = torch.cat(batches)
    with torch.no_grad():
        before = torch.softmax(model(x), dim=1)[:, 1]
    calibrate_batchnorm(model, iter(batches))  # any iterable, even a one-shot iterator
    with torch.no_grad():
        after = torch.softmax(model(x), dim=1)[:, 1]
    assert before.std() < 1e-3  # nearly constant without calibration
    assert after.std() > 0.05
    assert not model.training
    for old, new in zip(weights_before, model.parameters(), strict=True):
        assert torch.equal(old, new)


def test_calibration_without_batches_raises_and_keeps_statistics() -> None:
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    net[1].running_mean.fill_(0.7)
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_batchnorm(net, [])
    assert torch.all(net[1].running_mean == 0.7)
