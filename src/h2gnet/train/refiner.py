"""Stage 2: train a refinement network on low-resolution slides + stage-1 heatmaps (section 3.4).

Each training sample is one slide: its low-resolution RGB image and heatmap
resized to ``input_size``² (4 channels; 3 for UNet-LR) and the annotation on
the same grid. Adam at 1e-3, batch 4 with 6 gradient-accumulation steps,
Dice loss (plus the deep-supervision outputs of AGU-/DAGU-Net), flips, 90°
rotations, zoom and Macenko stain augmentation, early stopping on the
validation loss (patience 100, at most 1000 epochs); resumable.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from h2gnet.conventions import HEATMAP_SUFFIX, METRICS_FILE, MODEL_FILE
from h2gnet.errors import H2GNetError
from h2gnet.infer.heatmap import load_heatmap
from h2gnet.infer.refine_input import low_resolution, network_input, target_mask
from h2gnet.io.annotations import load_annotation
from h2gnet.io.atomic import write_text
from h2gnet.io.manifest import SlideEntry, read_manifest, select
from h2gnet.io.slides import open_slide
from h2gnet.train.augment import augment_refinement
from h2gnet.train.export import export_refiner_onnx
from h2gnet.train.losses import dice_loss
from h2gnet.train.models import build_refiner
from h2gnet.train.run_state import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    append_log,
    prepare_run,
    save_checkpoint,
    set_threads,
    truncate_log,
)


@dataclass
class RefineTrainConfig:
    """Settings of a refinement run (defaults: the paper's section 3.4)."""

    manifest: str
    heatmaps: str | None
    arch: str = "unet"
    input_size: int = 1024
    epochs: int = 1000
    patience: int = 100
    batch_size: int = 4
    accumulation: int = 6
    lr: float = 1e-3
    augment: bool = True
    filters: tuple[int, ...] | None = None
    seed: int = 0
    threads: int | None = None
    progress: bool = True


@dataclass
class Sample:
    """One slide's network input (C, S, S) float32 and target (S, S) uint8."""

    name: str
    x: np.ndarray
    y: np.ndarray


def load_sample(entry: SlideEntry, heatmap_dir: str | Path | None, size: int, *, use_heatmap: bool) -> Sample:
    """Build one slide's input (low-res RGB [+ heatmap]) and target at ``size``² px."""
    if entry.annotation is None:
        raise H2GNetError(entry.slide, "has no annotation to train the refinement network on")
    with open_slide(entry.slide, entry.mpp) as slide:
        low = low_resolution(slide, size)
        heat = None
        if use_heatmap:
            if heatmap_dir is None:
                raise H2GNetError(None, "this architecture needs heatmaps: give --heatmaps")
            heat, _ = load_heatmap(Path(heatmap_dir) / f"{entry.key}{HEATMAP_SUFFIX}")
        truth = load_annotation(entry.annotation, slide.dimensions, slide.mpp, low.mpp,
                                mask_downsample=entry.annotation_downsample)
    return Sample(entry.key, network_input(low, heat, size), target_mask(low, truth, size))


def _augment(sample: Sample, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:

    image = np.ascontiguousarray(sample.x[:3].transpose(1, 2, 0))
    heat = sample.x[3] if sample.x.shape[0] == 4 else np.zeros(image.shape[:2], np.float32)
    image, heat, mask = augment_refinement(image, heat, sample.y, rng)
    parts = [image.transpose(2, 0, 1)] + ([heat[None]] if sample.x.shape[0] == 4 else [])
    return np.concatenate(parts).astype(np.float32), mask


def _loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:

    outputs = model(x, return_aux=True) if getattr(model, "has_aux", False) else model(x)
    if isinstance(outputs, torch.Tensor):
        return dice_loss(outputs, y)
    losses = []
    for out in outputs:  # deep supervision: every output against the target at its own scale
        if out.shape[-2:] != y.shape[-2:]:
            out = F.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=False)
        losses.append(dice_loss(out, y))
    return torch.stack(losses).mean()


def _train_epoch(model, samples, cfg, optimizer, rng) -> float:
    model.train()
    order = rng.permutation(len(samples))
    optimizer.zero_grad(set_to_none=True)
    total, n_batches, pending = 0.0, 0, 0
    for start in range(0, len(order), cfg.batch_size):
        chosen = [samples[i] for i in order[start:start + cfg.batch_size]]
        pairs = [_augment(s, rng) if cfg.augment else (s.x, s.y) for s in chosen]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
        loss = _loss(model, x, y)
        (loss / cfg.accumulation).backward()
        total += loss.item()
        n_batches += 1
        pending += 1
        if pending == cfg.accumulation:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            pending = 0
    if pending:  # the epoch's last, partial accumulation still counts
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return total / max(n_batches, 1)


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
        for p, t in zip(pred, y.bool()):
            inter = (p & t).sum().item()
            denom = p.sum().item() + t.sum().item()
            dices.append(1.0 if denom == 0 else 2 * inter / denom)
    return sum(losses) / len(samples), float(np.mean(dices))


def train_refiner(run_dir: str | Path, cfg: RefineTrainConfig, *, overwrite: bool = False) -> dict:
    """Train (or resume) in ``run_dir``; export ``model.onnx``; return the final metrics."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    entries = read_manifest(cfg.manifest)
    use_heat = cfg.arch != "unet-lr"
    model = build_refiner(cfg.arch, filters=cfg.filters)
    model.check_size(cfg.input_size, cfg.input_size)
    ckpt = prepare_run(run_dir, cfg, overwrite=overwrite)
    sets = {}
    for split in ("train", "val"):
        chosen = [e for e in select(entries, split) if e.annotation is not None]
        if not chosen:
            raise H2GNetError(cfg.manifest, f"has no annotated slides in the {split} split")
        sets[split] = [load_sample(e, cfg.heatmaps, cfg.input_size, use_heatmap=use_heat)
                       for e in tqdm(chosen, desc=f"load {split}", unit="slide", disable=not cfg.progress)]
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start, best, best_epoch = 0, math.inf, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start, best, best_epoch = int(ckpt["epoch"]), float(ckpt["best_val_loss"]), int(ckpt["best_epoch"])
        truncate_log(run_dir, start)
    with tqdm(total=cfg.epochs, initial=start, desc=f"train-refine {cfg.arch}", unit="epoch",
              disable=not cfg.progress) as bar:
        for epoch in range(start, cfg.epochs):
            if epoch - best_epoch >= cfg.patience and best_epoch > 0:
                break
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch]))
            t0 = time.perf_counter()
            train_loss = _train_epoch(model, sets["train"], cfg, optimizer, rng)
            val_loss, val_dice = _validate(model, sets["val"], cfg)
            improved = val_loss < best
            if improved:
                best, best_epoch = val_loss, epoch + 1
                save_checkpoint(run_dir / BEST_CHECKPOINT, {"model": model.state_dict(), "epoch": epoch + 1})
            append_log(run_dir, {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                                 "val_dice": val_dice, "seconds": time.perf_counter() - t0, "best": int(improved)})
            save_checkpoint(run_dir / LAST_CHECKPOINT, {"model": model.state_dict(), "optimizer":
                            optimizer.state_dict(), "epoch": epoch + 1, "best_val_loss": best,
                            "best_epoch": best_epoch})
            bar.update(1)
            bar.set_postfix(val_loss=f"{val_loss:.4f}", val_dice=f"{val_dice:.3f}", best=best_epoch)
    best_state = torch.load(run_dir / BEST_CHECKPOINT, map_location="cpu", weights_only=False)
    model.load_state_dict(best_state["model"])
    export_refiner_onnx(model.eval(), run_dir / MODEL_FILE, cfg.input_size, arch=cfg.arch)
    _, val_dice = _validate(model, sets["val"], cfg)
    metrics = {"best_epoch": best_state["epoch"], "best_val_loss": best, "val_dice": val_dice}
    write_text(run_dir / METRICS_FILE, json.dumps(metrics, indent=2))
    return metrics
