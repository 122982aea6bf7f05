"""Training losses: cluster-weighted cross-entropy (patch stage) and soft Dice (refinement stage).

Both functions take raw network outputs (logits) by default and are numerically
stable: probabilities are only ever handled through ``log_softmax``/``softmax``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ClusterReduction = Literal["mean", "sum"]


def _per_sample_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Categorical cross-entropy of each sample, shape (B,), in nats.

    ``targets`` is either class indices (B,) of an integer dtype or a (B, C)
    float tensor of class probabilities (one-hot or soft labels).
    """
    log_probs = F.log_softmax(logits, dim=1)
    if targets.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        if targets.shape != logits.shape[:1]:
            raise ValueError(
                f"class-index targets must have shape {tuple(logits.shape[:1])}, got {tuple(targets.shape)}"
            )
        n_classes = logits.shape[1]
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n_classes):
            raise ValueError(f"class indices must lie in [0, {n_classes - 1}]")
        return -log_probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    if targets.shape != logits.shape:
        raise ValueError(f"one-hot targets must have shape {tuple(logits.shape)}, got {tuple(targets.shape)}")
    return -(targets.to(log_probs.dtype) * log_probs).sum(dim=1)


def cwce_loss(
    logits: Tensor,
    targets: Tensor,
    clusters: Tensor,
    *,
    cluster_reduction: ClusterReduction = "mean",
) -> Tensor:
    """Cluster-weighted categorical cross-entropy (CWCE, H2G-Net eq. 1), a scalar in nats.

    The batch is split by cluster id; for each of the K_b clusters present in
    the batch the cross-entropy of its samples is computed on its own, and the
    result is the macro average over those K_b clusters.  Clusters absent from
    the batch do not appear in the average, so they cannot produce 0/0.

    Per-cluster normalisation (``cluster_reduction``):

    * ``"mean"`` (default): each cluster contributes the *mean* CE of its n_k
      samples, ``L = 1/K_b * sum_k 1/n_k * sum_{i in k} CE_i``.  This is the
      reading of the paper's text ("calculated the cross-entropy loss for each
      cluster independently, and then calculated the macro average"): every
      tissue-type cluster weighs the same whatever its share of the batch,
      which is the balancing the method is for.  With one cluster in the batch
      it equals the ordinary mean cross-entropy.
    * ``"sum"``: eq. 1 taken literally, ``L = 1/K_b * sum_k sum_{i in k} CE_i``
      (no 1/n_k).  This equals ``B/K_b`` times the mean CE, i.e. it rescales
      the ordinary loss by the batch's cluster count and does not re-weight
      clusters against each other; provided for ablations only.

    (The authors' released TensorFlow code additionally macro-averages over the
    true classes, i.e. it averages per (class, cluster) cell; that variant is
    not implemented here.)

    Args:
        logits: (B, C) unnormalised class scores.
        targets: (B,) class indices (integer dtype) or (B, C) one-hot / soft labels.
        clusters: (B,) integer cluster id of each sample (any non-negative or
            negative integers; only equality matters).
        cluster_reduction: ``"mean"`` or ``"sum"``, see above.

    Returns:
        0-d tensor, differentiable with respect to ``logits``.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("cwce_loss needs a non-empty batch")
    if clusters.shape != logits.shape[:1]:
        raise ValueError(f"clusters must have shape {tuple(logits.shape[:1])}, got {tuple(clusters.shape)}")
    if clusters.is_floating_point():
        raise ValueError("clusters must be an integer tensor of cluster ids")
    if cluster_reduction not in ("mean", "sum"):
        raise ValueError(f"cluster_reduction must be 'mean' or 'sum', got {cluster_reduction!r}")

    per_sample = _per_sample_cross_entropy(logits, targets)
    _, cluster_index = torch.unique(clusters, return_inverse=True)  # 0..K_b-1, only present clusters
    n_present = int(cluster_index.max()) + 1
    sums = per_sample.new_zeros(n_present).index_add(0, cluster_index, per_sample)
    if cluster_reduction == "mean":
        counts = torch.bincount(cluster_index, minlength=n_present).to(per_sample.dtype)
        per_cluster = sums / counts  # every count >= 1 by construction
    else:
        per_cluster = sums
    return per_cluster.mean()


def _as_one_hot(target: Tensor, n_classes: int, like: Tensor) -> Tensor:
    """(N, H, W) integer labels or (N, C, H, W) one-hot → float (N, C, H, W) like ``like``."""
    if target.ndim == like.ndim - 1 and not target.is_floating_point():
        if target.shape != like.shape[:1] + like.shape[2:]:
            raise ValueError(
                f"label mask shape {tuple(target.shape)} does not match prediction {tuple(like.shape)}"
            )
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= n_classes):
            raise ValueError(f"mask labels must lie in [0, {n_classes - 1}]")
        one_hot = F.one_hot(target.long(), n_classes)  # (N, H, W, C)
        return one_hot.movedim(-1, 1).to(like.dtype)
    if target.shape != like.shape:
        raise ValueError(
            f"one-hot target shape {tuple(target.shape)} does not match prediction {tuple(like.shape)}"
        )
    return target.to(like.dtype)


def dice_loss(
    prediction: Tensor,
    target: Tensor,
    *,
    from_logits: bool = True,
    include_background: bool = False,
    smooth: float = 1.0,
    batch_dice: bool = False,
    squared_denominator: bool = False,
) -> Tensor:
    """Soft Dice loss ``1 - mean Dice`` for segmentation, a scalar in [0, 1].

    Variant chosen (defaults):

    * **Foreground classes only** (``include_background=False``): for the
      binary tumour task that is the tumour channel alone, which is exactly
      the quantity the study reports (tumour DSC).  Including the background
      channel lets the huge, easy background term dilute the gradient of the
      small tumour region.  With C > 2 classes the loss averages classes 1..C-1.
      The authors' released code used this ``no_bg`` form for its attention
      U-Nets; set ``include_background=True`` to average over all C classes.
    * **Per image** (``batch_dice=False``): Dice is computed over the H×W
      pixels of each image and class, then averaged over images and classes,
      so every slide counts the same regardless of its tumour area.
      ``batch_dice=True`` pools all pixels of the batch per class instead.
    * **Laplace smoothing** ``smooth`` (default 1, in pixel-count units):
      ``Dice = (2·sum(p·t) + smooth) / (sum(p) + sum(t) + smooth)``.  It keeps
      the loss defined for images with no tumour (then the loss drives the
      tumour probability mass towards zero) and is negligible for
      1024×1024 targets.  ``squared_denominator=True`` uses
      ``sum(p²) + sum(t²)`` (V-Net form) as in the authors' Keras code.

    Args:
        prediction: (N, C, H, W) logits (``from_logits=True``, softmax over C is
            applied here) or probabilities that already sum to 1 over C.
        target: (N, H, W) integer class mask, or (N, C, H, W) one-hot/soft target.
        from_logits: whether ``prediction`` holds logits.
        include_background: average over all classes instead of classes 1..C-1.
        smooth: additive smoothing constant (>= 0; 0 only if no empty channel).
        batch_dice: pool pixels over the whole batch per class.
        squared_denominator: use squared sums in the denominator.

    Returns:
        0-d tensor, differentiable with respect to ``prediction``.
    """
    if prediction.ndim < 3:
        raise ValueError(f"prediction must be (N, C, *spatial), got shape {tuple(prediction.shape)}")
    n_classes = prediction.shape[1]
    if not include_background and n_classes < 2:
        raise ValueError("excluding the background needs at least 2 classes")
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    probs = F.softmax(prediction, dim=1) if from_logits else prediction
    one_hot = _as_one_hot(target, n_classes, probs)
    if not include_background:
        probs, one_hot = probs[:, 1:], one_hot[:, 1:]

    spatial = tuple(range(2, probs.ndim))
    dims = (0, *spatial) if batch_dice else spatial
    intersection = (probs * one_hot).sum(dim=dims)
    if squared_denominator:
        denominator = (probs * probs).sum(dim=dims) + (one_hot * one_hot).sum(dim=dims)
    else:
        denominator = probs.sum(dim=dims) + one_hot.sum(dim=dims)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice.mean()
