"""Refinement networks: the paper's configurations, shapes, size rules, attention parts, counts.

Forward passes use small filter lists (4 levels) on 64x64 inputs; only the
default U-Net runs once at its smallest allowed size (256x256).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from h2gnet.train.models import blocks  # noqa: E402
from h2gnet.train.models import unets as ref  # noqa: E402
from h2gnet.train.models.common import parameter_count  # noqa: E402

SMALL = (4, 8, 8, 16)
PAPER_ARCHS = ("unet", "agunet", "dagunet", "doubleunet")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def small(arch: str, **kwargs) -> ref.Refiner:
    """A 4-level version of ``arch`` (seeded), for fast forward passes."""
    torch.manual_seed(0)
    return ref.build_refiner(arch, filters=SMALL, **kwargs)


def example(model: ref.Refiner, batch: int = 2, size: int = 64) -> torch.Tensor:
    """A random (batch, C, size, size) input in [0, 1] for ``model``."""
    return torch.rand(batch, model.in_channels, size, size, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def table() -> list[tuple[str, int, int, float | None]]:
    """The parameter table of the default (paper) refiners, built once."""
    return ref.parameter_table()


def test_defaults_are_the_papers_filters_and_levels() -> None:
    unet = ref.build_refiner("unet")
    assert unet.filters == (8, 16, 32, 64, 128, 128, 256, 256, 512)
    assert len(unet.encoder) == 8 and len(unet.decoder) == 8
    assert [block[-3].num_features for block in unet.decoder] == [256, 256, 128, 128, 64, 32, 16, 8]
    assert unet.in_channels == 4 and unet.size_multiple == 256
    for arch in ("agunet", "dagunet", "doubleunet"):
        assert ref.build_refiner(arch).filters == (8, 16, 32, 64, 128, 128, 256, 256), arch
    assert ref.build_refiner("doubleunet").aspp_filters == 32


def test_unet_encoder_block_is_conv_bn_relu_twice() -> None:
    block = ref.build_refiner("unet").encoder[0]
    assert [type(layer) for layer in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2
    assert block[0].kernel_size == (3, 3) and block[0].in_channels == 4 and block[0].out_channels == 8


def test_default_unet_bottom_is_input_over_256() -> None:
    # Eight poolings: a 1024 x 1024 input has a 4 x 4 bottom, the smallest (256) a 1 x 1 one.
    model = ref.build_refiner("unet").eval()
    shapes: list[tuple[int, ...]] = []
    model.bottom.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    with torch.no_grad():
        out = model(torch.rand(1, 4, 256, 256))
    assert shapes == [(1, 512, 1, 1)]
    assert out.shape == (1, 2, 256, 256)


@pytest.mark.parametrize("arch", ref.ARCHS)
def test_output_is_logits_at_input_resolution(arch: str) -> None:
    model = small(arch, n_classes=3).eval()
    x = example(model)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3, 64, 64)
    assert not torch.allclose(out.sum(dim=1), torch.ones(2, 64, 64), atol=1e-3)  # logits, not probabilities


@pytest.mark.parametrize(
    ("arch", "n_outputs"), [("unet", 1), ("unet-lr", 1), ("agunet", 3), ("dagunet", 3), ("doubleunet", 2)]
)
def test_return_aux_lists_final_output_first(arch: str, n_outputs: int) -> None:
    model = small(arch).eval()
    x = example(model)
    with torch.no_grad():
        final = model(x)
        outputs = model(x, return_aux=True)
    assert isinstance(outputs, list) and len(outputs) == n_outputs
    assert model.has_aux == (n_outputs > 1)
    torch.testing.assert_close(outputs[0], final)
    for aux in outputs[1:]:
        assert aux.shape == final.shape
        assert not torch.allclose(aux, final)


@pytest.mark.parametrize("arch", ref.ARCHS)
def test_training_step_reaches_every_parameter(arch: str) -> None:
    model = small(arch).train()
    outputs = model(example(model), return_aux=True)
    sum(out.square().mean() for out in outputs).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_sizes_that_do_not_fit_the_poolings_are_clear_errors() -> None:
    model = small("unet").eval()  # 3 poolings: multiples of 8
    with pytest.raises(ValueError, match=r"multiples of 8.*smallest allowed input is 8x8, got 60x64"):
        model(torch.rand(1, 4, 60, 64))
    with pytest.raises(ValueError, match=r"smallest allowed input is 256x256, got 128x128"):
        ref.build_refiner("unet")(torch.rand(1, 4, 128, 128))
    with pytest.raises(ValueError, match=r"smallest allowed input is 128x128"):
        ref.build_refiner("agunet").check_size(1024, 1000)
    ref.build_refiner("agunet").check_size(1024, 1024)  # the paper's size is fine
    assert small("doubleunet").size_multiple == 16  # all four levels pool, ASPP is the bottom


def test_wrong_channel_count_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"expected an \(N, 4, H, W\) batch"):
        small("agunet")(torch.rand(1, 3, 64, 64))


def test_unet_lr_takes_the_image_only() -> None:
    model = ref.build_refiner("unet-lr")
    assert model.in_channels == 3 and model.arch == "unet-lr"
    assert model.encoder[0][0].in_channels == 3
    with pytest.raises(ValueError, match="in_channels must be 3, not 4"):
        ref.build_refiner("unet-lr", in_channels=4)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="unet, agunet, dagunet, doubleunet, unet-lr"):
        ref.build_refiner("segnet")
    with pytest.raises(ValueError, match="n_classes"):
        ref.build_refiner("unet", n_classes=1)
    with pytest.raises(ValueError, match="filters"):
        ref.build_refiner("unet", filters=(8,))


def test_channels_last_gives_the_same_output() -> None:
    model = small("agunet").eval()
    x = example(model)
    with torch.no_grad():
        reference = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ attention parts


def test_agunet_gates_its_skips_and_dagunet_has_dual_attention_instead() -> None:
    agunet, dagunet = small("agunet"), small("dagunet")
    assert sum(isinstance(m, blocks.AttentionGate) for m in agunet.modules()) == len(SMALL) - 1
    assert not any(isinstance(m, blocks.DualAttention) for m in agunet.modules())
    assert not any(isinstance(m, blocks.AttentionGate) for m in dagunet.modules())
    assert isinstance(dagunet.bottom_attention, blocks.DualAttention)


def test_multiscale_input_feeds_every_intermediate_level() -> None:
    model = small("agunet")
    # Levels 1 and 2 each see the input downsampled (4 channels -> filters[i]); the bottom does not.
    assert [p[0].in_channels for p in model.encoder.pyramid] == [4, 4]
    assert [p[0].out_channels for p in model.encoder.pyramid] == [8, 8]


def test_attention_gate_only_scales_the_skip_down() -> None:
    torch.manual_seed(1)
    gate = blocks.AttentionGate(6, 5, 3).eval()
    g, skip = torch.randn(2, 6, 8, 8), torch.rand(2, 5, 8, 8) + 0.1
    weights = gate.attention_map(g, skip)
    out = gate(g, skip)
    assert weights.shape == (2, 1, 8, 8) and torch.all((weights > 0) & (weights < 1))
    torch.testing.assert_close(out, skip * weights)
    assert weights.std() > 0  # depends on position


@pytest.mark.parametrize("module", [blocks.PositionAttention(16), blocks.ChannelAttention()])
def test_self_attention_starts_as_identity_and_mixes_once_gamma_moves(module: nn.Module) -> None:
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(module(x), x)
    with torch.no_grad():
        module.gamma.fill_(1.0)
    out = module(x)
    assert out.shape == x.shape and not torch.allclose(out, x)


def test_position_attention_is_permutation_equivariant_over_pixels() -> None:
    # Self-attention over pixels: permuting the pixels permutes the output the same way.
    torch.manual_seed(2)
    module = blocks.PositionAttention(16)
    with torch.no_grad():
        module.gamma.fill_(0.7)
    x = torch.randn(1, 16, 2, 3)
    perm = torch.randperm(6)
    permuted = x.flatten(2)[:, :, perm].reshape_as(x)
    torch.testing.assert_close(module(permuted).flatten(2), module(x).flatten(2)[:, :, perm])


def test_squeeze_excite_scales_each_channel_by_a_gate() -> None:
    se = blocks.SqueezeExcite(16)
    x = torch.rand(2, 16, 5, 5) + 0.5
    ratio = se(x) / x
    assert torch.all((ratio > 0) & (ratio < 1))
    torch.testing.assert_close(ratio, ratio[:, :, :1, :1].expand_as(ratio))  # one factor per channel


def test_aspp_keeps_size_and_has_five_branches() -> None:
    aspp = blocks.ASPP(16, 6).eval()
    assert aspp(torch.rand(1, 16, 4, 4)).shape == (1, 6, 4, 4)
    assert [b[0].dilation for b in aspp.branches] == [(1, 1), (6, 6), (12, 12), (18, 18)]
    assert aspp.project[0][0].in_channels == 5 * 6


def test_doubleunet_second_network_sees_input_times_foreground_probability() -> None:
    model = small("doubleunet").eval()
    x = example(model)
    seen: list[torch.Tensor] = []
    model.net2.encoder[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        final, first = model(x, return_aux=True)
    foreground = 1 - torch.softmax(first, dim=1)[:, :1]
    torch.testing.assert_close(seen[0], x * foreground)
    # Network 2's decoder concatenates both encoders' skips.
    assert model.net2.decoder[-1][0][0].in_channels == SMALL[1] + 2 * SMALL[0]


# ------------------------------------------------------------ parameter counts


def test_parameter_count_counts_weights_and_biases() -> None:
    layer = nn.Conv2d(3, 5, 3)
    assert parameter_count(layer) == 3 * 5 * 9 + 5
    layer.bias.requires_grad_(False)
    assert parameter_count(layer, trainable_only=True) == 3 * 5 * 9


def test_parameter_counts_match_the_paper_when_counted_like_keras(table) -> None:
    rows = {arch: (ours, keras, paper) for arch, ours, keras, paper in table}
    # Our exact figures (PyTorch, bias-free convolutions before BatchNorm), pinned.
    assert {arch: rows[arch][0] for arch in rows} == {
        "unet": 11_558_834,
        "agunet": 7_655_288,
        "dagunet": 10_059_072,
        "doubleunet": 16_002_724,
        "unet-lr": 11_558_762,
    }
    # Counted as the authors' Keras code would, within 1 % of the paper (DAGU-Net: the
    # authors' Keras layer did not register its attention convolutions, 82k weights).
    for arch in PAPER_ARCHS:
        ours, keras, paper = rows[arch]
        assert keras == pytest.approx(paper, rel=0.01), arch


def test_module_prints_the_parameter_table(table, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setattr(ref, "parameter_table", lambda: table)
    ref.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["arch", "ours"]
    by_arch = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(by_arch) == set(ref.ARCHS)
    assert by_arch["unet"] == ["11.559", "11.582", "11.58"]
    assert by_arch["unet-lr"][-1] == "-"


def test_refiner_epoch_with_one_slide_left_over_trains() -> None:
    """17 training slides in batches of 4 left a batch of one: BatchNorm at the 1×1 bottleneck refused it."""
    import numpy as np

    from h2gnet.train.config import RefineTrainConfig
    from h2gnet.train.refiner import Sample, _train_epoch

    model = small("unet")
    rng = np.random.default_rng(0)
    samples = [Sample(f"s{i}", rng.random((4, 8, 8), dtype=np.float32), (rng.random((8, 8)) > 0.5).astype(np.uint8))
               for i in range(5)]
    cfg = RefineTrainConfig(manifest="m.csv", heatmaps=None, batch_size=4, accumulation=1, augment=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = _train_epoch(model, samples, cfg, optimizer, np.random.default_rng(1))
    assert 0.0 <= loss <= 1.0
