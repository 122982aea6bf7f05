"""Patch-level accuracy of an exported patch classifier on indexed, labelled patches."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from h2gnet.infer.runtime import OnnxModel
from h2gnet.patches.grid import PatchIndex
from h2gnet.patches.sampling import PatchReader


def choose_patches(indexes: list[PatchIndex], per_class: int | None, seed: int) -> list[tuple[int, int]]:
    """(slide, patch) pairs: every labelled patch, or at most ``per_class`` per class and slide (seeded)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for s, ix in enumerate(indexes):
        for cls in (0, 1):
            rows = np.nonzero(ix.label == cls)[0]
            if per_class is not None and len(rows) > per_class:
                rows = np.sort(rng.choice(rows, per_class, replace=False))
            chosen += [(s, int(p)) for p in rows]
    return chosen


def evaluate_patch_model(model_path: str | Path | OnnxModel, indexes: list[PatchIndex],
                         per_class: int | None = 200, seed: int = 0, batch_size: int = 32,
                         *, progress: bool = True) -> dict:
    """Balanced accuracy (mean of per-class recalls) and per-class accuracy at threshold 0.5.

    ``model_path``: an ONNX file (run by ONNX Runtime on the CPU) or a loaded :class:`OnnxModel`.
    """
    from tqdm.auto import tqdm

    model = model_path if isinstance(model_path, OnnxModel) else OnnxModel(Path(model_path), "patch-classifier")
    pairs = choose_patches(indexes, per_class, seed)
    reader = PatchReader(indexes, model.input_size)
    labels = np.array([indexes[s].label[p] for s, p in pairs], dtype=np.int64)
    probs = np.zeros(len(pairs), np.float32)
    with ThreadPoolExecutor(2) as pool, tqdm(total=len(pairs), desc="patch accuracy", unit="patch",
                                             disable=not progress) as bar:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            imgs = list(pool.map(lambda sp: reader.read(*sp), chunk))
            batch = np.stack(imgs).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
            probs[start:start + len(chunk)] = model(batch)[:, model.tumour_channel]
            bar.update(len(chunk))
    pred = probs > 0.5
    recalls = {}
    for cls, name in ((0, "non_tumour"), (1, "tumour")):
        sel = labels == cls
        recalls[name] = float((pred[sel] == bool(cls)).mean()) if sel.any() else float("nan")
    present = [v for v in recalls.values() if not np.isnan(v)]
    return {"balanced_accuracy": float(np.mean(present)) if present else float("nan"),
            "accuracy_tumour": recalls["tumour"], "accuracy_non_tumour": recalls["non_tumour"],
            "patches": int(len(pairs)), "tumour_patches": int((labels == 1).sum()),
            "non_tumour_patches": int((labels == 0).sum())}
