"""Hand-computed checks of the CWCE and soft Dice losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from h2gnet.train.losses import cwce_loss, dice_loss


def logits_for(*probabilities: tuple[float, ...]) -> torch.Tensor:
    """Logits whose softmax is exactly the given rows of probabilities (log p)."""
    return torch.log(torch.tensor(probabilities, dtype=torch.float64)).requires_grad_(True)


# rows: p(class 0), p(class 1)
P = [(0.8, 0.2), (0.3, 0.7), (0.6, 0.4), (0.1, 0.9), (0.5, 0.5)]


def test_cwce_macro_averages_per_cluster_means_with_absent_clusters() -> None:
    logits = logits_for(*P)
    targets = torch.tensor([0, 1, 1, 1, 0])
    clusters = torch.tensor([7, 7, 7, 2, 2])  # ids 0,1,3..6,8,9 absent
    ce = [-math.log(0.8), -math.log(0.7), -math.log(0.4), -math.log(0.9), -math.log(0.5)]
    expected = ((ce[0] + ce[1] + ce[2]) / 3 + (ce[3] + ce[4]) / 2) / 2
    loss = cwce_loss(logits, targets, clusters)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # differs from plain CE, which would weigh the 3-sample cluster more
    assert abs(loss.item() - sum(ce) / 5) > 1e-3


def test_cwce_literal_sum_variant() -> None:
    logits = logits_for(*P)
    targets = torch.tensor([0, 1, 1, 1, 0])
    clusters = torch.tensor([7, 7, 7, 2, 2])
    ce = [-math.log(0.8), -math.log(0.7), -math.log(0.4), -math.log(0.9), -math.log(0.5)]
    expected = ((ce[0] + ce[1] + ce[2]) + (ce[3] + ce[4])) / 2
    loss = cwce_loss(logits, targets, clusters, cluster_reduction="sum")
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_cwce_cluster_with_single_class_and_one_hot_targets() -> None:
    logits = logits_for((0.8, 0.2), (0.6, 0.4), (0.3, 0.7))
    one_hot = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    clusters = torch.tensor([4, 4, 9])  # cluster 4 holds only class 0, cluster 9 only class 1
    expected = ((-math.log(0.8) - math.log(0.6)) / 2 + -math.log(0.7)) / 2
    loss_one_hot = cwce_loss(logits, one_hot, clusters)
    loss_index = cwce_loss(logits, one_hot.argmax(1), clusters)
    assert loss_one_hot.item() == pytest.approx(expected, rel=1e-12)
    assert loss_index.item() == pytest.approx(expected, rel=1e-12)


def test_cwce_single_cluster_equals_plain_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 3, dtype=torch.float64)
    targets = torch.randint(0, 3, (16,))
    clusters = torch.full((16,), 5)
    assert cwce_loss(logits, targets, clusters).item() == pytest.approx(
        F.cross_entropy(logits, targets).item(), rel=1e-12
    )


def test_cwce_one_sample_per_cluster_equals_plain_cross_entropy() -> None:
    torch.manual_seed(1)
    logits = torch.randn(6, 2, dtype=torch.float64)
    targets = torch.randint(0, 2, (6,))
    clusters = torch.arange(6)
    assert cwce_loss(logits, targets, clusters).item() == pytest.approx(
        F.cross_entropy(logits, targets).item(), rel=1e-12
    )


def test_cwce_gradients_finite_and_extreme_logits_stable() -> None:
    logits = torch.tensor([[1000.0, -1000.0], [-1000.0, 1000.0], [0.0, 0.0]], requires_grad=True)
    targets = torch.tensor([1, 1, 0])  # first sample is confidently wrong
    clusters = torch.tensor([0, 3, 3])
    loss = cwce_loss(logits, targets, clusters)
    loss.backward()
    assert torch.isfinite(loss)
    # cluster 0: CE = 2000; cluster 3: (0 + log 2) / 2
    assert loss.item() == pytest.approx((2000.0 + math.log(2) / 2) / 2, rel=1e-5)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # the wrong sample's gradient pushes class 0 down with weight 1/K_b = 1/2
    assert logits.grad[0, 0].item() == pytest.approx(0.5, rel=1e-6)


def test_cwce_gradient_matches_per_cluster_weighting() -> None:
    logits = logits_for(*P)
    targets = torch.tensor([0, 1, 1, 1, 0])
    clusters = torch.tensor([7, 7, 7, 2, 2])
    cwce_loss(logits, targets, clusters).backward()
    # d CE_i / d logit_{i,c} = p_ic - y_ic; each sample is weighted 1/(K_b * n_k)
    weights = torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 4, 1 / 4], dtype=torch.float64)
    probs = torch.tensor(P, dtype=torch.float64)
    expected = (probs - F.one_hot(targets, 2).double()) * weights[:, None]
    assert torch.allclose(logits.grad, expected, atol=1e-12)


def test_cwce_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        cwce_loss(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        cwce_loss(torch.zeros(3, 2), torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        cwce_loss(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))


def _two_class_probs(tumour: list[list[float]]) -> torch.Tensor:
    """(1, 2, H, W) probabilities from a tumour-probability map."""
    t = torch.tensor(tumour, dtype=torch.float64)
    return torch.stack([1 - t, t]).unsqueeze(0)


def test_dice_foreground_only_by_hand() -> None:
    probs = _two_class_probs([[0.9, 0.2], [0.6, 0.0]])
    mask = torch.tensor([[[1, 0], [1, 0]]])
    # tumour: intersection 1.5, sum p = 1.7, sum t = 2 ; smooth 1
    expected = 1 - (2 * 1.5 + 1) / (1.7 + 2 + 1)
    loss = dice_loss(probs, mask, from_logits=False)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_dice_with_background_by_hand() -> None:
    probs = _two_class_probs([[0.9, 0.2], [0.6, 0.0]])
    mask = torch.tensor([[[1, 0], [1, 0]]])
    tumour = (2 * 1.5 + 1) / (1.7 + 2 + 1)
    background = (2 * (0.8 + 1.0) + 1) / (2.3 + 2 + 1)
    loss = dice_loss(probs, mask, from_logits=False, include_background=True)
    assert loss.item() == pytest.approx(1 - (tumour + background) / 2, rel=1e-12)


def test_dice_per_image_vs_batch_and_squared() -> None:
    probs = torch.cat([_two_class_probs([[1.0, 0.0]]), _two_class_probs([[0.5, 0.5]])])
    mask = torch.tensor([[[1, 0]], [[0, 0]]])
    image0 = (2 * 1 + 1) / (1 + 1 + 1)  # perfect
    image1 = (0 + 1) / (1.0 + 0 + 1)  # no tumour, predicted mass 1
    per_image = dice_loss(probs, mask, from_logits=False)
    assert per_image.item() == pytest.approx(1 - (image0 + image1) / 2, rel=1e-12)
    pooled = (2 * 1 + 1) / (2.0 + 1 + 1)
    batch = dice_loss(probs, mask, from_logits=False, batch_dice=True)
    assert batch.item() == pytest.approx(1 - pooled, rel=1e-12)
    squared_image1 = (0 + 1) / (0.25 + 0.25 + 0 + 1)
    squared = dice_loss(probs, mask, from_logits=False, squared_denominator=True)
    assert squared.item() == pytest.approx(1 - (image0 + squared_image1) / 2, rel=1e-12)


def test_dice_from_logits_equals_from_probs_and_one_hot_target() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.randint(0, 3, (2, 4, 4))
    one_hot = F.one_hot(mask, 3).permute(0, 3, 1, 2).double()
    a = dice_loss(logits, mask)
    b = dice_loss(torch.softmax(logits, 1), one_hot, from_logits=False)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    a.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_dice_perfect_prediction_is_zero_and_empty_mask_is_finite() -> None:
    mask = torch.tensor([[[0, 1], [1, 1]]])
    one_hot = F.one_hot(mask, 2).permute(0, 3, 1, 2).double()
    assert dice_loss(one_hot, mask, from_logits=False).item() == pytest.approx(0.0, abs=1e-12)
    logits = torch.full((1, 2, 8, 8), 0.0, requires_grad=True)
    empty = torch.zeros(1, 8, 8, dtype=torch.long)
    loss = dice_loss(logits, empty)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # 32 units of tumour probability predicted on a tumour-free image
    assert loss.item() == pytest.approx(1 - 1 / 33, rel=1e-6)


def test_dice_rejects_mismatched_target() -> None:
    with pytest.raises(ValueError):
        dice_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError):
        dice_loss(torch.zeros(1, 2, 4, 4), torch.full((1, 4, 4), 2))
