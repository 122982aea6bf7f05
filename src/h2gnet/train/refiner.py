"""Stage 2: train a refinement network on low-resolution slides + stage-1 heatmaps (section 3.4).

Each training sample is one slide: its low-resolution RGB image and heatmap
resized to ``input_size``² (4 channels; 3 for UNet-LR) and the annotation on
the same grid. Adam at 1e-3, batch 4 with 6 gradient-accumulation steps,
Dice loss (plus the deep-supervision outputs of AGU-/DAGU-Net), flips, 90°
rotations, zoom and Macenko stain augmentation, early stopping on the
validation loss (patience 100, at most 1000 epochs); resumable.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from h2gnet.conventions import MODEL_FILE, slide_outputs
from h2gnet.errors import H2GNetError
from h2gnet.infer.heatmap import load_slide_heatmap
from h2gnet.infer.model_card import ModelCard
from h2gnet.infer.refine_input import low_resolution, network_input, target_mask
from h2gnet.io.annotations import load_annotation
from h2gnet.io.manifest import SlideEntry, read_manifest, select
from h2gnet.io.slides import open_slide
from h2gnet.params import ParameterError
from h2gnet.train.augment import augment_refinement
from h2gnet.train.config import RefineTrainConfig, describe_lr
from h2gnet.train.distributed import (
    DistContext,
    all_sum,
    barrier,
    distributed_run,
    on_main,
    rank_seed,
    unwrap,
    wrap,
)
from h2gnet.train.export import export_refiner_onnx
from h2gnet.train.finetune import Freezer, load_init
from h2gnet.train.losses import dice_loss
from h2gnet.train.models import build_refiner
from h2gnet.train.plan import MIN_FINETUNE_STEPS, MIN_OPTIMIZER_STEPS, TrainingPlan, epochs_for, plan_run
from h2gnet.train.run_state import TrainingRun, set_threads


@dataclass
class Sample:
    """One slide's network input (C, S, S) float32 and target (S, S) uint8."""

    name: str
    x: np.ndarray
    y: np.ndarray


def load_sample(entry: SlideEntry, heatmap_dir: str | Path | None, size: int, *, use_heatmap: bool,
                card: ModelCard | None = None) -> Sample:
    """Build one slide's input (low-res RGB [+ heatmap]) and target at ``size``² px, the way inference feeds
    the refiner: h2gnet's way, or as ``card`` says (image source, normalisation, resizing) for a fine-tuned
    card-described model."""
    if entry.annotation is None:
        raise H2GNetError(entry.slide, "has no annotation to train the refinement network on")
    source, normalisation, resize = ((card.image_source, card.image_normalisation, card.resize) if card is not None
                                     else ("h2gnet", "fixed", "stretch"))
    with open_slide(entry.slide, entry.mpp) as slide:
        low = low_resolution(slide, size, source)
        heat = None
        if use_heatmap:
            if heatmap_dir is None:
                raise H2GNetError(None, "this architecture needs heatmaps: give --heatmaps")
            heat = load_slide_heatmap(slide_outputs(heatmap_dir, entry.key).heatmap, slide)
        truth = load_annotation(entry.annotation, slide.dimensions, slide.mpp, low.mpp,
                                mask_downsample=entry.annotation_downsample, tumour_free=entry.tumour_free)
    return Sample(entry.key, network_input(low, heat, size, normalisation, resize),
                  target_mask(low, truth, size, resize))


def _augment(sample: Sample, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:

    image = np.ascontiguousarray(sample.x[:3].transpose(1, 2, 0))
    heat = sample.x[3] if sample.x.shape[0] == 4 else np.zeros(image.shape[:2], np.float32)
    image, heat, mask = augment_refinement(image, heat, sample.y, rng)
    parts = [image.transpose(2, 0, 1)] + ([heat[None]] if sample.x.shape[0] == 4 else [])
    return np.concatenate(parts).astype(np.float32), mask


def _loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:

    outputs = model(x, return_aux=True) if getattr(unwrap(model), "has_aux", False) else model(x)
    if isinstance(outputs, torch.Tensor):
        return dice_loss(outputs, y)
    losses = []
    for out in outputs:  # deep supervision: every output against the target at its own scale
        if out.shape[-2:] != y.shape[-2:]:
            out = F.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=False)
        losses.append(dice_loss(out, y))
    return torch.stack(losses).mean()


def _train_epoch(model, samples, cfg, optimizer, rng, ctx: DistContext | None = None,
                 freezer: tuple[Freezer, int] | None = None) -> float:
    """One epoch over the training slides in a random order, ``accumulation`` batches per update; a last
    batch of one slide gets a second one.

    On several ranks every rank draws the same order (``rng``), takes every ``world size``-th batch (the
    order padded by its start so all ranks make the same number of updates) and augments with its own
    generator; the gradients of one update are averaged over ranks once, on its last batch. ``freezer``: (the
    run's :class:`Freezer`, the run's optimizer steps before this epoch)."""
    model.train()
    order = rng.permutation(len(samples))
    if len(order) % cfg.batch_size == 1 and cfg.batch_size > 1:
        # a last batch of one slide breaks BatchNorm where the network is down to 1×1 px (256-px input): it
        # takes a second slide from the start of the order (e.g. 17 slides in batches of 4)
        order = np.append(order, order[0])
    aug_rng = rng
    if ctx is not None and ctx.distributed:
        per_step = cfg.batch_size * ctx.world_size
        order = np.resize(order, -(-len(order) // per_step) * per_step)  # pad by repeating the order's start
        order = order.reshape(-1, ctx.world_size, cfg.batch_size)[:, ctx.rank].ravel()
        epoch_key = int(rng.integers(2**31))
        aug_rng = np.random.default_rng(np.random.SeedSequence([rank_seed(cfg.seed, ctx.rank), epoch_key]))
    optimizer.zero_grad(set_to_none=True)
    total, n_batches, pending, n_steps = 0.0, 0, 0, 0
    n_total = -(-len(order) // cfg.batch_size)
    for start in range(0, len(order), cfg.batch_size):
        chosen = [samples[i] for i in order[start:start + cfg.batch_size]]
        pairs = [_augment(s, aug_rng) if cfg.augment else (s.x, s.y) for s in chosen]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
        steps_now = pending + 1 == cfg.accumulation or n_batches + 1 == n_total
        with contextlib.nullcontext() if steps_now or not hasattr(model, "no_sync") else model.no_sync():
            loss = _loss(model, x, y)
            (loss / cfg.accumulation).backward()
        total += loss.item()
        n_batches += 1
        pending += 1
        if pending == cfg.accumulation:
            _step(optimizer, freezer, n_steps)
            n_steps += 1
            pending = 0
    if pending:  # the epoch's last, partial accumulation still counts
        _step(optimizer, freezer, n_steps)
        optimizer.zero_grad(set_to_none=True)
    if ctx is not None and ctx.distributed:
        total, n_all = all_sum([total, float(n_batches)], ctx)
        return total / max(n_all, 1)
    return total / max(n_batches, 1)


def _step(optimizer: torch.optim.Optimizer, freezer: tuple[Freezer, int] | None, n_steps: int) -> None:
    """One optimizer step (the ``n_steps``-th of the epoch), the frozen parameters' gradients dropped first."""
    if freezer is not None:
        freezer[0].before_step(freezer[1] + n_steps)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _dice(pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor) -> float:
    """Hard Dice of two boolean masks (1 when both are empty)."""
    inter = float((pred & truth).sum())
    denom = float(pred.sum()) + float(truth.sum())
    return 1.0 if denom == 0 else 2 * inter / denom


def patchwise_dice(heats: list[np.ndarray], samples: list[Sample]) -> float:
    """Mean Dice of the patch-wise masks (heatmap > 0.5, designs III–V) over ``samples``, on the refiner's
    ``input_size``² grid; ``heats`` are the slides' heatmaps on that grid (fractions)."""
    return float(np.mean([_dice(h > 0.5, s.y.astype(bool)) for h, s in zip(heats, samples)]))


def _heats(entries: list[SlideEntry], samples: list[Sample], cfg: RefineTrainConfig) -> list[np.ndarray] | None:
    """The heatmap channel of each validation sample (read for UNet-LR; None without heatmaps)."""
    if samples[0].x.shape[0] == 4:
        return [s.x[3] for s in samples]
    if cfg.heatmaps is None:
        return None
    return [load_sample(e, cfg.heatmaps, samples[0].x.shape[-1], use_heatmap=True).x[3] for e in entries]


def plan_refiner(cfg: RefineTrainConfig, train_slides: int, world_size: int = 1) -> TrainingPlan:
    """The run's plan for ``train_slides`` training slides: ``cfg.total_steps`` sets the epochs if given."""
    plan = plan_run(train_slides, cfg.batch_size, cfg.epochs, cfg.accumulation, world_size)
    if cfg.total_steps is not None:
        epochs = epochs_for(cfg.total_steps, plan.steps)
        plan = replace(plan, epochs=epochs, total_steps=epochs * plan.steps)
    return plan


def lr_at(cfg: RefineTrainConfig, epoch: int, epochs: int) -> float:
    """Learning rate of 0-based ``epoch`` of ``epochs``: ``cfg.lr`` throughout ("constant"), or a half cosine from
    ``cfg.lr`` at the first epoch towards 0 after the last ("cosine"). A function of the epoch alone, so a
    resumed run continues the same schedule."""
    if cfg.lr_schedule == "cosine":
        return float(cfg.lr * 0.5 * (1.0 + np.cos(np.pi * epoch / max(epochs, 1))))
    return cfg.lr


def verdict(refined: float, patchwise: float | None) -> str:
    """One line comparing the refiner's validation Dice with the patch-wise mask's."""
    if patchwise is None:
        return f"refinement: validation Dice {refined:.3f} (no heatmaps: not compared with patch-wise)"
    if refined > patchwise:
        return f"refinement improves validation Dice from {patchwise:.3f} to {refined:.3f}"
    if refined == patchwise:
        return f"refinement leaves validation Dice at {patchwise:.3f} (patch-wise is as good)"
    return (f"refinement makes validation Dice worse: {refined:.3f} against {patchwise:.3f} patch-wise (heatmap "
            "> 0.5); segment with --no-refine, or train longer (--total-steps) or on more slides")


@torch.no_grad()
def _validate(model, samples, cfg) -> tuple[float, float]:
    """Mean Dice loss and mean hard Dice (threshold 0.5) over validation slides."""

    model.eval()
    losses, dices = [], []
    for start in range(0, len(samples), cfg.batch_size):
        chunk = samples[start:start + cfg.batch_size]
        x = torch.from_numpy(np.stack([s.x for s in chunk]))
        y = torch.from_numpy(np.stack([s.y for s in chunk]).astype(np.int64))
        logits = model(x)
        losses.append(dice_loss(logits, y).item() * len(chunk))
        pred = logits.softmax(1)[:, 1] > 0.5
        dices += [_dice(p, t) for p, t in zip(pred, y.bool())]
    return sum(losses) / len(samples), float(np.mean(dices))


def train_refiner(run_dir: str | Path, cfg: RefineTrainConfig, *, overwrite: bool = False) -> dict:
    """Train (or resume) in ``run_dir``; export ``model.onnx``; return the final metrics.

    Under ``torchrun`` each process is one DDP rank (see :mod:`h2gnet.train.distributed`): a batch of an
    update is ``batch_size × world size`` slides, rank 0 alone writes the run folder.
    """
    run = TrainingRun(run_dir, cfg, overwrite=overwrite)  # refuses a bad folder before any work
    with distributed_run() as ctx, run.held("train-refine", writer=ctx.is_main):  # one training per run folder
        return _train(run, cfg, ctx)


def _train(run: TrainingRun, cfg: RefineTrainConfig, ctx: DistContext) -> dict:
    from tqdm.auto import tqdm

    run.read_only = not ctx.is_main  # rank 0 writes the run folder
    show = cfg.progress and ctx.is_main
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    init = load_init(cfg.init, "refiner", cfg.preset) if cfg.init else None  # errors before any work
    model: Any
    card: ModelCard | None
    if init is not None:
        init.check_output(run.dir)
        if cfg.input_size is not None and cfg.input_size != init.input_size:
            raise ParameterError("input_size", f"the --init model takes {init.input_size} px (got "
                                               f"{cfg.input_size}); leave --input-size out")
        model, size, use_heat, card = init.model, init.input_size, init.in_channels == 4, init.card
        backbone = init.backbone
    else:
        assert cfg.input_size is not None
        model, size, use_heat, card = build_refiner(cfg.arch, filters=cfg.filters), cfg.input_size, \
            cfg.arch != "unet-lr", None
        backbone = [n for n, _ in model.named_parameters() if "encoder" in n.split(".")]
    try:
        model.check_size(size, size)
    except ValueError as exc:
        raise ParameterError("input_size", str(exc)) from None
    freezer = Freezer(model, backbone, cfg.freeze_backbone_steps)
    entries = read_manifest(cfg.manifest)
    sets, chosen = {}, {}
    for split in ("train", "val"):
        chosen[split] = [e for e in select(entries, split) if e.annotation is not None]
        if not chosen[split]:
            raise H2GNetError(cfg.manifest, f"has no annotated slides in the {split} split")
        sets[split] = [load_sample(e, cfg.heatmaps, size, use_heatmap=use_heat, card=card)
                       for e in tqdm(chosen[split], desc=f"load {split}", unit="slide", disable=not show)]
    plan = plan_refiner(cfg, len(sets["train"]), ctx.world_size)
    epochs = plan.epochs
    if ctx.is_main:
        start = f"from {init.describe()}" if init is not None else "from random weights"
        print(f"train-refine {plan.describe('slides')}; trains {freezer.describe()} {start} at {describe_lr(cfg)}",
              file=sys.stderr)
        plan.warn_if_short(f"give --total-steps (e.g. 1000; epochs follow), or lower --batch-size "
                           f"{cfg.batch_size} / --accumulation {cfg.accumulation}, or more training slides",
                           MIN_FINETUNE_STEPS if init is not None else MIN_OPTIMIZER_STEPS)
    heats = _heats(chosen["val"], sets["val"], cfg)
    val_patchwise = patchwise_dice(heats, sets["val"]) if heats is not None else None
    net = wrap(model, ctx)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    barrier(ctx)  # every rank has read the run folder before rank 0 writes it
    run.begin()
    progress = run.resume(model, optimizer)
    with tqdm(total=epochs, initial=progress.epoch, desc=f"train-refine {cfg.arch}", unit="epoch",
              disable=not show) as bar:
        for epoch in range(progress.epoch, epochs):
            if epoch - progress.best_epoch >= cfg.patience and progress.best_epoch > 0:
                break
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch]))
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, epoch, epochs)
            t0 = time.perf_counter()
            train_loss = _train_epoch(net, sets["train"], cfg, optimizer, rng, ctx, (freezer, epoch * plan.steps))
            val_loss, val_dice = _validate(model, sets["val"], cfg)  # every rank: the same slides and weights
            pw = {} if val_patchwise is None else {"val_dice_patchwise": val_patchwise}
            run.end_epoch(model, optimizer, progress, {"train_loss": train_loss, "val_loss": val_loss,
                                                       "val_dice": val_dice, **pw,
                                                       "seconds": time.perf_counter() - t0,
                                                       "world_size": ctx.world_size})
            bar.update(1)
            bar.set_postfix(val_loss=f"{val_loss:.4f}", val_dice=f"{val_dice:.3f}",
                            **{k: f"{v:.3f}" for k, v in pw.items()}, best=progress.best_epoch)

    def finish() -> dict:
        best_epoch = run.load_best(model)
        _, val_dice = _validate(model, sets["val"], cfg)
        line = verdict(val_dice, val_patchwise)
        validation = {"val_dice": val_dice, "val_dice_patchwise": val_patchwise}
        if init is not None:
            init.export(model.eval(), run.dir / MODEL_FILE, validation)
        else:
            export_refiner_onnx(model.eval(), run.dir / MODEL_FILE, size, arch=cfg.arch, validation=validation)
        metrics = {"best_epoch": best_epoch, "best_val_loss": progress.best_val_loss, "val_dice": val_dice,
                   "val_dice_patchwise": val_patchwise, "verdict": line, "plan": plan.as_dict()}
        if init is not None:
            metrics["init"] = init.summary()
        run.write_metrics(metrics)
        if val_patchwise is not None and val_dice < val_patchwise:
            warnings.warn(line, UserWarning, stacklevel=2)
        else:
            print(line, file=sys.stderr)
        return metrics

    return on_main(ctx, finish)  # rank 0 exports; every rank returns the metrics
