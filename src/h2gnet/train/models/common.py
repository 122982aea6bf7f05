"""Helpers shared by the classifier and refinement models: counting and BatchNorm calibration."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def parameter_count(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (weights and biases) in ``model``.

    ``trainable_only`` counts only those with ``requires_grad``.  Buffers such
    as BatchNorm running statistics are not parameters and are not counted;
    see :func:`keras_style_count` for the figure Keras' ``model.summary()``
    reports as "Total params".
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def batchnorm_statistics_count(model: nn.Module) -> int:
    """Number of BatchNorm running-statistic values (running mean + running variance)."""
    total = 0
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            for statistic in (module.running_mean, module.running_var):
                total += 0 if statistic is None else statistic.numel()
    return total


def keras_style_count(model: nn.Module) -> int:
    """Parameters plus BatchNorm moving statistics: what Keras calls "Total params".

    The H2G-Net paper's parameter counts come from Keras summaries, which
    include each BatchNorm layer's moving mean and variance.
    """
    return parameter_count(model) + batchnorm_statistics_count(model)


def _batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """All BatchNorm layers of ``model`` with running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Re-estimate every BatchNorm's running mean/variance from ``batches``; return the batch count.

    A randomly initialised network in eval mode normalises with mean 0 and
    variance 1, which is far from its real activation statistics, and its
    output is then nearly constant.  This resets the running statistics and
    replaces them by the exact average over the given batches (cumulative
    moving average, ``momentum=None``), with everything else in eval mode
    (dropout off).  Weights are not changed.  Each batch is fed to
    ``model(batch)`` as it is, on the device of the model's first parameter;
    batches need at least two samples (BatchNorm1d in training mode needs them).

    The model's train/eval mode and the layers' momenta are restored afterwards.
    Raises ``ValueError`` if ``batches`` is empty (before touching the model).
    """
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("calibrate_batchnorm needs at least one batch")
    layers = _batchnorm_layers(model)
    if not layers:
        return 0
    device = next(model.parameters()).device
    was_training = model.training
    momenta = [layer.momentum for layer in layers]
    model.eval()
    count = 0
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            layer.train()
        batch: Tensor | None = first
        while batch is not None:
            model(batch.to(device))
            count += 1
            batch = next(iterator, None)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.train(was_training)
    return count
