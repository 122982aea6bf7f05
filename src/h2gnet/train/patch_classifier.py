"""Stage 1: train the patch classifier from raw slides (paper sections 2.3, 2.4, 3.4).

Batches come from the hierarchical sampler, read on the fly by DataLoader
workers. With a fitted clustering, every batch also goes through the frozen
VGG16 → z-score → PCA → nearest-centroid pipeline and the loss is the
cluster-weighted cross-entropy (CWCE); otherwise plain cross-entropy.
The best model by validation loss is exported to ONNX at the end.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from h2gnet.conventions import MODEL_FILE
from h2gnet.errors import H2GNetError
from h2gnet.evaluation.patch_accuracy import evaluate_patch_model
from h2gnet.io.manifest import read_manifest, select
from h2gnet.patches.sampling import HierarchicalSampler, load_indexes
from h2gnet.train.augment import PatchAugmentConfig, augment_patch
from h2gnet.train.clustering import load_image_cluster_assigner
from h2gnet.train.config import PatchTrainConfig, describe_lr
from h2gnet.train.dataset import patch_stream
from h2gnet.train.distributed import (
    DistContext,
    all_sum,
    barrier,
    distributed_run,
    on_main,
    rank_seed,
    split_steps,
    wrap,
)
from h2gnet.train.export import export_classifier_onnx
from h2gnet.train.finetune import Freezer, InitModel, load_init
from h2gnet.train.losses import cwce_loss
from h2gnet.train.models import build_classifier
from h2gnet.train.plan import MIN_FINETUNE_STEPS, MIN_OPTIMIZER_STEPS, TrainingPlan, epochs_for, plan_run
from h2gnet.train.run_state import TrainingRun, set_threads

CLUSTER_META = "h2gnet_cluster.json"


def _samplers(cfg: PatchTrainConfig) -> tuple[HierarchicalSampler, HierarchicalSampler, list]:
    entries = read_manifest(cfg.manifest)
    train = [e for e in select(entries, "train") if e.annotation is not None]
    val = [e for e in select(entries, "val") if e.annotation is not None]
    if not train or not val:
        raise H2GNetError(cfg.manifest, "needs annotated slides in both the train and the val split")
    test = [e for e in select(entries, "test") if e.annotation is not None]
    return (HierarchicalSampler(load_indexes(train, cfg.index_dir), cfg.stages),
            HierarchicalSampler(load_indexes(val, cfg.index_dir), cfg.stages),
            load_indexes(test, cfg.index_dir) if test else [])


def _loader(sampler: HierarchicalSampler, cfg: PatchTrainConfig, seed: int, steps: int, *, augment: bool,
            input_size: int) -> DataLoader:
    aug: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None
    if augment and cfg.blur_um > 0:
        aug = partial(augment_patch, config=blur_augment_config(sampler, cfg.blur_um, input_size))
    elif augment:
        aug = augment_patch
    stream = patch_stream(sampler, seed, aug, length=steps * cfg.batch_size, out_size=input_size)
    return DataLoader(stream, batch_size=cfg.batch_size, num_workers=cfg.workers,
                      prefetch_factor=4 if cfg.workers else None, persistent_workers=False)


def blur_augment_config(sampler: HierarchicalSampler, blur_um: float, input_size: int) -> PatchAugmentConfig:
    """The paper's patch augmentations plus a Gaussian blur (p = 0.5) of σ uniform in [0, ``blur_um``] µm,
    converted to px of the patches as the model sees them (``input_size`` px over the index's field of view)."""
    sizes = {round(ix.patch_mpp * ix.patch_size, 6) for ix in sampler.indexes}
    if len(sizes) != 1:
        raise H2GNetError(None, f"--blur-um needs one patch field of view across the indexes, got {sorted(sizes)} µm")
    mpp = sizes.pop() / input_size  # µm per px of the patches the model is trained on
    return PatchAugmentConfig(p_blur=0.5, blur_sigma=(0.0, blur_um / mpp))


def describe_augmentation(cfg: PatchTrainConfig) -> str:
    """The plan line's words for the augmentations a run uses."""
    if not cfg.augment:
        return "no augmentation"
    blur = f" + Gaussian blur σ ≤ {cfg.blur_um:g} µm" if cfg.blur_um > 0 else ""
    return f"augmentation: the paper's (flips, 90° rotations, HSV, brightness){blur}"


def _cluster_assigner(cfg: PatchTrainConfig):
    if not cfg.clusters:
        return None, None

    meta_path = Path(cfg.clusters) / CLUSTER_META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return load_image_cluster_assigner(cfg.clusters), meta.get("input_size")


def _seed(seed: int, epoch: int) -> int:
    """A stream seed per (run seed, epoch); epoch -1 is the fixed validation stream."""
    return int(np.random.SeedSequence([seed, epoch + 1]).generate_state(1)[0])


def _loss(logits, y, clusters):
    if clusters is None:
        return F.cross_entropy(logits, y)

    return cwce_loss(logits, y, clusters)


def _assign(assigner, size, x):
    if assigner is None:
        return None
    if size and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return assigner(x)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               clusters: torch.Tensor | None, before_step=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch (CE, or CWCE with ``clusters``); returns (loss, logits), detached.
    Under DDP the gradients are averaged over the ranks: 2 ranks × batch 4 make the step of one batch of 8.
    ``before_step``: called between the backward pass and the optimizer step (e.g. to freeze a backbone)."""
    logits = model(x)
    loss = _loss(logits, y, clusters)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if before_step is not None:
        before_step()
    optimizer.step()
    return loss.detach(), logits.detach()


def _run_epoch(model, loader, assigner, cluster_size, optimizer=None, bar=None, ctx: DistContext | None = None,
               freezer: tuple[Freezer, int] | None = None) -> dict:
    """One pass over ``loader`` (training when ``optimizer``); loss and balanced accuracy over all ranks.
    ``freezer``: (the run's :class:`Freezer`, the run's optimizer steps before this epoch)."""
    training = optimizer is not None
    model.train(training)
    total, n, correct = 0.0, 0, np.zeros((2, 2))
    t0 = time.perf_counter()
    with torch.set_grad_enabled(training):
        for i, (x, y, _, _) in enumerate(loader):
            x = x.contiguous(memory_format=torch.channels_last)
            clusters = _assign(assigner, cluster_size, x)
            if training:
                hook = None if freezer is None else (lambda step=freezer[1] + i: freezer[0].before_step(step))
                loss, logits = train_step(model, optimizer, x, y, clusters, hook)
            else:
                logits = model(x)
                loss = _loss(logits, y, clusters)
            total += loss.item() * len(y)
            n += len(y)
            pred = logits.argmax(1).numpy()
            for t, p in zip(y.numpy(), pred):
                if t < 2 and p < 2:
                    correct[t, p] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total / n:.4f}")
    seconds = time.perf_counter() - t0
    if ctx is not None and ctx.distributed:
        total, n_all, *cells = all_sum([total, float(n), *correct.ravel()], ctx)
        n, correct = int(n_all), np.asarray(cells).reshape(2, 2)
    recall = [correct[c, c] / correct[c].sum() for c in (0, 1) if correct[c].sum()]
    return {"loss": total / max(n, 1), "balanced_accuracy": float(np.mean(recall)) if recall else float("nan"),
            "seconds": seconds, "samples": n}


def plan_patch_training(cfg: PatchTrainConfig, world_size: int = 1) -> TrainingPlan:
    """The run's plan: ``cfg.steps`` batches of ``cfg.batch_size`` patches per epoch and process, one
    optimizer step each; ``cfg.total_steps`` sets the epochs if given."""
    epochs = cfg.epochs if cfg.total_steps is None else epochs_for(cfg.total_steps, cfg.steps)
    return plan_run(cfg.steps * cfg.batch_size * world_size, cfg.batch_size, epochs, 1, world_size)


def _check_init(init: InitModel, cfg: PatchTrainConfig, patch_size: int, patch_mpp: float) -> int:
    """The input size of a fine-tuned classifier (its card's); an error when the patches would be read at
    another µm/px than the model was trained at."""
    from h2gnet.params import ParameterError

    size = init.input_size
    if cfg.input_size is not None and cfg.input_size != size:
        raise ParameterError("input_size", f"the --init model takes {size} px patches (got {cfg.input_size}); "
                                           "leave --input-size out")
    mpp = patch_mpp * patch_size / size
    if init.mpp is not None and abs(mpp - init.mpp) > 0.01 * init.mpp:
        raise H2GNetError(cfg.index_dir, f"patches of {patch_size} px at {patch_mpp:g} µm/px read as {size} px "
                                         f"are {mpp:g} µm/px, but {init.source.name} takes {init.mpp:g} µm/px: "
                                         f"index with `h2gnet patches --patch-mpp {init.mpp * size / patch_size:g}`")
    return size


def train_patch_classifier(run_dir: str | Path, cfg: PatchTrainConfig, *, overwrite: bool = False) -> dict:
    """Train (or resume) in ``run_dir``; export ``model.onnx``; evaluate the test patches.

    Under ``torchrun`` each process is one DDP rank (see :mod:`h2gnet.train.distributed`): a step's global
    batch is ``batch_size × world size``, rank 0 alone writes the run folder. Returns the final metrics
    (also written to ``run_dir/metrics.json``).
    """
    run = TrainingRun(run_dir, cfg, overwrite=overwrite)  # refuses a bad folder before any work
    with distributed_run() as ctx, run.held("train-patch", writer=ctx.is_main):  # one training per run folder
        return _train(run, cfg, ctx)


def _train(run: TrainingRun, cfg: PatchTrainConfig, ctx: DistContext) -> dict:
    from tqdm.auto import tqdm

    run.read_only = not ctx.is_main  # rank 0 writes the run folder
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_s, val_s, test_ix = _samplers(cfg)
    patch_size, patch_mpp = train_s.indexes[0].patch_size, train_s.indexes[0].patch_mpp
    init = load_init(cfg.init, "patch-classifier", cfg.preset) if cfg.init else None  # errors before any work
    if init is not None:
        init.check_output(run.dir)
        input_size = _check_init(init, cfg, patch_size, patch_mpp)
        model = init.model.to(memory_format=torch.channels_last)
        backbone = init.backbone
    else:
        input_size = cfg.input_size or patch_size
        model = build_classifier(cfg.arch, cfg.n_classes, cfg.weights).to(memory_format=torch.channels_last)
        backbone = [f"backbone.{n}" for n, _ in model.backbone.named_parameters()]
    freezer = Freezer(model, backbone, cfg.freeze_backbone_steps)
    net = wrap(model, ctx)  # DDP on several ranks (rank 0's weights broadcast), the model itself on one
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    barrier(ctx)  # every rank has read the run folder before rank 0 writes it
    run.begin()
    progress = run.resume(model, optimizer)  # every rank: the same checkpoint
    assigner, cluster_size = _cluster_assigner(cfg)
    plan = plan_patch_training(cfg, ctx.world_size)
    epochs = plan.epochs
    if ctx.is_main:
        start = f"from {init.describe()}" if init is not None else f"from {cfg.weights or 'random weights'}"
        print(f"train-patch {plan.describe('patches')}; trains {freezer.describe()} {start} at {describe_lr(cfg)}"
              f"; {describe_augmentation(cfg)}", file=sys.stderr)
        plan.warn_if_short(f"raise --total-steps, --epochs {cfg.epochs} or --steps {cfg.steps} (batches per epoch)",
                           MIN_FINETUNE_STEPS if init is not None else MIN_OPTIMIZER_STEPS)
    seed = rank_seed(cfg.seed, ctx.rank)  # each rank its own part of the sampling stream
    val_steps = split_steps(cfg.val_steps, ctx)
    total_steps = (epochs - progress.epoch) * (cfg.steps + val_steps)
    with tqdm(total=total_steps, desc="train-patch", unit="batch", disable=not (cfg.progress and ctx.is_main)) as bar:
        for epoch in range(progress.epoch, epochs):
            bar.set_description(f"train-patch epoch {epoch + 1}/{epochs}")
            train_loader = _loader(train_s, cfg, _seed(seed, epoch), cfg.steps, augment=cfg.augment,
                                   input_size=input_size)
            tr = _run_epoch(net, train_loader, assigner, cluster_size, optimizer, bar, ctx,
                            (freezer, epoch * cfg.steps))
            val_loader = _loader(val_s, cfg, _seed(seed, -1), val_steps, augment=False, input_size=input_size)
            va = _run_epoch(model, val_loader, assigner, cluster_size, None, bar, ctx)  # summed over ranks
            run.end_epoch(model, optimizer, progress, {
                "train_loss": tr["loss"], "train_balanced_accuracy": tr["balanced_accuracy"],
                "val_loss": va["loss"], "val_balanced_accuracy": va["balanced_accuracy"],
                "seconds_per_step": tr["seconds"] / max(cfg.steps, 1), "world_size": ctx.world_size})

    def finish() -> dict:
        best_epoch = run.load_best(model)
        if init is not None:
            onnx_path = init.export(model.eval(), run.dir / MODEL_FILE)
        else:
            onnx_path = export_classifier_onnx(model.eval(), run.dir / MODEL_FILE, input_size,
                                               mpp=patch_mpp * patch_size / input_size, arch=cfg.arch)
        metrics: dict = {"best_epoch": best_epoch, "best_val_loss": progress.best_val_loss, "plan": plan.as_dict()}
        if init is not None:
            metrics["init"] = init.summary()
        if test_ix:
            metrics["test"] = evaluate_patch_model(onnx_path, test_ix, cfg.eval_per_class, cfg.seed,
                                                   progress=cfg.progress)
        run.write_metrics(metrics)
        return metrics

    return on_main(ctx, finish)  # rank 0 exports and evaluates; every rank returns its metrics
